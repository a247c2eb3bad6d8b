"""The internal topic's records: what the edge stage and the timer tell the lockout agent.

One topic carries every input of the stateful stage, keyed by mailbox, so all of
one mailbox's inputs are totally ordered on one partition: qualifying verdicts and
support releases (from the edge stage) and expiry ticks (from the timer).

Format: compact JSON with a version field. This topic is a private hop between two
halves of the same program, not a contract with other teams, so it needs no schema
registry; it carries only the few percent of verdicts that qualify, so the encoding
cost does not matter; and `sendguard tail` shows it readably. Keys are the JSON
array `[tenant_id, mailbox]`: unambiguous for any characters, and the same bytes
from every producer, which the murmur2 partitioner needs to co-locate a mailbox.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from processor.policy.events import Direction, MailboxKey, Release, Verdict, VerdictKind

VERSION = 1


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


def encode_key(key: MailboxKey) -> bytes:
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


def encode_event(event: MailboxEvent) -> bytes:
    """The record value (the key is `encode_key(event.key)`)."""
    if isinstance(event, Verdict):
        body: dict[str, object] = {
            "type": "verdict",
            "message_id": event.message_id,
            "direction": event.direction.value,
            "verdict": event.verdict.value,
            "scanned_at": event.scanned_at_ms,
        }
    elif isinstance(event, Release):
        body = {
            "type": "release",
            "actor": event.actor,
            "reason": event.reason,
            "at": event.at_ms,
            "action_id": event.action_id,
        }
    elif isinstance(event, ExpiryTick):
        body = {"type": "expire", "until": event.until_ms}
    else:
        body = {"type": "sweep"}
    body["v"] = VERSION
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def decode_event(key: MailboxKey, data: bytes) -> MailboxEvent:
    """Inverse of `encode_event`; raises EventFormatError."""
    try:
        body = json.loads(data)
        if body.get("v") != VERSION:
            raise EventFormatError(f"unknown internal event version {body.get('v')!r}")
        kind = body["type"]
        if kind == "verdict":
            return Verdict(
                key=key,
                message_id=body["message_id"],
                direction=Direction(body["direction"]),
                verdict=VerdictKind(body["verdict"]),
                scanned_at_ms=int(body["scanned_at"]),
            )
        if kind == "release":
            return Release(
                key=key,
                actor=body["actor"],
                reason=body["reason"],
                at_ms=int(body["at"]),
                action_id=str(body.get("action_id", "")),  # absent: written before it existed
            )
        if kind == "expire":
            return ExpiryTick(key=key, until_ms=int(body["until"]))
        if kind == "sweep":
            return SweepTick(key=key)
    except EventFormatError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise EventFormatError(f"bad internal event {data[:120]!r}: {exc}") from exc
    raise EventFormatError(f"unknown internal event type {kind!r}")
