"""Regression: Faust's producer buffer flush gave up after 0.1 s, so offsets could be
committed before table changes reached the changelog (state lost on a crash)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from faust.transport.producer import ProducerBuffer

from processor.stream import faust_fixes


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
