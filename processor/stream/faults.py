"""Test-only fault injection: the worker kills itself at a named point of its work.

Off unless the environment sets `SENDGUARD_FAULT` (nothing reads it otherwise):

    SENDGUARD_FAULT=after_send        SIGKILL the first time the point is reached
    SENDGUARD_FAULT=after_send@3      ... the third time

Points (`processor.stream.runtime.Runtime.apply`):

* `after_send` — a pack's decisions were delivered, none of its states stored;
* `mid_store` — a pack that sent decisions has stored half of its states (a pack
  with at least two states to store).

The crash tests use it to kill a worker exactly between sending and storing,
which a SIGKILL from outside hits only by luck. SIGKILL, not an exception: nothing
of the worker's own clean-up may run, as in a real crash.
"""

from __future__ import annotations

import os
import signal

ENV = "SENDGUARD_FAULT"
POINTS = ("after_send", "mid_store")


def _armed() -> tuple[str, int] | None:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return None
    name, _, nth = spec.partition("@")
    if name not in POINTS:
        raise ValueError(f"{ENV}={spec!r}: unknown point; expected one of {', '.join(POINTS)}")
    return name, int(nth or 1)


_ARMED = _armed()
_reached = 0


def point(name: str) -> None:
    """Kill this process if `name` is the armed point, reached for the armed time."""
    global _reached
    if _ARMED is None or _ARMED[0] != name:
        return
    _reached += 1
    if _reached >= _ARMED[1]:
        os.kill(os.getpid(), signal.SIGKILL)
