"""Regression for processor.stream.aiokafka_fixes (issue 11): while the broker was
down, aiokafka's producer asked for a metadata update again as soon as the last one
had failed, a busy loop that logged two ERROR lines per turn (4,600/s in a live check,
25 CPU s of a 30 s outage here)."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from aiokafka.client import AIOKafkaClient
from aiokafka.protocol.metadata import MetadataResponse_v0

from processor.stream import aiokafka_fixes
from processor.stream.aiokafka_fixes import MAX_BACKOFF_S, metadata_backoff_s


def closed_port() -> int:
    """A loopback port nothing listens on: connecting is refused at once, as it is
    while a local broker is stopped."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def updates_forced_for(seconds: float, port: int) -> None:
    """What aiokafka's sender does while a partition has no leader: force a metadata
    update, wait for it, and again (aiokafka/producer/sender.py, _sender_routine)."""
    client = AIOKafkaClient(bootstrap_servers=f"127.0.0.1:{port}")
    # The metadata a client holds once it has known the broker: node 1, now gone.
    client.cluster.update_metadata(MetadataResponse_v0([(1, "127.0.0.1", port)], []))
    client._sync_task = asyncio.create_task(client._md_synchronizer())
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    try:
        while loop.time() < deadline:
            await client.force_metadata_update()
    finally:
        await client.close()


def test_metadata_updates_back_off_while_the_broker_is_unreachable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    aiokafka_fixes.install()
    caplog.set_level(logging.ERROR, logger="aiokafka")

    asyncio.run(updates_forced_for(1.0, closed_port()))

    failed = [r for r in caplog.records if r.msg == "Unable to update metadata from %s"]
    # Attempts at 0, 0.2 and 0.6 s (waits of 0.2, 0.4, 0.8 s); without the fix the
    # loop made hundreds in the same second.
    assert 2 <= len(failed) <= 4


def test_metadata_backoff_doubles_per_failure_up_to_its_cap() -> None:
    assert metadata_backoff_s(0.1, 0) == pytest.approx(0.1)  # after a success
    assert [metadata_backoff_s(0.1, n) for n in (1, 2, 3)] == pytest.approx([0.2, 0.4, 0.8])
    assert metadata_backoff_s(0.1, 4) == MAX_BACKOFF_S
    assert metadata_backoff_s(0.1, 100_000) == MAX_BACKOFF_S  # a day-long outage: no overflow
    assert metadata_backoff_s(2.0, 3) == 2.0  # a longer retry_backoff_ms is kept


def test_install_is_idempotent() -> None:
    aiokafka_fixes.install()
    patched = AIOKafkaClient._metadata_update
    aiokafka_fixes.install()
    assert AIOKafkaClient._metadata_update is patched
