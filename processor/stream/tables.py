"""The mailbox state table: `MailboxState.to_record()` per mailbox, with a changelog.

Keys are the mailbox key bytes (`processor.stream.events.encode_key`), and a
mailbox's table partition is its internal-topic partition. Values are JSON bytes
(`processor.stream.handling` describes them; the state record carries its version).
"""

from __future__ import annotations

import weakref
from typing import Any

import faust
from faust.streams import _current_event
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


class PartitionScope:
    """Makes table reads and writes go to the partition of a given Faust event.

    Faust's RocksDB store picks the database of a read or write from the event
    being processed (a context variable its stream sets per event), and the
    changelog record goes to that partition too. The agent handles several
    records of different partitions as one batch, so before each mailbox's read or
    write it names a record of that mailbox's partition (`enter`); `close` puts
    the variable back. (This sets the variable Faust's own stream sets;
    tests/unit/test_stream_pure.py fails if Faust stops reading it.)
    """

    __slots__ = ("_current", "_first")

    def __init__(self) -> None:
        self._first: Any = None
        self._current: Any = None

    def enter(self, event: Any) -> None:
        """Reads and writes go to `event`'s partition from now on (None: no Faust here,
        as in unit tests with a plain mapping)."""
        if event is None or event is self._current:
            return
        token = _current_event.set(weakref.ref(event))
        if self._first is None:
            self._first = token
        self._current = event

    def close(self) -> None:
        if self._first is not None:
            _current_event.reset(self._first)
        self._first = self._current = None
