"""Kafka delivery for an asyncio server: produce now, await the broker's acknowledgement.

One confluent-kafka producer batches the records of all concurrent requests
(`linger.ms`); a thread serves its delivery callbacks and hands each result to the
event loop, so a request handler can `await` its own record's delivery without
blocking anyone else. Backpressure is librdkafka's bounded local queue: when it is
full, `send` raises `QueueFull` at once instead of waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The producer's local queue holds its maximum of undelivered records."""


class DeliveryFailed(Exception):
    """The broker did not take the record (the message names librdkafka's error)."""


class KafkaDelivery:
    """A producer whose `send` returns a future resolved when the record is delivered."""

    def __init__(
        self,
        client_config: dict[str, Any],
        *,
        max_pending: int,
        delivery_timeout_s: float,
        on_result: Callable[[float, bool], None] | None = None,
    ) -> None:
        """`max_pending` bounds the records queued or in flight; `delivery_timeout_s` is
        how long librdkafka keeps retrying one before failing it; `on_result` gets each
        record's seconds from `send` to its outcome and whether it was delivered (for
        metrics), also when its waiter has given up."""
        from confluent_kafka import Producer

        from processor.stream.librdkafka_settings import worker_client_settings

        self._producer = Producer(
            {
                **client_config,
                # The same placement as sendguard's other producers (Java's partitioner).
                "partitioner": "murmur2_random",
                "enable.idempotence": True,
                "acks": "all",
                # Concurrent requests ride in one batch; a verdict waits at most 5 ms.
                "linger.ms": 5,
                "queue.buffering.max.messages": max_pending,
                "message.timeout.ms": int(delivery_timeout_s * 1000),
                # The worker's outage behaviour: a slower reconnect, and librdkafka's
                # lines through `logging` (JSON, capped like every other repeated line).
                **worker_client_settings(),
            }
        )
        self._on_result = on_result
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="kafka-delivery", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.1)

    def send(self, topic: str, key: bytes | None, value: bytes) -> asyncio.Future[None]:
        """Queue one record; the future completes on delivery or fails with DeliveryFailed.

        Raises QueueFull when the local queue is full, DeliveryFailed when librdkafka
        refuses the record at once (too large, unknown topic); nothing was queued then.
        Call from the event loop's thread.
        """
        from confluent_kafka import KafkaException

        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        started = time.monotonic()

        def delivered(error: Any, _message: Any) -> None:
            # On the delivery thread: hand over to the loop, which owns the future.
            seconds = time.monotonic() - started
            # RuntimeError: the loop is closed, so nobody waits any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._settle, future, error, seconds)

        try:
            self._producer.produce(topic, value, key, on_delivery=delivered)
        except BufferError:
            raise QueueFull(f"{len(self._producer)} records waiting for the broker") from None
        except KafkaException as error:
            raise DeliveryFailed(str(error)) from None
        return future

    def _settle(self, future: asyncio.Future[None], error: Any, seconds: float) -> None:
        if self._on_result is not None:
            self._on_result(seconds, error is None)
        if future.done():  # its waiter gave up (cancelled it); the outcome is only counted
            return
        if error is not None:
            future.set_exception(DeliveryFailed(str(error)))
        else:
            future.set_result(None)

    @property
    def pending(self) -> int:
        """Records queued or in flight."""
        return len(self._producer)

    def broker_reachable(self, topics: tuple[str, ...], timeout_s: float) -> str | None:
        """None when the broker answers and knows every topic, else what is wrong (blocking)."""
        from confluent_kafka import KafkaException

        try:
            metadata = self._producer.list_topics(timeout=timeout_s)
        except KafkaException as error:
            return f"broker not reachable: {error}"
        for topic in topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                return f"topic {topic} does not exist"
        return None

    def close(self, timeout_s: float) -> int:
        """Deliver what is queued (up to `timeout_s`), stop; returns the records left."""
        self._stop.set()
        self._thread.join()
        left = int(self._producer.flush(timeout_s))
        if left:
            log.warning("%d record(s) not delivered at shutdown", left)
        return left
