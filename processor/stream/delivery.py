"""Delivering the agent's decisions: a confluent-kafka producer awaited from asyncio.

The agent sends the decisions of a whole pack at once and must know, before it
stores any state, which were delivered. librdkafka does the batching and the
network in its own threads; `deliver` queues the records and waits, in a thread
of the default executor, for their delivery reports (`flush`), so the event loop
and Faust go on meanwhile.

Failures are of two kinds (README, "Crash safety"):

* **the record itself** can never be written — larger than the broker or the
  client accept (`MSG_SIZE_TOO_LARGE`), or refused as invalid (`INVALID_RECORD`,
  `INVALID_MSG_SIZE`): retrying would stall the partition behind it for ever. Such
  a record is *undeliverable*: `deliver` returns it, and the caller logs and counts
  it and goes on (the state is stored as decided).
* **anything else** (broker unreachable, timeouts, no leader, authorisation): the
  record may be written later. `deliver` sends the whole batch again, in order,
  until it is delivered (duplicates carry the same ids, and the last record of
  each key is again the right one on the compacted control topic), and the
  agent waits — no state is stored meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from processor.stream.outputs import OutputRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A record the cluster will never accept, and why."""

    record: OutputRecord
    #: The Kafka error code's name (e.g. MSG_SIZE_TOO_LARGE), and its description.
    reason: str
    detail: str


def record_level_codes() -> frozenset[int]:
    """librdkafka error codes that condemn one record, not the cluster or the batch."""
    from confluent_kafka import KafkaError

    return frozenset(
        {
            # The broker's limit, and the client's own (message.max.bytes).
            KafkaError.MSG_SIZE_TOO_LARGE,
            KafkaError.INVALID_MSG_SIZE,
            KafkaError.INVALID_RECORD,
            KafkaError.INVALID_MSG,
        }
    )


class Delivery:
    """An idempotent producer for the decision topics (acks=all, in-order retries)."""

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        retry_backoff_s: float = 1.0,
        on_retry: Callable[[], None] | None = None,
        producer_factory: Callable[[dict[str, Any]], Any] | None = None,
    ) -> None:
        """`producer_factory` makes the producer from its settings (default:
        confluent_kafka.Producer; tests give one that fails on purpose)."""
        if producer_factory is None:
            from confluent_kafka import Producer

            producer_factory = Producer
        self._factory = producer_factory
        self._config = {
            **client_config,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            # A decision not delivered in 30 s is reported and the batch sent again
            # (logged and counted), rather than waited for silently.
            "delivery.timeout.ms": 30_000,
        }
        self._producer = producer_factory(self._config)
        self._record_level = record_level_codes()
        self._backoff = retry_backoff_s
        self._on_retry = on_retry

    async def deliver(self, records: Sequence[OutputRecord]) -> list[Undeliverable]:
        """Produce `records` in order and return once each is delivered or undeliverable.

        Returns the undeliverable ones; retries everything else until delivered.
        """
        undeliverable: list[Undeliverable] = []
        todo = list(records)
        while todo:
            retry, condemned = await self._attempt(todo)
            undeliverable += condemned
            if not retry:
                break
            if self._on_retry is not None:
                self._on_retry()
            log.warning("decisions not delivered (%s); sending the batch again", retry)
            dropped = {u.record for u in condemned}
            todo = [record for record in todo if record not in dropped]
            await asyncio.sleep(self._backoff)
        return undeliverable

    async def _attempt(self, records: list[OutputRecord]) -> tuple[str, list[Undeliverable]]:
        """One pass: (why the batch must be sent again, or "", undeliverable records)."""
        from confluent_kafka import KafkaException

        producer = self._producer
        condemned: list[Undeliverable] = []
        failures: list[tuple[Any, Any]] = []  # (KafkaError, Message), from the flush thread

        def on_delivery(error: Any, message: Any) -> None:
            if error is not None:
                failures.append((error, message))

        retry = ""
        for record in records:
            while not retry:
                try:
                    producer.produce(
                        record.topic,
                        record.value,
                        record.key,
                        headers=list(record.headers),
                        on_delivery=on_delivery,
                    )
                    break
                except BufferError:  # local queue full: let deliveries drain
                    await asyncio.to_thread(producer.flush, 0.1)
                except KafkaException as exc:
                    error = exc.args[0]
                    if error.code() in self._record_level:
                        condemned.append(Undeliverable(record, error.name(), error.str()))
                        break
                    retry = error.str()  # e.g. an unknown topic: the rest waits with it
        while await asyncio.to_thread(producer.flush, 5.0):
            pass  # still waiting for reports: librdkafka retries until delivery.timeout.ms
        for error, message in failures:
            if error.fatal():
                if not retry.startswith("fatal"):
                    # The idempotent producer cannot go on (e.g. fenced); a new one can.
                    self._replace_producer()
                retry = f"fatal producer error: {error.str()}"
            elif error.code() in self._record_level:
                record = OutputRecord(message.topic(), message.key(), message.value())
                condemned.append(Undeliverable(record, error.name(), error.str()))
            else:
                retry = retry or error.str()
        return retry, condemned

    def _replace_producer(self) -> None:
        old, self._producer = self._producer, self._factory(self._config)
        old.flush(0)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
