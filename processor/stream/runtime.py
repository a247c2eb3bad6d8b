"""What the agent, the timers and the views share in one worker process.

The helpers here are the worker's few side effects, each named for its place in
the crash-safe order the agent follows: send and await the decisions, then store
the state, then count. No policy arithmetic happens here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka.partitioner import murmur2

from processor.ops.metrics import Metrics
from processor.policy import Decision, Outcome, PolicyConfig
from processor.stream.edge import EdgeCounts
from processor.stream.events import MailboxEvent
from processor.stream.expiry import ExpiryIndex
from processor.stream.handling import DELETE, STORE, Step, handle
from processor.stream.lookups import Lookups
from processor.stream.outputs import Outputs
from processor.stream.topics import TopicNames

_IGNORED = {
    Outcome.LATE: "late",
    Outcome.DUPLICATE: "duplicate",
    Outcome.WHILE_BLOCKED: "while_blocked",
    Outcome.BEFORE_RESET: "before_reset",
}


def wall_ms() -> int:
    """The live clock (docs/policy.md: live `now` is wall-clock time)."""
    return int(time.time() * 1000)


@dataclass
class Runtime:
    app: Any  # faust.App
    table: Any  # faust.Table
    policy: PolicyConfig
    names: TopicNames
    partitions: int
    outputs: Outputs
    lookups: Lookups
    metrics: Metrics
    index: ExpiryIndex = field(default_factory=ExpiryIndex)
    #: Last internal-topic offset processed per partition (for the lag gauge).
    processed: dict[int, int] = field(default_factory=dict)
    #: Called with every step's decisions once they are delivered (logs, status page).
    on_decisions: list[Callable[[list[Decision]], None]] = field(default_factory=list)

    def partition_of(self, key: bytes) -> int:
        """The internal-topic partition of a key, as the murmur2 partitioners place it."""
        return int(murmur2(key) & 0x7FFFFFFF) % self.partitions

    async def send(self, decisions: list[Decision]) -> None:
        """Send the decisions and return once the broker has them all.

        Commands first and awaited on their own (rule 11 orders the BLOCK first),
        then scans, alert and report together. Raises on a failed delivery, which
        crashes the agent before the state is stored: a replay redoes the step.
        """
        if not decisions:
            return
        commands, rest = self.outputs.split_commands(decisions)
        producer = self.app.producer
        for batch in (commands, rest):
            pending = [
                await producer.send(out.topic, out.key, out.value, None, None, None)
                for out in batch
            ]
            if pending:
                await asyncio.gather(*pending)

    def load(self, key: bytes) -> dict[str, Any] | None:
        """The stored `MailboxState.to_record()` of the mailbox with this key, if any."""
        stored = self.table.get(key)
        return None if stored is None else stored["state"]

    def step(
        self, key: bytes, partition: int, offset: int, event: MailboxEvent, now_ms: int
    ) -> Step | None:
        """The policy step for the internal event at `offset`, or None when the stored
        state already includes that event (a replay after a crash or a rebalance).

        A mailbox's events are handled one by one in offset order, and a state is
        stored only after its decisions were delivered, so a state written by the
        event at offset N includes every event of that mailbox up to N, with their
        decisions sent. Applying one of them again would use a later clock against a
        later state: a verdict ignored while a block was in force could count once
        the block's expiry is in the state. Skipping it keeps replays exact.
        """
        stored = self.table.get(key)
        if stored is not None and offset <= stored.get("offset", -1):
            self.metrics.replayed()
            self.processed[partition] = offset
            return None
        record = None if stored is None else stored["state"]
        return handle(self.policy, record, event, now_ms, self.lookups)

    def store(self, key: bytes, partition: int, offset: int, step: Step) -> None:
        """Write the step's state to the table (after `send`) and keep the index in step.

        The value carries its own key bytes (keys read back from the store by
        iteration come out re-serialised, and the index needs the exact bytes) and
        the offset of the event that wrote it (see `step`).
        """
        if step.action == STORE:
            self.table[key] = {"key": key.decode(), "state": step.record, "offset": offset}
            self.index.update(partition, key, step.record)
        elif step.action == DELETE:
            del self.table[key]
            self.index.update(partition, key, None)
        self.processed[partition] = offset

    async def publish(
        self, decisions: list[Decision], now_ms: int, triggered_at_ms: int | None = None
    ) -> None:
        """Send the decisions (`send`), then count them and hand them to the observers.

        The one way anything in the worker emits decisions: the agent's steps and the
        API's refused releases alike are sent, counted, logged and shown the same way.
        """
        await self.send(decisions)
        if decisions:
            self.metrics.decisions(decisions, now_ms, triggered_at_ms)
            for observer in self.on_decisions:
                observer(decisions)

    def count_outcome(self, step: Step) -> None:
        """Count a verdict the policy ignored (late, duplicate, ...)."""
        if step.outcome is not None and step.outcome in _IGNORED:
            self.metrics.ignored(_IGNORED[step.outcome])

    def add_edge_counts(self, counts: EdgeCounts) -> None:
        """Add one report of the edge process (per-second totals) to the metrics."""
        metrics = self.metrics
        for (direction, verdict), n in counts.verdicts.items():
            metrics.verdict(direction, verdict, n)
        if counts.qualifying:
            metrics.qualifying(counts.qualifying)
        for reason, n in counts.dead_letters.items():
            metrics.dead_letter(reason, n)
        for reason, n in counts.dead_letter_failures.items():
            metrics.dead_letter_failure(reason, n)
        metrics.edge_batch_retries(counts.batch_retries)

    def stored_states(self) -> list[tuple[bytes, dict[str, Any]]]:
        """(key bytes, state record) of every mailbox in the local store."""
        return [
            (value["key"].encode(), value["state"])
            for value in list(self.table.values())
            if value is not None
        ]

    def rebuild_index(self) -> None:
        """After recovery or a rebalance: the index from the table's local items."""
        self.index.clear()
        for key, record in self.stored_states():
            self.index.update(self.partition_of(key), key, record)
        self.index.retain(self.assigned_partitions())

    def assigned_partitions(self) -> set[int]:
        topic = self.names.mailbox_events
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
