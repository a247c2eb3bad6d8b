"""What the agent, the timers and the views share in one worker process.

The helpers here are the worker's few side effects, each named for its place in
the crash-safe order the agent follows for every pack: step each mailbox once,
send and await all the decisions, then store the states, then count. No policy
arithmetic happens here (see `processor.stream.handling`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from processor.ops.metrics import Metrics
from processor.policy import Decision, MailboxKey, Outcome, PolicyConfig
from processor.stream import faults
from processor.stream.delivery import Delivery, Undeliverable
from processor.stream.edge import EdgeCounts
from processor.stream.events import KeyCache, Pack, partition_for
from processor.stream.expiry import ExpiryIndex
from processor.stream.handling import DELETE, KEEP, STORE, Item, Step, encode_stored, handle
from processor.stream.lookups import Lookups
from processor.stream.outputs import Outputs
from processor.stream.tables import PartitionScope
from processor.stream.topics import TopicNames

log = logging.getLogger(__name__)

_IGNORED = {
    Outcome.LATE: "late",
    Outcome.DUPLICATE: "duplicate",
    Outcome.WHILE_BLOCKED: "while_blocked",
    Outcome.BEFORE_RESET: "before_reset",
}


def wall_ms() -> int:
    """The live clock (docs/policy.md: live `now` is wall-clock time)."""
    return int(time.time() * 1000)


@dataclass(frozen=True, slots=True)
class Record:
    """One record of the internal topic, decoded: where it is, and its pack."""

    #: The Faust event it came in (table reads and writes name its partition).
    event: Any
    partition: int
    offset: int
    pack: Pack


@dataclass(slots=True)
class MailboxStep:
    """One mailbox's part of a batch: its key bytes, partition, events and step."""

    key: bytes
    partition: int
    #: The first record of the batch holding one of its events.
    record: Record
    items: list[Item] = field(default_factory=list)
    step: Step = field(default_factory=Step)


@dataclass
class Runtime:
    app: Any  # faust.App
    #: faust.Table of JSON bytes (`tables.py`); any mutable mapping in unit tests.
    table: Any
    policy: PolicyConfig
    names: TopicNames
    partitions: int
    outputs: Outputs
    lookups: Lookups
    metrics: Metrics
    delivery: Delivery | None = None
    index: ExpiryIndex = field(default_factory=ExpiryIndex)
    #: Last internal-topic offset processed per partition (for the lag gauge).
    processed: dict[int, int] = field(default_factory=dict)
    #: Called with every batch's decisions once they are delivered (logs, status page).
    on_decisions: list[Callable[[list[Decision]], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._keys = KeyCache(self.partitions)

    def partition_of(self, key: bytes) -> int:
        """The internal-topic partition of a mailbox's key bytes."""
        return partition_for(key, self.partitions)

    # -- the agent's step, a batch of packs at a time ------------------------------------

    async def apply(self, batch: Sequence[Record]) -> None:
        """Everything a batch of internal records causes, in the crash-safe order.

        1. each mailbox in the batch is stepped once over its events, in order
           (`handle`), skipping those its stored value already includes;
        2. the decisions of the whole batch are sent and awaited (`publish`);
        3. only then are the mailboxes' new values written to the table.
        A crash before 3 replays the records: the same events at the same `at`
        against the same stored values give the same decisions, times included.
        """
        steps = self.step(batch)
        decisions = [d for mailbox in steps for d in mailbox.step.decisions]
        sent = [group for mailbox in steps for group in mailbox.step.sent]
        await self.publish(decisions, wall_ms(), sent)
        changed = [mailbox for mailbox in steps if mailbox.step.action != KEEP]
        if decisions:
            faults.point("after_send")
        scope = PartitionScope()
        try:
            for n, mailbox in enumerate(changed):
                if decisions and n and n == len(changed) // 2:
                    faults.point("mid_store")
                scope.enter(mailbox.record.event)
                self.store(mailbox.partition, mailbox.key, mailbox.step)
        finally:
            scope.close()
        for record in batch:
            self.processed[record.partition] = max(
                record.offset, self.processed.get(record.partition, -1)
            )
        for mailbox in steps:
            self.count_outcomes(mailbox.step)

    def step(self, batch: Sequence[Record]) -> list[MailboxStep]:
        """Each mailbox of the batch stepped over its events, in order of first appearance.

        A mailbox's events are all on its partition, whose records come in offset
        order; its stored value is read while its first record is the current one
        (`PartitionScope`), and is stored the same way.
        """
        groups: dict[MailboxKey, MailboxStep] = {}
        for record in batch:
            offset, at = record.offset, record.pack.at_ms
            for index, event in enumerate(record.pack.events):
                mailbox = groups.get(event.key)
                if mailbox is None:
                    key, partition = self._keys(event.key)
                    mailbox = groups[event.key] = MailboxStep(key, partition, record)
                mailbox.items.append(((offset, index), at, event))
        steps = []
        scope = PartitionScope()
        try:
            for mailbox in groups.values():
                if self._step_one(mailbox, scope):
                    steps.append(mailbox)
        finally:
            scope.close()
        return steps

    def _step_one(self, mailbox: MailboxStep, scope: PartitionScope) -> bool:
        """Step one mailbox (`handle`); False if its events are on the wrong partition."""
        if mailbox.partition != mailbox.record.partition:
            # Its state belongs to another partition (a writer with another
            # partition count): storing it here would split the mailbox in two.
            log.error(
                "skipping %d event(s) of a mailbox of partition %d found on partition %d",
                len(mailbox.items),
                mailbox.partition,
                mailbox.record.partition,
            )
            return False
        scope.enter(mailbox.record.event)
        stored = self.table.get(mailbox.key)
        try:
            value = None if stored is None else orjson.loads(stored)
            mailbox.step = handle(self.policy, value, mailbox.items, self.lookups)
        except (ValueError, TypeError, KeyError):
            # A stored value this version cannot read (corrupt, or from a newer worker):
            # failing the batch would fail every other mailbox in it, for ever.
            log.exception(
                "skipping %d event(s) of a mailbox whose stored value cannot be read: %r",
                len(mailbox.items),
                (stored or b"")[:200],
            )
            return False
        if mailbox.step.skipped:
            self.metrics.replayed(mailbox.step.skipped)
        return True

    def store(self, partition: int, key: bytes, step: Step) -> None:
        """Write the step's value to the table (after the decisions were delivered) and
        keep the expiry index in step.

        The value carries its own key bytes (keys read back from the store by
        iteration come out re-serialised, and the index needs the exact bytes).
        """
        if step.action == STORE:
            assert step.value is not None
            self.table[key] = encode_stored(key, step.value)
            self.index.update(partition, key, step.value["state"])
        elif step.action == DELETE:
            del self.table[key]
            self.index.update(partition, key, None)

    def load(self, key: bytes) -> dict[str, Any] | None:
        """The stored `MailboxState.to_record()` of the mailbox with this key, if any."""
        stored = self.table.get(key)
        return None if stored is None else orjson.loads(stored)["state"]

    # -- sending ---------------------------------------------------------------------------

    async def send(self, decisions: list[Decision]) -> None:
        """Send the decisions and return once the broker has each of them, or has
        refused one for good (`processor.stream.delivery`).

        Commands first and awaited on their own (rule 11 orders a BLOCK before its
        scans, alert and report), then everything else together. A refused record
        is logged and counted; the caller goes on (its state is stored).
        """
        if not decisions:
            return
        commands, rest = self.outputs.split_commands(decisions)
        for batch in (commands, rest):
            if not batch:
                continue
            if self.delivery is None:
                raise RuntimeError("this runtime has no Delivery to send with")
            for failed in await self.delivery.deliver(batch):
                self._undeliverable(failed)

    def _undeliverable(self, failed: Undeliverable) -> None:
        record = failed.record
        topic = record.topic.removeprefix(self.names.prefix)
        self.metrics.undeliverable(topic, failed.reason)
        log.error(
            "decision record refused for good by Kafka, not sent: topic %s, %d key bytes, "
            "%d value bytes: %s",
            record.topic,
            len(record.key),
            len(record.value),
            failed.detail,
        )

    async def publish(
        self,
        decisions: list[Decision],
        now_ms: int,
        sent: list[tuple[list[Decision], int | None]] | None = None,
    ) -> None:
        """Send the decisions (`send`), then count them and hand them to the observers.

        The one way anything in the worker emits decisions: the agent's packs and the
        API's refused releases alike are sent, counted, logged and shown the same way.
        `sent` groups the decisions by the verdict behind them (block latency).
        """
        await self.send(decisions)
        if decisions:
            for group, triggered_at in sent if sent is not None else [(decisions, None)]:
                self.metrics.decisions(group, now_ms, triggered_at)
            for observer in self.on_decisions:
                observer(decisions)

    def count_outcomes(self, step: Step) -> None:
        """Count the verdicts the policy ignored (late, duplicate, ...)."""
        for outcome in step.outcomes:
            reason = _IGNORED.get(outcome)
            if reason is not None:
                self.metrics.ignored(reason)

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
        values = [
            orjson.loads(stored) for stored in list(self.table.values()) if stored is not None
        ]
        return [(value["key"].encode(), value["state"]) for value in values]

    def rebuild_index(self) -> None:
        """After recovery or a rebalance: the index from the table's local items."""
        self.index.clear()
        for key, record in self.stored_states():
            self.index.update(self.partition_of(key), key, record)
        self.index.retain(self.assigned_partitions())

    def assigned_partitions(self) -> set[int]:
        topic = self.names.mailbox_events
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}
