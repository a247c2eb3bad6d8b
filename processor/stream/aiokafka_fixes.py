"""A work-around for an aiokafka defect that makes a broker outage burn a CPU core.

Faust talks to Kafka through aiokafka (0.14). An aiokafka client keeps its cluster
metadata up to date in one background task, `AIOKafkaClient._md_synchronizer`
(aiokafka/client.py), which runs `_metadata_update` whenever a caller asks for it
with `force_metadata_update()`. Nothing spaces those updates out, and several
callers ask again as soon as the previous update has finished:

* the producer's sender (aiokafka/producer/sender.py, `Sender._sender_routine`)
  loops "force an update, wait for it, look again" for as long as a partition it
  holds records for has no known leader. The comment there says "try to update
  cluster metadata and wait backoff time", but no backoff is waited;
* the consumer's fetcher does the same for partitions without a leader
  (aiokafka/consumer/fetcher.py, `_fetch_requests_routine`, `invalid_metadata`).

While a broker stops, the partitions it led are reported without a leader
(leader -1: a produce in that moment fails with NotLeaderForPartition, and the
metadata fetched after it says -1). Once the broker is gone, every update fails at
once (connection refused), and the sender's loop turns into a busy loop of
connection attempts, each logged twice at ERROR ("Unable connect to node with id
1", "Unable to update metadata from [1]"). Faust's producer keeps its records for
`producer_request_timeout` (20 minutes), so the loop lasts for the whole outage:
measured here, 25 of 34 CPU seconds and 311,528 log lines (58 MB) for a 30 s
outage of a worker under traffic; issue 11 saw 4,600 such lines a second.

No setting helps: `retry_backoff_ms` is not used on this path (and Faust does not
pass it), and `metadata_max_age_ms` only sets the interval when nobody forces an
update. So `_metadata_update` is wrapped: a client waits `retry_backoff_ms` after
an update before it starts the next one (what the Java client does with
`retry.backoff.ms`), and after failures in a row that wait doubles each time, up
to `MAX_BACKOFF_S` (the Java client's `retry.backoff.max.ms` default). Every
caller waits on the update it forced, so spacing the updates spaces the loops.
The regression test is tests/unit/test_aiokafka_fixes.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

_MARK = "_sendguard_fixed"
_FAILURES = "_sendguard_metadata_failures"
_NOT_BEFORE = "_sendguard_metadata_not_before"

#: The longest wait between two metadata updates of one client (the Java client's
#: default `retry.backoff.max.ms`): how much later than possible a worker notices
#: that the broker is back, at most.
MAX_BACKOFF_S = 1.0


def install() -> None:
    """Apply the work-around (idempotent)."""
    _back_off_metadata_updates()


def metadata_backoff_s(retry_backoff_s: float, failures: int) -> float:
    """Seconds a client waits before its next metadata update: `retry_backoff_s`
    after a successful one (`failures` == 0), doubled for each failure in a row,
    at most `MAX_BACKOFF_S` (or `retry_backoff_s`, if that is longer)."""
    longest = max(MAX_BACKOFF_S, retry_backoff_s)
    return float(min(retry_backoff_s * 2 ** min(failures, 32), longest))  # 2**n would overflow


def _back_off_metadata_updates() -> None:
    from aiokafka.client import AIOKafkaClient

    if getattr(AIOKafkaClient._metadata_update, _MARK, False):
        return
    update = AIOKafkaClient._metadata_update

    async def _metadata_update(self: Any, cluster_metadata: Any, topics: Any) -> bool:
        loop = asyncio.get_running_loop()
        wait = getattr(self, _NOT_BEFORE, 0.0) - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        updated = bool(await update(self, cluster_metadata, topics))
        failures = 0 if updated else getattr(self, _FAILURES, 0) + 1
        setattr(self, _FAILURES, failures)
        setattr(self, _NOT_BEFORE, loop.time() + metadata_backoff_s(self._retry_backoff, failures))
        return updated

    setattr(_metadata_update, _MARK, True)
    AIOKafkaClient._metadata_update = _metadata_update
