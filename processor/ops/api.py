"""The worker's status and support API, on Faust's web server (aiohttp).

    GET  /health                                   liveness, no token, no data
    GET  /ready                                    200 once the tables have recovered
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
the policy's reason), and the refusal's `release_refused` report is still written
to `mail.reports`, so every release attempt is audited. Otherwise a SupportAction
goes to `mailbox.support-actions`, where it is ordered with the mailbox's verdicts,
and the handler waits for the agent's report: 200 released (or 409 if the state
changed in between), or 202 when the agent has not answered in time.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

import faust
from aiohttp import web as aioweb
from yarl import URL

from processor.codec import records
from processor.codec.wire import Codec
from processor.ops.auth import (
    ADMIN_ENV,
    STATUS_COOKIE,
    SUPPORT_ENV,
    Denied,
    Tokens,
    bearer,
    check,
    check_status_cookie,
    status_cookie,
)
from processor.ops.logging import log_decisions
from processor.ops.recent import RecentEvent, RecentEvents
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


@dataclass
class ApiContext:
    rt: Runtime
    tokens: Tokens
    codec: Codec
    recent: RecentEvents
    #: Set by the table's first recovery (readiness).
    recovered: bool = False


def event_json(event: RecentEvent) -> dict[str, Any]:
    out = asdict(event)
    out["at"] = iso(out.pop("at_ms"))
    detail = out["detail"]
    if "until" in detail:
        detail["until"] = iso(detail["until"])
    for evidence in detail.get("evidence", ()):
        evidence["scanned_at"] = iso(evidence["scanned_at"])
    return out


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return aioweb.json_response(body, status=status, headers=headers)


def _denied(denied: Denied) -> Any:
    headers = {"WWW-Authenticate": 'Bearer realm="sendguard"'} if denied.status == 401 else None
    return _json(denied.status, {"error": denied.message}, headers)


def define_api(app: faust.App, ctx: ApiContext) -> None:
    """Add the endpoints to `app`'s web server (call before the worker starts)."""
    rt = ctx.rt

    async def on_recovered() -> None:
        ctx.recovered = True

    rt.table.on_recover(on_recovered)
    rt.on_decisions.append(ctx.recent.record)

    def admin(request: Any) -> Denied | None:
        return check(
            bearer(request.headers.get("Authorization")), ctx.tokens.admin, "admin", ADMIN_ENV
        )

    def support(request: Any) -> Denied | None:
        given = bearer(request.headers.get("Authorization"))
        return check(given, ctx.tokens.support, "support", SUPPORT_ENV)

    def is_self(url: Any) -> bool:
        """Whether `url` (a URL or, from the assignor's metadata, a string) is this worker."""
        url, own = URL(str(url)), URL(str(app.conf.canonical_url))
        return (url.host, url.port) == (own.host, own.port)

    def owner_url(key: bytes) -> Any | None:
        """The owner's base URL, None when it is this worker. Raises KeyError when unknown."""
        url = app.router.key_store(STATE_TABLE, key)
        return None if is_self(url) else url

    async def forward(url: Any, request: Any, body: bytes | None) -> Any:
        headers = {ROUTED_HEADER: "1"}
        for name in ("Authorization", "Content-Type"):
            if name in request.headers:
                headers[name] = request.headers[name]
        target = url.with_path(request.path).with_query(request.query)
        async with app.http_client.request(
            request.method, target, headers=headers, data=body
        ) as response:
            text = await response.text()
            return aioweb.Response(
                text=text, status=response.status, content_type=response.content_type
            )

    async def routed(
        request: Any, key: bytes, local: Callable[[], Awaitable[Any]], body: bytes | None = None
    ) -> Any:
        if request.headers.get(ROUTED_HEADER):
            return await local()
        try:
            url = owner_url(key)
        except KeyError:
            return _json(503, {"error": "partition owner unknown (worker starting or rebalancing)"})
        return await local() if url is None else await forward(url, request, body)

    def local_blocks(tenant: str | None) -> list[dict[str, Any]]:
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

    async def all_blocks(request: Any, tenant: str | None) -> list[dict[str, Any]]:
        """This worker's blocks, plus every other worker's (asked with the same token)."""
        rows = local_blocks(tenant)
        if request.headers.get(ROUTED_HEADER):
            return rows
        others = {url for url in app.router.table_metadata(STATE_TABLE) if not is_self(url)}
        for url in others:
            target = URL(url).with_path("/api/blocks")
            if tenant is not None:
                target = target.with_query({"tenant": tenant})
            headers = {ROUTED_HEADER: "1", "Authorization": f"Bearer {ctx.tokens.admin}"}
            try:
                async with app.http_client.get(target, headers=headers) as response:
                    rows.extend((await response.json())["blocks"])
            except Exception as error:  # one unreachable peer must not hide the others
                log.warning("blocks of %s unavailable: %s", url, error)
        return rows

    def recent_json(limit: int, **where: Any) -> list[dict[str, Any]]:
        return [event_json(e) for e in ctx.recent.latest(limit, **where)]

    @app.page("/health")
    class Health(faust.web.View):
        async def get(self, request: Any) -> Any:
            return _json(200, {"status": "ok"})

    @app.page("/ready")
    class Ready(faust.web.View):
        async def get(self, request: Any) -> Any:
            if not ctx.recovered:
                return _json(503, {"ready": False, "reason": "tables not recovered yet"})
            if app.rebalancing or getattr(app, "in_recovery", False):
                return _json(503, {"ready": False, "reason": "rebalancing"})
            return _json(200, {"ready": True})

    @app.page("/api/mailboxes/{tenant}/{mailbox}")
    class Mailbox(faust.web.View):
        async def get(self, request: Any, tenant: str, mailbox: str) -> Any:
            denied = admin(request)
            if denied is not None:
                return _denied(denied)
            key = MailboxKey.of(tenant, mailbox)
            key_bytes = encode_key(key)

            async def local() -> Any:
                document = mailbox_document(
                    key,
                    rt.load(key_bytes),
                    rt.policy,
                    wall_ms(),
                    recent_json(20, tenant_id=key.tenant_id, mailbox=key.mailbox),
                )
                return _json(200, document)

            return await routed(request, key_bytes, local)

    @app.page("/api/mailboxes/{tenant}/{mailbox}/release")
    class ReleaseView(faust.web.View):
        async def post(self, request: Any, tenant: str, mailbox: str) -> Any:
            denied = support(request)
            if denied is not None:
                return _denied(denied)
            body = await request.read()
            try:
                payload = json.loads(body or b"null")
            except ValueError:
                payload = None
            problem = _release_problem(payload)
            if problem is not None:
                return _json(400, {"error": problem})
            key = MailboxKey.of(tenant, mailbox)
            key_bytes = encode_key(key)
            request_ = Release(
                key=key,
                actor=payload["actor"].strip(),
                reason=payload["reason"].strip(),
                at_ms=wall_ms(),
            )

            async def local() -> Any:
                return await release_here(request_, key_bytes)

            return await routed(request, key_bytes, local, body)

    async def release_here(request: Release, key_bytes: bytes) -> Any:
        key = request.key
        plan = plan_release(rt.load(key_bytes), request, wall_ms())
        if not isinstance(plan, ReleasePlan):
            # Audited like the agent's refusals: the same report, on mail.reports.
            out = rt.outputs.encode(plan.report)
            await (await app.producer.send(out.topic, out.key, out.value, None, None, None))
            ctx.recent.record([plan.report])
            log_decisions([plan.report])
            rt.metrics.decisions([plan.report], wall_ms(), None)
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
        name, value = records.record_of(request)
        key_name, key_record = records.key_of(request)
        waiting = asyncio.ensure_future(
            ctx.recent.wait_for_any(
                [plan.released_report_id, plan.refused_report_id], RELEASE_WAIT_S
            )
        )
        await asyncio.sleep(0)  # registers the waiter before the request can be handled
        topic = rt.names.support_actions
        await (
            await app.producer.send(
                topic,
                ctx.codec.encode(key_name, key_record),
                ctx.codec.encode(name, value),
                None,
                None,
                None,
            )
        )
        action_id = value["action_id"]
        event = await waiting
        base = {
            "tenant_id": key.tenant_id,
            "mailbox": key.mailbox,
            "actor": request.actor,
            "reason": request.reason,
            "action_id": action_id,
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

    @app.page("/api/blocks")
    class Blocks(faust.web.View):
        async def get(self, request: Any) -> Any:
            denied = admin(request)
            if denied is not None:
                return _denied(denied)
            tenant = request.query.get("tenant") or None
            rows = await all_blocks(request, tenant)
            rows.sort(key=lambda r: (r["tenant_id"], r["mailbox"]))
            return _json(200, {"tenant_id": tenant, "blocks": rows})

    @app.page("/status")
    class StatusPage(faust.web.View):
        async def get(self, request: Any) -> Any:
            token = ctx.tokens.admin
            query_token = request.query.get("token")
            if query_token is not None:
                denied = check(query_token, token, "admin", ADMIN_ENV)
                if denied is not None:
                    return _denied(denied)
                assert token is not None
                # The token leaves the address at once; the cookie carries an HMAC of it.
                response = aioweb.Response(
                    status=303, headers={**PAGE_HEADERS, "Location": "/status"}
                )
                response.set_cookie(
                    STATUS_COOKIE,
                    status_cookie(token),
                    path="/status",
                    httponly=True,
                    samesite="Strict",
                )
                return response
            if not check_status_cookie(request.cookies.get(STATUS_COOKIE), token):
                denied = admin(request)
                if denied is not None:
                    return _denied(denied)
            page = render_status_page(
                await all_blocks(request, None),
                recent_json(50),
                generated_at=iso(wall_ms()) or "",
                worker=str(app.conf.canonical_url),
            )
            return aioweb.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)


def _release_problem(payload: object) -> str | None:
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
