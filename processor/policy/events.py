"""Inputs to the policy: what scanners, the directory, tenant settings and support send.

All times are epoch milliseconds, UTC (`*_ms`). Mailbox addresses are normalised
(stripped, lower-cased) when an event is built with `MailboxKey.of`; tenant ids are
compared as given (docs/policy.md, "Terms").
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

#: The last usable event time, 9999-12-31T23:59:59.999Z (the end of ISO-8601's four-digit
#: years): a later (or negative) time is a broken clock, not data.
MAX_TIMESTAMP_MS = 253_402_300_799_999
#: The longest duration the policy works with, 36,525 days (a century): a duration
#: setting or a timed block (`PolicyConfig`) may not be longer.
MAX_DURATION_MS = 36_525 * 86_400_000
#: The latest time a `simulate` input line may carry (9899-12-30T23:59:59.999Z): a block
#: that starts then, however long, still ends by MAX_TIMESTAMP_MS, so every time the
#: policy computes can be written as a four-digit-year ISO-8601 time. (Live, `now` is the wall
#: clock and a verdict's own time never starts a block, so only MAX_TIMESTAMP_MS applies.)
MAX_INPUT_TIMESTAMP_MS = MAX_TIMESTAMP_MS - MAX_DURATION_MS


class Direction(enum.Enum):
    OUTBOUND = "OUTBOUND"
    INBOUND = "INBOUND"


class VerdictKind(enum.Enum):
    CLEAN = "CLEAN"
    SPAM = "SPAM"
    VIRUS = "VIRUS"


# Module-level aliases: on Python 3.11 an enum member lookup (`Direction.OUTBOUND`) costs
# ~80 ns, ten times a global; `Verdict.qualifies` runs for every verdict.
_OUTBOUND = Direction.OUTBOUND
_CLEAN = VerdictKind.CLEAN


def normalise_mailbox(address: str) -> str:
    """The mailbox as the policy compares it: surrounding whitespace stripped, lower-cased."""
    return address.strip().lower()


@dataclass(frozen=True, slots=True)
class MailboxKey:
    """`(tenant_id, mailbox)`; build it with `of` so the mailbox is normalised."""

    tenant_id: str
    mailbox: str

    @classmethod
    def of(cls, tenant_id: str, mailbox: str) -> MailboxKey:
        return cls(tenant_id, normalise_mailbox(mailbox))

    @property
    def domain(self) -> str:
        return self.mailbox.rpartition("@")[2]


@dataclass(frozen=True, slots=True)
class Verdict:
    """One scanner result for one message."""

    key: MailboxKey
    message_id: str
    direction: Direction
    verdict: VerdictKind
    scanned_at_ms: int

    @property
    def qualifies(self) -> bool:
        """Outbound spam or virus: the only verdicts that can change state."""
        return self.direction is _OUTBOUND and self.verdict is not _CLEAN


@dataclass(frozen=True, slots=True)
class DirectoryEntry:
    """The owner of a mailbox and the owner's devices, from `at_ms` on."""

    key: MailboxKey
    owner_id: str
    devices: tuple[str, ...]
    at_ms: int


@dataclass(frozen=True, slots=True)
class TenantSettings:
    """Whether a tenant has Synchronized Security on, from `at_ms` on."""

    tenant_id: str
    synchronized_security: bool
    at_ms: int


@dataclass(frozen=True, slots=True)
class Release:
    """A support release of a permanently blocked mailbox: privileged and audited.

    `action_id` names the request (unique per attempt, "" when it has none, as in a
    scenario file); it keeps the refusal reports of two attempts apart.
    """

    key: MailboxKey
    actor: str
    reason: str
    at_ms: int
    action_id: str = ""


@dataclass(frozen=True, slots=True)
class Tick:
    """Only moves the clock (expires due timed blocks)."""

    at_ms: int
