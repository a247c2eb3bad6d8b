"""The HTTP side of `sendguard ingest`: rspamd POSTs a result, sendguard answers once
the verdict (or its dead letter) is on Kafka.

What rspamd's answer means (metadata_exporter's `http` backend: any status but 200
is a failure; with `defer = true` rspamd then answers the MTA "soft reject", so the
message is retried later and scanned again, which yields the same message id):

    200  the verdict is delivered to mail.verdicts, or the result could not be mapped
         and its dead letter is delivered to sendguard.dead-letter
    413  the body is over --max-body: dead-lettered (its first 64 KiB), and not 200 on
         purpose, so that with `defer = true` a message sendguard cannot count does
         not pass either
    503  not taken: too many requests at once, the producer queue is full, or the
         broker did not acknowledge within --ack-timeout (keep it under rspamd's
         fixed 5 s HTTP timeout); `Retry-After: 1`
    400/404/405/408  not a POST to /rspamd, or its body did not arrive in time

No request waits on another: each awaits only its own record's delivery, and a body
is read with a size and a time limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from processor.codec import records
from processor.codec.errors import EncodeError
from processor.codec.wire import Codec
from processor.mail.delivery import DeliveryFailed, KafkaDelivery, QueueFull
from processor.mail.ingest_metrics import IngestMetrics
from processor.mail.rspamd import MappingRules, RspamdMappingError, map_rspamd
from processor.mail.tenants import TenantMap, TenantMapError

log = logging.getLogger("sendguard.ingest")

#: The path rspamd's `url` points at.
RSPAMD_PATH = "/rspamd"
#: `source_topic` of a dead letter that came from rspamd over HTTP (no Kafka position:
#: its partition and offset are -1).
DEAD_LETTER_SOURCE = "rspamd"
#: How much of a body a dead letter keeps: enough to see what rspamd sent, and far
#: under the producer's 1 MB record limit.
DEAD_LETTER_KEEP = 64 * 1024
#: How often the broker and the tenant map file are checked.
CHECK_INTERVAL_S = 5.0


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """Where to listen, where to write, and the limits."""

    verdicts_topic: str
    dead_letter_topic: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 6070
    web_host: str = "127.0.0.1"
    web_port: int = 6071
    max_body: int = 1024 * 1024
    max_in_flight: int = 1000
    ack_timeout_s: float = 3.0
    read_timeout_s: float = 5.0


def _answer(status: int, result: str, **extra: Any) -> web.Response:
    response = web.json_response({"result": result, **extra}, status=status)
    if status == 503:
        response.headers["Retry-After"] = "1"
    return response


async def read_limited(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """(up to `limit` bytes of the body, whether that is all of it)."""
    body = bytearray()
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return bytes(body), True
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), False


class IngestServer:
    """Maps and delivers rspamd results; serves /health, /ready and /metrics."""

    def __init__(
        self,
        settings: IngestSettings,
        rules: MappingRules,
        codec: Codec,
        delivery: KafkaDelivery,
        metrics: IngestMetrics,
        *,
        tenants_path: Path | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.rules = rules
        self.codec = codec
        self.delivery = delivery
        self.metrics = metrics
        self.tenants_path = tenants_path
        self._tenants_mtime = _mtime(tenants_path)
        self._clock = clock
        self._in_flight = 0
        self.problem: str | None = "the broker has not been checked yet"

    # -- the rspamd endpoint -----------------------------------------------------------

    def rspamd_app(self) -> web.Application:
        app = web.Application(middlewares=[self._count_refusals])
        app.router.add_post(RSPAMD_PATH, self.handle_rspamd)
        return app

    @web.middleware
    async def _count_refusals(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        # The router's own 404/405 (and aiohttp's 400s) never reach the handler.
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException:
            self.metrics.request("bad_request")
            raise
        return response

    async def handle_rspamd(self, request: web.Request) -> web.StreamResponse:
        if self._in_flight >= self.settings.max_in_flight:
            self.metrics.request("busy")
            return _answer(503, "busy", reason="too many requests at once")
        self._in_flight += 1
        self.metrics.set_in_flight(self._in_flight)
        try:
            return await self._handle(request)
        finally:
            self._in_flight -= 1
            self.metrics.set_in_flight(self._in_flight)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        try:
            async with asyncio.timeout(self.settings.read_timeout_s):
                body, complete = await read_limited(request, self.settings.max_body)
        except TimeoutError:
            self.metrics.request("bad_request")
            return _answer(408, "bad_request", reason="the body did not arrive in time")
        now_ms = int(self._clock() * 1000)
        if not complete:
            error = RspamdMappingError(
                "body_too_large", f"body over {self.settings.max_body} bytes (--max-body)"
            )
            response = await self._dead_letter(error, body, now_ms, status=413)
            response.force_close()  # the rest of the body is never read
            return response
        try:
            verdict = map_rspamd(body, self.rules, now_ms)
        except RspamdMappingError as error:
            return await self._dead_letter(error, body, now_ms, status=200)

        value_name, value = records.record_of(verdict)
        key_name, key = records.key_of(verdict)
        try:
            encoded = self.codec.encode(value_name, value)
            encoded_key = self.codec.encode(key_name, key)
        except EncodeError as error:  # a schema registry that does not answer
            log.error("cannot encode a verdict: %s", error)
            self.metrics.request("not_delivered")
            return _answer(503, "not_delivered", reason="cannot encode the verdict")
        refused = await self._deliver(self.settings.verdicts_topic, encoded_key, encoded)
        if refused is not None:
            return refused
        self.metrics.request("verdict")
        self.metrics.verdict(verdict.direction.value, verdict.verdict.value)
        log.debug(
            "verdict %s %s %s %s %s",
            verdict.key.tenant_id,
            verdict.key.mailbox,
            verdict.direction.value,
            verdict.verdict.value,
            verdict.message_id,
            extra={
                "event": "verdict",
                "tenant_id": verdict.key.tenant_id,
                "mailbox": verdict.key.mailbox,
                "direction": verdict.direction.value,
                "verdict": verdict.verdict.value,
                "message_id": verdict.message_id,
            },
        )
        return _answer(200, "verdict", verdict=verdict.verdict.value)

    async def _dead_letter(
        self, error: RspamdMappingError, body: bytes, now_ms: int, *, status: int
    ) -> web.Response:
        record = records.dead_letter_record(
            error.reason,
            error.detail,
            source_topic=DEAD_LETTER_SOURCE,
            source_partition=-1,
            source_offset=-1,
            key=None,
            value=body[:DEAD_LETTER_KEEP],
            at_ms=now_ms,
        )
        refused = await self._deliver(
            self.settings.dead_letter_topic, None, self.codec.encode("DeadLetter", record)
        )
        if refused is not None:
            return refused
        self.metrics.request("dead_letter")
        self.metrics.dead_letter(error.reason)
        log.warning(
            "dead letter (%s): %s",
            error.reason,
            error.detail,
            extra={"event": "dead_letter", "reason": error.reason, "detail": error.detail},
        )
        return _answer(status, "dead_letter", reason=error.reason)

    async def _deliver(self, topic: str, key: bytes | None, value: bytes) -> web.Response | None:
        """None once the record is delivered; otherwise the 503 to answer."""
        try:
            future = self.delivery.send(topic, key, value)
        except QueueFull:
            self.metrics.request("busy")
            return _answer(503, "busy", reason="the producer queue is full")
        except DeliveryFailed as error:
            log.error("the producer refused a record for %s: %s", topic, error)
            self.metrics.request("not_delivered")
            return _answer(503, "not_delivered", reason="the producer refused the record")
        try:
            await asyncio.wait_for(future, self.settings.ack_timeout_s)
        except TimeoutError:
            self.metrics.request("not_delivered")
            return _answer(503, "not_delivered", reason="no acknowledgement in time")
        except DeliveryFailed as error:
            log.error("a record for %s was not delivered: %s", topic, error)
            self.metrics.request("not_delivered")
            return _answer(503, "not_delivered", reason="the broker did not take the record")
        return None

    # -- operations ----------------------------------------------------------------------

    def ops_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/ready", self._ready)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _ready(self, _request: web.Request) -> web.Response:
        if self.problem is not None:
            return web.json_response({"ready": False, "reason": self.problem}, status=503)
        return web.json_response({"ready": True})

    async def _metrics(self, _request: web.Request) -> web.Response:
        self.metrics.set_pending(self.delivery.pending)
        response = web.Response(body=self.metrics.render())
        response.content_type = "text/plain"
        response.charset = "utf-8"
        return response

    async def check(self) -> None:
        """Check the broker and its topics, and reload the tenant map if its file changed."""
        topics = (self.settings.verdicts_topic, self.settings.dead_letter_topic)
        problem = await asyncio.get_running_loop().run_in_executor(
            None, self.delivery.broker_reachable, topics, 3.0
        )
        if problem != self.problem:
            if problem is None:
                log.info("ready: the broker answers and the topics exist")
            else:
                log.warning("not ready: %s", problem)
        self.problem = problem
        self.metrics.set_broker_up(problem is None)
        self.metrics.set_pending(self.delivery.pending)
        self.reload_tenants()

    def reload_tenants(self) -> None:
        """Take the tenant map file again when it changed; a broken file keeps the old map."""
        mtime = _mtime(self.tenants_path)
        if self.tenants_path is None or mtime == self._tenants_mtime:
            return
        self._tenants_mtime = mtime
        try:
            tenants = TenantMap.load(self.tenants_path)
        except TenantMapError as error:
            log.error("keeping the previous tenant map: %s", error)
            return
        self.rules = dataclasses.replace(self.rules, tenants=tenants)
        log.info("tenant map reloaded: %d domains", len(tenants.by_domain))


def _mtime(path: Path | None) -> float | None:
    try:
        return os.stat(path).st_mtime if path is not None else None
    except OSError:
        return None


async def serve(server: IngestServer, stop: asyncio.Event) -> None:
    """Run both listeners until `stop` is set, then finish the requests under way
    (up to 10 s) and stop listening. Raises OSError when a port cannot be bound."""
    settings = server.settings
    runners = [
        web.AppRunner(server.rspamd_app(), access_log=None, shutdown_timeout=10),
        web.AppRunner(server.ops_app(), access_log=None, shutdown_timeout=2),
    ]
    addresses = [
        (settings.listen_host, settings.listen_port),
        (settings.web_host, settings.web_port),
    ]
    try:
        for runner, (host, port) in zip(runners, addresses, strict=True):
            await runner.setup()
            await web.TCPSite(runner, host, port, backlog=1024).start()
        log.info(
            "listening for rspamd on http://%s:%d%s, operations on http://%s:%d",
            settings.listen_host,
            settings.listen_port,
            RSPAMD_PATH,
            settings.web_host,
            settings.web_port,
            extra={"event": "started"},
        )
        while not stop.is_set():
            await server.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), CHECK_INTERVAL_S)
    finally:
        for runner in runners:
            await runner.cleanup()
