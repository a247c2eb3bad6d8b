"""The worker process's garbage collector: what was loaded at start is left alone.

At start the worker reads the whole directory and the tenant settings (about five
objects per mailbox: hundreds of thousands for a large directory) and imports
Faust, aiokafka and their dependencies. None of it is garbage, but the cyclic
collector walks all of it in every full collection, and the agent's allocations
(events, states, decisions, records) trigger those collections steadily under
load: in a profile of the agent that was a fifth of its CPU time per event.
"""

from __future__ import annotations

import gc


def freeze_startup_objects() -> None:
    """Collect once, then move every object alive now into the collector's permanent
    generation (`gc.freeze`): later collections no longer walk them. They are still
    freed by reference counting when dropped (a directory entry replaced later);
    only a reference cycle among them would be kept, which costs memory, not
    correctness."""
    gc.collect()
    gc.freeze()
