"""The cap on repeated log messages (issue 11: a Kafka client logged 4,600 lines a
second through a broker outage): the first few of a kind pass, the rest are counted
in one summary line, other kinds and the audit log are untouched."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from processor.ops.log_limit import RepeatedMessageFilter, SummaryRecord
from processor.ops.logging import DECISIONS_LOGGER, configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sink:
    """Collects what a handler with the filter would write."""

    def __init__(self, clock: Clock, **options: object) -> None:
        self.written: list[logging.LogRecord] = []
        self.limiter = RepeatedMessageFilter(self.handle, clock=clock, **options)  # type: ignore[arg-type]

    def handle(self, record: logging.LogRecord) -> None:
        if self.limiter.filter(record):
            self.written.append(record)

    def log(self, msg: str, *args: object, name: str = "aiokafka", level: int = 40) -> None:
        self.handle(logging.LogRecord(name, level, "", 0, msg, args, None))

    def messages(self) -> list[str]:
        return [r.getMessage() for r in self.written]


@pytest.fixture
def clock() -> Clock:
    return Clock()


def test_a_flood_becomes_its_first_lines_and_one_count(clock: Clock) -> None:
    sink = Sink(clock, burst=3, window_s=10.0)
    for n in range(1000):
        clock.now += 0.005  # 200 a second for 5 s
        sink.log("Unable connect to node with id %s: %s", 1, f"refused #{n}")
    assert len(sink.written) == 3
    clock.now += 6  # the window is over: the next one of the kind brings the count
    sink.log("Unable connect to node with id %s: %s", 1, "refused")

    *_first_three, summary, fourth = sink.written
    assert len(_first_three) == 3
    assert isinstance(summary, SummaryRecord)
    assert (summary.name, summary.levelno) == ("aiokafka", logging.ERROR)
    assert summary.suppressed == 997  # type: ignore[attr-defined]
    assert summary.getMessage().startswith("997 similar messages suppressed in the last 11.0 s: ")
    assert "refused #3" in summary.getMessage()  # the first one held back, as an example
    assert fourth.getMessage().endswith("refused")


def test_other_kinds_and_levels_pass_beside_a_flood(clock: Clock) -> None:
    sink = Sink(clock, burst=2)
    for _ in range(50):
        sink.log("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")
    sink.log("Failed fetch messages from %s: %s", 1, "NodeNotReadyError", level=logging.WARNING)
    sink.log("edge stage exited with %s; restarting it", 1, name="processor.stream.edge")
    assert [r.levelno for r in sink.written] == [40, 40, 30, 40]


def test_digits_in_prerendered_messages_do_not_make_new_kinds(clock: Clock) -> None:
    # Faust formats some messages itself: f"producer buffer full size {size}".
    sink = Sink(clock, burst=2)
    for size in range(101, 201):
        sink.log(f"producer buffer full size {size}", name="faust.transport.producer")
    assert sink.messages() == ["producer buffer full size 101", "producer buffer full size 102"]


def test_the_audit_log_is_never_held_back(clock: Clock) -> None:
    sink = Sink(clock, burst=1, exempt=(DECISIONS_LOGGER,))
    for n in range(20):
        sink.log("BLOCK %s %s offense %d", "t1", f"user{n}@x.com", 1, name=DECISIONS_LOGGER)
    assert len(sink.written) == 20


def test_a_quiet_kind_is_summarised_when_anything_else_is_logged(clock: Clock) -> None:
    sink = Sink(clock, burst=1, window_s=10.0)
    for _ in range(10):
        sink.log("Unable to update metadata from %s", [1])
    clock.now += 12  # the outage is over: that kind is not logged again
    sink.log("Discovered coordinator %s for group %s", 1, "g", level=logging.INFO)
    assert sink.messages()[1:] == [
        "9 similar messages suppressed in the last 12.0 s: Unable to update metadata from [1]",
        "Discovered coordinator 1 for group g",
    ]


def test_flush_writes_pending_counts(clock: Clock) -> None:
    sink = Sink(clock, burst=1)
    for _ in range(4):
        sink.log("Heartbeat failed for group %s", "g", level=logging.WARNING)
    sink.limiter.flush()
    assert sink.messages()[-1].startswith("3 similar messages suppressed in the last 0.0 s")
    sink.limiter.flush()  # nothing twice
    assert len(sink.written) == 2


def test_a_client_logging_ever_new_messages_is_capped_too(clock: Clock) -> None:
    sink = Sink(clock, burst=2, max_kinds=10)
    for n in range(1000):
        sink.log(f"error {'x' * (n % 500)} happened", name="chatty")
    # 10 kinds with 2 lines each, then one overflow kind of 2 more lines.
    assert len(sink.written) == 22


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("info", stream=stream, json_lines=True)
    yield stream
    root.handlers[:], root.level = saved


def test_the_worker_log_caps_repeats_and_counts_them_at_exit(captured: io.StringIO) -> None:
    for _ in range(100):
        logging.getLogger("aiokafka").error("Unable connect to node with id %s: %s", 1, "refused")
    handler = logging.getLogger().handlers[0]
    handler.close()  # what logging.shutdown() does at exit
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert len(lines) == 6
    summary = lines[-1]
    assert (summary["level"], summary["logger"], summary["suppressed"]) == ("ERROR", "aiokafka", 95)
