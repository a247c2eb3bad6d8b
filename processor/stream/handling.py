"""One mailbox's events of one pack applied to its stored value: the agent's policy step.

Pure (no Kafka, no Faust, no clock): the agent groups a pack's events by mailbox,
loads each mailbox's stored value once, calls `handle`, sends every step's
decisions, and only then stores `Step.value` (or deletes it). All rules live in
`processor.policy.machine`; this chooses which core function an event goes to,
which events the stored value already includes, and whether a value is worth
storing.

A stored value is `{"key": ..., "state": MailboxState.to_record(), "pos": [offset,
index], "clock": ms}`: `pos` is the position (internal-topic offset, index in its
pack) of the last event applied, so an event at or before it is a replay and is
skipped; `clock` is the latest `now` the mailbox was stepped at, so a pack stamped
by a writer whose clock is behind never moves the mailbox's time backwards.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from processor.policy import (
    Decision,
    MailboxState,
    Outcome,
    PolicyConfig,
    PolicyContext,
    Release,
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

#: (offset of the internal record, index of the event in its pack).
Position = tuple[int, int]
NOWHERE: Position = (-1, -1)


@dataclass(slots=True)
class Step:
    """What one mailbox's events of one pack did."""

    #: Per event that decided something: its decisions, in order, and the
    #: scanned_at of the verdict behind them (None for ticks and releases).
    sent: list[tuple[list[Decision], int | None]] = field(default_factory=list)
    #: How every verdict applied was classified (the ignored ones are counted).
    outcomes: list[Outcome] = field(default_factory=list)
    #: Events the stored value already included (replays), skipped.
    skipped: int = 0
    #: KEEP (unchanged), STORE (`value`), or DELETE.
    action: str = KEEP
    value: dict[str, Any] | None = None

    @property
    def decisions(self) -> list[Decision]:
        return [decision for decisions, _ in self.sent for decision in decisions]


def stored_position(stored: dict[str, Any] | None) -> Position:
    """The position of the last event the stored value includes."""
    if stored is None:
        return NOWHERE
    pos = stored.get("pos")
    if pos is not None:
        return (int(pos[0]), int(pos[1]))
    # Written before packs: the offset of the one-event record that wrote it.
    return (int(stored.get("offset", -1)), 0)


#: One event of a mailbox: where it is, the `at` of its pack, the event.
Item = tuple[Position, int, MailboxEvent]


def handle(
    config: PolicyConfig,
    stored: dict[str, Any] | None,
    events: Sequence[Item],
    context: PolicyContext,
) -> Step:
    """Apply the mailbox's `events` (in position order) that `stored` does not include.

    Each event is stepped at its pack's `at`, or at the mailbox's clock (the stored
    one, then the latest `now` used here) if that is later. A refused release's
    `release_refused` report is sent like any other decision. The state is stored
    only when it changed, so a mailbox never seen before is not created by a
    release, a tick or a late verdict; a sweep tick deletes the state when rule 6
    allows (`forgettable`). Raises ValueError when the stored state has an unknown
    version.
    """
    step = Step()
    done = stored_position(stored)
    todo = [item for item in events if item[0] > done]
    step.skipped = len(events) - len(todo)
    if not todo:
        return _store_again(step, stored)
    record = None if stored is None else stored["state"]
    clock = None if stored is None else stored.get("clock")
    now = -1 if clock is None else int(clock)
    state = MailboxState.from_record(record) if record is not None else MailboxState()
    forgotten = False
    for _, at_ms, event in todo:
        if at_ms > now:
            now = at_ms
        decisions: list[Decision]
        triggered = None
        if isinstance(event, Verdict):
            outcome, decisions = step_verdict(config, state, event, now, context)
            step.outcomes.append(outcome)
            triggered = event.scanned_at_ms
        elif isinstance(event, Release):
            decisions, refused = release(state, event, now)
            if refused is not None:
                decisions.append(refused.report)
        elif isinstance(event, ExpiryTick):
            decisions = expire(state, event.key, now)
        elif isinstance(event, SweepTick):
            decisions = expire(state, event.key, now)
            if forgettable(config, state, now):
                state, forgotten = MailboxState(), True
        else:  # pragma: no cover - the union above is exhaustive
            raise TypeError(f"not an internal event: {event!r}")
        if decisions:
            step.sent.append((decisions, triggered))
    new_record = state.to_record()
    if new_record == _FRESH and (forgotten or record is None):
        # Never seen, or forgotten (and not seen again since): nothing to keep.
        step.action = DELETE if stored is not None else KEEP
        return step
    if new_record != record:
        step.action = STORE
        step.value = {"state": new_record, "pos": list(todo[-1][0]), "clock": now}
    return _store_again(step, stored)


def _store_again(step: Step, stored: dict[str, Any] | None) -> Step:
    """A replay that changes nothing stores the stored value again.

    A worker killed after writing a state to its local store but before the
    changelog had it restarts with the state in RocksDB and not in the changelog;
    the replay is then skipped against the local store, and without this write the
    changelog would lack the state for good once the pack's offset is committed
    (a wiped store or a rebalance would bring back the older state).
    """
    if step.skipped and step.action == KEEP and stored is not None:
        step.action = STORE
        step.value = {name: value for name, value in stored.items() if name != "key"}
    return step


def encode_stored(key: bytes, value: dict[str, Any]) -> bytes:
    """The state table's value for `key`: a step's value (`Step.value`) with the key's
    own bytes, as compact JSON (UTF-8, not escaped: a 4-byte character stays 4 bytes)."""
    return orjson.dumps({"key": key.decode(), **value})
