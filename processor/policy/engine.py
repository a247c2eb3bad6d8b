"""Many mailboxes on one clock: the policy as `sendguard simulate` runs it.

The engine owns every mailbox's state, the directory and tenant settings, and a
clock that never goes backwards. Before an input with time `t` is handled, every
timed block with `until <= t` ends, in order of `until`, each stamped with its own
`until`; then `now = max(now, t)` (docs/policy.md, "sendguard simulate"). States
that rule 6 lets go are forgotten from time to time (`forget`), by the same test
the worker uses. The live worker keeps state in Faust tables instead and calls
`processor.policy.machine` directly; both share every rule through it.
"""

from __future__ import annotations

import heapq

from processor.policy.config import PolicyConfig
from processor.policy.decisions import Block, Decision
from processor.policy.directory import Directory
from processor.policy.events import (
    DirectoryEntry,
    MailboxKey,
    Release,
    TenantSettings,
    Tick,
    Verdict,
)
from processor.policy.machine import (
    Outcome,
    ReleaseRefused,
    expire,
    forgettable,
    release,
    step_verdict,
)
from processor.policy.state import MailboxState

_NOT_QUALIFYING = Outcome.NOT_QUALIFYING  # see events._OUTBOUND: enum lookups are slow
_LATE = Outcome.LATE

#: Forget what rule 6 allows (`forget`) once this many mailboxes were added since the
#: last time, or as many as were kept then, whichever is more: each sweep is paid for
#: by as many additions as it visits states, and at most twice the states that must
#: be kept (plus this batch) are held.
_FORGET_BATCH = 10_000


class Engine:
    """The whole policy over an in-memory set of mailboxes, driven by input time."""

    def __init__(self, config: PolicyConfig) -> None:
        self.config = config
        self.now_ms: int | None = None
        self.states: dict[MailboxKey, MailboxState] = {}
        #: The directory and tenant settings known at `now_ms` (the PolicyContext).
        self.lookups = Directory()
        # (until, tie-breaker, key) for every timed block in force.
        self._expiries: list[tuple[int, int, MailboxKey]] = []
        self._pushed = 0
        self._added_since_forget = 0
        self._forget_after = _FORGET_BATCH

    # -- inputs ----------------------------------------------------------------
    def advance(self, at_ms: int) -> list[Decision]:
        """End every timed block due by `at_ms` (in `until` order), then move the clock."""
        decisions: list[Decision] = []
        expiries = self._expiries
        while expiries and expiries[0][0] <= at_ms:
            until, _, key = heapq.heappop(expiries)
            state = self.states.get(key)
            if state is not None and state.blocked_until_ms == until:
                decisions.extend(expire(state, key, until))
        if self.now_ms is None or at_ms > self.now_ms:
            self.now_ms = at_ms
        return decisions

    def verdict(self, verdict: Verdict) -> tuple[Outcome, list[Decision]]:
        """Handle a verdict whose own time is its `scanned_at`."""
        at = verdict.scanned_at_ms
        if self._expiries and self._expiries[0][0] <= at:
            decisions = self.advance(at)
        else:  # the common case, inlined: nothing falls due, only the clock moves
            decisions = []
            if self.now_ms is None or at > self.now_ms:
                self.now_ms = at
        if not verdict.qualifies:  # clean mail: counted by the caller, no state touched
            return _NOT_QUALIFYING, decisions
        assert self.now_ms is not None
        state = self.states.get(verdict.key)
        if state is None:
            state = MailboxState()
            outcome, more = step_verdict(self.config, state, verdict, self.now_ms, self.lookups)
            if outcome is not _LATE:  # a late verdict leaves the fresh state as it was
                self._add(verdict.key, state)
        else:
            outcome, more = step_verdict(self.config, state, verdict, self.now_ms, self.lookups)
        for decision in more:
            if isinstance(decision, Block) and decision.until_ms is not None:
                self._pushed += 1
                heapq.heappush(self._expiries, (decision.until_ms, self._pushed, decision.key))
        if decisions:
            decisions.extend(more)
            return outcome, decisions
        return outcome, more

    def directory(self, entry: DirectoryEntry) -> list[Decision]:
        """The owner and devices from `entry.at_ms` on; an older entry never replaces a newer."""
        decisions = self.advance(entry.at_ms)
        self.lookups.put_directory(entry)
        return decisions

    def settings(self, settings: TenantSettings) -> list[Decision]:
        """The tenant's setting from `settings.at_ms` on; older ones never replace newer."""
        decisions = self.advance(settings.at_ms)
        self.lookups.put_settings(settings)
        return decisions

    def release(self, request: Release) -> tuple[list[Decision], ReleaseRefused | None]:
        decisions = self.advance(request.at_ms)
        assert self.now_ms is not None
        state = self.states.get(request.key)
        if state is None:
            state = MailboxState()  # refused below; not stored
        more, refused = release(state, request, self.now_ms)
        return decisions + more, refused

    def tick(self, at_ms: int) -> list[Decision]:
        return self.advance(at_ms)

    def apply(
        self, event: Verdict | DirectoryEntry | TenantSettings | Release | Tick
    ) -> tuple[list[Decision], ReleaseRefused | None]:
        """Any input, dispatched to its handler: the decisions, and a refusal if any."""
        if isinstance(event, Verdict):
            return self.verdict(event)[1], None
        if isinstance(event, DirectoryEntry):
            return self.directory(event), None
        if isinstance(event, TenantSettings):
            return self.settings(event), None
        if isinstance(event, Release):
            return self.release(event)
        return self.tick(event.at_ms), None

    def forget(self) -> int:
        """Rule 6: drop every mailbox state `forgettable` allows at `now_ms`; how many.

        Decisions never depend on it (that is the rule), only memory does.
        """
        now = self.now_ms
        gone = []
        if now is not None:
            config = self.config
            gone = [key for key, state in self.states.items() if forgettable(config, state, now)]
            for key in gone:
                del self.states[key]
        self._added_since_forget = 0
        self._forget_after = max(_FORGET_BATCH, len(self.states))
        return len(gone)

    def _add(self, key: MailboxKey, state: MailboxState) -> None:
        self._added_since_forget += 1
        if self._added_since_forget >= self._forget_after:
            self.forget()
        self.states[key] = state
