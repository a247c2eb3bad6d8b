"""The edge stage as a child process of the worker, and its supervisor.

The worker spawns one edge process (`EdgeSupervisor.start`); it runs the
`EdgeStage` loop until the worker tells it to stop or dies, and sends its
counters back through a pipe every second. The process dies with its parent even
when the parent is SIGKILLed, so no orphaned edge ever consumes on its own. A
process that exits (a failure it cannot retry in place) is started again by
`EdgeSupervisor.poll`, and the new one resumes from the committed offsets.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

from processor.stream.edge import EdgeConfig, EdgeCounts, EdgeStage

log = logging.getLogger(__name__)


def _die_with_parent(parent_pid: int) -> None:
    """Linux: get SIGKILLed when the worker dies, even by SIGKILL (no orphaned edge)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the parent-pid check in the loop covers it
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)


def edge_process_main(config: EdgeConfig, connection: Any, parent_pid: int, log_level: str) -> None:
    """Entry point of the edge process (spawned by `EdgeSupervisor`)."""
    _die_with_parent(parent_pid)
    from processor.ops.logging import configure_logging

    configure_logging(log_level)  # spawned: nothing of the parent's logging is inherited
    stop = False

    def on_term(signum: int, frame: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the worker decides when we stop

    def stopping() -> bool:
        return stop or os.getppid() != parent_pid

    def report(counts: EdgeCounts) -> None:
        with contextlib.suppress(OSError):
            connection.send(counts)

    try:
        EdgeStage.connect(config).run(stopping, report)
    except Exception:
        # Uncommitted batches are replayed by the next process (at-least-once).
        log.exception("edge stage failed; exiting so that the worker restarts it")
        sys.exit(1)


class EdgeSupervisor:
    """Starts the edge process, restarts it if it dies, and forwards its counters."""

    def __init__(self, config: EdgeConfig, on_counts: Callable[[EdgeCounts], None]) -> None:
        self.config = config
        self._on_counts = on_counts
        self._process: Any = None
        self._connection: Any = None
        self.restarts = 0

    def start(self) -> None:
        import multiprocessing

        # spawn: a fork of an asyncio/Faust process would inherit its loop and sockets.
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        self._process = context.Process(
            target=edge_process_main,
            args=(self.config, send, os.getpid(), level),
            name="sendguard-edge",
            daemon=True,
        )
        self._process.start()
        send.close()
        self._connection = receive

    def poll(self) -> None:
        """Forward pending counters; restart the process if it died. Call every second."""
        self._drain()
        if self._process is not None and not self._process.is_alive():
            log.error("edge stage exited with %s; restarting it", self._process.exitcode)
            self.restarts += 1
            self.start()

    def _drain(self) -> None:
        connection = self._connection
        try:
            while connection is not None and connection.poll():
                self._on_counts(connection.recv())
        except (EOFError, OSError):
            pass

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        process.terminate()
        process.join(15)
        if process.is_alive():
            process.kill()
            process.join(5)
        self._connection_drain_final()

    def _connection_drain_final(self) -> None:
        self._drain()
        if self._connection is not None:
            self._connection.close()
            self._connection = None
