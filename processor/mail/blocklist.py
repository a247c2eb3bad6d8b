"""Every mailbox's current BLOCK or UNBLOCK, as the gateway keeps it in memory.

`mailbox.control` is compacted and keyed by mailbox, so reading it from the start
and keeping the newest command of each `(tenant_id, mailbox)` rebuilds the state
the worker has decided. "Newest" is by the command's own order, not by arrival:
`(block_sequence, BLOCK before UNBLOCK)`. A command at or below the one kept is
ignored, so a repeated command (the worker replays with the same deterministic
id) changes nothing and an older block never overrides a newer one, whatever order
a restart or a replay delivers them in.

A timed BLOCK ends by itself at its `until` (POLICY.md rule 9: at exactly `until`),
even when its UNBLOCK has not arrived (the worker may be down): `block_of` asks the
clock, which it is given. A permanent BLOCK holds until an UNBLOCK.

Pure: no I/O, no clock of its own, no threads. The gateway calls it from its event
loop only.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from processor.codec.errors import DecodeError
from processor.policy.events import normalise_mailbox

Action = Literal["BLOCK", "UNBLOCK"]
ApplyResult = Literal["applied", "duplicate", "outdated"]
#: Every ApplyResult, for metrics.
APPLY_RESULTS: Final[tuple[ApplyResult, ...]] = ("applied", "duplicate", "outdated")

#: 9999-12-31T23:59:59.999Z, as in processor.codec.records.
_MAX_TIMESTAMP_MS = 253_402_300_799_999
_ACTION_ORDER: Final = {"BLOCK": 0, "UNBLOCK": 1}


@dataclass(frozen=True, slots=True)
class ControlCommand:
    """One validated MailboxCommand (mailbox normalised)."""

    command_id: str
    action: Action
    tenant_id: str
    mailbox: str
    block_sequence: int
    offense: int
    permanent: bool
    #: BLOCK, timed: when it ends by itself; None when permanent and on UNBLOCK.
    until_ms: int | None
    at_ms: int

    @property
    def order(self) -> tuple[int, int]:
        """Commands of one mailbox sort by this: a block, then the unblock that ends it."""
        return (self.block_sequence, _ACTION_ORDER[self.action])

    def in_force(self, now_ms: int) -> bool:
        """A BLOCK that has not ended by `now_ms` (a timed one ends at exactly `until`)."""
        if self.action != "BLOCK":
            return False
        return self.permanent or now_ms < self.until_ms  # type: ignore[operator]


def _invalid(field: str, problem: str) -> DecodeError:
    return DecodeError("invalid_record", f"MailboxCommand.{field}: {problem}")


def _field(rec: Mapping[str, Any], field: str, kind: type) -> Any:
    try:
        value = rec[field]
    except KeyError:
        raise _invalid(field, "missing") from None
    if type(value) is not kind:
        raise _invalid(field, f"expected {kind.__name__}, got {type(value).__name__}")
    return value


def command_from_record(rec: Mapping[str, Any]) -> ControlCommand:
    """A decoded MailboxCommand record as a ControlCommand.

    Raises DecodeError `invalid_record` naming the field for anything the gateway
    cannot enforce safely: an empty id, tenant or mailbox, an unknown action, a
    negative sequence, a BLOCK that is neither permanent nor has an `until`, a
    timestamp outside 1970..9999.
    """
    if not isinstance(rec, Mapping):
        raise DecodeError("invalid_record", f"expected a record, got {type(rec).__name__}")
    texts = {name: _field(rec, name, str) for name in ("command_id", "tenant_id", "mailbox")}
    for name, value in texts.items():
        if not value.strip():
            raise _invalid(name, "empty")
    action = rec.get("action")
    if action not in _ACTION_ORDER:
        raise _invalid("action", f"{action!r} is not BLOCK or UNBLOCK")
    sequence = _field(rec, "block_sequence", int)
    if sequence < 0:
        raise _invalid("block_sequence", f"{sequence} is negative")
    offense = _field(rec, "offense", int)
    permanent = _field(rec, "permanent", bool)
    at_ms = _field(rec, "at", int)
    until = rec.get("until")
    for name, stamp in (("at", at_ms), ("until", until)):
        if stamp is not None and (type(stamp) is not int or not 0 <= stamp <= _MAX_TIMESTAMP_MS):
            raise _invalid(name, f"{stamp!r} is not a time between 1970 and 9999")
    if action == "BLOCK":
        if permanent:
            until = None  # the schema says null; a stray value must not end the block
        elif until is None:
            raise _invalid("until", "a timed BLOCK needs an end")
    else:
        permanent, until = False, None
    return ControlCommand(
        command_id=texts["command_id"],
        action=action,
        tenant_id=texts["tenant_id"],
        mailbox=normalise_mailbox(texts["mailbox"]),
        block_sequence=sequence,
        offense=offense,
        permanent=permanent,
        until_ms=until,
        at_ms=at_ms,
    )


class Blocklist:
    """The newest command of every mailbox; answers "is it blocked now?".

    Memory: one entry per mailbox that was ever blocked (UNBLOCKs are kept: they
    carry the sequence that an older, replayed BLOCK must not override).
    """

    def __init__(self) -> None:
        self._current: dict[tuple[str, str], ControlCommand] = {}
        self._permanent: set[tuple[str, str]] = set()
        # Timed blocks in force as far as the last `counts` knew, and their ends (a
        # heap of (until, key); an entry whose block was replaced is skipped).
        self._timed: dict[tuple[str, str], int] = {}
        self._ends: list[tuple[int, tuple[str, str]]] = []

    def __len__(self) -> int:
        return len(self._current)

    def apply(self, command: ControlCommand) -> ApplyResult:
        """Keep `command` if it is newer than the mailbox's current one.

        Returns "applied", "duplicate" (the same position as the current one: a
        repeated command) or "outdated" (older than the current one).
        """
        key = (command.tenant_id, command.mailbox)
        current = self._current.get(key)
        if current is not None:
            if command.order == current.order:
                return "duplicate"
            if command.order < current.order:
                return "outdated"
        self._current[key] = command
        self._permanent.discard(key)
        self._timed.pop(key, None)
        if command.action == "BLOCK":
            if command.permanent:
                self._permanent.add(key)
            else:
                assert command.until_ms is not None
                self._timed[key] = command.until_ms
                heapq.heappush(self._ends, (command.until_ms, key))
        return "applied"

    def forget(self, tenant_id: str, mailbox: str) -> bool:
        """Drop a mailbox (a tombstone on the compacted topic deleted its key).

        A gateway started after compaction would never see the deleted commands, so
        one that saw them forgets them too. Returns whether it was known.
        """
        key = (tenant_id, normalise_mailbox(mailbox))
        self._permanent.discard(key)
        self._timed.pop(key, None)
        return self._current.pop(key, None) is not None

    def block_of(self, tenant_id: str, mailbox: str, now_ms: int) -> ControlCommand | None:
        """The BLOCK in force on the (normalised) mailbox at `now_ms`, or None."""
        command = self._current.get((tenant_id, mailbox))
        if command is None or not command.in_force(now_ms):
            return None
        return command

    def counts(self, now_ms: int) -> tuple[int, int]:
        """(timed, permanent) blocks in force at `now_ms`; `now_ms` must not go back."""
        ends = self._ends
        while ends and ends[0][0] <= now_ms:
            until, key = heapq.heappop(ends)
            if self._timed.get(key) == until:
                del self._timed[key]
        return len(self._timed), len(self._permanent)
