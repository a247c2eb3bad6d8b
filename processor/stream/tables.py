"""The mailbox state table: `MailboxState.to_record()` per mailbox, with a changelog.

Keys are the internal topic's key bytes, so the table partition of a mailbox is
its internal-topic partition. Values are JSON (the record carries its version).
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
        schema=faust.Schema(key_type=bytes, key_serializer="raw", value_serializer="json"),
        partitions=partitions,
        help="Lockout state per mailbox (processor.policy.state.MailboxState).",
    )
