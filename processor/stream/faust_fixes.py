"""A work-around for a faust-streaming bug that breaks at-least-once delivery.

Faust writes table changes to the changelog through a buffer (`ProducerBuffer`)
that a background task drains, and flushes that buffer before it commits consumer
offsets. But `ProducerBuffer.flush` gives up as soon as one message takes more than
0.1 s to leave the buffer (faust-streaming 0.15, `flush_atmost`): under load the
offsets are then committed while changelog records are still waiting, and a worker
killed at that moment loses those state changes for good — its successor resumes
after the committed offset and recovers a changelog without them. (Seen in
`test_one_of_two_workers_killed`: counted verdicts of the killed worker's last
seconds were gone.) Here `flush` waits until the buffer is really empty.
"""

from __future__ import annotations

import asyncio
from typing import Any

_MARK = "_sendguard_drains_fully"


def install() -> None:
    """Make `ProducerBuffer.flush` drain the buffer completely (idempotent)."""
    from faust.transport.producer import ProducerBuffer

    if getattr(ProducerBuffer.flush, _MARK, False):
        return

    async def flush(self: Any) -> None:
        while self.size:
            if self.state != "running":
                raise RuntimeError("Cannot flush: Producer not Running")
            self.message_sent.clear()
            try:
                await asyncio.wait_for(self.message_sent.wait(), timeout=0.1)
            except TimeoutError:
                continue  # still draining: a slow send is no reason to stop waiting
        # The message taken last may still be on its way into the Kafka client; one
        # turn of the loop lets the draining task hand it over before the client's
        # own flush runs.
        await asyncio.sleep(0)

    setattr(flush, _MARK, True)
    ProducerBuffer.flush = flush  # type: ignore[method-assign]
