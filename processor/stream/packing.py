"""Internal events gathered into packs, one stream of packs per partition.

The edge stage adds every event it forwards from one consumed batch, and the timer
every tick of one pass; `drain` then yields the records to produce, each to its
partition, stamped with one time (see `processor.stream.events`). Every mailbox's
events stay in the order they were added, on the partition of the mailbox's key.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from processor.policy.events import MailboxKey
from processor.stream.events import (
    MAX_PACK_BYTES,
    MAX_PACK_EVENTS,
    KeyCache,
    MailboxEvent,
    encode_entry,
    pack_value,
)

#: Bytes of `pack_value` around the entries, and per entry (the comma).
_FRAME_BYTES = len(pack_value(2**53, []))


@dataclass(slots=True)
class _Open:
    entries: list[bytes] = field(default_factory=list)
    #: What each event came from (the edge: the index of its consumed record), so a
    #: pack that cannot be delivered can be traced back to its source records.
    sources: list[int] = field(default_factory=list)
    size: int = _FRAME_BYTES


class Packer:
    """Collects events per partition into packs of at most `max_events` events and
    `max_bytes` bytes (an event larger than that on its own makes a pack alone)."""

    def __init__(
        self,
        partitions: int,
        max_events: int = MAX_PACK_EVENTS,
        max_bytes: int = MAX_PACK_BYTES,
    ) -> None:
        if partitions < 1 or max_events < 1:
            raise ValueError("a packer needs at least one partition and one event per pack")
        self.partitions = partitions
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._open: dict[int, _Open] = {}
        self._closed: list[tuple[int, _Open]] = []
        self._keys = KeyCache(partitions)

    def partition_of(self, key: MailboxKey) -> int:
        return self._keys(key)[1]

    def add(self, event: MailboxEvent, source: int | None = None) -> int:
        """Add `event` (from `source`, if the caller tracks one) to the pack of its
        mailbox's partition; returns that partition."""
        partition = self.partition_of(event.key)
        entry = encode_entry(event)
        size = len(entry) + 1
        pack = self._open.get(partition)
        if pack is None:
            pack = self._open[partition] = _Open()
        elif len(pack.entries) >= self.max_events or pack.size + size > self.max_bytes:
            self._closed.append((partition, pack))
            pack = self._open[partition] = _Open()
        pack.entries.append(entry)
        if source is not None:
            pack.sources.append(source)
        pack.size += size
        return partition

    def __len__(self) -> int:
        """Events added and not yet drained."""
        return sum(len(pack.entries) for _, pack in self._closed) + sum(
            len(pack.entries) for pack in self._open.values()
        )

    def clear(self) -> None:
        """Forget every event added and not drained."""
        self._closed, self._open = [], {}

    def drain(self, at_ms: int) -> list[Pack]:
        """Every pack, stamped `at_ms`; empties the packer. A partition's packs come in
        the order their events were added."""
        packs = self._closed + list(self._open.items())
        self._closed, self._open = [], {}
        return [Pack(partition, at_ms, p.entries, tuple(p.sources)) for partition, p in packs]


@dataclass(frozen=True, slots=True)
class Pack:
    """One internal record to produce: events of one partition, stamped `at_ms`."""

    partition: int
    at_ms: int
    entries: list[bytes]
    #: The source of each entry, where the caller gave one (in `entries`' order).
    sources: tuple[int, ...] = ()

    @property
    def value(self) -> bytes:
        return pack_value(self.at_ms, self.entries)

    def singles(self) -> list[Pack]:
        """One pack per event (with its source): how a refused pack is sent again, so
        that only an event the broker refuses on its own is left out."""
        sources = self.sources or (None,) * len(self.entries)
        return [
            Pack(self.partition, self.at_ms, [entry], () if source is None else (source,))
            for entry, source in zip(self.entries, sources, strict=True)
        ]
