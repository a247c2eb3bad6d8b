"""The edge stage is never bound to one record: each failure class, injected through
fake Kafka clients, costs only its record (dead-lettered, or counted when even that
fails), the next record is processed, and the batch commits after delivery. Failures
that are not about one record are retried with bounded exponential backoff."""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from processor import limits
from processor.codec import records
from processor.codec.errors import DecodeError
from processor.codec.wire import Codec
from processor.stream.edge import EdgeConfig, EdgeCounts, EdgeStage, StageFailed
from processor.stream.events import decode_record

CODEC = Codec.from_config()
VERDICTS, SUPPORT, INTERNAL, DEAD = "mail.verdicts", "support", "internal", "dead"
NOW = int(time.time() * 1000)


def verdict_bytes(message_id: str, mailbox: str = "a@x.com", verdict: str = "SPAM") -> bytes:
    return CODEC.encode(
        "Verdict",
        {
            "tenant_id": "t1",
            "message_id": message_id,
            "mailbox": mailbox,
            "direction": "OUTBOUND",
            "verdict": verdict,
            "scanned_at": NOW,
        },
    )


class Message:
    def __init__(
        self,
        value: bytes | None,
        offset: int,
        topic: str = VERDICTS,
        key: bytes | None = b"k",
        error: KafkaError | None = None,
    ) -> None:
        self._value, self._offset, self._topic, self._key, self._error = (
            value,
            offset,
            topic,
            key,
            error,
        )

    def value(self) -> bytes | None:
        return self._value

    def key(self) -> bytes | None:
        return self._key

    def topic(self) -> str:
        return self._topic

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset

    def error(self) -> KafkaError | None:
        return self._error


class Consumer:
    def __init__(self, batches: list[list[Message]] | None = None) -> None:
        self.batches = batches or []
        self.commits: list[list[tuple[str, int, int]]] = []
        self.closed = False

    def subscribe(self, topics: list[str]) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[Message]:
        return self.batches.pop(0) if self.batches else []

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])

    def assignment(self) -> list[Any]:
        return []

    def close(self) -> None:
        self.closed = True


Produced = tuple[str, bytes | None, bytes]
#: (topic, key, value, attempt) -> an error for the produce call or its delivery report.
Rule = Callable[[str, bytes | None, bytes, int], KafkaError | None]


def never(topic: str, key: bytes | None, value: bytes, attempt: int) -> KafkaError | None:
    return None


class Producer:
    """Delivers at flush, failing produces as `refuse` (at once) or `fail` (in the report)."""

    def __init__(self, refuse: Rule = never, fail: Rule = never) -> None:
        self.refuse, self.fail = refuse, fail
        self.pending: list[tuple[Produced, Any]] = []
        self.delivered: list[Produced] = []
        self.flushes = 0

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        on_delivery: Any,
        partition: int | None = None,
    ) -> None:
        error = self.refuse(topic, key, value, self.flushes)
        if error is not None:
            raise KafkaException(error)
        self.pending.append(((topic, key, value), on_delivery))

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        pending, self.pending = self.pending, []
        for (topic, key, value), on_delivery in pending:
            error = self.fail(topic, key, value, self.flushes)
            if error is None:
                self.delivered.append((topic, key, value))
            on_delivery(error, None)
        self.flushes += 1
        return 0

    def on(self, topic: str) -> list[Produced]:
        return [p for p in self.delivered if p[0] == topic]


class Clock:
    """Fake time: `sleep` moves it on, and is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


CONFIG = EdgeConfig({}, "g", VERDICTS, SUPPORT, INTERNAL, DEAD)


def stage_with(producer: Producer, consumer: Consumer | None = None) -> tuple[EdgeStage, Clock]:
    clock = Clock()
    stage = EdgeStage(
        CONFIG, consumer or Consumer(), producer, CODEC, sleep=clock.sleep, clock=clock
    )
    return stage, clock


def forwarded_ids(producer: Producer) -> list[str]:
    """The message ids of the verdicts in the packs delivered to the internal topic."""
    ids = []
    for _, key, value in producer.on(INTERNAL):
        assert key is None  # packs go to a partition, not by key
        for event in decode_record(key, value, 0).events:
            ids.append(event.message_id)  # type: ignore[union-attr]
    return ids


def dead_letters(producer: Producer) -> list[dict[str, Any]]:
    return [CODEC.decode_as("DeadLetter", value) for _, _, value in producer.on(DEAD)]


def handle(stage: EdgeStage, messages: list[Message]) -> EdgeCounts:
    stage.handle_batch(messages)  # type: ignore[arg-type]
    return stage.take_counts()


def committed(stage: EdgeStage) -> list[list[tuple[str, int, int]]]:
    consumer = stage.consumer
    assert isinstance(consumer, Consumer)
    return consumer.commits


GOOD = Message(verdict_bytes("good"), 9)


def test_a_batch_is_forwarded_dropped_and_committed_after_delivery() -> None:
    producer = Producer()
    stage, _ = stage_with(producer)
    clean = Message(verdict_bytes("clean", verdict="CLEAN"), 8)
    counts = handle(stage, [clean, GOOD])
    assert forwarded_ids(producer) == ["good"]
    assert counts.verdicts == {("OUTBOUND", "CLEAN"): 1, ("OUTBOUND", "SPAM"): 1}
    assert counts.qualifying == 1
    assert committed(stage) == [[(VERDICTS, 0, 10)]]


HUGE_ID = CODEC.encode(
    "Verdict",
    {
        "tenant_id": "t1",
        "message_id": "\x01" * 170_000,
        "mailbox": "a@x.com",
        "direction": "OUTBOUND",
        "verdict": "SPAM",
        "scanned_at": NOW,
    },
)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        pytest.param(b"junk", "not_avro", id="not-avro"),
        pytest.param(None, "not_avro", id="tombstone"),
        pytest.param(
            CODEC.encode(
                "TenantSettings", {"tenant_id": "t", "synchronized_security": True, "at": 1}
            ),
            "wrong_schema",
            id="wrong-schema",
        ),
        pytest.param(verdict_bytes("m", mailbox=" "), "invalid_record", id="invalid"),
        pytest.param(verdict_bytes("m", mailbox="m" * 321), "field_too_long", id="field-too-long"),
        pytest.param(b"\xc3\x01" + b"\xff" * 999_000, "unknown_schema", id="junk-under-1mb"),
        pytest.param(b"\x7f" * 1_100_000, "record_too_large", id="junk-over-1mib"),
    ],
)
def test_a_record_that_cannot_be_used_is_dead_lettered_and_the_next_is_processed(
    value: bytes | None, reason: str
) -> None:
    producer = Producer()
    stage, _ = stage_with(producer)
    counts = handle(stage, [Message(value, 7, key=b"scanner"), GOOD])
    (dead,) = dead_letters(producer)
    assert (dead["reason"], dead["source_topic"], dead["source_offset"]) == (reason, VERDICTS, 7)
    if value is not None:
        assert dead["value_size"] == len(value)
        assert dead["value_sha256"] == hashlib.sha256(value).hexdigest()
        assert dead["value"] == records.bounded_copy(value)
    assert forwarded_ids(producer) == ["good"]
    assert counts.dead_letters == {reason: 1}
    assert committed(stage) == [[(VERDICTS, 0, 10)]]


def test_a_verdict_with_a_huge_message_id_still_counts_under_its_digest() -> None:
    # The reported attack: 170,000 x "\x01" as the Message-ID of outbound spam.
    producer = Producer()
    stage, _ = stage_with(producer)
    counts = handle(stage, [Message(HUGE_ID, 8), GOOD])
    assert forwarded_ids(producer) == [records.bounded_message_id("\x01" * 170_000), "good"]
    # One pack holds both events: the digest keeps it small.
    assert max(len(value) for _, _, value in producer.on(INTERNAL)) < 500
    assert counts.qualifying == 2 and dead_letters(producer) == []


def test_a_forward_refused_at_once_as_too_large_is_dead_lettered() -> None:
    def refuse(topic: str, key: bytes | None, value: bytes, attempt: int) -> KafkaError | None:
        if topic == INTERNAL and b"big" in value:
            return KafkaError(KafkaError.MSG_SIZE_TOO_LARGE, "Message size too large")
        return None

    producer = Producer(refuse=refuse)
    stage, clock = stage_with(producer)
    counts = handle(stage, [Message(verdict_bytes("big"), 3), GOOD])
    (dead,) = dead_letters(producer)
    assert (dead["reason"], dead["source_offset"]) == ("record_too_large", 3)
    assert "refused" in dead["detail"]
    assert forwarded_ids(producer) == ["good"]
    assert counts.dead_letters == {"record_too_large": 1}
    assert committed(stage) == [[(VERDICTS, 0, 10)]]
    assert clock.sleeps == []  # no retry: the failure was the record's


def test_a_produce_that_raises_anything_else_costs_only_its_record() -> None:
    class Picky(Producer):
        def produce(
            self,
            topic: str,
            value: bytes,
            key: bytes | None,
            on_delivery: Any,
            partition: int | None = None,
        ) -> None:
            if topic == INTERNAL and b"odd" in value:
                raise TypeError("an argument it does not take")
            super().produce(topic, value, key, on_delivery, partition)

    producer = Picky()
    stage, _ = stage_with(producer)
    handle(stage, [Message(verdict_bytes("odd"), 3), GOOD])
    (dead,) = dead_letters(producer)
    assert (dead["reason"], dead["source_offset"]) == ("produce_failed", 3)
    assert "TypeError" in dead["detail"]
    assert forwarded_ids(producer) == ["good"]
    assert committed(stage) == [[(VERDICTS, 0, 10)]]


@pytest.mark.parametrize(
    "code",
    [KafkaError.INVALID_RECORD, KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.UNKNOWN],
    ids=["invalid-record", "too-large-at-the-broker", "an-error-not-known-as-systemic"],
)
def test_a_forward_whose_delivery_fails_for_its_record_is_dead_lettered(code: int) -> None:
    def fail(topic: str, key: bytes | None, value: bytes, attempt: int) -> KafkaError | None:
        return KafkaError(code) if topic == INTERNAL and b"bad" in value else None

    producer = Producer(fail=fail)
    stage, clock = stage_with(producer)
    handle(stage, [Message(verdict_bytes("bad"), 3), GOOD])
    (dead,) = dead_letters(producer)
    expected = "record_too_large" if code == KafkaError.MSG_SIZE_TOO_LARGE else "produce_failed"
    assert (dead["reason"], dead["source_offset"]) == (expected, 3)
    assert forwarded_ids(producer) == ["good"]
    assert committed(stage) == [[(VERDICTS, 0, 10)]]
    assert clock.sleeps == []


def test_a_record_whose_dead_letter_is_refused_too_is_counted_logged_and_committed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Refused forward, then refused dead letter: the record is accounted for (metric +
    # log with its offset) and the batch still commits: no loop on it, ever.
    def fail(topic: str, key: bytes | None, value: bytes, attempt: int) -> KafkaError | None:
        if (topic == INTERNAL and b"bad" in value) or topic == DEAD:
            return KafkaError(KafkaError.INVALID_RECORD)
        return None

    producer = Producer(fail=fail)
    stage, _ = stage_with(producer)
    counts = handle(stage, [Message(verdict_bytes("bad"), 3), Message(b"junk", 4), GOOD])
    assert forwarded_ids(producer) == ["good"]
    assert counts.dead_letter_failures == {"produce_failed": 1, "not_avro": 1}
    assert counts.dead_letters == {}
    assert committed(stage) == [[(VERDICTS, 0, 10)]]
    assert "mail.verdicts[0]@3" in caplog.text and "mail.verdicts[0]@4" in caplog.text


def test_a_dead_letter_that_cannot_be_encoded_is_counted_and_committed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> dict[str, Any]:
        raise ValueError("cannot build it")

    monkeypatch.setattr(records, "dead_letter_record", broken)
    producer = Producer()
    stage, _ = stage_with(producer)
    counts = handle(stage, [Message(b"junk", 4), GOOD])
    assert counts.dead_letter_failures == {"not_avro": 1}
    assert forwarded_ids(producer) == ["good"]
    assert committed(stage) == [[(VERDICTS, 0, 10)]]


def test_a_forward_that_cannot_be_encoded_is_dead_lettered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from processor.stream import packing

    encode_entry = packing.encode_entry

    def encode(event: Any) -> bytes:
        if getattr(event, "message_id", "") == "unencodable":
            raise TypeError("not JSON serialisable")
        return encode_entry(event)

    monkeypatch.setattr(packing, "encode_entry", encode)
    producer = Producer()
    stage, _ = stage_with(producer)
    counts = handle(stage, [Message(verdict_bytes("unencodable"), 5), GOOD])
    (dead,) = dead_letters(producer)
    assert (dead["reason"], dead["source_offset"]) == ("internal_error", 5)
    assert "TypeError" in dead["detail"]
    assert forwarded_ids(producer) == ["good"]
    assert counts.dead_letters == {"internal_error": 1}


def test_an_unexpected_error_while_validating_costs_only_that_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    validate = records.verdict_from_record

    def buggy(record: Any) -> Any:
        if record["message_id"] == "trigger":
            raise RecursionError("a bug")
        return validate(record)

    monkeypatch.setattr(records, "verdict_from_record", buggy)
    producer = Producer()
    stage, _ = stage_with(producer)
    handle(stage, [Message(verdict_bytes("trigger"), 5), GOOD])
    (dead,) = dead_letters(producer)
    assert (dead["reason"], dead["source_offset"]) == ("internal_error", 5)
    assert forwarded_ids(producer) == ["good"]


def test_a_delivery_timeout_retries_the_batch_with_backoff_then_commits_once() -> None:
    def fail(topic: str, key: bytes | None, value: bytes, attempt: int) -> KafkaError | None:
        return KafkaError(KafkaError._MSG_TIMED_OUT) if attempt < 3 else None

    producer = Producer(fail=fail)
    stage, clock = stage_with(producer)
    counts = handle(stage, [Message(b"junk", 4), GOOD])
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5]  # 0.5 s, 1 s, 2 s in steps
    assert counts.batch_retries == 3
    # The last attempt's work only: nothing counted twice.
    assert counts.qualifying == 1 and counts.dead_letters == {"not_avro": 1}
    assert forwarded_ids(producer) == ["good"]
    assert committed(stage) == [[(VERDICTS, 0, 10)]]


def test_a_failure_that_never_passes_gives_up_within_the_budget_without_committing() -> None:
    def fail(topic: str, key: bytes | None, value: bytes, attempt: int) -> KafkaError | None:
        return KafkaError(KafkaError._TRANSPORT, "broker down")

    producer = Producer(fail=fail)
    stage, clock = stage_with(producer)
    started = clock.now
    with pytest.raises(StageFailed, match="could not be delivered"):
        stage.handle_batch([GOOD])  # type: ignore[list-item]
    assert clock.now - started <= CONFIG.retry_budget_s
    waited = sum(clock.sleeps)
    assert waited > CONFIG.retry_budget_s / 2  # it did retry, with growing delays
    assert committed(stage) == []


def test_a_fatal_producer_error_ends_the_stage_at_once() -> None:
    def fail(topic: str, key: bytes | None, value: bytes, attempt: int) -> KafkaError | None:
        return KafkaError(KafkaError._FATAL, "idempotence broken")

    producer = Producer(fail=fail)
    stage, clock = stage_with(producer)
    with pytest.raises(StageFailed, match="fatally"):
        stage.handle_batch([GOOD])  # type: ignore[list-item]
    assert clock.sleeps == [] and committed(stage) == []


def test_an_unavailable_schema_registry_retries_the_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    decode = CODEC.decode

    def flaky(data: bytes) -> Any:
        calls["n"] += 1
        if calls["n"] == 1:
            raise DecodeError("registry_unavailable", "connection refused")
        return decode(data)

    codec = Codec.from_config()
    monkeypatch.setattr(codec, "decode", flaky)
    producer = Producer()
    clock = Clock()
    stage = EdgeStage(CONFIG, Consumer(), producer, codec, sleep=clock.sleep, clock=clock)
    stage.handle_batch([GOOD])  # type: ignore[list-item]
    assert clock.sleeps == [0.5]
    assert forwarded_ids(producer) == ["good"]
    assert dead_letters(producer) == []


def test_the_stage_reports_its_heartbeat_while_it_waits_to_retry() -> None:
    def fail(topic: str, key: bytes | None, value: bytes, attempt: int) -> KafkaError | None:
        return KafkaError(KafkaError._MSG_TIMED_OUT) if attempt < 4 else None

    consumer = Consumer([[GOOD]])
    producer = Producer(fail=fail)
    clock = Clock()
    stage = EdgeStage(CONFIG, consumer, producer, CODEC, sleep=clock.sleep, clock=clock)
    reports: list[tuple[float, EdgeCounts]] = []
    stage.run(lambda: bool(consumer.commits), lambda c: reports.append((clock.now, c)))
    times = [at for at, _ in reports]
    # 0.5 + 1 + 2 + 4 s of backoff: a report at least every report_every_s meanwhile.
    assert len(times) >= 7
    assert all(b - a <= CONFIG.report_every_s + 0.5 for a, b in itertools.pairwise(times))
    assert sum(c.batch_retries for _, c in reports) == 4
    assert consumer.closed


def test_a_message_carrying_a_consume_error_is_skipped() -> None:
    producer = Producer()
    stage, _ = stage_with(producer)
    error = Message(None, 0, error=KafkaError(KafkaError._TRANSPORT, "blip"))
    handle(stage, [error, GOOD])
    assert forwarded_ids(producer) == ["good"]
    assert committed(stage) == [[(VERDICTS, 0, 10)]]


def test_dead_letters_are_bounded_whatever_the_key_and_value() -> None:
    producer = Producer()
    stage, _ = stage_with(producer)
    huge = b"x" * 3_000_000
    handle(stage, [Message(huge, 1, key=huge), GOOD])
    ((_, key, value),) = producer.on(DEAD)
    assert key == huge[: limits.DEAD_LETTER_PREFIX_BYTES]
    assert len(value) < 3 * limits.DEAD_LETTER_PREFIX_BYTES


def test_a_batch_is_reported_before_it_is_committed() -> None:
    # So a stage killed right after a commit has counted every record it committed.
    events: list[str] = []

    class Recording(Consumer):
        def commit(self, offsets: list[Any], asynchronous: bool) -> None:
            events.append("commit")
            super().commit(offsets, asynchronous)

    consumer = Recording([[GOOD], [Message(verdict_bytes("second"), 10)]])
    stage, _ = stage_with(Producer(), consumer)

    def report(counts: EdgeCounts) -> None:
        events.append(f"report {counts.qualifying}")

    stage.run(lambda: len(consumer.commits) == 2, report)
    assert events[:4] == ["report 1", "commit", "report 1", "commit"]
