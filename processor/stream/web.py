"""The worker's web layer, on Faust's web server (aiohttp).

    GET  /health                                   liveness, no token, no data
    GET  /ready                                    200 once the tables have recovered, while
                                                   the edge stage is up and not stalled
    GET  /metrics                                  Prometheus, no token
    GET  /api/mailboxes/{tenant}/{mailbox}         admin token: state, block, next penalty
    GET  /api/blocks[?tenant=T]                    admin token: current blocks, every worker
    GET  /status                                   admin token (header or cookie): HTML
    POST /api/mailboxes/{tenant}/{mailbox}/release personal support token, JSON {reason}

Credentials: see `processor.ops.access`. A mailbox's state lives on the worker
that owns its table partition, so a mailbox request is forwarded to that worker
once, with a peer marker instead of the user's token (`processor.stream.routing`);
the block list and the status page ask every worker for its blocks the same way.
Path segments are percent-encoded by clients (`/` in a mailbox is `%2F`) and
forwarded raw, so any character routes.

A release is checked on the owner against the stored state first, with the
policy's own `release` on a copy: a timed block or an unblocked mailbox is
refused at once (409, the policy's reason), and the refusal's `release_refused`
report is still published to `mail.reports` like any decision. Otherwise a
signed SupportAction (`processor.codec.action_signing`) goes to
`mailbox.support-actions`, where it is ordered with the mailbox's verdicts, and
the handler waits for the agent's report: 200 released (or 409 if the state
changed in between), or 202 when the agent has not answered in time. Whatever
the outcome, including 400/401/403, the worker that received the request from
the client audits the attempt once (`processor.ops.audit`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from aiohttp import web as aioweb
from prometheus_client import CONTENT_TYPE_LATEST

from processor.codec import records
from processor.codec.action_signing import KEYS_ENV, ActionKeys
from processor.codec.wire import Codec
from processor.limits import MAX_MAILBOX, MAX_REASON, MAX_TENANT_ID
from processor.ops.access import Access, Caller, Presented
from processor.ops.audit import ReleaseAttempt, ReleaseAudit
from processor.ops.auth import (
    ADMIN_ENV,
    STATUS_COOKIE,
    STATUS_COOKIE_TTL_MS,
    Denied,
    check,
    check_status_cookie,
    status_cookie,
)
from processor.ops.peer_auth import Role
from processor.ops.recent import RecentEvents
from processor.ops.status import (
    ReleasePlan,
    block_row,
    effective_state,
    iso,
    mailbox_document,
    plan_release,
)
from processor.ops.status_page import PAGE_HEADERS, render_status_page
from processor.policy import MailboxKey, Release, normalise_mailbox
from processor.stream.events import decode_key, encode_key
from processor.stream.routing import OnBehalfOf, PeerRouter
from processor.stream.runtime import Runtime, wall_ms

log = logging.getLogger(__name__)

#: Largest request body read (a release is a short JSON object).
MAX_BODY = 16 * 1024
#: How long a release waits for the agent's report before answering 202.
RELEASE_WAIT_S = 15.0

Handler = Callable[[], Awaitable[Any]]


@dataclass
class WebContext:
    rt: Runtime
    access: Access
    codec: Codec
    recent: RecentEvents
    #: Sign the support actions the API sends (none: releases are disabled).
    action_keys: ActionKeys = field(default_factory=ActionKeys)
    #: Set by the table's first recovery (readiness).
    recovered: bool = False
    #: Why the worker's edge stage is not doing its job, or None (readiness); None
    #: itself when the worker runs no edge stage.
    edge_problem: Callable[[], str | None] | None = None


class BodyTooLarge(Exception):
    pass


@dataclass
class _Attempt:
    """A release request as far as it is known: who, from where, why."""

    attempt_id: str
    source: str | None
    tenant_id: str
    mailbox: str
    actor: str | None = None
    reason: str | None = None
    #: Forwarded by another worker (which audits it).
    via_peer: bool = False

    def finished(self, at_ms: int, status: int) -> ReleaseAttempt:
        return ReleaseAttempt(
            attempt_id=self.attempt_id,
            at_ms=at_ms,
            source=self.source,
            tenant_id=self.tenant_id,
            mailbox=self.mailbox,
            actor=self.actor,
            reason=self.reason,
            status=status,
        )


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return aioweb.json_response(body, status=status, headers=headers)


def _denied(denied: Denied) -> Any:
    headers = {"WWW-Authenticate": 'Bearer realm="sendguard"'} if denied.status == 401 else None
    return _json(denied.status, {"error": denied.message}, headers)


def release_problem(payload: object) -> str | None:
    """Why a release body is unusable, or None. A reason is required: the audit trail
    must say why. An `actor` in the body is ignored: the person is the token's."""
    if not isinstance(payload, dict):
        return 'the body must be a JSON object {"reason": ...}'
    value = payload.get("reason")
    if not isinstance(value, str) or not value.strip():
        return "reason is required (a non-empty string)"
    if len(value) > MAX_REASON:
        return f"reason is longer than {MAX_REASON} characters"
    return None


def path_problem(tenant: str, mailbox: str) -> str | None:
    """Why a tenant or mailbox of the path is unusable, or None."""
    for name, value, limit in (
        ("tenant", tenant, MAX_TENANT_ID),
        ("mailbox", mailbox, MAX_MAILBOX),
    ):
        if not value.strip():
            return f"{name} is empty"
        if len(value) > limit:
            return f"{name} is longer than {limit} characters"
    return None


async def _read_body(request: Any) -> bytes:
    """The request body, at most MAX_BODY bytes; BodyTooLarge beyond."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BodyTooLarge
    body = bytearray()
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_BODY:
            raise BodyTooLarge
    return bytes(body)


@dataclass(frozen=True)
class Admitted:
    """A request whose caller holds the role it needs, with the body it was signed over."""

    caller: Caller
    body: bytes


def _too_large() -> Any:
    return _json(413, {"error": f"the body is larger than {MAX_BODY} bytes"})


class WorkerWeb:
    """The endpoints of one worker; `define_web` adds them to its Faust app."""

    def __init__(self, app: faust.App, ctx: WebContext) -> None:
        self.app = app
        self.ctx = ctx
        self.rt = ctx.rt
        self.router = PeerRouter(app, ctx.access.peers)
        self.audit = ReleaseAudit(self._write_attempt, ctx.rt.metrics)

    # -- authentication ----------------------------------------------------------------

    async def admitted(self, request: Any, role: Role) -> Admitted | Any:
        """The request's body and its authenticated caller, or the answer refusing it
        (413 for a body over MAX_BODY, 401/403 for a caller without the role)."""
        try:
            body = await _read_body(request)
        except BodyTooLarge:
            return _too_large()
        caller = self.caller(request, role, body)
        if isinstance(caller, Denied):
            return _denied(caller)
        return Admitted(caller, body)

    def caller(self, request: Any, role: Role, body: bytes = b"") -> Caller | Denied:
        presented = Presented(
            request.method, request.raw_path, request.headers, body, request.remote
        )
        return self.ctx.access.authenticate(role, presented)

    # -- routing to the worker that owns a mailbox ----------------------------------

    async def routed(
        self, request: Any, key: bytes, local: Handler, who: OnBehalfOf, body: bytes = b""
    ) -> Any:
        """`local()` on the mailbox's owner: here, or forwarded once to that worker."""
        try:
            url = self.router.owner_url(key)
        except KeyError:
            return _json(503, {"error": "partition owner unknown (worker starting or rebalancing)"})
        if url is None:
            return await local()
        return await self.router.forward(url, request, body, who)

    # -- blocks of every worker ------------------------------------------------------

    def local_blocks(self, tenant: str | None) -> list[dict[str, Any]]:
        rt = self.rt
        now, mine = wall_ms(), rt.assigned_partitions()
        rows = []
        for key_bytes, record in rt.stored_states():
            if record is None or rt.partition_of(key_bytes) not in mine:
                continue  # standby copies are another worker's to report
            key = decode_key(key_bytes)
            if tenant is not None and key.tenant_id != tenant:
                continue
            state = effective_state(record, key, now)
            if state.blocked:
                rows.append(block_row(key, state))
        return rows

    async def all_blocks(
        self, tenant: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """(every worker's blocks, the workers that did not answer)."""
        rows = self.local_blocks(tenant)
        others, unavailable = await self.router.blocks_of_others(tenant)
        return rows + others, unavailable

    def recent_json(self, limit: int, **where: Any) -> list[dict[str, Any]]:
        return [event.as_json() for event in self.ctx.recent.latest(limit, **where)]

    # -- endpoints -------------------------------------------------------------------

    async def health(self, request: Any) -> Any:
        return _json(200, {"status": "ok"})

    async def ready(self, request: Any) -> Any:
        if not self.ctx.recovered:
            return _json(503, {"ready": False, "reason": "tables not recovered yet"})
        if self.app.rebalancing or getattr(self.app, "in_recovery", False):
            return _json(503, {"ready": False, "reason": "rebalancing"})
        # A worker whose edge is down or stalled reads no verdicts: nobody is protected.
        problem = self.ctx.edge_problem() if self.ctx.edge_problem is not None else None
        if problem is not None:
            return _json(503, {"ready": False, "reason": problem})
        return _json(200, {"ready": True})

    async def metrics(self, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is
        # ASCII, so the bare media type is exact.
        content_type = CONTENT_TYPE_LATEST.partition(";")[0]
        return aioweb.Response(body=self.rt.metrics.render(), content_type=content_type)

    async def mailbox(self, request: Any, tenant: str, mailbox: str) -> Any:
        admitted = await self.admitted(request, "admin")
        if not isinstance(admitted, Admitted):
            return admitted
        caller = admitted.caller
        problem = path_problem(tenant, mailbox)
        if problem is not None:
            return _json(400, {"error": problem})
        key = MailboxKey.of(tenant, mailbox)
        key_bytes = encode_key(key)

        async def local() -> Any:
            document = mailbox_document(
                key,
                self.rt.load(key_bytes),
                self.rt.policy,
                wall_ms(),
                self.recent_json(20, tenant_id=key.tenant_id, mailbox=key.mailbox),
            )
            return _json(200, {**document, "served_by": str(self.app.conf.canonical_url)})

        if caller.via_peer:
            return await local()
        return await self.routed(request, key_bytes, local, OnBehalfOf("admin"))

    async def blocks(self, request: Any) -> Any:
        admitted = await self.admitted(request, "admin")
        if not isinstance(admitted, Admitted):
            return admitted
        caller = admitted.caller
        tenant = request.query.get("tenant") or None
        if caller.via_peer:  # another worker gathers; answer for this one only
            return _json(200, {"tenant_id": tenant, "blocks": self.local_blocks(tenant)})
        rows, unavailable = await self.all_blocks(tenant)
        rows.sort(key=lambda r: (r["tenant_id"], r["mailbox"]))
        return _json(200, {"tenant_id": tenant, "blocks": rows, "unavailable_workers": unavailable})

    # -- releases ---------------------------------------------------------------------

    async def release(self, request: Any, tenant: str, mailbox: str) -> Any:
        """A client's release request: answered (here or by the owner), then audited.
        A request forwarded by another worker is audited there, not here."""
        attempt = _Attempt(
            attempt_id=str(uuid.uuid4()),
            source=request.remote,
            tenant_id=tenant[:MAX_TENANT_ID],
            mailbox=normalise_mailbox(mailbox)[:MAX_MAILBOX] or mailbox[:MAX_MAILBOX],
        )
        response = await self._release(request, tenant, mailbox, attempt)
        if not attempt.via_peer:
            await self.audit.record(attempt.finished(wall_ms(), response.status))
        return response

    async def _release(self, request: Any, tenant: str, mailbox: str, attempt: _Attempt) -> Any:
        """The answer to a release request; fills in `attempt` as it learns who and why."""
        admitted = await self.admitted(request, "support")
        if not isinstance(admitted, Admitted):
            return admitted
        caller, body = admitted.caller, admitted.body
        attempt.via_peer, attempt.actor = caller.via_peer, caller.actor
        if caller.via_peer:  # the first worker's id, so its audit names this action
            attempt.attempt_id = caller.attempt_id or attempt.attempt_id
        problem = path_problem(tenant, mailbox)
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            payload = None
        problem = problem or release_problem(payload)
        if problem is not None:
            return _json(400, {"error": problem})
        reason = attempt.reason = payload["reason"].strip()
        if not self.ctx.action_keys:
            return _json(403, {"error": f"releases are disabled: start the worker with {KEYS_ENV}"})
        key = MailboxKey.of(tenant, mailbox)
        key_bytes = encode_key(key)
        actor = caller.actor or ""  # a support caller always names a person

        async def local() -> Any:
            wanted = Release(key, actor, reason, wall_ms(), attempt.attempt_id)
            return await self.release_here(wanted, key_bytes, caller.source)

        if caller.via_peer:
            return await local()
        who = OnBehalfOf("support", actor, caller.source, attempt.attempt_id)
        return await self.routed(request, key_bytes, local, who, body)

    async def release_here(self, wanted: Release, key_bytes: bytes, source: str | None) -> Any:
        """On the owner: refuse at once what the policy refuses, else publish and wait."""
        plan = plan_release(self.rt.load(key_bytes), wanted, wall_ms())
        if isinstance(plan, ReleasePlan):
            return await self.publish_release(wanted, plan, source)
        # Audited like the agent's refusals: the same report, published the same way.
        await self.rt.publish([plan.report], wall_ms())
        key = wanted.key
        return _json(
            409,
            {
                "outcome": "refused",
                "tenant_id": key.tenant_id,
                "mailbox": key.mailbox,
                "actor": wanted.actor,
                "reason": plan.reason,
                "report_id": plan.report.report_id,
                "action_id": wanted.action_id,
                "served_by": str(self.app.conf.canonical_url),
            },
        )

    async def publish_release(self, wanted: Release, plan: ReleasePlan, source: str | None) -> Any:
        """Send the signed SupportAction and answer with what the agent reports about it."""
        ctx, key = self.ctx, wanted.key
        name, value = records.record_of(wanted)
        value = ctx.action_keys.sign({**value, "source": source})
        key_name, key_record = records.key_of(wanted)
        waiting = asyncio.ensure_future(
            ctx.recent.wait_for_any(
                [plan.released_report_id, plan.refused_report_id], RELEASE_WAIT_S
            )
        )
        await asyncio.sleep(0)  # registers the waiter before the request can be handled
        topic = self.rt.names.support_actions
        await (
            await self.app.producer.send(
                topic,
                ctx.codec.encode(key_name, key_record),
                ctx.codec.encode(name, value),
                None,
                None,
                None,
            )
        )
        event = await waiting
        base = {
            "tenant_id": key.tenant_id,
            "mailbox": key.mailbox,
            "actor": wanted.actor,
            "reason": wanted.reason,
            "action_id": value["action_id"],
            "served_by": str(self.app.conf.canonical_url),
        }
        if event is None:
            return _json(
                202,
                {
                    **base,
                    "outcome": "pending",
                    "detail": f"sent to {topic}; the worker has not reported the outcome "
                    f"within {RELEASE_WAIT_S:.0f}s (see mail.reports)",
                },
            )
        if event.id == plan.refused_report_id:
            return _json(409, {**base, "outcome": "refused", "refusal": event.detail.get("reason")})
        return _json(
            200,
            {**base, "outcome": "released", "offense": plan.offense, "at": iso(event.at_ms)},
        )

    async def _write_attempt(self, attempt: ReleaseAttempt) -> None:
        """One `release_attempt` report on mail.reports, delivered."""
        from processor import topics as contract

        value = records.release_attempt_record(
            attempt_id=attempt.attempt_id,
            tenant_id=attempt.tenant_id,
            mailbox=attempt.mailbox,
            at_ms=attempt.at_ms,
            actor=attempt.actor,
            reason=attempt.reason,
            source=attempt.source,
            outcome=attempt.outcome,
            status=attempt.status,
        )
        key = {"tenant_id": attempt.tenant_id, "mailbox": attempt.mailbox}
        codec = self.ctx.codec
        await (
            await self.app.producer.send(
                self.rt.names.external(contract.MAIL_REPORTS),
                codec.encode("MailboxKey", key),
                codec.encode("Report", value),
                None,
                None,
                None,
            )
        )

    # -- the status page --------------------------------------------------------------

    async def status_page(self, request: Any) -> Any:
        token = self.ctx.access.admin_token
        query_token = request.query.get("token")
        if query_token is not None:
            return self.status_cookie_redirect(query_token)
        if not check_status_cookie(request.cookies.get(STATUS_COOKIE), token, wall_ms()):
            caller = self.caller(request, "admin")
            if isinstance(caller, Denied):
                return _denied(caller)
        rows, unavailable = await self.all_blocks(None)
        page = render_status_page(
            rows,
            self.recent_json(50),
            generated_at=iso(wall_ms()) or "",
            worker=str(self.app.conf.canonical_url),
            unavailable=unavailable,
        )
        return aioweb.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)

    def status_cookie_redirect(self, query_token: str) -> Any:
        """`/status?token=...`: check it once, set the cookie, and send the browser to
        `/status`, so the token leaves the address bar at once (the cookie carries an
        HMAC of it and its expiry, never the token)."""
        token = self.ctx.access.admin_token
        denied = check(query_token, token, "admin", ADMIN_ENV)
        if denied is not None:
            return _denied(denied)
        assert token is not None
        response = aioweb.Response(status=303, headers={**PAGE_HEADERS, "Location": "/status"})
        response.set_cookie(
            STATUS_COOKIE,
            status_cookie(token, wall_ms()),
            path="/status",
            max_age=STATUS_COOKIE_TTL_MS // 1000,
            httponly=True,
            samesite="Strict",
        )
        return response


def define_web(app: faust.App, ctx: WebContext) -> WorkerWeb:
    """Add the endpoints to `app`'s web server (call before the worker starts)."""
    web = WorkerWeb(app, ctx)

    async def on_recovered() -> None:
        ctx.recovered = True

    ctx.rt.table.on_recover(on_recovered)
    ctx.rt.on_decisions.append(ctx.recent.record)

    def page(path: str, **methods: Callable[..., Awaitable[Any]]) -> None:
        # A View class per path, its methods delegating to `web` (Faust's routing).
        view = type(
            path, (faust.web.View,), {name: _delegate(handler) for name, handler in methods.items()}
        )
        app.page(path)(view)

    page("/health", get=web.health)
    page("/ready", get=web.ready)
    page("/metrics", get=web.metrics)
    page("/api/mailboxes/{tenant}/{mailbox}", get=web.mailbox)
    page("/api/mailboxes/{tenant}/{mailbox}/release", post=web.release)
    page("/api/blocks", get=web.blocks)
    page("/status", get=web.status_page)
    return web


def _delegate(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def method(view: Any, request: Any, **params: Any) -> Any:
        return await handler(request, **params)

    return method
