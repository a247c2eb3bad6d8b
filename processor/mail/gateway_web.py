"""The gateway's small HTTP port: `/health`, `/ready`, `/metrics`.

aiohttp on the gateway's own event loop rather than prometheus-client's HTTP server
(a thread with `http.server`): `/ready` must answer 503 with the state's age as
JSON, which that server cannot, and reading the live state from the loop's own
thread needs no lock. aiohttp is already installed (Faust depends on it).

* `GET /health`: 200 while the process runs (liveness).
* `GET /ready`: 200 when the gateway serves policy requests from a state that is
  current (caught up within `--stale-after`); 503 before the first catch-up and
  while stale. The JSON body says which, with `state_age_seconds`, either way.
* `GET /metrics`: Prometheus text format.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from processor.mail.gateway_metrics import GatewayMetrics


def build_web_app(
    metrics: GatewayMetrics, readiness: Callable[[], dict[str, Any]]
) -> web.Application:
    """The app; `readiness()` returns the /ready body, whose `ready` decides the status."""

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def ready(request: web.Request) -> web.Response:
        body = readiness()
        return web.json_response(body, status=200 if body["ready"] else 503)

    async def metrics_page(request: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_page)
    return app


async def start_web(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve `app` on host:port (0: any free port); returns the runner and the port."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    # The bound port (for port 0) is on the runner's listening sockets.
    bound = port
    for address in runner.addresses:
        bound = int(address[1])
    return runner, bound
