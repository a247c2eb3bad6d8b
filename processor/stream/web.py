"""The worker's web layer, on Faust's web server (aiohttp).

    GET  /health                                   liveness, no token, no data
    GET  /ready                                    200 once the tables have recovered
    GET  /metrics                                  Prometheus, no token
    GET  /api/mailboxes/{tenant}/{mailbox}         admin token: state, block, next penalty
    GET  /api/blocks[?tenant=T]                    admin token: current blocks
    GET  /status                                   admin token (header or cookie): HTML
    POST /api/mailboxes/{tenant}/{mailbox}/release support token, JSON {actor, reason}

A mailbox's state lives on the worker that owns its table partition, so mailbox
requests are forwarded to that worker (Faust's assignor knows it; the routed
request carries a marker, so a request is forwarded at most once). The block list
and the status page ask every worker of the group for the blocks of its partitions.
Tokens: see `processor.ops.auth`.

A release is checked against the stored state first, with the policy's own
`release` on a copy: a timed block or an unblocked mailbox is refused at once (409,
the policy's reason), and the refusal's `release_refused` report is still published
to `mail.reports` like any decision, so every release attempt is audited. Otherwise
a SupportAction goes to `mailbox.support-actions`, where it is ordered with the
mailbox's verdicts, and the handler waits for the agent's report: 200 released (or
409 if the state changed in between), or 202 when the agent has not answered in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import faust
from aiohttp import web as aioweb
from prometheus_client import CONTENT_TYPE_LATEST
from yarl import URL

from processor.codec import records
from processor.codec.action_signing import KEYS_ENV, ActionKeys
from processor.codec.wire import Codec
from processor.ops.auth import (
    ADMIN_ENV,
    STATUS_COOKIE,
    STATUS_COOKIE_TTL_MS,
    SUPPORT_ENV,
    Denied,
    Tokens,
    bearer,
    check,
    check_status_cookie,
    status_cookie,
)
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
from processor.policy import MailboxKey, Release
from processor.stream.events import decode_key, encode_key
from processor.stream.runtime import Runtime, wall_ms
from processor.stream.topics import STATE_TABLE

log = logging.getLogger(__name__)

#: Set on a forwarded request; the receiver answers it itself, whatever it thinks.
ROUTED_HEADER = "X-Sendguard-Routed"
#: Longest actor / reason accepted (they end up in every audit record).
MAX_ACTOR, MAX_REASON = 200, 2000
#: How long a release waits for the agent's report before answering 202.
RELEASE_WAIT_S = 15.0

Handler = Callable[[], Awaitable[Any]]


@dataclass
class WebContext:
    rt: Runtime
    tokens: Tokens
    codec: Codec
    recent: RecentEvents
    #: Sign the support actions the API sends (none: releases are disabled).
    action_keys: ActionKeys = field(default_factory=ActionKeys)
    #: Set by the table's first recovery (readiness).
    recovered: bool = False


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return aioweb.json_response(body, status=status, headers=headers)


def _denied(denied: Denied) -> Any:
    headers = {"WWW-Authenticate": 'Bearer realm="sendguard"'} if denied.status == 401 else None
    return _json(denied.status, {"error": denied.message}, headers)


def release_problem(payload: object) -> str | None:
    """Why a release body is unusable, or None. Both fields are required: the audit
    trail must say who released and why."""
    if not isinstance(payload, dict):
        return 'the body must be a JSON object {"actor": ..., "reason": ...}'
    for name, limit in (("actor", MAX_ACTOR), ("reason", MAX_REASON)):
        value = payload.get(name)
        if not isinstance(value, str) or not value.strip():
            return f"{name} is required (a non-empty string)"
        if len(value) > limit:
            return f"{name} is longer than {limit} characters"
    return None


class WorkerWeb:
    """The endpoints of one worker; `define_web` adds them to its Faust app."""

    def __init__(self, app: faust.App, ctx: WebContext) -> None:
        self.app = app
        self.ctx = ctx
        self.rt = ctx.rt

    # -- authentication ----------------------------------------------------------------

    def admin_denied(self, request: Any) -> Denied | None:
        given = bearer(request.headers.get("Authorization"))
        return check(given, self.ctx.tokens.admin, "admin", ADMIN_ENV)

    def support_denied(self, request: Any) -> Denied | None:
        given = bearer(request.headers.get("Authorization"))
        return check(given, self.ctx.tokens.support, "support", SUPPORT_ENV)

    # -- routing to the worker that owns a mailbox ----------------------------------

    def is_self(self, url: Any) -> bool:
        """Whether `url` (a URL or, from the assignor's metadata, a string) is this worker."""
        url, own = URL(str(url)), URL(str(self.app.conf.canonical_url))
        return (url.host, url.port) == (own.host, own.port)

    def owner_url(self, key: bytes) -> Any | None:
        """The owner's base URL, None when it is this worker. Raises KeyError when unknown."""
        url = self.app.router.key_store(STATE_TABLE, key)
        return None if self.is_self(url) else url

    async def forward(self, url: Any, request: Any, body: bytes | None) -> Any:
        headers = {ROUTED_HEADER: "1"}
        for name in ("Authorization", "Content-Type"):
            if name in request.headers:
                headers[name] = request.headers[name]
        target = url.with_path(request.path).with_query(request.query)
        async with self.app.http_client.request(
            request.method, target, headers=headers, data=body
        ) as response:
            text = await response.text()
            return aioweb.Response(
                text=text, status=response.status, content_type=response.content_type
            )

    async def routed(
        self, request: Any, key: bytes, local: Handler, body: bytes | None = None
    ) -> Any:
        """`local()` on the mailbox's owner: here, or forwarded once to that worker."""
        if request.headers.get(ROUTED_HEADER):
            return await local()
        try:
            url = self.owner_url(key)
        except KeyError:
            return _json(503, {"error": "partition owner unknown (worker starting or rebalancing)"})
        return await local() if url is None else await self.forward(url, request, body)

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

    async def all_blocks(self, request: Any, tenant: str | None) -> list[dict[str, Any]]:
        """This worker's blocks, plus every other worker's (asked with the same token)."""
        rows = self.local_blocks(tenant)
        if request.headers.get(ROUTED_HEADER):
            return rows
        others = {
            url for url in self.app.router.table_metadata(STATE_TABLE) if not self.is_self(url)
        }
        for url in others:
            target = URL(url).with_path("/api/blocks")
            if tenant is not None:
                target = target.with_query({"tenant": tenant})
            headers = {ROUTED_HEADER: "1", "Authorization": f"Bearer {self.ctx.tokens.admin}"}
            try:
                async with self.app.http_client.get(target, headers=headers) as response:
                    rows.extend((await response.json())["blocks"])
            except Exception as error:  # one unreachable peer must not hide the others
                log.warning("blocks of %s unavailable: %s", url, error)
        return rows

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
        return _json(200, {"ready": True})

    async def metrics(self, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is
        # ASCII, so the bare media type is exact.
        content_type = CONTENT_TYPE_LATEST.partition(";")[0]
        return aioweb.Response(body=self.rt.metrics.render(), content_type=content_type)

    async def mailbox(self, request: Any, tenant: str, mailbox: str) -> Any:
        denied = self.admin_denied(request)
        if denied is not None:
            return _denied(denied)
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
            return _json(200, document)

        return await self.routed(request, key_bytes, local)

    async def release(self, request: Any, tenant: str, mailbox: str) -> Any:
        denied = self.support_denied(request)
        if denied is not None:
            return _denied(denied)
        if not self.ctx.action_keys:
            return _json(403, {"error": f"releases are disabled: start the worker with {KEYS_ENV}"})
        body = await request.read()
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            payload = None
        problem = release_problem(payload)
        if problem is not None:
            return _json(400, {"error": problem})
        key = MailboxKey.of(tenant, mailbox)
        key_bytes = encode_key(key)
        wanted = Release(
            key=key,
            actor=payload["actor"].strip(),
            reason=payload["reason"].strip(),
            at_ms=wall_ms(),
        )

        async def local() -> Any:
            return await self.release_here(wanted, key_bytes)

        return await self.routed(request, key_bytes, local, body)

    async def release_here(self, wanted: Release, key_bytes: bytes) -> Any:
        """On the owner: refuse at once what the policy refuses, else publish and wait."""
        plan = plan_release(self.rt.load(key_bytes), wanted, wall_ms())
        if isinstance(plan, ReleasePlan):
            return await self.publish_release(wanted, plan)
        # Audited like the agent's refusals: the same report, published the same way.
        await self.rt.publish([plan.report], wall_ms())
        key = wanted.key
        return _json(
            409,
            {
                "outcome": "refused",
                "tenant_id": key.tenant_id,
                "mailbox": key.mailbox,
                "reason": plan.reason,
                "report_id": plan.report.report_id,
            },
        )

    async def publish_release(self, wanted: Release, plan: ReleasePlan) -> Any:
        """Send the SupportAction and answer with what the agent reports about it."""
        ctx, key = self.ctx, wanted.key
        name, value = records.record_of(wanted)
        value = ctx.action_keys.sign(value)
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

    async def blocks(self, request: Any) -> Any:
        denied = self.admin_denied(request)
        if denied is not None:
            return _denied(denied)
        tenant = request.query.get("tenant") or None
        rows = await self.all_blocks(request, tenant)
        rows.sort(key=lambda r: (r["tenant_id"], r["mailbox"]))
        return _json(200, {"tenant_id": tenant, "blocks": rows})

    async def status_page(self, request: Any) -> Any:
        token = self.ctx.tokens.admin
        query_token = request.query.get("token")
        if query_token is not None:
            return self.status_cookie_redirect(query_token)
        if not check_status_cookie(request.cookies.get(STATUS_COOKIE), token, wall_ms()):
            denied = self.admin_denied(request)
            if denied is not None:
                return _denied(denied)
        page = render_status_page(
            await self.all_blocks(request, None),
            self.recent_json(50),
            generated_at=iso(wall_ms()) or "",
            worker=str(self.app.conf.canonical_url),
        )
        return aioweb.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)

    def status_cookie_redirect(self, query_token: str) -> Any:
        """`/status?token=...`: check it once, set the cookie, and send the browser to
        `/status`, so the token leaves the address bar at once (the cookie carries an
        HMAC of it, never the token)."""
        token = self.ctx.tokens.admin
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
