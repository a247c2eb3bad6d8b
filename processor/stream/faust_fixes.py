"""Work-arounds for faust-streaming bugs that break at-least-once delivery.

The first two were found by the crash tests (tests/integration/
test_worker_crashes.py), the third by reading the code behind the second; all
lose events or state changes silently, and each has a regression test in
tests/unit/test_faust_fixes.py that fails without it.

1. **Flush gives up.** Faust writes table changes to the changelog through a buffer
   (`ProducerBuffer`) that a background task drains, and flushes that buffer before
   it commits consumer offsets. But `ProducerBuffer.flush` gives up as soon as one
   message takes more than 0.1 s to leave the buffer (faust-streaming 0.15,
   `flush_atmost`): under load the offsets are then committed while changelog
   records are still waiting, and a worker killed at that moment loses those state
   changes for good. Here `flush` waits until the buffer is really empty.

2. **No rewind for partitions never committed.** After a rebalance Faust lets the
   fetcher run during recovery and drops what it fetched for stream partitions that
   were still paused; it then relies on "seek to committed offsets" to read those
   records again. aiokafka's `seek_to_committed` only seeks partitions whose
   committed offset is above 0, so a partition the group never committed (a worker
   killed in its first seconds, before its first commit) keeps the fetch position
   beyond the dropped records: the survivor that takes it over skips them (seen in
   `test_one_of_two_workers_killed_survivor_takes_over`: a partition's events 3..12
   never reached the agent; faust-streaming issue #216 describes the same skip).
   Here such partitions of the agents' topics are sought to their beginning, which
   is what "no committed offset" means under `auto_offset_reset="earliest"`.

3. **Acks of a past generation count.** A message fetched before a rebalance and
   reaching the stream after it is skipped — and acknowledged, so its offset joins
   the offsets to commit. If it directly follows the committed offset, a commit
   made after the rebalance moves past it before the partition, sought back to
   the committed offset, has read it again; a crash then loses it. Here the
   acknowledgement of a message from an earlier consumer generation only marks it
   done (nothing waits for it) and does not count towards a commit: it is read
   again in the current generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

_MARK = "_sendguard_fixed"
#: How often a flush looks whether the producer buffer is empty yet.
_FLUSH_POLL_S = 0.005


def install() -> None:
    """Apply the work-arounds (idempotent)."""
    _drain_fully_on_flush()
    _rewind_uncommitted_partitions()
    _ignore_acks_of_past_generations()


def _drain_fully_on_flush() -> None:
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer.flush, _MARK, False):
        return

    async def flush(self: Any) -> None:
        while self.size:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            # Looked at every few milliseconds, not woken per message sent: under load
            # a commit's flush lasts while thousands of changes drain, and a wake-up
            # (a wait_for task and timer) per message cost 2 % of the worker's CPU.
            await asyncio.sleep(_FLUSH_POLL_S)
        # The message taken last may still be on its way into the Kafka client; one
        # turn of the loop lets the draining task hand it over before the client's
        # own flush runs.
        await asyncio.sleep(0)

    setattr(flush, _MARK, True)
    ProducerBuffer.flush = flush  # type: ignore[method-assign]


def _rewind_uncommitted_partitions() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    if getattr(AIOKafkaConsumerThread.seek_to_committed, _MARK, False):
        return

    async def seek_to_committed(self: Any) -> Any:
        consumer = self._ensure_consumer()
        return await self.call_thread(seek_streams_to_committed, consumer, self.app)

    setattr(seek_to_committed, _MARK, True)
    AIOKafkaConsumerThread.seek_to_committed = seek_to_committed  # type: ignore[method-assign]


async def seek_streams_to_committed(consumer: Any, app: Any) -> Mapping[Any, int | None]:
    """`consumer.seek_to_committed()`, and the agents' partitions that have no
    committed offset (None or 0) to their beginning. Changelog partitions are left
    alone: Faust positions those itself, from its own offsets."""
    committed: Mapping[Any, int | None] = await consumer.seek_to_committed()
    stream_topics = app.topics.acking_topics
    never_committed = [
        tp for tp, offset in committed.items() if not offset and tp.topic in stream_topics
    ]
    if never_committed:
        await consumer.seek_to_beginning(*never_committed)
    return committed


def _ignore_acks_of_past_generations() -> None:
    from faust.transport.consumer import Consumer

    if getattr(Consumer.ack, _MARK, False):
        return
    count_ack = Consumer.ack

    def ack(self: Any, message: Any) -> bool:
        if not is_from_past_generation(message, self.app.consumer_generation_id):
            return bool(count_ack(self, message))
        forget_stale_ack(self, message)
        return False

    setattr(ack, _MARK, True)
    Consumer.ack = ack  # type: ignore[method-assign]


def is_from_past_generation(message: Any, generation_id: int) -> bool:
    return message.generation_id is not None and message.generation_id != generation_id


def forget_stale_ack(consumer: Any, message: Any) -> None:
    """Mark `message` acknowledged without adding its offset to those to commit."""
    from faust.types.tuples import ack_lock
    from mode.utils.futures import notify

    with ack_lock:
        message.acked = True
        consumer._unacked_messages.discard(message)
        notify(consumer._waiting_for_ack)
