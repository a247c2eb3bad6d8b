"""The lockout agent: batches of packed internal events in, decisions out, state in
the table.

Each record of the internal topic is a pack (`processor.stream.events`): the
events of one partition that the edge stage or the timer had at hand, stamped
with one time. The agent takes the records that are ready (up to `MAX_RECORDS`,
waiting at most `BATCH_WAIT_S` for more) and handles them as one batch
(`Runtime.apply`): each mailbox's stored value read once, its events stepped in
order, the decisions of the whole batch sent and delivered, and only then each
mailbox's new value written. The records are acknowledged (and so may be
committed) only after that. A crash in between replays them: events the stored
values include are skipped (each value records the position, offset and index
in the pack, of the last event applied), the others yield the same decisions
with the same ids and times, which consumers drop as repeats. A block is never
lost and never doubled under a new id or with other times.
"""

from __future__ import annotations

import logging
from typing import Any

import faust

from processor.stream.events import EventFormatError, decode_record
from processor.stream.runtime import Record, Runtime

log = logging.getLogger(__name__)

#: Records handled as one batch at most (each holds up to 1000 events): one wait
#: for the delivery of its decisions instead of one per record.
MAX_RECORDS = 64
#: How long a batch waits for more records once one is there (latency it may add).
BATCH_WAIT_S = 0.05


def define_lockout_agent(app: faust.App, rt: Runtime) -> Any:
    topic = app.topic(rt.names.mailbox_events, key_serializer="raw", value_serializer="raw")

    @app.agent(topic, name="lockout")
    async def lockout(stream: Any) -> None:
        async for events in stream.take_events(MAX_RECORDS, within=BATCH_WAIT_S):
            batch = [record for record in map(_decoded, events) if record is not None]
            if batch:
                await rt.apply(batch)

    return lockout


def _decoded(event: Any) -> Record | None:
    message = event.message
    try:
        # The record timestamp matters only for records written before packs.
        pack = decode_record(event.key, event.value, round(message.timestamp * 1000))
    except EventFormatError as error:  # written by a newer or broken worker
        log.error("skipping %s[%d]@%d: %s", message.topic, message.partition, message.offset, error)
        return None
    return Record(event, message.partition, message.offset, pack)
