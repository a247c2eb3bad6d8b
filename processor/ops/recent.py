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
from dataclasses import asdict, dataclass
from typing import Any

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


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """One decision as the status page and the API show it."""

    kind: str  # block | unblock | scan_request | alert | report
    tenant_id: str
    mailbox: str
    at_ms: int
    id: str
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        """The event as the API shows it: times as ISO-8601 strings."""
        out = asdict(self)
        out["at"] = iso(out.pop("at_ms"))
        detail = out["detail"]
        if "until" in detail:
            detail["until"] = iso(detail["until"])
        for evidence in detail.get("evidence", ()):
            evidence["scanned_at"] = iso(evidence["scanned_at"])
        return out


class _Describe:
    """Decisions as the status page's events (a `DecisionVisitor`)."""

    def block(self, d: Block) -> RecentEvent:
        evidence = [{"message_id": e.message_id, "scanned_at": e.scanned_at_ms} for e in d.evidence]
        detail = {"offense": d.offense, "permanent": d.permanent, "until": d.until_ms}
        return _event("block", d, d.command_id, {**detail, "evidence": evidence})

    def unblock(self, d: Unblock) -> RecentEvent:
        detail = {"offense": d.offense, "reason": d.reason, "actor": d.actor}
        return _event("unblock", d, d.command_id, detail)

    def scan_request(self, d: ScanRequest) -> RecentEvent:
        detail = {"owner_id": d.owner_id, "device_id": d.device_id}
        return _event("scan_request", d, d.request_id, detail)

    def alert(self, d: Alert) -> RecentEvent:
        detail = {"kind": d.kind, "scans_requested": d.scans_requested}
        return _event("alert", d, d.alert_id, detail)

    def report(self, d: Report) -> RecentEvent:
        detail = {"event": d.event, "actor": d.actor, "reason": d.reason}
        return _event("report", d, d.report_id, detail)


def _event(kind: str, decision: Decision, id_: str, detail: dict[str, Any]) -> RecentEvent:
    key = decision.key
    return RecentEvent(kind, key.tenant_id, key.mailbox, decision.at_ms, id_, detail)


_DESCRIBE = _Describe()


def describe(decision: Decision) -> RecentEvent:
    return visit(decision, _DESCRIBE)


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
