"""The edge stage: every verdict decoded, counted, and dropped unless it qualifies.

A confluent-kafka consumer loop, in its own process (a bare Faust agent manages
about 12 k events/s; the target is 50 k/s per worker, and a separate process also
keeps the GIL away from the stateful agent). Per batch:

    consume ≤ batch_size from mail.verdicts and mailbox.support-actions
      ─► decode + validate each record (processor.codec)
           bad ──► sendguard.dead-letter (reason, source topic/partition/offset, raw bytes)
           unsigned, forged or stale support action ──► dead letter (unauthenticated_action)
           clean or inbound ──► counted, dropped
           qualifying verdict / support release ──► a pack of its mailbox's partition
      ─► produce the packs (≤ 1000 events, ≤ 256 KiB each) to the internal topic
      ─► flush: wait until every produce of the batch is delivered
      ─► commit the batch's source offsets

Any failure the loop cannot retry in place (a delivery not made in time, a
consumer fatal error) ends the process (`processor.stream.edge_process`), and its
supervisor starts a new one, which resumes from the committed offsets. The stage
gets its Kafka clients as arguments (`kafka_clients` makes the real ones), so
tests drive it with clients of their own.

Offsets are committed only after delivery, so a crash replays at most one batch
(at-least-once); the policy drops replayed verdicts by message id and replayed
releases find the mailbox already released (their refusal report has a fixed id).
The producer is idempotent, so its retries neither duplicate nor reorder a
mailbox's events. Each pack holds the events of one internal partition (murmur2 of
the mailbox key, `processor.stream.events.partition_for`, as the timer places its
ticks) and is stamped with the time it was made: the `now` of its policy steps.

A schema registry that does not answer is not the record's fault: the batch is
retried (not dead-lettered, not committed) until it answers.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from processor.codec import records
from processor.codec.action_signing import ActionKeys
from processor.codec.errors import DecodeError
from processor.codec.wire import Codec, CodecConfig
from processor.stream import events
from processor.stream.packing import Packer

log = logging.getLogger(__name__)

VERDICT = "io.sendguard.v1.Verdict"
SUPPORT_ACTION = "io.sendguard.v1.SupportAction"


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    client_config: dict[str, Any]
    group_id: str
    verdicts_topic: str
    support_topic: str
    internal_topic: str
    dead_letter_topic: str
    #: Partitions of the internal topic (each pack goes to the one of its mailboxes).
    internal_partitions: int = 1
    codec_config: CodecConfig = field(default_factory=CodecConfig)
    batch_size: int = 5000
    poll_timeout_s: float = 0.2
    #: How often counters (and lag every `lag_every_s`) are reported to the worker.
    report_every_s: float = 1.0
    lag_every_s: float = 5.0
    session_timeout_s: float = 10.0
    instance_id: str | None = None
    #: Verify support actions (none configured: every action is dead-lettered).
    action_keys: ActionKeys = field(default_factory=ActionKeys)


@dataclass(slots=True)
class EdgeCounts:
    """What the edge stage did since the last report (the worker adds it to metrics)."""

    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)
    qualifying: int = 0
    releases: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    #: (topic, partition) -> lag, when measured in this interval.
    lag: dict[tuple[str, int], int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(
            self.verdicts or self.qualifying or self.releases or self.dead_letters or self.lag
        )


class DeliveryFailed(Exception):
    """A produce of the batch was not delivered: the batch must not be committed."""


class ConsumerFailed(Exception):
    """The consumer reported a fatal error (e.g. fenced after a broker restart): it
    cannot consume or commit again, so the process exits and is restarted."""


class TransientDecodeError(Exception):
    """A record could not be decoded for a reason that may pass (schema registry down)."""


class EdgeStage:
    """The loop itself; `process_batch` is the per-batch work, reusable by benchmarks."""

    def __init__(
        self, config: EdgeConfig, consumer: Any, producer: Any, codec: Codec | None = None
    ) -> None:
        """`consumer` and `producer` are confluent-kafka clients (see `kafka_clients`),
        or anything with the same methods (tests)."""
        self.config = config
        self.consumer = consumer
        self.producer = producer
        self.codec = codec if codec is not None else Codec.from_config(config.codec_config)
        self.counts = EdgeCounts()
        self._failed: list[str] = []
        self._packer = Packer(config.internal_partitions)

    @classmethod
    def connect(cls, config: EdgeConfig, codec: Codec | None = None) -> EdgeStage:
        """A stage with its own Kafka clients, configured by `kafka_clients`."""
        return cls(config, *kafka_clients(config), codec)

    def subscribe(self) -> None:
        self.consumer.subscribe([self.config.verdicts_topic, self.config.support_topic])

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failed.append(f"{message.topic()}: {error}")

    def _produce(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None
    ) -> None:
        extra = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=self._delivered, **extra)
                return
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.05)

    def _forward(self, event: events.MailboxEvent) -> None:
        """Add a qualifying verdict or a release to the batch's packs (`_send_packs`)."""
        self._packer.add(event)

    def _send_packs(self) -> None:
        """Produce the batch's packs, one or more per partition, stamped with the wall
        clock once: their events happen at that time (`processor.stream.events`)."""
        for partition, value in self._packer.drain(int(time.time() * 1000)):
            self._produce(self.config.internal_topic, None, value, partition)

    def process_batch(self, messages: list[Any]) -> None:
        """Decode, count, dead-letter and forward one batch; produces are not yet flushed.

        Raises TransientDecodeError (nothing of the batch may be committed) and
        ConsumerFailed (the consumer is unusable).
        """
        from confluent_kafka import KafkaError

        counts = self.counts
        verdict_counts = counts.verdicts
        decode = self.codec.decode
        verdict_from_record = records.verdict_from_record
        verdicts_topic = self.config.verdicts_topic
        forward = self._forward
        self._packer.clear()  # what a failed attempt at this batch had packed
        for message in messages:
            failure = message.error()
            if failure is not None:
                # A fatal error (librdkafka: FENCED_INSTANCE_ID when a static member's
                # session expired during a broker outage) leaves the consumer
                # unable to fetch or commit: consume() returns nothing from then on.
                # It arrives as code _FATAL, with fatal() false on the message's error.
                if failure.fatal() or failure.code() == KafkaError._FATAL:
                    raise ConsumerFailed(str(failure))
                log.warning("consume error: %s", failure)
                continue
            value = message.value()
            try:
                if value is None:
                    raise DecodeError("not_avro", "no value (a tombstone)")
                name, record = decode(value)
                if message.topic() == verdicts_topic:
                    if name != VERDICT:
                        raise DecodeError("wrong_schema", f"expected {VERDICT}, got {name}")
                    verdict = verdict_from_record(record)
                    verdict_counts[verdict.direction.value, verdict.verdict.value] += 1
                    if not verdict.qualifies:
                        continue
                    counts.qualifying += 1
                    event: events.MailboxEvent = verdict
                else:
                    if name != SUPPORT_ACTION:
                        raise DecodeError("wrong_schema", f"expected {SUPPORT_ACTION}, got {name}")
                    # Only a signed, fresh action may lift a block (DecodeError otherwise).
                    self.config.action_keys.verify(record, int(time.time() * 1000))
                    event = records.release_from_record(record)
                    counts.releases += 1
            except DecodeError as error:
                if error.reason == "registry_unavailable":
                    raise TransientDecodeError(str(error)) from error
                self._dead_letter(message, error)
                continue
            forward(event)
        self._send_packs()

    def _dead_letter(self, message: Any, error: DecodeError) -> None:
        self.counts.dead_letters[error.reason] += 1
        record = records.dead_letter_record(
            error.reason,
            error.detail,
            source_topic=message.topic(),
            source_partition=message.partition(),
            source_offset=message.offset(),
            key=message.key(),
            value=message.value(),
            at_ms=int(time.time() * 1000),
        )
        self._produce(
            self.config.dead_letter_topic, message.key(), self.codec.encode("DeadLetter", record)
        )

    def flush(self) -> None:
        """Wait until every produce so far is delivered; raises DeliveryFailed."""
        remaining = self.producer.flush(30)
        if self._failed or remaining:
            failed, self._failed = self._failed, []
            raise DeliveryFailed(f"{remaining} undelivered, failures: {failed[:3]}")

    def commit(self, messages: list[Any]) -> None:
        """Commit the offsets after the last message of each partition in `messages`."""
        from confluent_kafka import TopicPartition

        last: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is None:
                last[message.topic(), message.partition()] = message.offset()
        if last:
            # Asynchronous is enough: a lost commit only replays already-delivered work.
            self.consumer.commit(
                offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                asynchronous=True,
            )

    def measure_lag(self) -> None:
        for tp in self.consumer.assignment():
            with contextlib.suppress(Exception):
                _, high = self.consumer.get_watermark_offsets(tp, cached=True)
                position = self.consumer.position([tp])[0].offset
                if high >= 0 and position >= 0:
                    self.counts.lag[tp.topic, tp.partition] = max(0, high - position)

    def take_counts(self) -> EdgeCounts:
        counts, self.counts = self.counts, EdgeCounts()
        return counts

    def run(self, stopping: Callable[[], bool], report: Callable[[EdgeCounts], None]) -> None:
        """Consume until `stopping()`; `report` receives counters every `report_every_s`."""
        self.subscribe()
        next_report = time.monotonic() + self.config.report_every_s
        next_lag = time.monotonic()
        try:
            while not stopping():
                messages = self.consumer.consume(self.config.batch_size, self.config.poll_timeout_s)
                if messages:
                    self.handle_batch(messages)
                now = time.monotonic()
                if now >= next_lag:
                    self.measure_lag()
                    next_lag = now + self.config.lag_every_s
                if now >= next_report:
                    counts = self.take_counts()
                    if counts:
                        report(counts)
                    next_report = now + self.config.report_every_s
        finally:
            with contextlib.suppress(Exception):
                self.producer.flush(10)
            self.consumer.close()
            report(self.take_counts())

    def handle_batch(self, messages: list[Any]) -> None:
        """Process, deliver, then commit one consumed batch (the at-least-once order)."""
        delay = 0.5
        while True:
            try:
                self.process_batch(messages)
                break
            except TransientDecodeError as error:
                # Forward what was produced (harmless: replays are idempotent),
                # wait, and decode the whole batch again.
                log.warning("schema registry unavailable, retrying batch: %s", error)
                self.producer.flush(30)
                self._failed.clear()
                self.counts = EdgeCounts()
                time.sleep(delay)
                delay = min(delay * 2, 10)
        self.flush()
        self.commit(messages)


def kafka_clients(config: EdgeConfig) -> tuple[Any, Any]:
    """The stage's confluent-kafka (consumer, producer), configured for its job."""
    from confluent_kafka import Consumer, Producer

    static = {"group.instance.id": config.instance_id} if config.instance_id else {}
    consumer = Consumer(
        {
            **config.client_config,
            **static,
            "group.id": config.group_id,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            # Cooperative rebalancing: a second worker joining does not stop this one.
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": int(config.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(config.session_timeout_s * 1000 / 3),
            "fetch.min.bytes": 65536,
            "fetch.wait.max.ms": 100,
        }
    )
    producer = Producer(
        {
            **config.client_config,
            # Packs name their partition; anything else uses Java's partitioner.
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # No compression: aiokafka (the agent's consumer) ships without lz4
            # and snappy, and the packs are few.
        }
    )
    return consumer, producer
