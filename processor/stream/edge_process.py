"""The edge stage as a child process of the worker, and its supervisor.

The worker spawns one edge process (`EdgeSupervisor.start`); it runs the
`EdgeStage` loop until the worker tells it to stop or dies, and sends its
counters and assignment back through a pipe every second (its heartbeat). The
process dies with its parent even when the parent is SIGKILLed, so no orphaned edge
ever consumes on its own. A process that exits (a failure it cannot retry in place)
is started again by `EdgeSupervisor.poll` after an exponential backoff (1 s, 2 s,
4 s ... 60 s; back to 1 s once a process has run for a minute), so a failure that
repeats costs a restart a minute, not a tight loop; the new process resumes from the
committed offsets. The stage itself never exits because of one record (see
`processor.stream.edge`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from processor.stream.edge import EdgeConfig, EdgeCounts, EdgeStage
from processor.stream.heap import give_large_blocks_back

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
    give_large_blocks_back()  # hostile records near the size limit must not bloat it
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


@dataclass(frozen=True, slots=True)
class EdgeStatus:
    """What the supervisor knows of its edge process at one moment."""

    #: The process is alive and its last heartbeat is recent.
    up: bool
    #: Processes that exited (each one restarted, or about to be).
    restarts: int
    #: Why it is not up ("" when it is).
    problem: str
    #: The (topic, partition)s its consumer held at its last heartbeat (empty when down).
    assignment: frozenset[tuple[str, int]]


class EdgeSupervisor:
    """Starts the edge process, restarts it with backoff if it dies, forwards its
    counters, and knows whether it is up."""

    def __init__(
        self,
        config: EdgeConfig,
        on_counts: Callable[[EdgeCounts], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        heartbeat_timeout_s: float = 10.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 60.0,
        healthy_after_s: float = 60.0,
    ) -> None:
        self.config = config
        self._on_counts = on_counts
        self._clock = clock
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self.healthy_after_s = healthy_after_s
        self._process: Any = None
        self._connection: Any = None
        self.restarts = 0
        #: Exits in a row of processes that ran less than `healthy_after_s`.
        self._quick_exits = 0
        self._started_at = 0.0
        self._restart_at: float | None = None
        self._last_heartbeat: float | None = None
        self._last_exit = ""
        self.assignment: frozenset[tuple[str, int]] = frozenset()

    def start(self) -> None:
        self._process, self._connection = self._spawn()
        self._started_at = self._clock()
        self._last_heartbeat = None
        self._restart_at = None

    def _spawn(self) -> tuple[Any, Any]:
        """A started edge process and the receiving end of its counters' pipe."""
        import multiprocessing

        # spawn: a fork of an asyncio/Faust process would inherit its loop and sockets.
        context = multiprocessing.get_context("spawn")
        receive, send = context.Pipe(duplex=False)
        level = logging.getLevelName(logging.getLogger().getEffectiveLevel())
        process = context.Process(
            target=edge_process_main,
            args=(self.config, send, os.getpid(), level),
            name="sendguard-edge",
            daemon=True,
        )
        process.start()
        send.close()
        return process, receive

    def poll(self) -> None:
        """Forward pending counters; notice an exit and restart after its backoff.
        Call every second."""
        self._drain()
        now = self._clock()
        if self._process is not None and not self._process.is_alive():
            ran_s = now - self._started_at
            self._quick_exits = self._quick_exits + 1 if ran_s < self.healthy_after_s else 1
            delay = min(self.backoff_max_s, self.backoff_initial_s * 2 ** (self._quick_exits - 1))
            self._last_exit = f"exited with {self._process.exitcode} after {ran_s:.0f}s"
            log.error("edge stage %s; restarting it in %.0fs", self._last_exit, delay)
            self.restarts += 1
            self._close_connection()
            self._process = None
            self.assignment = frozenset()
            self._restart_at = now + delay
        if self._process is None and self._restart_at is not None and now >= self._restart_at:
            self.start()

    def status(self) -> EdgeStatus:
        """Up: alive, and a heartbeat within `heartbeat_timeout_s` (the stage reports
        every second, also while it waits for deliveries or a backoff)."""
        now = self._clock()
        if self._process is None:
            if self._restart_at is None:
                problem = "edge stage not started"
            else:
                problem = (
                    f"edge stage {self._last_exit}; restart in "
                    f"{max(0.0, self._restart_at - now):.0f}s ({self.restarts} restart(s) so far)"
                )
        elif self._last_heartbeat is None:
            problem = f"edge stage starting ({now - self._started_at:.0f}s ago)"
        elif now - self._last_heartbeat > self.heartbeat_timeout_s:
            problem = f"edge stage silent for {now - self._last_heartbeat:.0f}s"
        else:
            return EdgeStatus(True, self.restarts, "", self.assignment)
        return EdgeStatus(False, self.restarts, problem, frozenset())

    def _drain(self) -> None:
        connection = self._connection
        try:
            while connection is not None and connection.poll():
                counts = connection.recv()
                self._last_heartbeat = self._clock()
                self.assignment = frozenset(counts.assignment)
                self._on_counts(counts)
        except (EOFError, OSError):
            pass

    def stop(self) -> None:
        process, self._process = self._process, None
        self._restart_at = None
        if process is None:
            self._close_connection()
            return
        process.terminate()
        process.join(15)
        if process.is_alive():
            process.kill()
            process.join(5)
        self._drain()
        self._close_connection()

    def _close_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
