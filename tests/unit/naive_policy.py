"""A deliberately naive, literal model of docs/policy.md (test oracle only).

Written from the specification alone, without reading the policy core's bodies.
It is slow on purpose: every counted verdict of a mailbox is kept in a plain list,
every trigger check scans every candidate interval, the due timed blocks are
re-collected and re-sorted from scratch before each input.

Decisions are plain tuples, so a test can compare them with the engine's
decisions converted by `canonical` (ids are left out: the model does not know how
ids are derived).

Choices where docs/policy.md's rules are silent or ambiguous (each one is reported):
- H (the high-water mark) is raised by every qualifying verdict that is not late,
  including those ignored while blocked, before a reset, or as duplicates
  ("the largest scanned_at of any qualifying verdict *seen*").
- Duplicates (rule 2) with a *new* scanned_at make rule 6's pruning observable.
  The "current window state" is read as: the counted verdicts that can still
  matter, i.e. scanned at or after `H - 2*window` (rule 6, H including the new
  verdict) and with `scanned_at + window > now - max_lateness` (every verdict still
  to come is scanned at or after `now - max_lateness`, rule 1, so an older one can
  never share a window with it). A message id counted only outside that is counted
  again. This reading is what makes rule 6's "forgetting never changes a decision"
  true; the model itself never forgets a mailbox.
- The evidence of a trigger is the set of counted verdicts in a qualifying
  interval `(x - window, x]` that contains the new verdict; when several
  intervals qualify with different sets, any of them is accepted
  (`Candidates`).
- An allowlisted would-be block clears the window but sets no "counts from"
  time (the spec only says the window is cleared and no offense is counted).
- Directory entries and tenant settings: the one with the largest `at` wins; an
  entry with the same `at` as the current one replaces it (last line wins).
- `scans_requested` is true exactly when at least one scan request was sent.
- A refused release still moves the clock (its line has a valid time; the
  refusal happens while the line is handled).
- Timed blocks due at the same `until` may end in any order (the spec only
  orders them by `until`); tests canonicalise ties (see `canonical_order`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

Key = tuple[str, str]
QUALIFYING = {"SPAM", "VIRUS"}


class Candidates:
    """Evidence: equal to any one of several acceptable sets of (message_id, scanned_at)."""

    def __init__(self, sets: list[frozenset[tuple[str, int]]]) -> None:
        self.sets = sets

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Candidates):
            return self.sets == other.sets
        return other in self.sets

    def __hash__(self) -> int:  # pragma: no cover - never hashed in practice
        return 0

    def __repr__(self) -> str:
        shown = [sorted(s, key=lambda e: (e[1], e[0])) for s in self.sets]
        return f"one of {shown}"


@dataclass
class NaiveMailbox:
    offenses: int = 0
    high_water: int | None = None
    counts_from: int | None = None
    # every counted verdict since the window was last cleared, (scanned_at, message_id)
    counted: list[tuple[int, str]] = field(default_factory=list)
    block_at: int | None = None
    block_until: int | None = None
    block_offense: int | None = None
    permanent: bool = False

    @property
    def blocked(self) -> bool:
        return self.block_at is not None


def normalise(mailbox: str) -> str:
    return mailbox.strip().lower()


class NaivePolicy:
    def __init__(
        self,
        *,
        threshold: int,
        window_ms: int,
        first_block_ms: int,
        growth_factor: int,
        permanent_on_offense: int,
        default_synchronized_security: bool,
        allowlist: list[str],
        max_lateness_ms: int,
    ) -> None:
        self.threshold = threshold
        self.window = window_ms
        self.first_block = first_block_ms
        self.growth = growth_factor
        self.permanent_on = permanent_on_offense
        self.default_ss = default_synchronized_security
        self.allowlist = {normalise(a) for a in allowlist}
        self.max_lateness = max_lateness_ms
        self.now: int | None = None
        self.mailboxes: dict[Key, NaiveMailbox] = {}
        self.directory_entries: dict[Key, tuple[int, str, tuple[str, ...]]] = {}
        self.tenant_settings: dict[str, tuple[int, bool]] = {}

    # -- clock -----------------------------------------------------------------
    def _advance(self, t: int) -> list[tuple]:
        out: list[tuple] = []
        while True:
            due = sorted(
                (m.block_until, key)
                for key, m in self.mailboxes.items()
                if m.blocked and not m.permanent and m.block_until <= t
            )
            if not due:
                break
            until, key = due[0]
            m = self.mailboxes[key]
            out.append(("unblock", key, until, m.block_offense, "expired"))
            out.append(("report", key, until, "unblocked"))
            m.block_at = m.block_until = m.block_offense = None
            m.counts_from = until
        self.now = t if self.now is None else max(self.now, t)
        return out

    # -- inputs ----------------------------------------------------------------
    def tick(self, at: int) -> list[tuple]:
        return self._advance(at)

    def directory(self, tenant: str, mailbox: str, owner: str, devices, at: int) -> list[tuple]:
        out = self._advance(at)
        key = (tenant, normalise(mailbox))
        current = self.directory_entries.get(key)
        if current is None or at >= current[0]:
            self.directory_entries[key] = (at, owner, tuple(devices))
        return out

    def settings(self, tenant: str, on: bool, at: int) -> list[tuple]:
        out = self._advance(at)
        current = self.tenant_settings.get(tenant)
        if current is None or at >= current[0]:
            self.tenant_settings[tenant] = (at, on)
        return out

    def release(self, tenant: str, mailbox: str, at: int) -> tuple[list[tuple], bool]:
        """Returns the decisions and whether the release was refused."""
        out = self._advance(at)
        key = (tenant, normalise(mailbox))
        m = self.mailboxes.get(key)
        # A release asked for before the permanent block started was meant for an earlier one.
        if m is None or not m.permanent or (m.block_at is not None and at < m.block_at):
            return out, True
        assert self.now is not None
        out.append(("unblock", key, self.now, m.block_offense, "released"))
        out.append(("report", key, self.now, "released"))
        m.block_at = m.block_until = m.block_offense = None
        m.permanent = False
        m.offenses = 0
        m.counts_from = self.now
        return out, False

    def verdict(
        self,
        tenant: str,
        mailbox: str,
        message_id: str,
        direction: str,
        kind: str,
        t: int,
    ) -> tuple[str, list[tuple]]:
        out = self._advance(t)
        if direction.upper() != "OUTBOUND" or kind.upper() not in QUALIFYING:
            return "not_qualifying", out
        key = (tenant, normalise(mailbox))
        m = self.mailboxes.setdefault(key, NaiveMailbox())
        w = self.window
        assert self.now is not None
        if t < self.now - self.max_lateness:
            return "late", out
        if m.high_water is not None and t <= m.high_water - w:
            return "late", out
        m.high_water = t if m.high_water is None else max(m.high_water, t)
        if m.blocked:
            return "while_blocked", out
        if m.counts_from is not None and t < m.counts_from:
            return "before_reset", out
        # The current window state: what can still matter (see the module docstring).
        m.counted = [
            (a, mid)
            for (a, mid) in m.counted
            if a >= m.high_water - 2 * w and a + w > self.now - self.max_lateness
        ]
        if any(mid == message_id for (_, mid) in m.counted):
            return "duplicate", out
        m.counted.append((t, message_id))
        sets: list[frozenset[tuple[str, int]]] = []
        for x in sorted({a for (a, _) in m.counted}):
            if not (x - w < t <= x):
                continue
            inside = frozenset((mid, a) for (a, mid) in m.counted if x - w < a <= x)
            if len(inside) >= self.threshold and inside not in sets:
                sets.append(inside)
        if not sets:
            return "counted", out
        evidence = Candidates(sets)
        assert self.now is not None
        now = self.now
        if key[1] in self.allowlist or "@" + key[1].rpartition("@")[2] in self.allowlist:
            out.append(("alert", "allowlisted", key, now, evidence))
            m.counted = []
            return "triggered", out
        offense = m.offenses + 1
        m.offenses = offense
        permanent = offense >= self.permanent_on
        until = None if permanent else now + self.first_block * self.growth ** (offense - 1)
        m.counted = []
        m.block_at, m.block_until, m.block_offense, m.permanent = now, until, offense, permanent
        out.append(("block", key, now, offense, permanent, until, evidence))
        entry = self.directory_entries.get(key)
        owner = entry[1] if entry else None
        devices = entry[2] if entry else ()
        ss = self.tenant_settings.get(key[0], (0, self.default_ss))[1]
        scans = 0
        if ss and owner is not None:
            for device in devices:
                out.append(("scan", key, owner, device, now))
                scans += 1
        out.append(
            (
                "alert",
                "blocked",
                key,
                now,
                offense,
                permanent,
                until,
                owner,
                devices,
                scans > 0,
                evidence,
            )
        )
        out.append(("report", key, now, "permanently_blocked" if permanent else "blocked"))
        return "triggered", out

    def permanent_keys(self) -> list[Key]:
        return sorted(k for k, m in self.mailboxes.items() if m.permanent)


# -- engine decisions in the model's shape ------------------------------------------
def canonical(decision) -> tuple:
    from processor.policy import Alert, Block, Report, ScanRequest, Unblock

    key = (decision.key.tenant_id, decision.key.mailbox)
    if isinstance(decision, Block):
        evidence = frozenset((e.message_id, e.scanned_at_ms) for e in decision.evidence)
        return (
            "block",
            key,
            decision.at_ms,
            decision.offense,
            decision.permanent,
            decision.until_ms,
            evidence,
        )
    if isinstance(decision, Unblock):
        return ("unblock", key, decision.at_ms, decision.offense, decision.reason)
    if isinstance(decision, ScanRequest):
        return ("scan", key, decision.owner_id, decision.device_id, decision.at_ms)
    if isinstance(decision, Alert):
        evidence = frozenset((e.message_id, e.scanned_at_ms) for e in decision.evidence)
        if decision.kind == "allowlisted":
            return ("alert", "allowlisted", key, decision.at_ms, evidence)
        return (
            "alert",
            decision.kind,
            key,
            decision.at_ms,
            decision.offense,
            decision.permanent,
            decision.until_ms,
            decision.owner_id,
            tuple(decision.devices),
            decision.scans_requested,
            evidence,
        )
    if isinstance(decision, Report):
        return ("report", key, decision.at_ms, decision.event)
    raise AssertionError(f"unknown decision {decision!r}")


def canonical_order(decisions: list[tuple]) -> list[tuple]:
    """Expiries due at the same `until` may come in any order: sort each such tie by key."""
    out: list[tuple] = []
    i = 0
    while i < len(decisions):
        d = decisions[i]
        if d[0] == "unblock" and d[4] == "expired" and i + 1 < len(decisions):
            group = []
            while (
                i + 1 < len(decisions)
                and decisions[i][0] == "unblock"
                and decisions[i][4] == "expired"
                and decisions[i][2] == d[2]
            ):
                group.append((decisions[i], decisions[i + 1]))
                i += 2
            group.sort(key=lambda pair: pair[0][1])
            for a, b in group:
                out.extend((a, b))
            continue
        out.append(d)
        i += 1
    return out
