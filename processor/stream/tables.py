"""The mailbox state table: `MailboxState.to_record()` per mailbox, with a changelog.

Keys are the mailbox key bytes (`processor.stream.events.encode_key`), and a
mailbox's table partition is its internal-topic partition. Values are JSON bytes
(`processor.stream.handling` describes them; the state record carries its version).
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TableT

from processor.stream.topics import STATE_TABLE


def define_state_table(app: faust.App, partitions: int) -> TableT[bytes, Any]:
    return app.Table(
        STATE_TABLE,
        default=None,
        # key_type as well as the schema: faust derives the table's own key
        # serializer (the one its recovery decodes changelog keys with) from
        # key_type alone, defaulting to JSON. Recovered keys then came back as
        # tuples ('t1', 'a@x.com') while the agent looks up bytes: in the memory
        # store every recovered state was invisible to the agent.
        key_type=bytes,
        # Values are JSON bytes, encoded and decoded by the runtime itself: Faust's
        # "json" serializer walks every decoded dict looking for its own models and
        # encodes each value twice (store and changelog), a third of the table's cost.
        value_type=bytes,
        schema=faust.Schema(
            key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
        ),
        partitions=partitions,
        help="Lockout state per mailbox (processor.policy.state.MailboxState).",
    )
