"""The sliding window of counted qualifying verdicts of one mailbox.

A window is the half-open interval `(x - window, x]`. The threshold is reached
when *some* such interval holds `threshold` counted verdicts, the new one included
(docs/policy.md, rule 5), so a burst that straddles any fixed boundary still triggers:

    window = 10 min, threshold = 5
    10:00   10:05   10:09   10:12   10:14        (counted verdicts)
      |-------------------------------|           (10:04, 10:14]: 4 → no trigger
            |-------------------------|----      (10:04:59.999, 10:14]: 4
    a 5th at 10:14:30 → (10:04:30, 10:14:30] holds 10:05 … 10:14:30 = 5 → trigger

Two verdicts exactly `window` apart are never in one interval: (x - w, x] excludes
x - w. Entries are kept sorted by event time; out-of-order verdicts are inserted in
place and every interval that contains the new one is checked.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort

from processor.policy.decisions import Evidence

Entry = tuple[int, str]  # (scanned_at_ms, message_id)


def _time(entry: Entry) -> int:
    return entry[0]


class SlidingWindow:
    """Counted verdicts of one mailbox, sorted by `scanned_at_ms`."""

    __slots__ = ("entries",)

    def __init__(self, entries: list[Entry] | None = None) -> None:
        self.entries: list[Entry] = entries if entries is not None else []

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, message_id: object) -> bool:
        return any(mid == message_id for _, mid in self.entries)

    def add(self, at_ms: int, message_id: str) -> None:
        """Insert in event-time order (after equal timestamps: arrival order is kept)."""
        insort(self.entries, (at_ms, message_id), key=_time)

    def drop_older_than(self, at_ms: int) -> None:
        """Forget entries with `scanned_at < at_ms` (rule 6: "older than H - 2 windows")."""
        cut = bisect_left(self.entries, at_ms, key=_time)
        if cut:
            del self.entries[:cut]

    def clear(self) -> None:
        self.entries.clear()

    def trigger(self, at_ms: int, window_ms: int, threshold: int) -> tuple[Evidence, ...] | None:
        """The earliest interval `(x - window, x]` containing `at_ms` that holds at least
        `threshold` entries, as evidence; None if there is none.

        Candidates for `x` are `at_ms` and the entries in `(at_ms, at_ms + window)`:
        the count of an interval only grows when its right end reaches an entry.
        """
        entries = self.entries
        first_candidate = bisect_left(entries, at_ms, key=_time)
        end = bisect_left(entries, at_ms + window_ms, key=_time)
        for right in range(first_candidate, end):
            x = entries[right][0]
            last = bisect_right(entries, x, key=_time)
            start = bisect_right(entries, x - window_ms, key=_time)
            if last - start >= threshold:
                return tuple(Evidence(mid, ts) for ts, mid in entries[start:last])
        return None
