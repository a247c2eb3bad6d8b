"""Stopping a child started in a session of its own (`start_new_session=True`), with
everything it started: the worker and its edge process, for the demo, the tests
and the benchmarks."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess


def stop_process_group(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM to the process group, SIGKILL if it has not exited after `grace_s`.

    Nothing happens if the process has already exited; a group that is gone by the
    time a signal is sent is not an error.
    """
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
