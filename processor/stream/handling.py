"""One internal event applied to one mailbox's state: the live worker's policy step.

Pure (no Kafka, no Faust, no clock): the agent loads the state, calls `handle`,
sends `Step.decisions` in order, then stores `Step.state` (None: delete it). All
rules live in `processor.policy.machine`; this only chooses which core function an
event goes to and whether the state is worth storing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from processor.policy import (
    Decision,
    MailboxState,
    Outcome,
    PolicyConfig,
    PolicyContext,
    Release,
    ReleaseRefused,
    Verdict,
    expire,
    forgettable,
    release,
    step_verdict,
)
from processor.stream.events import ExpiryTick, MailboxEvent, SweepTick

#: What the agent does with the table after a step.
KEEP, STORE, DELETE = "keep", "store", "delete"
#: The record of a mailbox never seen: a step that leaves it so stores nothing.
_FRESH = MailboxState().to_record()


@dataclass(slots=True)
class Step:
    decisions: list[Decision] = field(default_factory=list)
    outcome: Outcome | None = None  # verdicts only
    refused: ReleaseRefused | None = None
    #: scanned_at of the verdict that caused the step (block latency metric).
    triggered_at_ms: int | None = None
    #: KEEP (unchanged), STORE (`record`), or DELETE.
    action: str = KEEP
    record: dict[str, Any] | None = None


def handle(
    config: PolicyConfig,
    stored: dict[str, Any] | None,
    event: MailboxEvent,
    now_ms: int,
    context: PolicyContext,
) -> Step:
    """Apply `event` at `now_ms` to the state `stored` (a `MailboxState.to_record()`).

    A refused release's `release_refused` report is appended to the decisions, so
    it is sent like any other output. The state is stored only when it changed, so
    a mailbox never seen before is not created by a release, a tick or a late
    verdict. A sweep tick deletes the state when rule 6 allows (`forgettable`).
    """
    state = MailboxState.from_record(stored) if stored is not None else MailboxState()
    step = Step()
    if isinstance(event, Verdict):
        step.outcome, step.decisions = step_verdict(config, state, event, now_ms, context)
        step.triggered_at_ms = event.scanned_at_ms
    elif isinstance(event, Release):
        step.decisions, step.refused = release(state, event, now_ms)
        if step.refused is not None:
            step.decisions.append(step.refused.report)
    elif isinstance(event, ExpiryTick):
        step.decisions = expire(state, event.key, now_ms)
    elif isinstance(event, SweepTick):
        step.decisions = expire(state, event.key, now_ms)
        if stored is not None and forgettable(config, state, now_ms):
            step.action = DELETE
            return step
    record = state.to_record()
    if record != (stored if stored is not None else _FRESH):
        step.action, step.record = STORE, record
    return step
