"""A tiny vocabulary for writing policy scenarios as timelines.

Times are written as clock strings on one fixed day (`"10:04:30"`, `"+1d 10:00"`),
so a test reads like the ASCII timeline above it.
"""

from __future__ import annotations

from processor.policy import (
    Alert,
    Block,
    Decision,
    Direction,
    DirectoryEntry,
    Engine,
    MailboxKey,
    PolicyConfig,
    Release,
    Report,
    ScanRequest,
    TenantSettings,
    Unblock,
    Verdict,
    VerdictKind,
)

DAY0_MS = 1_767_571_200_000  # 2026-01-05T00:00:00Z
MINUTE = 60_000
HOUR = 60 * MINUTE
ALICE = MailboxKey.of("t1", "alice@example.com")


def t(clock: str) -> int:
    """`"10:04"`, `"10:04:30"`, `"10:04:30.250"` or `"+2d 10:00"` -> epoch ms."""
    days = 0
    if clock.startswith("+"):
        day_part, clock = clock[1:].split(" ", 1)
        days = int(day_part.rstrip("d"))
    parts = clock.split(":")
    hours, minutes = int(parts[0]), int(parts[1])
    seconds = float(parts[2]) if len(parts) > 2 else 0.0
    return DAY0_MS + days * 24 * HOUR + hours * HOUR + minutes * MINUTE + round(seconds * 1000)


def verdict(
    message_id: str,
    clock: str,
    mailbox: str = "alice@example.com",
    tenant: str = "t1",
    kind: str = "SPAM",
    direction: str = "OUTBOUND",
) -> Verdict:
    return Verdict(
        key=MailboxKey.of(tenant, mailbox),
        message_id=message_id,
        direction=Direction[direction],
        verdict=VerdictKind[kind],
        scanned_at_ms=t(clock),
    )


class Run:
    """An engine plus everything it decided, for assertions."""

    def __init__(self, config: PolicyConfig | None = None) -> None:
        self.engine = Engine(config or PolicyConfig())
        self.decisions: list[Decision] = []
        self.refusals: list[str] = []

    def spam(
        self, clocks: str, mailbox: str = "alice@example.com", tenant: str = "t1", prefix: str = "m"
    ) -> Run:
        """One qualifying verdict per clock in a space-separated list, ids prefix+index."""
        for index, clock in enumerate(clocks.split()):
            self.feed(verdict(f"{prefix}{index}@{clock}", clock, mailbox, tenant))
        return self

    def feed(self, item: Verdict) -> Run:
        self.decisions.extend(self.engine.verdict(item)[1])
        return self

    def directory(
        self,
        owner: str,
        devices: list[str],
        clock: str,
        mailbox: str = "alice@example.com",
        tenant: str = "t1",
    ) -> Run:
        entry = DirectoryEntry(MailboxKey.of(tenant, mailbox), owner, tuple(devices), t(clock))
        self.decisions.extend(self.engine.directory(entry))
        return self

    def settings(self, enabled: bool, clock: str, tenant: str = "t1") -> Run:
        self.decisions.extend(self.engine.settings(TenantSettings(tenant, enabled, t(clock))))
        return self

    def release(self, clock: str, mailbox: str = "alice@example.com", tenant: str = "t1") -> Run:
        request = Release(MailboxKey.of(tenant, mailbox), "support-7", "owner verified", t(clock))
        decisions, refused = self.engine.release(request)
        self.decisions.extend(decisions)
        if refused is not None:
            self.refusals.append(refused.reason)
        return self

    def tick(self, clock: str) -> Run:
        self.decisions.extend(self.engine.tick(t(clock)))
        return self

    # -- views ------------------------------------------------------------------
    def blocks(self) -> list[tuple[int, int, int | None]]:
        """(offense, at, until) of every BLOCK."""
        return [(d.offense, d.at_ms, d.until_ms) for d in self.decisions if isinstance(d, Block)]

    def unblocks(self) -> list[tuple[int, int, str]]:
        """(offense, at, reason) of every UNBLOCK."""
        return [(d.offense, d.at_ms, d.reason) for d in self.decisions if isinstance(d, Unblock)]

    def kinds(self) -> list[str]:
        names = {
            Block: "block",
            Unblock: "unblock",
            ScanRequest: "scan",
            Alert: "alert",
            Report: "report",
        }
        return [names[type(d)] for d in self.decisions]

    def of(self, kind: type) -> list:  # type: ignore[type-arg]
        return [d for d in self.decisions if isinstance(d, kind)]
