"""Wall-clock work of the worker: expiry ticks, the eviction sweep, gauges, the edge's health.

Timers never change state themselves: due blocks and forgettable states are turned
into ticks on the internal topic, packed per partition and stamped with the time
of the pass (`processor.stream.packing`), and the agent handles them in order with
the mailbox's other events. A block that fell due while the worker was down is
found by the first pass after the table is recovered.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import faust

from processor.policy import MailboxState, forgettable
from processor.stream.edge_health import EdgeHealth
from processor.stream.events import ExpiryTick, SweepTick, decode_key
from processor.stream.packing import Packer
from processor.stream.runtime import Runtime, wall_ms

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[[], Awaitable[None]])


def _guarded(function: F) -> F:
    """Log a timer's failure instead of raising it: Faust stops the whole app when a
    timer raises, and every timer here is retried by its next run anyway."""

    @functools.wraps(function)
    async def run() -> None:
        try:
            await function()
        except Exception:
            log.exception("timer %s failed; retrying on its next run", function.__name__)

    return run  # type: ignore[return-value]


def define_timers(
    app: faust.App, rt: Runtime, edge: EdgeHealth | None, expiry_interval_s: float
) -> None:
    topic = rt.names.mailbox_events

    async def send(packer: Packer) -> None:
        # Delivery is not awaited: a lost expiry tick is resent by `ExpiryIndex.due`,
        # a lost sweep tick by the next sweep.
        for pack in packer.drain(wall_ms()):
            await app.producer.send(topic, None, pack.value, pack.partition, None, None)

    @app.timer(interval=expiry_interval_s, on_leader=False)  # type: ignore[untyped-decorator]
    @_guarded
    async def expire_due_blocks() -> None:
        rt.index.retain(rt.assigned_partitions())
        packer = Packer(rt.partitions)
        for _, key, until in rt.index.due(wall_ms()):
            packer.add(ExpiryTick(decode_key(key), until))
        await send(packer)

    @app.timer(interval=1.0, on_leader=False)  # type: ignore[untyped-decorator]
    @_guarded
    async def report() -> None:
        if edge is not None:
            edge.update()  # restarts a dead edge when its backoff is over; edge metrics
        rt.metrics.set_blocks(*rt.index.counts())
        for tp in app.assignor.assigned_actives():
            if tp.topic == topic and tp.partition in rt.processed:
                highwater = app.consumer.highwater(tp)
                if highwater is None:  # just assigned, nothing fetched yet
                    continue
                lag = highwater - rt.processed[tp.partition] - 1
                rt.metrics.set_lag(tp.topic, tp.partition, max(0, lag))

    # Rule 6 sweep. A state becomes forgettable `max_lateness + window` after its last
    # qualifying verdict (a day and ten minutes by default), so sweeping each window
    # would mostly re-read states that are not due: sweep once per 1/24 of max_lateness
    # (an hour by default), but never more often than once a minute or once a window.
    policy = rt.policy
    sweep_s = max(60.0, policy.window_ms / 1000, policy.max_lateness_ms / 24_000)

    @app.timer(interval=sweep_s, on_leader=False)  # type: ignore[untyped-decorator]
    @_guarded
    async def sweep_forgettable() -> None:
        now = wall_ms()
        started, sent = time.monotonic(), 0
        packer = Packer(rt.partitions)
        for key, record in rt.stored_states():
            if record is not None and forgettable(policy, MailboxState.from_record(record), now):
                packer.add(SweepTick(decode_key(key)))
                sent += 1
        await send(packer)
        if sent:
            log.info("rule 6 sweep: %d tick(s) in %.2fs", sent, time.monotonic() - started)

    async def on_recovered() -> None:
        rt.rebuild_index()
        timed, permanent = rt.index.counts()
        log.info("expiry index rebuilt: %d timed, %d permanent block(s)", timed, permanent)

    rt.table.on_recover(on_recovered)
