"""The worker's confluent-kafka clients, with their broker unreachable: librdkafka's
lines arrive as records of the `librdkafka` logger (so the JSON log and its cap
apply to them), and reconnects are spaced out (issue 11)."""

from __future__ import annotations

import logging
import pickle
import socket
import time

import pytest
from confluent_kafka import Consumer

from processor.stream.librdkafka_settings import LOGGER, LibrdkafkaLog, worker_client_settings


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def failed_connects(
    seconds: float, extra: dict[str, object], caplog: pytest.LogCaptureFixture
) -> int:
    """Connection failures a group consumer logs in `seconds` against a closed port."""
    caplog.clear()
    consumer = Consumer(
        {
            "bootstrap.servers": f"127.0.0.1:{closed_port()}",
            "group.id": "sendguard-test",
            **extra,
            "logger": LibrdkafkaLog(),
        }
    )
    try:
        consumer.subscribe(["anything"])
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            consumer.consume(100, 0.2)
    finally:
        consumer.close()
    return sum(1 for r in caplog.records if r.name == LOGGER and "FAIL" in r.msg)


def test_librdkafka_lines_become_records_and_reconnects_are_spaced(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    settings = {k: v for k, v in worker_client_settings().items() if k != "logger"}

    spaced = failed_connects(2.0, settings, caplog)
    record = next(r for r in caplog.records if r.name == LOGGER)
    default = failed_connects(2.0, {}, caplog)

    # librdkafka retries its bootstrap connection every reconnect.backoff.ms / 2:
    # 50 ms by default (about 40 lines in 2 s), 0.5 s with the worker's settings.
    assert 2 <= spaced <= 6 < 20 <= default
    assert record.levelno == logging.ERROR
    assert record.msg == "%s FAIL: %s"  # the facility is part of the kind
    assert str(record.args[0]).startswith("rdkafka#consumer-")  # type: ignore[index]
    assert "Connection refused" in record.getMessage()


def test_the_log_router_is_picklable_for_the_edge_process() -> None:
    settings = pickle.loads(pickle.dumps(worker_client_settings()))
    assert isinstance(settings["logger"], LibrdkafkaLog)


def test_other_calls_pass_through(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    LibrdkafkaLog().log(logging.WARNING, "%d%% of %s", 50, "it")
    LibrdkafkaLog().log(logging.WARNING, "%s [%s] %s", "50%", "rdkafka#producer-1", "odd")
    assert [r.getMessage() for r in caplog.records] == [
        "50% of it",
        "rdkafka#producer-1 50%: odd",
    ]
