"""The lockout agent: the internal topic in, decisions out, state in the table.

Order, for crash safety: decisions are sent and delivered before the new state is
written. A crash in between replays the event against the old state, which yields
the same decisions with the same deterministic ids (consumers drop repeats), so a
block is never lost and never doubled under a new id. Events the stored state
already includes (it records the offset that wrote it) are skipped on replay.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from processor.stream.events import EventFormatError, decode_event, decode_key
from processor.stream.runtime import Runtime, wall_ms

log = logging.getLogger(__name__)


def define_lockout_agent(app: faust.App, rt: Runtime) -> Any:
    topic = app.topic(rt.names.mailbox_events, key_serializer="raw", value_serializer="raw")

    @app.agent(topic, name="lockout")
    async def lockout(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            try:
                item = decode_event(decode_key(event.key), event.value)
            except EventFormatError as error:  # written by a newer or broken worker
                log.error(
                    "skipping %s[%d]@%d: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    error,
                )
                continue
            now = wall_ms()
            step = rt.step(event.key, message.partition, message.offset, item, now)
            if step is None:  # already in the stored state: a replay
                continue
            await rt.publish(step.decisions, now, step.triggered_at_ms)
            rt.store(event.key, message.partition, message.offset, step)
            rt.count_outcome(step)

    return lockout
