"""What this worker decided lately: the status page's "recent events", and waiters.

The lockout agent hands every step's decisions to `RecentEvents.record` after they
were delivered. The ring keeps the last few hundred in memory only: it is a view
for people, not a record (the output topics are the record), so a restart empties
it. A support release waits here for the report its SupportAction causes, which
is how the API can answer "released" instead of "sent".

Used on the worker's one event loop (agent and web handlers alike), so no locks.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from processor.policy.decisions import Alert, Block, Decision, Report, ScanRequest, Unblock


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """One decision as the status page and the API show it."""

    kind: str  # block | unblock | scan_request | alert | report
    tenant_id: str
    mailbox: str
    at_ms: int
    id: str
    detail: dict[str, Any]


def describe(decision: Decision) -> RecentEvent:
    key = decision.key
    match decision:
        case Block():
            return RecentEvent(
                "block",
                key.tenant_id,
                key.mailbox,
                decision.at_ms,
                decision.command_id,
                {
                    "offense": decision.offense,
                    "permanent": decision.permanent,
                    "until": decision.until_ms,
                    "evidence": [
                        {"message_id": e.message_id, "scanned_at": e.scanned_at_ms}
                        for e in decision.evidence
                    ],
                },
            )
        case Unblock():
            return RecentEvent(
                "unblock",
                key.tenant_id,
                key.mailbox,
                decision.at_ms,
                decision.command_id,
                {"offense": decision.offense, "reason": decision.reason, "actor": decision.actor},
            )
        case ScanRequest():
            return RecentEvent(
                "scan_request",
                key.tenant_id,
                key.mailbox,
                decision.at_ms,
                decision.request_id,
                {"owner_id": decision.owner_id, "device_id": decision.device_id},
            )
        case Alert():
            return RecentEvent(
                "alert",
                key.tenant_id,
                key.mailbox,
                decision.at_ms,
                decision.alert_id,
                {"kind": decision.kind, "scans_requested": decision.scans_requested},
            )
        case Report():
            return RecentEvent(
                "report",
                key.tenant_id,
                key.mailbox,
                decision.at_ms,
                decision.report_id,
                {"event": decision.event, "actor": decision.actor, "reason": decision.reason},
            )
    raise TypeError(f"not a decision: {decision!r}")


class RecentEvents:
    """The last `size` decisions, newest last, and futures waiting for given ids."""

    def __init__(self, size: int = 500) -> None:
        self._events: deque[RecentEvent] = deque(maxlen=size)
        self._waiting: dict[str, list[asyncio.Future[RecentEvent]]] = {}

    def record(self, decisions: Iterable[Decision]) -> None:
        for decision in decisions:
            event = describe(decision)
            self._events.append(event)
            for future in self._waiting.pop(event.id, ()):
                if not future.done():
                    future.set_result(event)

    def latest(
        self, limit: int = 50, *, tenant_id: str | None = None, mailbox: str | None = None
    ) -> list[RecentEvent]:
        """Newest first, optionally of one tenant or one mailbox."""
        found = []
        for event in reversed(self._events):
            if tenant_id is not None and event.tenant_id != tenant_id:
                continue
            if mailbox is not None and event.mailbox != mailbox:
                continue
            found.append(event)
            if len(found) >= limit:
                break
        return found

    async def wait_for_any(self, ids: Iterable[str], timeout_s: float) -> RecentEvent | None:
        """The first recorded event with one of `ids` (None after `timeout_s`).

        Register before sending what causes the event: one recorded in between
        would otherwise be missed.
        """
        ids = list(ids)
        for event in self._events:  # already there (a replay, or a fast agent)
            if event.id in ids:
                return event
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RecentEvent] = loop.create_future()
        for id_ in ids:
            self._waiting.setdefault(id_, []).append(future)
        try:
            return await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            return None
        finally:
            for id_ in ids:
                waiters = self._waiting.get(id_)
                if waiters is not None and future in waiters:
                    waiters.remove(future)
                    if not waiters:
                        del self._waiting[id_]
