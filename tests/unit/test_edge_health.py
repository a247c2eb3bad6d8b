"""The edge's health as the worker sees it: restarts with backoff, up only while
alive and reporting, input lag measured from the broker, and the stall rule."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from processor.ops.metrics import Metrics
from processor.stream.edge import EdgeConfig, EdgeCounts
from processor.stream.edge_health import EdgeHealth, InputLagMonitor, PartitionProgress, advance
from processor.stream.edge_process import EdgeSupervisor


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class FakeProcess:
    def __init__(self) -> None:
        self.alive = True
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        return self.alive

    def die(self) -> None:
        self.alive, self.exitcode = False, 1

    def terminate(self) -> None:
        self.die()

    def join(self, timeout: float) -> None:
        pass


class FakePipe:
    def __init__(self) -> None:
        self.queue: deque[EdgeCounts] = deque()

    def poll(self) -> bool:
        return bool(self.queue)

    def recv(self) -> EdgeCounts:
        return self.queue.popleft()

    def close(self) -> None:
        pass


class Supervisor(EdgeSupervisor):
    """Spawns fake processes, so restarts and heartbeats can be played out."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(EdgeConfig({}, "g", "v", "s", "i", "d"), self.collect, clock=clock)
        self.spawned: list[tuple[FakeProcess, FakePipe]] = []
        self.collected: list[EdgeCounts] = []

    def collect(self, counts: EdgeCounts) -> None:
        self.collected.append(counts)

    def _spawn(self) -> tuple[Any, Any]:
        self.spawned.append((FakeProcess(), FakePipe()))
        return self.spawned[-1]

    @property
    def process(self) -> FakeProcess:
        return self.spawned[-1][0]

    def heartbeat(self, *assignment: tuple[str, int]) -> None:
        self.spawned[-1][1].queue.append(EdgeCounts(assignment=assignment))


def test_the_edge_is_up_only_while_alive_and_reporting() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    supervisor.start()
    assert not supervisor.status().up
    assert "starting" in supervisor.status().problem
    supervisor.heartbeat(("v", 0))
    supervisor.poll()
    status = supervisor.status()
    assert status.up and status.assignment == {("v", 0)} and status.problem == ""
    clock.now += 11  # alive, but silent for longer than the heartbeat timeout
    assert not supervisor.status().up
    assert "silent" in supervisor.status().problem
    supervisor.heartbeat()
    supervisor.poll()
    assert supervisor.status().up


def test_a_dying_edge_is_restarted_with_exponential_backoff() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    supervisor.start()
    delays = []
    for _ in range(8):
        supervisor.process.die()
        supervisor.poll()
        died_at, spawned = clock.now, len(supervisor.spawned)
        status = supervisor.status()
        assert not status.up and "restart in" in status.problem
        while len(supervisor.spawned) == spawned:
            clock.now += 0.5
            supervisor.poll()
        delays.append(clock.now - died_at)
    assert delays == [1, 2, 4, 8, 16, 32, 60, 60]
    assert supervisor.restarts == 8


def test_the_backoff_starts_over_after_a_healthy_run() -> None:
    clock = Clock()
    supervisor = Supervisor(clock)
    supervisor.start()
    for _ in range(3):
        supervisor.process.die()
        supervisor.poll()
        clock.now += 60
        supervisor.poll()
    clock.now += 61  # this one ran for more than a minute
    supervisor.process.die()
    supervisor.poll()
    clock.now += 1
    supervisor.poll()
    assert len(supervisor.spawned) == 5


def test_counts_are_forwarded_with_their_heartbeat() -> None:
    supervisor = Supervisor(Clock())
    supervisor.start()
    supervisor.spawned[-1][1].queue.append(EdgeCounts(qualifying=3))
    supervisor.poll()
    assert [c.qualifying for c in supervisor.collected] == [3]


# -- input lag -------------------------------------------------------------------------


def test_progress_is_a_committed_offset_that_moved_or_nothing_waiting() -> None:
    first = advance(None, 5, 0, 10, now=1.0)
    assert (first.lag, first.progressed_at) == (5, 1.0)
    same = advance(first, 5, 0, 12, now=2.0)
    assert (same.lag, same.progressed_at) == (7, 1.0)  # more waiting, no commit
    moved = advance(same, 6, 0, 12, now=3.0)
    assert moved.progressed_at == 3.0
    caught_up = advance(moved, 6, 0, 6, now=4.0)
    assert (caught_up.lag, caught_up.progressed_at) == (0, 4.0)
    never_committed = advance(None, -1001, 3, 10, now=5.0)
    assert never_committed.lag == 7  # from the low watermark: auto.offset.reset earliest


class Future:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self, timeout: float) -> Any:
        return self.value


class FakeAdmin:
    """Metadata, committed offsets and watermarks, as the AdminClient returns them."""

    def __init__(self, partitions: dict[str, int]) -> None:
        self.partitions = partitions
        self.committed: dict[tuple[str, int], int] = {}
        self.high: dict[tuple[str, int], int] = {}

    def list_topics(self, timeout: float) -> Any:
        class Topic:
            def __init__(self, n: int) -> None:
                self.error, self.partitions = None, {p: None for p in range(n)}

        class Metadata:
            def __init__(self, partitions: dict[str, int]) -> None:
                self.topics = {name: Topic(n) for name, n in partitions.items()}

        return Metadata(self.partitions)

    def list_consumer_group_offsets(self, request: list[Any], request_timeout: float) -> Any:
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        (group,) = request
        tps = [
            TopicPartition(
                tp.topic, tp.partition, self.committed.get((tp.topic, tp.partition), -1001)
            )
            for tp in group.topic_partitions
        ]
        return {group.group_id: Future(ConsumerGroupTopicPartitions(group.group_id, tps))}

    def list_offsets(self, specs: dict[Any, Any], request_timeout: float) -> Any:
        class Info:
            def __init__(self, offset: int) -> None:
                self.offset = offset

        from confluent_kafka.admin import OffsetSpec

        latest = next(iter(specs.values())) == OffsetSpec.latest()
        return {
            tp: Future(Info(self.high.get((tp.topic, tp.partition), 0) if latest else 0))
            for tp in specs
        }


def test_the_monitor_measures_the_groups_lag_from_the_broker() -> None:
    clock = Clock()
    admin = FakeAdmin({"mail.verdicts": 2, "support": 1})
    admin.high = {("mail.verdicts", 0): 10, ("mail.verdicts", 1): 4, ("support", 0): 0}
    admin.committed = {("mail.verdicts", 0): 7}
    monitor = InputLagMonitor({}, "g-edge", ["mail.verdicts", "support"], clock=clock, admin=admin)
    monitor.measure()
    assert {tp: p.lag for tp, p in monitor.progress.items()} == {
        ("mail.verdicts", 0): 3,
        ("mail.verdicts", 1): 4,
        ("support", 0): 0,
    }
    assert monitor.measured_at == clock.now


# -- the stall rule ----------------------------------------------------------------------


class StaticMonitor:
    def __init__(self, clock: Clock) -> None:
        self.progress: dict[tuple[str, int], PartitionProgress] = {}
        self.started_at = clock.now
        self.measured_at: float | None = clock.now
        self.error: str | None = None


def health_with(clock: Clock) -> tuple[EdgeHealth, Supervisor, StaticMonitor, CollectorRegistry]:
    supervisor = Supervisor(clock)
    monitor = StaticMonitor(clock)
    registry = CollectorRegistry()
    health = EdgeHealth(supervisor, monitor, Metrics(registry), clock=clock)  # type: ignore[arg-type]
    return health, supervisor, monitor, registry


def gauge(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_an_edge_that_holds_waiting_records_without_committing_for_30s_is_stalled() -> None:
    clock = Clock()
    health, supervisor, monitor, registry = health_with(clock)
    supervisor.start()
    supervisor.heartbeat(("v", 0), ("v", 1))
    health.update()
    assert health.problem is None
    assert gauge(registry, "sendguard_edge_up") == 1

    monitor.progress = {
        ("v", 0): PartitionProgress(5, 40, clock.now),  # waiting, no commit from now on
        ("v", 1): PartitionProgress(9, 0, clock.now - 100),  # idle: nothing waiting
        ("v", 2): PartitionProgress(1, 50, clock.now - 100),  # another worker's
    }
    for _ in range(29):
        clock.now += 1
        monitor.measured_at = clock.now
        supervisor.heartbeat(("v", 0), ("v", 1))
        health.update()
        assert health.problem is None
    clock.now += 1
    monitor.measured_at = clock.now
    supervisor.heartbeat(("v", 0), ("v", 1))
    health.update()
    assert health.problem is not None and "v[0] has 40 record(s) waiting" in health.problem
    assert gauge(registry, "sendguard_edge_stalled") == 1
    assert gauge(registry, "sendguard_input_lag", topic="v", partition="2") == 50


def test_a_partition_just_taken_over_is_given_its_own_30s() -> None:
    clock = Clock()
    health, supervisor, monitor, _ = health_with(clock)
    supervisor.start()
    monitor.progress = {("v", 3): PartitionProgress(1, 50, clock.now - 100)}
    supervisor.heartbeat(("v", 3))  # it was stalled on a dead worker; now it is ours
    health.update()
    assert health.problem is None
    clock.now += 30
    monitor.measured_at = clock.now
    supervisor.heartbeat(("v", 3))
    health.update()
    assert health.problem is not None and "stalled" in health.problem


def test_a_dead_edge_is_a_problem_and_counted_as_a_restart() -> None:
    clock = Clock()
    health, supervisor, _, registry = health_with(clock)
    supervisor.start()
    supervisor.heartbeat()
    health.update()
    supervisor.process.die()
    health.update()
    assert health.problem is not None and "exited with 1" in health.problem
    assert gauge(registry, "sendguard_edge_up") == 0
    assert gauge(registry, "sendguard_edge_restarts_total") == 1


def test_an_input_lag_that_cannot_be_measured_for_30s_is_a_problem() -> None:
    clock = Clock()
    health, supervisor, monitor, _ = health_with(clock)
    supervisor.start()
    monitor.error = "broker down"
    for _ in range(31):
        clock.now += 1
        supervisor.heartbeat()
        health.update()
    assert health.problem is not None and "not measured for 31s (broker down)" in health.problem


@pytest.mark.parametrize("restarts", [0, 3])
def test_restarts_are_counted_once(restarts: int) -> None:
    clock = Clock()
    health, supervisor, _, registry = health_with(clock)
    supervisor.start()
    for _ in range(restarts):
        supervisor.process.die()
        health.update()
        clock.now += 100
        health.update()
    health.update()
    assert gauge(registry, "sendguard_edge_restarts_total") == restarts
