"""Outputs of the policy: what the caller must send, in the order returned.

Every decision carries a deterministic id derived from
`(tenant_id, mailbox, block sequence, action)` (docs/policy.md, rule 13), so a replay
after a crash yields the same ids and consumers can drop repeats.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Literal, Protocol, TypeVar, assert_never

from processor.policy.events import MailboxKey

# A fixed namespace: ids must be stable across versions and machines.
_ID_NAMESPACE = uuid.UUID("6f1d0b7e-5c2a-4b8e-9a3f-2d7c1e0a9b54")
_ID_NAMESPACE_BYTES = _ID_NAMESPACE.bytes

ReportEvent = Literal["blocked", "permanently_blocked", "unblocked", "released", "release_refused"]
AlertKind = Literal["blocked", "allowlisted"]
UnblockReason = Literal["expired", "released"]


def decision_id(key: MailboxKey, sequence: int, action: str) -> str:
    """The deterministic id of one output: the same inputs always give the same id.

    It is `str(uuid.uuid5(namespace, name))`, spelt out: the agent makes one per
    output record, and `uuid.UUID` (integer checks, then formatting from an int)
    cost three times the hash itself.
    """
    name = f"{key.tenant_id}\x1f{key.mailbox}\x1f{sequence}\x1f{action}"
    digest = bytearray(hashlib.sha1(_ID_NAMESPACE_BYTES + name.encode()).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x50  # version 5
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = digest.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


@dataclass(frozen=True, slots=True)
class Evidence:
    """One counted qualifying verdict that formed the triggering window."""

    message_id: str
    scanned_at_ms: int


@dataclass(frozen=True, slots=True)
class Block:
    """BLOCK command for the mail gateways (control topic)."""

    key: MailboxKey
    at_ms: int
    offense: int
    permanent: bool
    until_ms: int | None
    sequence: int
    command_id: str
    evidence: tuple[Evidence, ...]


@dataclass(frozen=True, slots=True)
class Unblock:
    """UNBLOCK command: a timed block expired, or a permanent one was released."""

    key: MailboxKey
    at_ms: int
    offense: int
    reason: UnblockReason
    sequence: int
    command_id: str
    actor: str | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class ScanRequest:
    """Ask the endpoint agent on one of the owner's devices to scan it."""

    key: MailboxKey
    owner_id: str
    device_id: str
    at_ms: int
    sequence: int
    request_id: str


@dataclass(frozen=True, slots=True)
class Alert:
    """Tell the tenant's admins: a mailbox was blocked, or would have been (allowlist)."""

    key: MailboxKey
    at_ms: int
    kind: AlertKind
    offense: int | None
    permanent: bool
    until_ms: int | None
    owner_id: str | None
    devices: tuple[str, ...]
    scans_requested: bool
    evidence: tuple[Evidence, ...]
    alert_id: str

    @property
    def message_ids(self) -> tuple[str, ...]:
        return tuple(e.message_id for e in self.evidence)


@dataclass(frozen=True, slots=True)
class Report:
    """One line of the events report."""

    key: MailboxKey
    at_ms: int
    event: ReportEvent
    offense: int | None
    until_ms: int | None
    report_id: str
    actor: str | None = None
    reason: str | None = None


Decision = Block | Unblock | ScanRequest | Alert | Report


T_co = TypeVar("T_co", covariant=True)


class DecisionVisitor(Protocol[T_co]):
    """Whatever turns decisions into something else (Kafka records, simulate's lines,
    log lines, metrics, the status page's events) has one method per decision type;
    `visit` picks it. Adding a decision type then fails type-checking at every
    visitor that does not handle it, instead of falling through a switch."""

    def block(self, decision: Block) -> T_co: ...

    def unblock(self, decision: Unblock) -> T_co: ...

    def scan_request(self, decision: ScanRequest) -> T_co: ...

    def alert(self, decision: Alert) -> T_co: ...

    def report(self, decision: Report) -> T_co: ...


def visit(decision: Decision, visitor: DecisionVisitor[T_co]) -> T_co:
    """`visitor`'s method for the type of `decision`: the one switch over decision types."""
    match decision:
        case Block():
            return visitor.block(decision)
        case Unblock():
            return visitor.unblock(decision)
        case ScanRequest():
            return visitor.scan_request(decision)
        case Alert():
            return visitor.alert(decision)
        case Report():
            return visitor.report(decision)
        case _:
            assert_never(decision)
