"""The internal topic's records: what the edge stage and the timer tell the lockout agent.

One topic carries every input of the stateful stage, and all of one mailbox's
inputs go to one partition (murmur2 of the mailbox key, `partition_for`), so they
are totally ordered: qualifying verdicts and support releases (from the edge
stage) and expiry and sweep ticks (from the timer).

A record is a *pack*: the events of one partition that one writer had at hand (an
edge batch, a timer pass), in order, stamped once with the writer's wall clock:

    {"v": 2, "at": 1767600000123, "events": [[tenant_id, mailbox, {"type": ...}], ...]}

`at` is the `now` of every policy step the pack causes. It is written once, when
the pack is made, so a pack read again after a crash yields the same decisions
with the same times (a replayed BLOCK carries the `at` and `until` of the first).
Packs are bounded (`MAX_PACK_EVENTS`, `MAX_PACK_BYTES`, far below the producer's
1 MB); the record key is empty, the partition is given explicitly.

Format: compact JSON with a version field. This topic is a private hop between two
halves of the same program, not a contract with other teams, so it needs no schema
registry, and `sendguard tail` shows it readably. Records of version 1 (one event
per record, keyed by `encode_key`, written by workers before packs) are still
read; their time is the record's timestamp, which is as fixed as a stamp.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from processor.policy.events import Direction, MailboxKey, Release, Verdict, VerdictKind

VERSION = 2
_V1 = 1

#: Bounds of one pack: events, and bytes of the record value. A single event
#: larger than MAX_PACK_BYTES (impossible within the edge's field limits) goes alone.
MAX_PACK_EVENTS = 1000
MAX_PACK_BYTES = 256 * 1024


class EventFormatError(ValueError):
    """An internal record this version cannot read (a bug or a newer writer)."""


@dataclass(frozen=True, slots=True)
class ExpiryTick:
    """The timer saw the mailbox's timed block due (`until_ms` <= its clock)."""

    key: MailboxKey
    until_ms: int


@dataclass(frozen=True, slots=True)
class SweepTick:
    """The timer saw the mailbox's state evictable (rule 6): check and forget it."""

    key: MailboxKey


MailboxEvent = Verdict | Release | ExpiryTick | SweepTick


@dataclass(frozen=True, slots=True)
class Pack:
    """One internal record: its events in order, and the time they happen at."""

    at_ms: int
    events: list[MailboxEvent]


def encode_key(key: MailboxKey) -> bytes:
    """The mailbox's key bytes: the table key, and what `partition_for` hashes.

    The JSON array `[tenant_id, mailbox]`: unambiguous for any characters, and the
    same bytes from every writer.
    """
    return json.dumps(
        [key.tenant_id, key.mailbox], ensure_ascii=False, separators=(",", ":")
    ).encode()


def decode_key(data: bytes) -> MailboxKey:
    try:
        tenant_id, mailbox = json.loads(data)
    except (ValueError, TypeError) as exc:
        raise EventFormatError(f"bad mailbox key {data[:80]!r}") from exc
    if not isinstance(tenant_id, str) or not isinstance(mailbox, str):
        raise EventFormatError(f"bad mailbox key {data[:80]!r}")
    return MailboxKey(tenant_id, mailbox)  # normalised by the writer


_SEED, _M = 0x9747B28C, 0x5BD1E995
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's, aiokafka's), as an unsigned 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for (k,) in struct.iter_unpack("<I", data[:whole]):
        k = (k * _M) & _MASK
        k ^= k >> 24
        h = ((h * _M) & _MASK) ^ ((k * _M) & _MASK)
    extra = length & 3
    if extra == 3:
        h ^= data[whole + 2] << 16
    if extra >= 2:
        h ^= data[whole + 1] << 8
    if extra >= 1:
        h ^= data[whole]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h


def partition_for(key: bytes, partitions: int) -> int:
    """The internal-topic partition of a mailbox's key bytes (as Kafka's clients place it)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class KeyCache:
    """Mailbox keys' bytes and partitions, remembered: mailboxes repeat (bursts), and
    the JSON and the hash cost more than a look-up. Cleared when full (bounded)."""

    def __init__(self, partitions: int, size: int = 100_000) -> None:
        self.partitions = partitions
        self._size = size
        self._known: dict[MailboxKey, tuple[bytes, int]] = {}

    def __call__(self, key: MailboxKey) -> tuple[bytes, int]:
        """(`encode_key(key)`, its partition)."""
        known = self._known.get(key)
        if known is None:
            if len(self._known) >= self._size:
                self._known.clear()
            data = encode_key(key)
            known = self._known[key] = (data, partition_for(data, self.partitions))
        return known


def _body(event: MailboxEvent) -> dict[str, object]:
    if isinstance(event, Verdict):
        return {
            "type": "verdict",
            "message_id": event.message_id,
            "direction": event.direction.value,
            "verdict": event.verdict.value,
            "scanned_at": event.scanned_at_ms,
        }
    if isinstance(event, Release):
        return {
            "type": "release",
            "actor": event.actor,
            "reason": event.reason,
            "at": event.at_ms,
            "action_id": event.action_id,
        }
    if isinstance(event, ExpiryTick):
        return {"type": "expire", "until": event.until_ms}
    return {"type": "sweep"}


def encode_entry(event: MailboxEvent) -> bytes:
    """One event as an element of a pack's `events` (see `pack_value`)."""
    key = event.key
    return orjson.dumps([key.tenant_id, key.mailbox, _body(event)])


def pack_value(at_ms: int, entries: Sequence[bytes]) -> bytes:
    """The record value of a pack of `encode_entry` outputs, stamped `at_ms`."""
    return b'{"v":2,"at":%d,"events":[%s]}' % (at_ms, b",".join(entries))


_DIRECTIONS = {d.value: d for d in Direction}
_VERDICTS = {v.value: v for v in VerdictKind}


def _event(key: MailboxKey, body: dict[str, object]) -> MailboxEvent:
    kind = body["type"]
    if kind == "verdict":
        return Verdict(
            key=key,
            message_id=_str(body["message_id"]),
            direction=_DIRECTIONS[body["direction"]],  # type: ignore[index]
            verdict=_VERDICTS[body["verdict"]],  # type: ignore[index]
            scanned_at_ms=_int(body["scanned_at"]),
        )
    if kind == "release":
        return Release(
            key=key,
            actor=_str(body["actor"]),
            reason=_str(body["reason"]),
            at_ms=_int(body["at"]),
            action_id=_str(body.get("action_id", "")),  # absent: written before it existed
        )
    if kind == "expire":
        return ExpiryTick(key=key, until_ms=_int(body["until"]))
    if kind == "sweep":
        return SweepTick(key=key)
    raise EventFormatError(f"unknown internal event type {kind!r}")


def _int(value: object) -> int:
    if type(value) is not int:
        raise TypeError(f"expected an integer, got {value!r}")
    return value


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {value!r}")
    return value


def decode_record(key: bytes | None, value: bytes, timestamp_ms: int) -> Pack:
    """The pack in one internal record; raises EventFormatError.

    `key` and `timestamp_ms` (the record's) matter only for version-1 records.
    """
    try:
        body = orjson.loads(value)
        version = body.get("v")
        if version == VERSION:
            at = _int(body["at"])
            keys: dict[tuple[str, str], MailboxKey] = {}  # one key object per mailbox
            events = []
            for tenant, mailbox, entry in body["events"]:
                known = keys.get((tenant, mailbox))
                if known is None:
                    known = keys[tenant, mailbox] = MailboxKey(_str(tenant), _str(mailbox))
                events.append(_event(known, entry))
            return Pack(at, events)
        if version == _V1:
            if key is None:
                raise EventFormatError("a version-1 internal record without a key")
            return Pack(timestamp_ms, [_event(decode_key(key), body)])
    except EventFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise EventFormatError(f"bad internal record {value[:120]!r}: {exc}") from exc
    raise EventFormatError(f"unknown internal record version {version!r}")
