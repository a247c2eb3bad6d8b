"""The lockout state machine: one mailbox, one event, the decisions it requires.

Theory of operation (docs/policy.md is the specification; rule numbers refer to it):

    verdict ──► qualifies? ──no──► NOT_QUALIFYING (no state touched)
                   │ yes
                   ▼
      clamp a skewed clock (7) ──► late? (1) ──► blocked? (3) ──► before reset? (4, 10)
         ──► drop entries that can never matter (6) ──► duplicate? (2) ──► count it
                                                   ──► threshold reached? (5)
                                                          │ yes
                       allowlisted? (12) ──yes──► alert, clear window, no offense
                                 │ no
                                 ▼
              BLOCK (8) ─► scan requests (11.2) ─► alert (11.3) ─► report (11.4)

    timed block with until <= now ──► UNBLOCK at until, reason expired (9)
    support release of a permanent block ──► UNBLOCK at now, offenses reset (10)
    quiet long enough (6) ──► `forgettable`: the caller may drop the state

Every function here mutates the `MailboxState` it is given and returns decisions
for the caller to send, in order. None reads a clock: `now_ms` is passed in.
Callers expire due blocks (`expire`) before handling anything else at `now_ms`;
`step_verdict` and `release` do it themselves, so a caller cannot forget.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from processor.policy.config import PolicyConfig
from processor.policy.decisions import (
    Alert,
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
from processor.policy.events import DirectoryEntry, MailboxKey, Release, Verdict
from processor.policy.state import MailboxState

#: Rule 7: a verdict stamped further than this ahead of `now` is treated as `now`.
MAX_CLOCK_SKEW_MS = 5 * 60_000


class Outcome(enum.Enum):
    """What became of one verdict; the worker counts these in metrics."""

    NOT_QUALIFYING = "not_qualifying"
    LATE = "late"
    WHILE_BLOCKED = "while_blocked"
    BEFORE_RESET = "before_reset"
    DUPLICATE = "duplicate"
    COUNTED = "counted"
    #: Counted and reached the threshold: a block, or an allowlist alert.
    TRIGGERED = "triggered"


class PolicyContext(Protocol):
    """What the policy looks up at the moment it blocks (directory and settings)."""

    def owner_of(self, key: MailboxKey) -> DirectoryEntry | None:
        """The mailbox's owner and devices as known now, or None if unknown."""
        ...

    def synchronized_security(self, tenant_id: str) -> bool | None:
        """The tenant's setting, or None when it has no settings record."""
        ...


@dataclass(frozen=True, slots=True)
class ReleaseRefused:
    """A support release that the policy refused, and why (rule 10)."""

    reason: str
    report: Report


def expire(state: MailboxState, key: MailboxKey, now_ms: int) -> list[Decision]:
    """Rule 9: end a timed block whose `until <= now_ms`, stamped at its `until`.

    Afterwards only verdicts with `scanned_at >= until` count.
    """
    until = state.blocked_until_ms
    if until is None or until > now_ms:
        return []
    state.blocked_until_ms = None
    state.blocked_at_ms = None
    state.counts_from_ms = until
    return _unblock(state, key, until, "expired")


def step_verdict(
    config: PolicyConfig,
    state: MailboxState,
    verdict: Verdict,
    now_ms: int,
    context: PolicyContext,
) -> tuple[Outcome, list[Decision]]:
    """Handle one verdict for the mailbox `verdict.key` at `now_ms`.

    Returns how the verdict was classified and the decisions to send: an UNBLOCK
    if a block fell due, and on trigger the BLOCK with its scans, alert and report.
    """
    if not verdict.qualifies:
        return Outcome.NOT_QUALIFYING, []
    key = verdict.key
    decisions = expire(state, key, now_ms)
    at = verdict.scanned_at_ms
    if at > now_ms + MAX_CLOCK_SKEW_MS:
        at = now_ms
    window_ms = config.window_ms
    high_water = state.high_water_ms
    if at < now_ms - config.max_lateness_ms or (
        high_water is not None and at <= high_water - window_ms
    ):
        return Outcome.LATE, decisions
    if high_water is None or at > high_water:
        state.high_water_ms = high_water = at
    if state.blocked:
        return Outcome.WHILE_BLOCKED, decisions
    if state.counts_from_ms is not None and at < state.counts_from_ms:
        return Outcome.BEFORE_RESET, decisions
    window = state.window
    window.drop_older_than(_first_useful(config, high_water, now_ms))
    if verdict.message_id in window:
        return Outcome.DUPLICATE, decisions
    window.add(at, verdict.message_id)
    evidence = window.trigger(at, config.window_ms, config.threshold)
    if evidence is None:
        return Outcome.COUNTED, decisions
    window.clear()
    if config.is_allowlisted(key):
        decisions.append(_allowlisted(state, key, now_ms, evidence, context))
    else:
        decisions.extend(_block(config, state, key, now_ms, evidence, context))
    return Outcome.TRIGGERED, decisions


def _first_useful(config: PolicyConfig, high_water_ms: int, now_ms: int) -> int:
    """Rule 6: the earliest `scanned_at` a window entry can have and still matter.

    An entry at `a` can share an interval `(x - window, x]` only with a verdict scanned
    before `a + window`. Every verdict still to come is scanned after `H - window`
    (rule 1), so entries at or before `H - 2 * window` can never matter; rule 6's
    cut is "older than `H - 2 * window`", and the one entry exactly there is kept
    too. Every verdict still to come is also scanned at or after `now - max_lateness`
    (rule 1), so entries with `a + window <= now - max_lateness` can never matter
    either. Dropping both before the duplicate check makes the window state one
    function of `H` and `now` — which is what lets `forgettable` forget a mailbox
    without changing any decision.
    """
    return max(
        high_water_ms - 2 * config.window_ms,
        now_ms - config.max_lateness_ms - config.window_ms + 1,
    )


def forgettable(config: PolicyConfig, state: MailboxState, now_ms: int) -> bool:
    """Rule 6: whether the mailbox's state may be forgotten at `now_ms`, so memory stays
    bounded, without changing any decision. The one test the engine and the worker use.

    True when the mailbox has no offense and no block, and `H + window` and its last
    unblock or release are both before `now_ms - max_lateness`: every verdict that
    could still join its window is late by rule 1, and `_first_useful` has dropped (or
    will drop) every entry, so a fresh state decides exactly as this one would.
    Additionally (rule 13), a mailbox that was ever blocked or allowlisted is never
    forgotten: its block sequence and allowlist count keep decision ids unique, even
    after a release has reset its offenses.
    """
    horizon = now_ms - config.max_lateness_ms
    high_water, counts_from = state.high_water_ms, state.counts_from_ms
    return (
        state.offenses == 0
        and state.sequence == 0
        and state.allowlist_hits == 0
        and not state.blocked
        and (high_water is None or high_water + config.window_ms < horizon)
        and (counts_from is None or counts_from < horizon)
    )


def release(
    state: MailboxState, request: Release, now_ms: int
) -> tuple[list[Decision], ReleaseRefused | None]:
    """Rule 10: a support release ends a permanent block, and nothing else.

    On success: UNBLOCK at `now_ms` carrying the ended block's offense, a
    `released` report with the actor and reason, offenses reset to 0, and only
    verdicts with `scanned_at >= now_ms` count afterwards. Otherwise the release
    is refused: the reason, and a `release_refused` report for the audit trail.
    A release requested before the permanent block in force started is refused too
    (docs/policy.md, "Choices"): it was meant for an earlier block, so a request
    replayed or delayed can never lift a later one.
    """
    key = request.key
    decisions = expire(state, key, now_ms)
    started = state.blocked_at_ms
    if not state.permanent or (started is not None and request.at_ms < started):
        if state.permanent:
            reason = (
                f"{key.mailbox} was blocked permanently after this release was requested; "
                "a release is for the block in force when it is asked for"
            )
        elif state.blocked_until_ms is not None:
            reason = (
                f"{key.mailbox} has a timed block (offense {state.offenses}) that ends by "
                "itself at its end time and cannot be shortened; only permanent blocks "
                "can be released"
            )
        else:
            reason = f"{key.mailbox} is not blocked; only permanent blocks can be released"
        report = Report(
            key=key,
            at_ms=now_ms,
            event="release_refused",
            offense=state.offenses or None,
            until_ms=state.blocked_until_ms,
            report_id=refusal_report_id(state, request),
            actor=request.actor,
            reason=reason,
        )
        return decisions, ReleaseRefused(reason, report)
    state.permanent = False
    state.blocked_at_ms = None
    state.counts_from_ms = now_ms
    decisions.extend(_unblock(state, key, now_ms, "released", request.actor, request.reason))
    state.offenses = 0
    return decisions, None


def refusal_report_id(state: MailboxState, request: Release) -> str:
    """The id of the `release_refused` report if `request` is refused against `state`.

    It depends only on the mailbox, its block sequence, the request's own time and
    its action id when it has one (two refused attempts in the same millisecond are
    two audit records), so whoever publishes a release can know the refusal's id
    before the policy decides.
    """
    action = f"release_refused@{request.at_ms}"
    if request.action_id:
        action = f"{action}#{request.action_id}"
    return decision_id(request.key, state.sequence, action)


def _block(
    config: PolicyConfig,
    state: MailboxState,
    key: MailboxKey,
    now_ms: int,
    evidence: tuple[Evidence, ...],
    context: PolicyContext,
) -> list[Decision]:
    """Rules 8 and 11: the BLOCK, then scans, alert and report, in that order."""
    state.offenses += 1
    state.sequence += 1
    offense, sequence = state.offenses, state.sequence
    duration = config.block_duration_ms(offense)
    until = None if duration is None else now_ms + duration
    state.blocked_at_ms = now_ms
    state.blocked_until_ms = until
    state.permanent = until is None
    decisions: list[Decision] = [
        Block(
            key=key,
            at_ms=now_ms,
            offense=offense,
            permanent=until is None,
            until_ms=until,
            sequence=sequence,
            command_id=decision_id(key, sequence, "block"),
            evidence=evidence,
        )
    ]
    owner = context.owner_of(key)
    devices = owner.devices if owner is not None else ()
    setting = context.synchronized_security(key.tenant_id)
    scans = (
        owner is not None
        and bool(devices)
        and (config.default_synchronized_security if setting is None else setting)
    )
    if scans and owner is not None:
        decisions.extend(
            ScanRequest(
                key=key,
                owner_id=owner.owner_id,
                device_id=device,
                at_ms=now_ms,
                sequence=sequence,
                request_id=decision_id(key, sequence, f"scan:{device}"),
            )
            for device in devices
        )
    decisions.append(
        Alert(
            key=key,
            at_ms=now_ms,
            kind="blocked",
            offense=offense,
            permanent=until is None,
            until_ms=until,
            owner_id=owner.owner_id if owner is not None else None,
            devices=devices,
            scans_requested=scans,
            evidence=evidence,
            alert_id=decision_id(key, sequence, "alert"),
        )
    )
    event: ReportEvent = "permanently_blocked" if until is None else "blocked"
    decisions.append(
        Report(
            key=key,
            at_ms=now_ms,
            event=event,
            offense=offense,
            until_ms=until,
            report_id=decision_id(key, sequence, f"report:{event}"),
        )
    )
    return decisions


def _unblock(
    state: MailboxState,
    key: MailboxKey,
    at_ms: int,
    reason: UnblockReason,
    actor: str | None = None,
    note: str | None = None,
) -> list[Decision]:
    """The UNBLOCK (carrying the ended block's offense) and its report."""
    sequence = state.sequence
    event: ReportEvent = "released" if reason == "released" else "unblocked"
    return [
        Unblock(
            key=key,
            at_ms=at_ms,
            offense=state.offenses,
            reason=reason,
            sequence=sequence,
            command_id=decision_id(key, sequence, "unblock"),
            actor=actor,
            note=note,
        ),
        Report(
            key=key,
            at_ms=at_ms,
            event=event,
            offense=state.offenses,
            until_ms=None,
            report_id=decision_id(key, sequence, f"report:{event}"),
            actor=actor,
            reason=note,
        ),
    ]


def _allowlisted(
    state: MailboxState,
    key: MailboxKey,
    now_ms: int,
    evidence: tuple[Evidence, ...],
    context: PolicyContext,
) -> Alert:
    """Rule 12: say the mailbox would have been blocked; no offense is counted."""
    state.allowlist_hits += 1
    owner = context.owner_of(key)
    return Alert(
        key=key,
        at_ms=now_ms,
        kind="allowlisted",
        offense=None,
        permanent=False,
        until_ms=None,
        owner_id=owner.owner_id if owner is not None else None,
        devices=owner.devices if owner is not None else (),
        scans_requested=False,
        evidence=evidence,
        alert_id=decision_id(key, state.allowlist_hits, "allowlisted"),
    )
