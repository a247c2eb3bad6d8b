"""Whether the edge stage is doing its job, measured from outside it.

Input lag: every `interval_s` a thread of the worker asks the broker how far the
edge's consumer group has committed each partition of its input topics
(`mail.verdicts`, `mailbox.support-actions`) and where each partition ends: lag =
high watermark - committed offset (the low watermark when nothing is committed yet).
Measured by the worker from the broker, never reported by the edge, so a dead or
stuck edge shows as lag that grows rather than as its last report standing still. It
is the group's lag: every worker of the group reports the same partitions (the alert
rules and the dashboard take the maximum per partition).

The worker's edge is *up* while its process is alive and its heartbeat (a report
every second, `EdgeSupervisor`) is recent. It is *stalled* when a partition it holds
has records waiting and its committed offset has not moved for `stall_after_s`
(30 s), counted from the later of its last progress and the moment this edge took
the partition over. A stage that keeps up commits every batch, well under a second
apart, and a slow one still commits; one that does not commit for 30 s while records
wait is not protecting anybody (a batch retried through a broker outage, a loop that
hangs). The worker is not ready while its edge is down or stalled, or while the input
lag could not be measured for `stall_after_s` (then nothing says the edge works).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from processor.ops.metrics import Metrics
from processor.stream.edge_process import EdgeSupervisor

log = logging.getLogger(__name__)

Where = tuple[str, int]


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """One input partition as last measured."""

    #: The group's committed offset, -1 when it has none.
    committed: int
    #: Records after the committed offset (or after the low watermark).
    lag: int
    #: Monotonic time of the last measurement that found the committed offset moved,
    #: or nothing waiting.
    progressed_at: float


def advance(
    previous: PartitionProgress | None, committed: int, low: int, high: int, now: float
) -> PartitionProgress:
    """The progress of a partition measured at `now`, given the last measurement."""
    lag = max(0, high - (committed if committed >= 0 else low))
    if previous is None or lag == 0 or committed != previous.committed:
        return PartitionProgress(committed, lag, now)
    return PartitionProgress(committed, lag, previous.progressed_at)


class InputLagMonitor:
    """Measures the edge group's input lag from the broker, in a thread of its own."""

    def __init__(
        self,
        client_config: dict[str, Any],
        group_id: str,
        topics: Iterable[str],
        *,
        interval_s: float = 2.0,
        request_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        admin: Any = None,
    ) -> None:
        """`admin` is a confluent-kafka AdminClient (made from `client_config` when None)."""
        if admin is None:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient(client_config)
        self._admin = admin
        self.group_id = group_id
        self.topics = tuple(topics)
        self.interval_s = interval_s
        self.request_timeout_s = request_timeout_s
        self._clock = clock
        #: Replaced whole by each measurement (readers on other threads see one or the other).
        self.progress: dict[Where, PartitionProgress] = {}
        self.started_at = clock()
        self.measured_at: float | None = None
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def measure(self) -> None:
        """Measure every input partition once (blocking). Raises on a broker error."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        timeout = self.request_timeout_s
        metadata = self._admin.list_topics(timeout=timeout)
        partitions = [
            TopicPartition(topic, partition)
            for topic in self.topics
            if (found := metadata.topics.get(topic)) is not None and found.error is None
            for partition in found.partitions
        ]
        request = [ConsumerGroupTopicPartitions(self.group_id, partitions)]
        group = self._admin.list_consumer_group_offsets(request, request_timeout=timeout)
        committed = {
            (tp.topic, tp.partition): tp.offset
            for tp in group[self.group_id].result(timeout=timeout).topic_partitions
        }
        ends: dict[Where, list[int]] = {}
        specs = ((OffsetSpec.earliest(), 0), (OffsetSpec.latest(), 1))  # type: ignore[no-untyped-call]
        for spec, slot in specs:
            futures = self._admin.list_offsets(
                {tp: spec for tp in partitions}, request_timeout=timeout
            )
            for tp, future in futures.items():
                ends.setdefault((tp.topic, tp.partition), [0, 0])[slot] = future.result(
                    timeout=timeout
                ).offset
        now = self._clock()
        previous = self.progress
        self.progress = {
            key: advance(previous.get(key), committed.get(key, -1), low, high, now)
            for key, (low, high) in ends.items()
        }
        self.measured_at = now
        self.error = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sendguard-input-lag", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.request_timeout_s + 5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.measure()
            except Exception as error:  # the broker may be down: keep measuring
                if self.error is None:
                    log.warning("input lag of %s not measured: %s", self.group_id, error)
                self.error = str(error) or type(error).__name__
            self._stop.wait(self.interval_s)


class EdgeHealth:
    """The edge's status, its metrics, and whether it makes the worker not ready.

    `update` is called every second by the worker's timer: it polls the supervisor
    (restarting a dead edge when its backoff is over), updates the metrics, and sets
    `problem`: None when the edge is up and not stalled, else why not.
    """

    def __init__(
        self,
        supervisor: EdgeSupervisor,
        monitor: InputLagMonitor,
        metrics: Metrics,
        *,
        stall_after_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.supervisor = supervisor
        self.monitor = monitor
        self.metrics = metrics
        self.stall_after_s = stall_after_s
        self._clock = clock
        self._held_since: dict[Where, float] = {}
        self._restarts_counted = 0
        self.problem: str | None = "edge stage not started"

    def update(self) -> None:
        self.supervisor.poll()
        status = self.supervisor.status()
        now = self._clock()
        for tp in status.assignment:
            self._held_since.setdefault(tp, now)
        for tp in set(self._held_since) - status.assignment:
            del self._held_since[tp]
        progress = self.monitor.progress
        stalled = self.stalled(progress, now)
        metrics = self.metrics
        metrics.set_edge_up(status.up)
        metrics.edge_restarted(status.restarts - self._restarts_counted)
        self._restarts_counted = status.restarts
        metrics.set_edge_stalled(bool(stalled))
        for (topic, partition), measured in progress.items():
            metrics.set_input_lag(topic, partition, measured.lag)
        if not status.up:
            self.problem = status.problem
        elif stalled:
            self.problem = "edge stage stalled: " + "; ".join(stalled)
        else:
            self.problem = self._unmeasured(now)

    def stalled(self, progress: dict[Where, PartitionProgress], now: float) -> list[str]:
        """The partitions this edge holds with records waiting and no commit for
        `stall_after_s`, described."""
        found = []
        for tp, since in sorted(self._held_since.items()):
            measured = progress.get(tp)
            if measured is None or measured.lag == 0:
                continue
            idle = now - max(measured.progressed_at, since)
            if idle >= self.stall_after_s:
                found.append(
                    f"{tp[0]}[{tp[1]}] has {measured.lag} record(s) waiting and no commit "
                    f"for {idle:.0f}s"
                )
        return found

    def _unmeasured(self, now: float) -> str | None:
        monitor = self.monitor
        last = monitor.measured_at if monitor.measured_at is not None else monitor.started_at
        if now - last < self.stall_after_s:
            return None
        return f"input lag not measured for {now - last:.0f}s ({monitor.error or 'no answer'})"
