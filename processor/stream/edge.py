"""The edge stage: every verdict decoded, counted, and dropped unless it qualifies.

A confluent-kafka consumer loop, in its own process (a bare Faust agent manages
about 12 k events/s; the target is 50 k/s per worker, and a separate process also
keeps the GIL away from the stateful agent). Per batch:

    consume ≤ batch_size from mail.verdicts and mailbox.support-actions
      ─► size check, decode + validate each record (processor.codec, processor.limits)
           bad ──► sendguard.dead-letter (reason, source topic/partition/offset,
                   the raw bytes, or a bounded prefix of them with size and sha256)
           unsigned, forged or stale support action ──► dead letter (unauthenticated_action)
           clean or inbound ──► counted, dropped
           qualifying verdict / support release ──► a pack of its mailbox's partition
      ─► produce the packs (≤ 1000 events, ≤ 256 KiB each) to the internal topic
      ─► deliver: wait for every produce's delivery report
           a forward refused for reasons of its own record ──► that record dead-lettered
           a dead letter refused for reasons of its own ──► counted and logged, skipped
      ─► commit the batch's source offsets

The stream is never bound to one record. Every failure tied to one record - it does
not decode or validate, it is over a limit, its forward cannot be encoded or is
refused by the producer or the broker (`kafka_errors.classify`), or handling it raises
something unexpected - dead-letters that record and the batch goes on; if even its
dead letter is refused, the record is counted in `dead_letter_failures` and logged
with its offset, and the batch still commits. So no record can be read twice for
its own sake. A failure that is not about one record (broker unreachable, delivery
timed out, schema registry down) makes the batch be produced again after an
exponential backoff, in this process, within `retry_budget_s`; past that, and for
errors that leave a client unusable (a fatal producer or consumer error), the
process ends, and its supervisor (`processor.stream.edge_process`) starts a new one
after a backoff of its own; it resumes from the committed offsets.

Offsets are committed only after every produce of the batch is delivered, so a
crash replays at most one batch (at-least-once); the policy drops replayed verdicts
by message id and replayed releases find the mailbox already released (their
refusal report has a fixed id). The producer is idempotent, so its retries neither
duplicate nor reorder a mailbox's events. Each pack holds the events of one internal
partition (murmur2 of the mailbox key, `processor.stream.events.partition_for`, as
the timer places its ticks) and is stamped with the time it was made: the `now` of
its policy steps. A pack refused for reasons of its own (never expected: packs and
events are bounded) dead-letters every record whose event it carried.

Every `report_every_s` the stage reports its counters and its assignment to the
worker, also while it waits for deliveries or a backoff: the report is the
heartbeat by which the worker knows the stage is alive. It reports after every
batch too, before committing it, so a committed record is always counted, even
when the stage is killed the moment after.
"""

from __future__ import annotations

import contextlib
import functools
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
from processor.stream.kafka_errors import classify
from processor.stream.packing import Pack, Packer

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
    codec_config: CodecConfig = field(default_factory=CodecConfig)
    batch_size: int = 5000
    poll_timeout_s: float = 0.2
    #: How often counters and the assignment are reported to the worker (the heartbeat).
    report_every_s: float = 1.0
    session_timeout_s: float = 10.0
    instance_id: str | None = None
    #: Partitions of the internal topic: packs are made per partition.
    internal_partitions: int = 1
    #: Verify support actions (none configured: every action is dead-lettered).
    action_keys: ActionKeys = field(default_factory=ActionKeys)
    #: The producer's `message.timeout.ms`: a delivery not made by then is reported
    #: failed (and the batch retried), rather than awaited for librdkafka's 5 minutes.
    delivery_timeout_s: float = 20.0
    #: Backoff between attempts of a batch that failed for a reason not its records'.
    retry_initial_s: float = 0.5
    retry_max_s: float = 10.0
    #: How long one batch is retried in this process before it gives up (and the
    #: process is restarted). Below the consumer's max.poll.interval.ms (300 s), so the
    #: consumer keeps its group membership while it retries.
    retry_budget_s: float = 120.0


@dataclass(slots=True)
class EdgeCounts:
    """What the edge stage did since the last report (the worker adds it to metrics)."""

    verdicts: Counter[tuple[str, str]] = field(default_factory=Counter)
    qualifying: int = 0
    releases: int = 0
    dead_letters: Counter[str] = field(default_factory=Counter)
    #: Records that should have been dead-lettered but whose dead letter was refused
    #: (by reason): logged with their source offset and skipped.
    dead_letter_failures: Counter[str] = field(default_factory=Counter)
    #: Attempts of a batch that failed for a reason not its records' (then retried).
    batch_retries: int = 0
    #: The (topic, partition)s the stage's consumer held at the report.
    assignment: tuple[tuple[str, int], ...] = ()

    def add(self, other: EdgeCounts) -> None:
        """Add `other`'s counters (not its assignment) to these."""
        self.verdicts.update(other.verdicts)
        self.qualifying += other.qualifying
        self.releases += other.releases
        self.dead_letters.update(other.dead_letters)
        self.dead_letter_failures.update(other.dead_letter_failures)
        self.batch_retries += other.batch_retries


class BatchFailed(Exception):
    """The batch failed for a reason that is not about one of its records (delivery
    timed out, broker unreachable, registry down): produce it again after a backoff."""


class TransientDecodeError(BatchFailed):
    """A record could not be decoded for a reason that may pass (schema registry down)."""


class StageFailed(Exception):
    """The stage cannot go on in this process: a client is unusable, or a batch kept
    failing for longer than `retry_budget_s`. The process exits and is restarted."""


class ConsumerFailed(StageFailed):
    """The consumer reported a fatal error (e.g. fenced after a broker restart): it
    cannot consume or commit again, so the process exits and is restarted."""


class Stopped(Exception):
    """Asked to stop while waiting (for deliveries or a backoff)."""


@dataclass(slots=True)
class _Attempt:
    """One attempt at one batch: its counts, and what its delivery reports said."""

    messages: list[Any]
    counts: EdgeCounts = field(default_factory=EdgeCounts)
    #: Forwards refused for reasons of their own record: (message index, error).
    refused: list[tuple[int, Any]] = field(default_factory=list)
    #: Packs of several events refused for reasons of their own: sent again one
    #: event each, so only the events refused on their own are dead-lettered.
    split: list[Pack] = field(default_factory=list)
    #: Failures not about one record (the batch must be retried), and fatal ones.
    not_the_records: list[str] = field(default_factory=list)
    fatal: str | None = None


class EdgeStage:
    """The loop itself; `handle_batch` is the per-batch work, reusable by benchmarks."""

    def __init__(
        self,
        config: EdgeConfig,
        consumer: Any,
        producer: Any,
        codec: Codec | None = None,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`consumer` and `producer` are confluent-kafka clients (see `kafka_clients`),
        or anything with the same methods (tests, which also pass `sleep` and `clock`)."""
        self.config = config
        self.consumer = consumer
        self.producer = producer
        self.codec = codec if codec is not None else Codec.from_config(config.codec_config)
        self.counts = EdgeCounts()
        self._sleep = sleep
        self._clock = clock
        self._stopping: Callable[[], bool] = lambda: False
        self._report: Callable[[EdgeCounts], None] | None = None
        self._next_report = 0.0
        self._packer = Packer(config.internal_partitions)

    @classmethod
    def connect(cls, config: EdgeConfig, codec: Codec | None = None) -> EdgeStage:
        """A stage with its own Kafka clients, configured by `kafka_clients`."""
        return cls(config, *kafka_clients(config), codec)

    def subscribe(self) -> None:
        self.consumer.subscribe([self.config.verdicts_topic, self.config.support_topic])

    # -- the loop --------------------------------------------------------------------

    def run(self, stopping: Callable[[], bool], report: Callable[[EdgeCounts], None]) -> None:
        """Consume until `stopping()`; `report` receives counters every `report_every_s`.

        Raises StageFailed (ConsumerFailed) when the process must start over.
        """
        self._stopping, self._report = stopping, report
        self.subscribe()
        self._next_report = self._clock()
        try:
            while not stopping():
                messages = self.consumer.consume(self.config.batch_size, self.config.poll_timeout_s)
                if messages:
                    self.handle_batch(messages)
                self._heartbeat()
        except Stopped:
            pass
        finally:
            with contextlib.suppress(Exception):
                self.producer.flush(10)
            self.consumer.close()
            report(self.take_counts())

    def _heartbeat(self) -> None:
        """Report counters and assignment when due (also from inside waits)."""
        if self._report is None or self._clock() < self._next_report:
            return
        self._report_now()

    def _report_now(self) -> None:
        """Report counters and assignment (when running: `run` gave a report)."""
        if self._report is None:
            return
        self._next_report = self._clock() + self.config.report_every_s
        counts = self.take_counts()
        with contextlib.suppress(Exception):  # the assignment is information only
            counts.assignment = tuple(
                sorted((tp.topic, tp.partition) for tp in self.consumer.assignment())
            )
        self._report(counts)

    def _wait(self, seconds: float) -> None:
        """Sleep `seconds` in short steps, reporting meanwhile; Stopped if asked to stop."""
        until = self._clock() + seconds
        while (left := until - self._clock()) > 0:
            if self._stopping():
                raise Stopped
            self._sleep(min(left, 0.5))
            self._heartbeat()

    def take_counts(self) -> EdgeCounts:
        counts, self.counts = self.counts, EdgeCounts()
        return counts

    # -- one batch -------------------------------------------------------------------

    def handle_batch(self, messages: list[Any]) -> None:
        """Process, deliver, then commit one consumed batch (the at-least-once order).

        Afterwards every record of the batch is accounted for: counted and dropped,
        forwarded, dead-lettered, or counted in `dead_letter_failures`. A failure not
        about one record retries the whole batch after a backoff (replays are
        harmless, see the module doc). Raises StageFailed when the batch cannot be
        delivered within `retry_budget_s` or a client became unusable, and
        ConsumerFailed for a fatal consumer error.
        """
        config = self.config
        give_up_at = self._clock() + config.retry_budget_s
        delay = config.retry_initial_s
        while True:
            attempt = _Attempt(messages)
            try:
                self._process_batch(attempt)
                self._deliver(attempt)
                self._dead_letter_refused(attempt)
                break
            except BatchFailed as error:
                if self._clock() + delay > give_up_at:
                    raise StageFailed(
                        f"a batch could not be delivered for {config.retry_budget_s:.0f}s: {error}"
                    ) from error
                log.warning("batch failed (%s); producing it again in %.1fs", error, delay)
                self.counts.batch_retries += 1
                self._wait(delay)
                delay = min(delay * 2, config.retry_max_s)
        self.counts.add(attempt.counts)
        self._report_now()  # counted before committed: a kill now loses no count
        self.commit(messages)

    def _process_batch(self, attempt: _Attempt) -> None:
        from confluent_kafka import KafkaError

        self._packer.clear()  # what a failed attempt at this batch had packed
        for index, message in enumerate(attempt.messages):
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
            try:
                event = self._decode(attempt.counts, message)
                if event is not None:
                    self._forward(attempt, index, event)
            except DecodeError as error:
                if error.reason == "registry_unavailable":
                    raise TransientDecodeError(str(error)) from error
                self._dead_letter(attempt, index, error.reason, error.detail)
            except Exception as error:  # a bug: it may cost this record, never the stream
                log.exception("handling %s failed", _where(message))
                self._dead_letter(
                    attempt, index, "internal_error", f"{type(error).__name__}: {error}"
                )
        self._send_packs(attempt)

    def _decode(self, counts: EdgeCounts, message: Any) -> events.MailboxEvent | None:
        """The event to forward, or None for a verdict that does not qualify (counted).
        Raises DecodeError."""
        value = message.value()
        if value is None:
            raise DecodeError("not_avro", "no value (a tombstone)")
        records.check_record_size(value)
        name, record = self.codec.decode(value)
        if message.topic() == self.config.verdicts_topic:
            if name != VERDICT:
                raise DecodeError("wrong_schema", f"expected {VERDICT}, got {name}")
            verdict = records.verdict_from_record(record)
            counts.verdicts[verdict.direction.value, verdict.verdict.value] += 1
            if not verdict.qualifies:
                return None
            counts.qualifying += 1
            return verdict
        if name != SUPPORT_ACTION:
            raise DecodeError("wrong_schema", f"expected {SUPPORT_ACTION}, got {name}")
        # Only a signed, fresh action may lift a block (DecodeError otherwise).
        self.config.action_keys.verify(record, int(time.time() * 1000))
        release = records.release_from_record(record)
        counts.releases += 1
        return release

    def _forward(self, attempt: _Attempt, index: int, event: events.MailboxEvent) -> None:
        """Add a qualifying verdict or a release (of the record at `index`) to the batch's
        packs: the one place that decides how events reach the internal topic."""
        self._packer.add(event, index)

    def _send_packs(self, attempt: _Attempt) -> None:
        """Produce the batch's packs, one or more per partition, stamped with the wall
        clock once: their events happen at that time (`processor.stream.events`)."""
        for pack in self._packer.drain(int(time.time() * 1000)):
            self._send_pack(attempt, pack)

    def _send_pack(self, attempt: _Attempt, pack: Pack) -> None:
        topic = self.config.internal_topic
        self._produce(attempt, pack.sources, None, topic, None, pack.value, pack)

    def _dead_letter(self, attempt: _Attempt, index: int, reason: str, detail: str) -> None:
        """Send the record at `index` to the dead-letter topic (bounded, whatever its size)."""
        message = attempt.messages[index]
        try:
            record = records.dead_letter_record(
                reason,
                detail,
                source_topic=message.topic(),
                source_partition=message.partition(),
                source_offset=message.offset(),
                key=message.key(),
                value=message.value(),
                at_ms=int(time.time() * 1000),
            )
            value = self.codec.encode("DeadLetter", record)
        except Exception as error:  # cannot even be built: account for it, go on
            self._lost(attempt, index, reason, f"dead letter not encodable: {error}")
            return
        key = records.bounded_copy(message.key())
        self._produce(attempt, (index,), reason, self.config.dead_letter_topic, key, value)

    def _produce(
        self,
        attempt: _Attempt,
        sources: tuple[int, ...],
        dead_letter: str | None,
        topic: str,
        key: bytes | None,
        value: bytes,
        pack: Pack | None = None,
    ) -> None:
        """Produce one record for the messages at `sources`: one message's dead letter
        (`dead_letter`, its reason), or a `pack` of forwards; a refusal is handled like a
        failed delivery report."""
        from confluent_kafka import KafkaError, KafkaException

        on_delivery = functools.partial(self._delivered, attempt, sources, dead_letter, pack)
        where = {} if pack is None else {"partition": pack.partition}
        while True:
            try:
                self.producer.produce(topic, value, key, on_delivery=on_delivery, **where)
                return
            except BufferError:  # local queue full: let deliveries drain
                self.producer.poll(0.05)
                self._heartbeat()
            except KafkaException as exc:  # refused before sending (too large, ...)
                self._delivered(attempt, sources, dead_letter, pack, exc.args[0], None)
                return
            except Exception as exc:  # refused its arguments: this record's, by construction
                error = KafkaError(KafkaError._INVALID_ARG, f"{type(exc).__name__}: {exc}")
                self._delivered(attempt, sources, dead_letter, pack, error, None)
                return

    def _delivered(
        self,
        attempt: _Attempt,
        sources: tuple[int, ...],
        dead_letter: str | None,
        pack: Pack | None,
        error: Any,
        _: Any,
    ) -> None:
        """The delivery report of one produce (or a produce refused at once)."""
        if error is None:
            if dead_letter is not None:
                attempt.counts.dead_letters[dead_letter] += 1
            return
        kind = classify(error)
        where = _where(attempt.messages[sources[0]])
        if kind == "fatal":
            attempt.fatal = f"{where}: {error}"
        elif kind == "retry":
            attempt.not_the_records.append(f"{where}: {error}")
        elif pack is not None and len(pack.entries) > 1:
            attempt.split.append(pack)
        elif dead_letter is None:
            attempt.refused.extend((index, error) for index in sources)
        else:
            self._lost(attempt, sources[0], dead_letter, f"dead letter refused: {error}")

    def _lost(self, attempt: _Attempt, index: int, reason: str, detail: str) -> None:
        """A record that cannot even be dead-lettered: counted and logged, then skipped."""
        attempt.counts.dead_letter_failures[reason] += 1
        log.error(
            "%s (%s) could not be dead-lettered and is skipped: %s",
            _where(attempt.messages[index]),
            reason,
            detail,
        )

    def _deliver(self, attempt: _Attempt) -> None:
        """Wait for the delivery report of every produce so far.

        Raises BatchFailed when a delivery failed for a reason not its record's, and
        StageFailed when the producer is unusable or its reports do not come.
        """
        config = self.config
        deadline = self._clock() + config.delivery_timeout_s + 15
        while self.producer.flush(0.5) > 0:
            self._heartbeat()
            if self._stopping():
                raise Stopped
            if self._clock() > deadline:
                # librdkafka reports every message by message.timeout.ms: it is stuck.
                raise StageFailed(
                    f"no delivery report {config.delivery_timeout_s + 15:.0f}s after producing"
                )
        if attempt.fatal is not None:
            raise StageFailed(f"the producer failed fatally: {attempt.fatal}")
        if attempt.not_the_records:
            failures = attempt.not_the_records
            raise BatchFailed(f"{len(failures)} produce(s) failed, e.g. {failures[0]}")

    def _dead_letter_refused(self, attempt: _Attempt) -> None:
        """Send the events of refused packs again one each, then dead-letter the records
        whose forward was refused on its own, and wait for all of it (a dead letter's
        own refusal is counted as lost). Ends: a pack is split once, a record is
        dead-lettered once."""
        from confluent_kafka import KafkaError

        while attempt.split or attempt.refused:
            split, attempt.split = attempt.split, []
            for pack in split:
                for single in pack.singles():
                    self._send_pack(attempt, single)
            refused, attempt.refused = attempt.refused, []
            for index, error in refused:
                too_large = error.code() == KafkaError.MSG_SIZE_TOO_LARGE
                reason = "record_too_large" if too_large else "produce_failed"
                detail = f"forward to {self.config.internal_topic} refused: {error}"
                self._dead_letter(attempt, index, reason, detail)
            self._deliver(attempt)

    def commit(self, messages: list[Any]) -> None:
        """Commit the offsets after the last message of each partition in `messages`."""
        from confluent_kafka import KafkaException, TopicPartition

        last: dict[tuple[str, int], int] = {}
        for message in messages:
            if message.error() is None:
                last[message.topic(), message.partition()] = message.offset()
        if last:
            try:
                # Asynchronous is enough: a lost commit only replays delivered work.
                self.consumer.commit(
                    offsets=[TopicPartition(t, p, o + 1) for (t, p), o in last.items()],
                    asynchronous=True,
                )
            except KafkaException as error:  # e.g. partitions revoked meanwhile
                log.warning("commit failed (the batch will be read again): %s", error)


def _where(message: Any) -> str:
    return f"{message.topic()}[{message.partition()}]@{message.offset()}"


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
            # Prefetched records wait here, hostile megabyte values included: 16 MiB is
            # over a second of verdicts at 100 k/s and bounds the process's memory.
            "queued.max.messages.kbytes": 16384,
        }
    )
    producer = Producer(
        {
            **config.client_config,
            # The Java client's (and aiokafka's) partitioner: the timer's ticks,
            # sent by Faust, must land on the partition of the mailbox's verdicts.
            "partitioner": "murmur2_random",
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            "message.timeout.ms": int(config.delivery_timeout_s * 1000),
            # No compression: aiokafka (the agent's consumer) ships without lz4
            # and snappy, and the packs are few.
        }
    )
    return consumer, producer
