"""How the agent's Delivery treats failures, with a producer that fails on purpose:
a record Kafka refuses for good is returned (and not sent again), anything else
makes the whole batch go again, in order, until it is delivered."""

from __future__ import annotations

import asyncio
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from processor.stream.delivery import Delivery
from processor.stream.outputs import OutputRecord


class _Message:
    def __init__(self, topic: str, key: bytes, value: bytes) -> None:
        self._topic, self._key, self._value = topic, key, value

    def topic(self) -> str:
        return self._topic

    def key(self) -> bytes:
        return self._key

    def value(self) -> bytes:
        return self._value


class _FailingProducer:
    """Delivers everything, except what `fail` says: a KafkaError code to report in the
    delivery callback ("report") or raise from produce() ("raise"), per attempt."""

    def __init__(self, fail: dict[bytes, list[tuple[str, int]]]) -> None:
        self.fail = fail
        self.produced: list[bytes] = []
        self.headers: list[list[tuple[str, bytes]]] = []
        self._pending: list[tuple[Any, Any, _Message]] = []

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes,
        headers: list[tuple[str, bytes]],
        on_delivery: Any,
    ) -> None:
        plan = self.fail.get(value)
        how, code = plan.pop(0) if plan else ("", 0)
        if how == "raise":
            raise KafkaException(KafkaError(code))
        self.produced.append(value)
        self.headers.append(headers)
        error = KafkaError(code) if how == "report" else None
        self._pending.append((on_delivery, error, _Message(topic, key, value)))

    def flush(self, timeout: float) -> int:
        pending, self._pending = self._pending, []
        for on_delivery, error, message in pending:
            on_delivery(error, message)
        return 0


def _records(*values: bytes) -> list[OutputRecord]:
    return [OutputRecord("t", b"k", value) for value in values]


def _delivery(producer: _FailingProducer, retries: list[int]) -> Delivery:
    return Delivery(
        {},
        retry_backoff_s=0,
        on_retry=lambda: retries.append(1),
        producer_factory=lambda config: producer,
    )


def test_a_record_refused_for_good_is_returned_and_the_rest_delivered() -> None:
    producer = _FailingProducer(
        {
            b"too-big": [("report", KafkaError.MSG_SIZE_TOO_LARGE)],
            b"too-big-here": [("raise", KafkaError.MSG_SIZE_TOO_LARGE)],
        }
    )
    retries: list[int] = []
    refused = asyncio.run(
        _delivery(producer, retries).deliver(_records(b"a", b"too-big", b"too-big-here", b"b"))
    )
    assert [(u.record.value, u.reason) for u in refused] == [
        (b"too-big-here", "MSG_SIZE_TOO_LARGE"),
        (b"too-big", "MSG_SIZE_TOO_LARGE"),
    ]
    assert producer.produced == [b"a", b"too-big", b"b"] and retries == []


def test_a_failure_that_may_pass_sends_the_whole_batch_again_in_order() -> None:
    producer = _FailingProducer(
        {
            b"b": [("report", KafkaError._MSG_TIMED_OUT), ("report", KafkaError._TRANSPORT)],
            b"c": [("raise", KafkaError._UNKNOWN_TOPIC)],
        }
    )
    retries: list[int] = []
    refused = asyncio.run(_delivery(producer, retries).deliver(_records(b"a", b"b", b"c")))
    assert refused == []
    # 1st: a, b (timed out), c raised; 2nd: a, b (transport), c; 3rd: all delivered.
    assert producer.produced == [b"a", b"b", b"a", b"b", b"c", b"a", b"b", b"c"]
    assert len(retries) == 2


def test_a_record_goes_out_with_its_headers() -> None:
    producer = _FailingProducer({})
    signed = OutputRecord("t", b"k", b"command", (("sendguard-signature", b"k1:ab"),))
    refused = asyncio.run(_delivery(producer, []).deliver([signed, *_records(b"other")]))
    assert refused == []
    assert producer.headers == [[("sendguard-signature", b"k1:ab")], []]
