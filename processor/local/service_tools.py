"""What the local services (rspamd, Postfix, `sendguard ingest` and `gateway`) share:
a free loopback port, waiting for a port or a condition, a GET, the tail of a log."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from processor.local.errors import ServiceStartError

HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's choice)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def wait_until(
    predicate: Callable[[], object],
    timeout_s: float,
    what: str,
    *,
    every_s: float = 0.2,
    diagnose: Callable[[], str] | None = None,
) -> None:
    """Returns once `predicate()` is true. Raises ServiceStartError naming `what`, with
    `diagnose()`'s account, if it is not within `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    detail = f"\n{diagnose()}" if diagnose is not None else ""
    raise ServiceStartError(f"timed out after {timeout_s:.0f}s waiting for {what}{detail}")


def port_answers(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_port(
    port: int, timeout_s: float, what: str, diagnose: Callable[[], str] | None = None
) -> None:
    """Returns once something accepts connections on 127.0.0.1:`port`. Raises
    ServiceStartError (with `diagnose()`'s account) if nothing does within `timeout_s`."""
    wait_until(
        lambda: port_answers(port),
        timeout_s,
        f"{what} to listen on {HOST}:{port}",
        diagnose=diagnose,
    )


def http_get(url: str, timeout_s: float = 5.0) -> tuple[int, str]:
    """(status, body) of a GET; an HTTP error status is an answer too. Raises OSError
    when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return int(error.code), error.read().decode(errors="replace")


def log_tail(path: Path, lines: int, title: str) -> str:
    """The last `lines` lines of a log file, under a heading naming it."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        text = "(no log)"
    return f"--- {title} ({path}), last {lines} lines:\n" + "\n".join(text.splitlines()[-lines:])
