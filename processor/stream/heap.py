"""The worker process's garbage collector: what was loaded at start is left alone,
and the young generations are collected less often. And the edge process's large
allocations: returned to the system when freed (`give_large_blocks_back`).

At start the worker reads the whole directory and the tenant settings (about five
objects per mailbox: hundreds of thousands for a large directory) and imports
Faust, aiokafka and their dependencies. None of it is garbage, but the cyclic
collector walks all of it in every full collection, and the agent's allocations
(events, states, decisions, records) trigger those collections steadily under
load (lockout CPU per qualifying verdict in the e2e bench at 20 %: 89 us before
the freeze, 77 us after).

The agent also keeps a batch's events, states and decisions alive for the half
second the batch takes, so with the default thresholds (a young collection every
700 net allocations) they were walked again and again and promoted, feeding the
full collections. Measured in the worker during the e2e bench at 20 % (600,000
verdicts): the collector took 1.2 s of 6.9 s CPU with only the freeze, 0.2 s with
the thresholds below as well.
"""

from __future__ import annotations

import ctypes
import gc

#: Net new container objects between young collections (default 700), young
#: collections between middle ones (default 10), and middle ones between full ones
#: (default 10). Garbage without cycles is freed at once by reference counting
#: either way; only cyclic garbage waits longer, bounded by these counts.
GC_THRESHOLDS = (50_000, 20, 10)


def settle_heap() -> None:
    """`freeze_startup_objects`, then `GC_THRESHOLDS` for the rest of the process."""
    freeze_startup_objects()
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_startup_objects() -> None:
    """Collect once, then move every object alive now into the collector's permanent
    generation (`gc.freeze`): later collections no longer walk them. They are still
    freed by reference counting when dropped (a directory entry replaced later);
    only a reference cycle among them would be kept, which costs memory, not
    correctness."""
    gc.collect()
    gc.freeze()


#: glibc's mallopt parameter M_MMAP_THRESHOLD.
_M_MMAP_THRESHOLD = -3
#: Blocks at least this large get pages of their own, unmapped when freed (glibc's
#: initial threshold, which it otherwise raises as it goes).
MMAP_THRESHOLD_BYTES = 128 * 1024


def give_large_blocks_back() -> bool:
    """Fix the C allocator's mmap threshold at MMAP_THRESHOLD_BYTES for this process.

    glibc raises the threshold each time a block it mapped is freed (up to 32 MiB),
    so after a few records of about 1 MB (the edge reads whatever a writer of its
    topics sends, up to the record limit) later ones come from the heap, whose freed
    space fragments and is not returned: the edge's resident memory stepped up by
    tens of MiB over a soak of hostile input (38 -> 67 MB in 20 rounds), while with
    the threshold fixed it stayed at 38-41 MB. Returns whether the C library took
    the setting (False where it is not glibc, which then behaves as it will).
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
