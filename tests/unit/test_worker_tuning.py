"""The worker's process-level settings for throughput (processor.stream.app, heap)."""

from __future__ import annotations

import asyncio
import gc
from types import SimpleNamespace

from faust.transport.producer import ProducerBuffer

from processor.stream.app import CHANGELOG_BUFFER_MESSAGES, make_room_for_a_batch_of_changes
from processor.stream.heap import GC_THRESHOLDS, freeze_startup_objects, settle_heap


def test_a_batch_of_table_changes_does_not_hold_up_the_stream() -> None:
    """With Faust's default (100) the stream's next record waits until the changelog
    producer took all but 100 of a batch's changes; here a batch of thousands waits
    in the buffer and the stream goes on (the commit still drains it first)."""
    make_room_for_a_batch_of_changes()
    changes = 5_000

    async def scenario() -> int:
        buffer = ProducerBuffer()
        buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))  # type: ignore[assignment]
        for n in range(changes):
            buffer.put(n)  # type: ignore[arg-type]
        # Not started, so nothing drains: Faust's default would have to flush here
        # and raises "Cannot flush: Producer not Running".
        await asyncio.wait_for(buffer.wait_until_ebb(), timeout=1.0)
        return buffer.size

    assert changes < CHANGELOG_BUFFER_MESSAGES
    assert asyncio.run(scenario()) == changes


def test_startup_objects_are_frozen_out_of_the_collectors_walks() -> None:
    directory = [{"mailbox": f"m{n}", "devices": [f"d{n}"]} for n in range(1000)]
    before = gc.get_freeze_count()
    try:
        freeze_startup_objects()
        assert gc.get_freeze_count() >= before + len(directory)
        assert directory[0]["devices"] == ["d0"]  # still alive and usable
    finally:
        gc.unfreeze()


def test_settled_heap_collects_young_objects_less_often() -> None:
    thresholds = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > thresholds[0]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)
