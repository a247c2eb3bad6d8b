"""The lockout agent: packs of internal events in, decisions out, state in the table.

Each record of the internal topic is a pack (`processor.stream.events`): the
events of one partition that the edge stage or the timer had at hand, stamped
with one time. The agent handles a pack as one batch (`Runtime.apply`): each
mailbox's stored value read once, its events stepped in order, the decisions of
the whole pack sent and delivered, and only then each mailbox's new value written.
A crash in between replays the pack: events the stored values include are
skipped (each value records the position, offset and index in the pack, of the
last event applied), the others yield the same decisions with the same ids and
times, which consumers drop as repeats. A block is never lost and never doubled
under a new id or with other times.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from processor.stream.events import EventFormatError, decode_record
from processor.stream.runtime import Runtime

log = logging.getLogger(__name__)


def define_lockout_agent(app: faust.App, rt: Runtime) -> Any:
    topic = app.topic(rt.names.mailbox_events, key_serializer="raw", value_serializer="raw")

    @app.agent(topic, name="lockout")
    async def lockout(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            try:
                # The record timestamp matters only for records written before packs.
                pack = decode_record(event.key, event.value, round(message.timestamp * 1000))
            except EventFormatError as error:  # written by a newer or broken worker
                log.error(
                    "skipping %s[%d]@%d: %s",
                    message.topic,
                    message.partition,
                    message.offset,
                    error,
                )
                continue
            await rt.apply(message.partition, message.offset, pack)

    return lockout
