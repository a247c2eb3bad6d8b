"""Regressions for processor.stream.faust_fixes:
1. Faust's producer buffer flush gave up after 0.1 s, so offsets could be committed
   before table changes reached the changelog (state lost on a crash).
2. After a rebalance, partitions the group never committed were not rewound past the
   records Faust dropped during recovery (a survivor skipped a dead worker's events)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

from processor.stream import faust_fixes

# -- 1. flush drains the buffer


class SlowBuffer(ProducerBuffer):
    """A buffer whose every send takes longer than Faust's 0.1 s patience."""

    async def _send_pending(self, fut: Any) -> None:
        await asyncio.sleep(0.25)


def test_flush_waits_until_the_buffer_is_empty() -> None:
    faust_fixes.install()

    async def scenario() -> int:
        buffer = SlowBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        await buffer.start()
        try:
            for n in range(3):
                buffer.put(n)  # type: ignore[arg-type]
            await buffer.flush()
            return buffer.size
        finally:
            await buffer.stop()

    assert asyncio.run(scenario()) == 0


def test_install_is_idempotent() -> None:
    faust_fixes.install()
    patched = ProducerBuffer.flush
    faust_fixes.install()
    assert ProducerBuffer.flush is patched


# -- 2. partitions the group never committed are rewound, not left where prefetch was


class RecordingConsumer:
    """The two aiokafka consumer calls the fix makes, recorded."""

    def __init__(self, committed: dict[Any, int | None]) -> None:
        self.committed = committed
        self.sought_to_beginning: list[Any] = []

    async def seek_to_committed(self) -> dict[Any, int | None]:
        return self.committed

    async def seek_to_beginning(self, *partitions: Any) -> bool:
        self.sought_to_beginning.extend(partitions)
        return True


def test_stream_partitions_without_a_commit_are_sought_to_their_beginning() -> None:
    from aiokafka import TopicPartition

    never, zero, five = (TopicPartition("events", p) for p in range(3))
    changelog = TopicPartition("state-changelog", 0)
    consumer = RecordingConsumer({never: None, zero: 0, five: 5, changelog: None})
    app = SimpleNamespace(topics=SimpleNamespace(acking_topics={"events"}))

    committed = asyncio.run(faust_fixes.seek_streams_to_committed(consumer, app))

    # aiokafka seeks only offsets above 0 itself; the fix adds the others, and
    # leaves the changelog (Faust positions those from its own offsets).
    assert sorted(consumer.sought_to_beginning) == [never, zero]
    assert committed == {never: None, zero: 0, five: 5, changelog: None}


def test_the_faust_consumer_thread_uses_the_rewinding_seek() -> None:
    from aiokafka import TopicPartition
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    faust_fixes.install()
    partition = TopicPartition("events", 0)
    consumer = RecordingConsumer({partition: None})
    calls: list[Any] = []

    async def call_thread(function: Any, *args: Any) -> Any:
        calls.append(function)
        return await function(*args)

    thread = SimpleNamespace(
        _ensure_consumer=lambda: consumer,
        call_thread=call_thread,
        app=SimpleNamespace(topics=SimpleNamespace(acking_topics={"events"})),
    )
    asyncio.run(AIOKafkaConsumerThread.seek_to_committed(thread))  # type: ignore[arg-type]
    assert calls == [faust_fixes.seek_streams_to_committed]
    assert consumer.sought_to_beginning == [partition]


# -- 3. an ack of a message from an earlier consumer generation commits nothing


class FetchedMessage:
    """The fields of a Faust ConsumerMessage that acknowledging it reads."""

    def __init__(self, offset: int, generation_id: int) -> None:
        from faust.types import TP

        self.tp, self.topic = TP("events", 0), "events"
        self.offset, self.generation_id, self.acked = offset, generation_id, False


def test_an_ack_from_a_past_generation_marks_the_message_done_but_commits_nothing() -> None:
    from collections import defaultdict

    from faust.transport.consumer import Consumer

    faust_fixes.install()
    consumer = SimpleNamespace(
        app=SimpleNamespace(
            consumer_generation_id=3,
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
        ),
        _committed_offset=defaultdict(lambda: None),
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
        _unacked_messages=set(),
        _n_acked=0,
        _waiting_for_ack=None,
    )
    stale, current = FetchedMessage(5, generation_id=2), FetchedMessage(6, generation_id=3)
    consumer._unacked_messages.update({stale, current})

    assert Consumer.ack(consumer, stale) is False  # type: ignore[arg-type]
    assert stale.acked and stale not in consumer._unacked_messages
    assert Consumer.ack(consumer, current) is True  # type: ignore[arg-type]
    # Only the current generation's offset may move the committed offset.
    assert consumer._acked[current.tp] == [6]
