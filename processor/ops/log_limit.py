"""A cap on repeated log messages, so that no client can flood the log.

While a Kafka broker is unreachable every client logs its failed attempts: aiokafka
at each retry, librdkafka at each reconnect, Faust at each wait for its producer.
That is a few lines a second each when the clients back off, and thousands when
one does not (issue 11: 4,600 lines/s, 37 MB in 22 s). `RepeatedMessageFilter`,
on the log handler, lets the first `burst` records of each kind through in a
window of `window_s` seconds, counts the others, and once the window is over
writes one line saying how many it held back:

    Unable connect to node with id 1: [Errno 111] Connect call failed ...   (x5)
    12840 similar messages suppressed in the last 10.0 s: Unable connect ...

A record's kind is its logger, its level and its message *template* with digits
masked, so "Unable connect to node with id %s: %s" is one kind whatever the node
and the error, and Faust's f-string "producer buffer full size 117" is one kind
whatever the size. A different message is a different kind and gets through: a
flood of one error hides no other. The summary keeps the logger and the level of
the messages it stands for, and carries `suppressed` (the count) and
`suppressed_for_s` as fields.

Records of exempt loggers are never held back: the one-line-per-BLOCK audit log
(`sendguard.decisions`) must stay complete. Summaries are written when a record of
the same kind arrives after the window, when any record arrives and a window is
over (checked at most once a second), and when the handler is closed at exit;
"in the last T s" is measured to that moment, so it stays true when written late.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: Digit runs and long hex runs (ids, addresses, sizes): masked in the kind's key.
_VARIABLE = re.compile(r"[0-9a-fA-F]{8,}|\d+")
#: How much of the first held-back message a summary quotes.
_EXAMPLE_CHARS = 300


class SummaryRecord(logging.LogRecord):
    """The line that stands for the records a `RepeatedMessageFilter` held back."""


@dataclass(slots=True)
class _Window:
    name: str
    level: int
    started: float
    passed: int = 0
    suppressed: int = 0
    example: str = ""


class RepeatedMessageFilter(logging.Filter):
    """Per kind of record: `burst` records per `window_s`, then one summary line.

    `emit` writes a summary record (the handler's `handle`); `clock` is monotonic
    seconds. At most `max_kinds` kinds are tracked at once; records of further
    kinds count under one kind per logger and level, so even a client logging
    a new message every time is capped. Thread-safe.
    """

    def __init__(
        self,
        emit: Callable[[logging.LogRecord], object],
        *,
        burst: int = 5,
        window_s: float = 10.0,
        exempt: Iterable[str] = (),
        max_kinds: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        if burst < 1 or window_s <= 0:
            raise ValueError("burst must be >= 1 and window_s > 0")
        self._emit = emit
        self._burst = burst
        self._window_s = window_s
        self._exempt = tuple(exempt)
        self._max_kinds = max_kinds
        self._clock = clock
        self._windows: dict[tuple[str, int, str | None], _Window] = {}
        self._lock = threading.Lock()
        self._next_sweep = 0.0

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record, SummaryRecord) or self._is_exempt(record.name):
            return True
        now = self._clock()
        with self._lock:
            due = self._sweep(now) if now >= self._next_sweep else []
            window = self._window_for(record, now, due)
            if window.passed < self._burst:
                window.passed += 1
                allowed = True
            else:
                if not window.suppressed:
                    window.example = _render(record)[:_EXAMPLE_CHARS]
                window.suppressed += 1
                allowed = False
        for summary in due:
            self._emit(summary)
        return allowed

    def flush(self) -> None:
        """Write the summaries of every window that held records back (at exit)."""
        now = self._clock()
        with self._lock:
            due = [self._summary(w, now) for w in self._windows.values() if w.suppressed]
            self._windows.clear()
        for summary in due:
            self._emit(summary)

    def _is_exempt(self, name: str) -> bool:
        return any(name == e or name.startswith(e + ".") for e in self._exempt)

    def _window_for(
        self, record: logging.LogRecord, now: float, due: list[logging.LogRecord]
    ) -> _Window:
        key: tuple[str, int, str | None] = (record.name, record.levelno, _template(record))
        window = self._windows.get(key)
        if window is not None and now - window.started >= self._window_s:
            if window.suppressed:
                due.append(self._summary(window, now))
            window = None
        if window is None:
            if len(self._windows) >= self._max_kinds and key not in self._windows:
                key = (record.name, record.levelno, None)  # one kind for the overflow
                window = self._windows.get(key)
                if window is not None:
                    return window
            window = self._windows[key] = _Window(record.name, record.levelno, now)
        return window

    def _sweep(self, now: float) -> list[logging.LogRecord]:
        """Summaries of the windows that are over; forgets them."""
        self._next_sweep = now + 1.0
        over = [k for k, w in self._windows.items() if now - w.started >= self._window_s]
        due = [self._summary(self._windows[k], now) for k in over if self._windows[k].suppressed]
        for key in over:
            del self._windows[key]
        return due

    def _summary(self, window: _Window, now: float) -> logging.LogRecord:
        span = now - window.started
        record = SummaryRecord(
            window.name,
            window.level,
            "",
            0,
            "%d similar messages suppressed in the last %.1f s: %s",
            (window.suppressed, span, window.example),
            None,
        )
        record.suppressed = window.suppressed
        record.suppressed_for_s = round(span, 1)
        return record


def _template(record: logging.LogRecord) -> str:
    return _VARIABLE.sub("#", str(record.msg))


def _render(record: logging.LogRecord) -> str:
    try:
        return record.getMessage()
    except Exception:  # a bad format string is the logging call's bug, not a reason to fail
        return str(record.msg)
