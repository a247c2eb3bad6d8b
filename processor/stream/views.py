"""Web views of the worker (on Faust's web server): Prometheus metrics."""

from __future__ import annotations

from typing import Any

import faust
from prometheus_client import CONTENT_TYPE_LATEST

from processor.stream.runtime import Runtime


def define_views(app: faust.App, rt: Runtime) -> None:
    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # aiohttp refuses a charset inside content_type; the exposition format is
        # ASCII, so the bare media type is exact.
        content_type = CONTENT_TYPE_LATEST.partition(";")[0]
        return web.bytes(rt.metrics.render(), content_type=content_type)
