"""What the policy remembers about one mailbox: small, serialisable, versioned.

A block's end time is stored, never a duration, so a restarted worker neither
starts a fresh full block nor forgets one: a block that fell due while it was
down ends at once, stamped with its own `until`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from processor.policy.window import SlidingWindow

STATE_VERSION = 1


class MailboxState:
    """Mutable state of one mailbox key, owned by whoever holds the table."""

    __slots__ = (
        "allowlist_hits",
        "blocked_at_ms",
        "blocked_until_ms",
        "counts_from_ms",
        "high_water_ms",
        "offenses",
        "permanent",
        "sequence",
        "window",
    )

    def __init__(self) -> None:
        #: Offenses so far; never decays, reset to 0 only by a support release.
        self.offenses = 0
        #: Blocks issued so far; never resets (keeps decision ids unique, rule 13).
        self.sequence = 0
        #: Start of the block in force, if any.
        self.blocked_at_ms: int | None = None
        #: End of the timed block in force; None when none or when permanent.
        self.blocked_until_ms: int | None = None
        self.permanent = False
        #: Largest `scanned_at` of any qualifying verdict seen (rule 1).
        self.high_water_ms: int | None = None
        #: Only verdicts with `scanned_at >= counts_from_ms` count (rules 4, 10).
        self.counts_from_ms: int | None = None
        #: Would-be blocks suppressed by the allowlist (keeps their alert ids unique).
        self.allowlist_hits = 0
        self.window = SlidingWindow()

    @property
    def blocked(self) -> bool:
        return self.permanent or self.blocked_until_ms is not None

    def to_record(self) -> dict[str, Any]:
        """A JSON-friendly dict (the Faust table value)."""
        return {
            "v": STATE_VERSION,
            "offenses": self.offenses,
            "sequence": self.sequence,
            "blocked_at": self.blocked_at_ms,
            "until": self.blocked_until_ms,
            "permanent": self.permanent,
            "high_water": self.high_water_ms,
            "counts_from": self.counts_from_ms,
            "allowlist_hits": self.allowlist_hits,
            "window": [[at, mid] for at, mid in self.window.entries],
        }

    @staticmethod
    def block_of_record(record: Mapping[str, Any] | None) -> tuple[bool, int | None]:
        """`(permanent, until)` of the block in force in a stored `to_record()` dict,
        read without building the state: `(True, None)` for a permanent block,
        `(False, until)` for a timed one, `(False, None)` for none (or no record)."""
        if record is None:
            return False, None
        if record.get("permanent"):
            return True, None
        until = record.get("until")
        return False, until if isinstance(until, int) else None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MailboxState:
        """Inverse of `to_record`. Raises ValueError for an unknown version."""
        if record.get("v") != STATE_VERSION:
            raise ValueError(f"unknown mailbox state version {record.get('v')!r}")
        state = cls()
        state.offenses = int(record["offenses"])
        state.sequence = int(record["sequence"])
        state.blocked_at_ms = record["blocked_at"]
        state.blocked_until_ms = record["until"]
        state.permanent = bool(record["permanent"])
        state.high_water_ms = record["high_water"]
        state.counts_from_ms = record["counts_from"]
        state.allowlist_hits = int(record["allowlist_hits"])
        state.window = SlidingWindow([(int(at), str(mid)) for at, mid in record["window"]])
        return state

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MailboxState):
            return NotImplemented
        return self.to_record() == other.to_record()

    def __repr__(self) -> str:
        return f"MailboxState({self.to_record()!r})"
