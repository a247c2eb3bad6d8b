"""Structured logs of the worker and its edge process.

One JSON object per line when stderr is not a terminal (a container, systemd, a
file: what a log shipper reads), and a short human line on a terminal. The JSON
formatting itself is python-json-logger's: escaping, exceptions and extra fields
are its well-tested job, not ours.

What is logged about mail: tenant ids, mailbox addresses, message ids and policy
facts. Never message content (subjects, bodies, attachments): the verdicts do not
carry it, and nothing here adds it. At INFO level every BLOCK and UNBLOCK is exactly
one line (`log_decisions`), so `grep '"event": "block"'` counts blocks; the scans,
alert and report that accompany a block are DEBUG, as they add no fact the block
line lacks.

Every other logger is rate-limited per kind of message (`processor.ops.log_limit`):
the first few records of a kind in 10 s, then one line counting the rest, so a
Kafka client retrying through a broker outage cannot flood the log.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from typing import IO, Any

from processor.ops.log_limit import RepeatedMessageFilter
from processor.ops.status import iso
from processor.policy.decisions import (
    Alert,
    Block,
    Decision,
    Report,
    ScanRequest,
    Unblock,
    visit,
)

#: The logger of the one-line-per-block/unblock audit lines.
DECISIONS_LOGGER = "sendguard.decisions"
#: The logger of the release attempts' audit lines (`processor.ops.audit`, which
#: rate-limits unauthenticated floods itself).
AUDIT_LOGGER = "sendguard.audit"

#: Fields every JSON line carries besides its extras (renamed from logging's names).
_JSON_FORMAT = "%(levelname)s %(name)s %(processName)s %(message)s"
_RENAME = {"levelname": "level", "name": "logger", "processName": "process"}
_HUMAN_FORMAT = "[%(asctime)s] %(levelname)s %(name)s: %(message)s"

log = logging.getLogger(DECISIONS_LOGGER)


def json_wanted(stream: IO[str]) -> bool:
    """JSON unless the stream is a terminal (a person reads it)."""
    try:
        return not stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: a machine reads it
        return True


def make_formatter(json_lines: bool) -> logging.Formatter:
    if json_lines:
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(_JSON_FORMAT, rename_fields=_RENAME, timestamp="time")
    return logging.Formatter(_HUMAN_FORMAT)


class _LimitedHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler whose repeated messages are capped; closing it (at exit,
    `logging.shutdown`) writes the summaries still pending."""

    def __init__(self, stream: IO[str]) -> None:
        super().__init__(stream)
        # Audit trails are never held back by the cap.
        exempt = (DECISIONS_LOGGER, AUDIT_LOGGER)
        self.limiter = RepeatedMessageFilter(self.handle, exempt=exempt)
        self.addFilter(self.limiter)

    def close(self) -> None:
        self.limiter.flush()
        super().close()


def configure_logging(
    level: str | int = "info", *, stream: IO[str] | None = None, json_lines: bool | None = None
) -> logging.Handler:
    """Send every log record of this process to `stream` (stderr) in the chosen format,
    repeated messages capped (the audit lines of `log_decisions` never are).

    Replaces the root logger's handlers, so it may be called again (the edge process
    calls it after spawn). `json_lines=None` decides by `json_wanted`. Returns the
    handler, so a caller can remove it.
    """
    stream = sys.stderr if stream is None else stream
    handler = _LimitedHandler(stream)
    handler.setFormatter(make_formatter(json_wanted(stream) if json_lines is None else json_lines))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper() if isinstance(level, str) else level)
    return handler


class _DecisionLog:
    """One INFO line per BLOCK, UNBLOCK and refused release; DEBUG for the rest
    (a `DecisionVisitor`)."""

    def block(self, d: Block) -> None:
        until = "permanent" if d.permanent else iso(d.until_ms)
        fields: dict[str, Any] = {
            "event": "block",
            "tenant_id": d.key.tenant_id,
            "mailbox": d.key.mailbox,
            "offense": d.offense,
            "permanent": d.permanent,
            "until": iso(d.until_ms),
            "command_id": d.command_id,
            # Message ids (never content) of the verdicts that triggered it.
            "message_ids": [e.message_id for e in d.evidence],
        }
        log.info(
            "BLOCK %s %s offense %d until %s (command %s)",
            d.key.tenant_id,
            d.key.mailbox,
            d.offense,
            until,
            d.command_id,
            extra=fields,
        )

    def unblock(self, d: Unblock) -> None:
        log.info(
            "UNBLOCK %s %s offense %d %s (command %s)",
            d.key.tenant_id,
            d.key.mailbox,
            d.offense,
            d.reason,
            d.command_id,
            extra={
                "event": "unblock",
                "tenant_id": d.key.tenant_id,
                "mailbox": d.key.mailbox,
                "offense": d.offense,
                "reason": d.reason,
                "at": iso(d.at_ms),
                "actor": d.actor,
                "command_id": d.command_id,
            },
        )

    def report(self, d: Report) -> None:
        if d.event != "release_refused":
            self._debug(d)
            return
        log.info(
            "release of %s %s by %s refused: %s",
            d.key.tenant_id,
            d.key.mailbox,
            d.actor,
            d.reason,
            extra={
                "event": "release_refused",
                "tenant_id": d.key.tenant_id,
                "mailbox": d.key.mailbox,
                "actor": d.actor,
                "report_id": d.report_id,
            },
        )

    def scan_request(self, d: ScanRequest) -> None:
        self._debug(d)

    def alert(self, d: Alert) -> None:
        self._debug(d)

    @staticmethod
    def _debug(d: Decision) -> None:
        if log.isEnabledFor(logging.DEBUG):
            kind = type(d).__name__
            extra = {"event": kind.lower()}
            log.debug("%s %s %s", kind, d.key.tenant_id, d.key.mailbox, extra=extra)


_DECISION_LOG = _DecisionLog()


def log_decisions(decisions: Iterable[Decision]) -> None:
    """Log what one policy step sent: one INFO line per BLOCK and per UNBLOCK.

    A refused support release is an audit fact of its own and gets one INFO line too;
    everything else (scans, alerts, the block's own reports) is DEBUG.
    """
    for decision in decisions:
        visit(decision, _DECISION_LOG)
