"""Which blocks this worker must end, and when: the in-memory expiry index.

The table is the truth; this index is a cache of the blocks in force among the
mailboxes of the partitions this worker owns, kept per partition so a revoked
partition's entries can be dropped at once. The agent updates it after every
state write; after a rebalance or recovery it is rebuilt from the table. The timer
asks `due(now)` each second and sends an expiry tick through the internal topic,
so the UNBLOCK is made by the agent, in order with the mailbox's other events.

Ticks are idempotent (expiring a mailbox that is not due does nothing), so a tick
sent twice, or by a worker that just lost the partition, is harmless. A tick not
yet answered is resent after `retry_ms`, in case it was lost in a rebalance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processor.policy import MailboxState

#: Marks a permanent block in the index (it has no end time).
PERMANENT = -1


@dataclass(slots=True)
class _Entry:
    until_ms: int  # PERMANENT for a permanent block
    ticked_at_ms: int | None = None


class ExpiryIndex:
    """Blocks in force by partition and key (bytes of the internal topic's key)."""

    def __init__(self, retry_ms: int = 10_000) -> None:
        self._by_partition: dict[int, dict[bytes, _Entry]] = {}
        self._retry_ms = retry_ms

    def update(self, partition: int, key: bytes, record: dict[str, Any] | None) -> None:
        """Record the stored state `record` (`MailboxState.to_record()`, None if deleted)."""
        entries = self._by_partition.setdefault(partition, {})
        permanent, until = MailboxState.block_of_record(record)
        if permanent:
            entries[key] = _Entry(PERMANENT)
        elif until is not None:
            known = entries.get(key)
            if known is None or known.until_ms != until:
                entries[key] = _Entry(until)
        else:
            entries.pop(key, None)

    def retain(self, partitions: set[int]) -> None:
        """Forget every partition not in `partitions` (revoked from this worker)."""
        for partition in list(self._by_partition):
            if partition not in partitions:
                del self._by_partition[partition]

    def clear(self) -> None:
        self._by_partition.clear()

    def due(self, now_ms: int) -> list[tuple[int, bytes, int]]:
        """(partition, key, until) of every timed block with `until <= now_ms` not ticked lately.

        Marks them ticked at `now_ms`, in order of `until`.
        """
        found: list[tuple[int, bytes, int]] = []
        for partition, entries in self._by_partition.items():
            for key, entry in entries.items():
                if entry.until_ms == PERMANENT or entry.until_ms > now_ms:
                    continue
                if entry.ticked_at_ms is not None and now_ms - entry.ticked_at_ms < self._retry_ms:
                    continue
                entry.ticked_at_ms = now_ms
                found.append((partition, key, entry.until_ms))
        found.sort(key=lambda item: item[2])
        return found

    def counts(self) -> tuple[int, int]:
        """(timed, permanent) blocks in force on this worker's partitions."""
        timed = permanent = 0
        for entries in self._by_partition.values():
            for entry in entries.values():
                if entry.until_ms == PERMANENT:
                    permanent += 1
                else:
                    timed += 1
        return timed, permanent
