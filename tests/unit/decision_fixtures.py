"""Decisions built by hand, one factory per type, for the tests of what consumes them
(records, metrics, logs, the status page). Each factory gives a valid decision of one
mailbox; keyword arguments change what a test cares about. Ids are derived as the
policy derives them (`decision_id`), so they look like real ones."""

from __future__ import annotations

from processor.policy.decisions import (
    Alert,
    AlertKind,
    Block,
    Decision,
    Evidence,
    Report,
    ReportEvent,
    ScanRequest,
    Unblock,
    UnblockReason,
    decision_id,
)
from processor.policy.events import MailboxKey

KEY = MailboxKey("t1", "alice@example.com")
T0 = 1_767_607_200_000  # 2026-01-05T10:00:00Z
HOUR = 3_600_000
EVIDENCE = (Evidence("m1", T0 - 60_000), Evidence("m2", T0))


def block(
    offense: int = 1,
    permanent: bool = False,
    *,
    sequence: int | None = None,
    key: MailboxKey = KEY,
    at_ms: int = T0,
    evidence: tuple[Evidence, ...] = EVIDENCE,
) -> Block:
    """A block of the default policy's length for its offense (1 h, 2 h, 4 h, ...)."""
    sequence = offense if sequence is None else sequence
    return Block(
        key=key,
        at_ms=at_ms,
        offense=offense,
        permanent=permanent,
        until_ms=None if permanent else at_ms + HOUR * 2 ** (offense - 1),
        sequence=sequence,
        command_id=decision_id(key, sequence, "block"),
        evidence=evidence,
    )


def unblock(
    reason: UnblockReason = "expired",
    *,
    offense: int = 1,
    sequence: int | None = None,
    at_ms: int = T0 + HOUR,
    actor: str | None = None,
    note: str | None = None,
) -> Unblock:
    sequence = offense if sequence is None else sequence
    return Unblock(
        key=KEY,
        at_ms=at_ms,
        offense=offense,
        reason=reason,
        sequence=sequence,
        command_id=decision_id(KEY, sequence, "unblock"),
        actor=actor,
        note=note,
    )


def scan(device: str = "laptop-1", *, owner: str = "owner-1", sequence: int = 1) -> ScanRequest:
    return ScanRequest(
        key=KEY,
        owner_id=owner,
        device_id=device,
        at_ms=T0,
        sequence=sequence,
        request_id=decision_id(KEY, sequence, f"scan:{device}"),
    )


def alert(
    kind: AlertKind = "blocked",
    *,
    offense: int = 1,
    sequence: int | None = None,
    owner: str | None = "owner-1",
    devices: tuple[str, ...] = ("laptop-1",),
) -> Alert:
    """A block's alert (scans requested when there are devices), or an allowlist hit's."""
    blocked = kind == "blocked"
    sequence = offense if sequence is None else sequence
    return Alert(
        key=KEY,
        at_ms=T0,
        kind=kind,
        offense=offense if blocked else None,
        permanent=False,
        until_ms=T0 + HOUR * 2 ** (offense - 1) if blocked else None,
        owner_id=owner,
        devices=devices,
        scans_requested=blocked and bool(devices),
        evidence=EVIDENCE,
        alert_id=decision_id(KEY, sequence, "alert" if blocked else "allowlisted"),
    )


def report(
    event: ReportEvent = "blocked",
    *,
    offense: int | None = 1,
    sequence: int = 1,
    actor: str | None = None,
    reason: str | None = None,
) -> Report:
    return Report(
        key=KEY,
        at_ms=T0,
        event=event,
        offense=offense,
        until_ms=None,
        report_id=decision_id(KEY, sequence, f"report:{event}"),
        actor=actor,
        reason=reason,
    )


def one_of_each() -> list[Decision]:
    """Every decision type, and both variants where a type has two (timed/permanent
    blocks, expiry/release unblocks, block/allowlist alerts, refusal reports)."""
    return [
        block(2, sequence=3),
        block(6, True, sequence=7),
        unblock("expired", offense=2, sequence=3, at_ms=T0 + 2 * HOUR),
        unblock("released", offense=6, sequence=7, at_ms=T0, actor="sup-1", note="verified"),
        scan("d1", owner="u1", sequence=3),
        alert("blocked", offense=2, sequence=3, owner="u1", devices=("d1",)),
        alert("allowlisted", sequence=1, owner=None, devices=()),
        report("permanently_blocked", offense=6, sequence=7),
        report("release_refused", offense=None, actor="sup-1", reason="not permanently blocked"),
    ]
