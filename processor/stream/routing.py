"""Between workers: which one owns a mailbox, forwarding to it, and asking them all.

A mailbox's state lives on the worker that owns its table partition; Faust's
assignor knows every worker's advertised URL (`canonical_url`, `--advertised-url`)
and which partitions it holds. A request for a mailbox owned elsewhere is sent
on once, to the owner, with the path exactly as the client sent it (raw, so a
`%2F` in a mailbox stays inside its path segment) and a peer marker
(`processor.ops.peer_auth`) in place of the user's token, which is never sent on.
"""

from __future__ import annotations

import logging
import urllib.parse
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web as aioweb
from yarl import URL

from processor.ops.peer_auth import PEER_HEADER, SECRET_ENV, PeerAuth, Role
from processor.stream.topics import STATE_TABLE

log = logging.getLogger(__name__)

#: A forwarded release waits up to 15 s for the agent; leave it room.
FORWARD_TIMEOUT_S = 30.0
#: A worker asked for its blocks answers from memory at once.
BLOCKS_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class OnBehalfOf:
    """Who the first worker authenticated, vouched for in the peer marker."""

    role: Role
    actor: str | None = None
    source: str | None = None
    attempt_id: str | None = None


def json_response(status: int, body: dict[str, Any]) -> Any:
    return aioweb.json_response(body, status=status)


class PeerRouter:
    """Finds owners in the assignor's metadata and talks to them with markers."""

    def __init__(self, app: Any, peers: PeerAuth | None) -> None:
        self.app = app
        self.peers = peers

    def own_url(self) -> URL:
        return URL(str(self.app.conf.canonical_url))

    def is_self(self, url: Any) -> bool:
        """Whether `url` (a URL or, from the assignor's metadata, a string) is this worker."""
        url, own = URL(str(url)), self.own_url()
        return (url.host, url.port) == (own.host, own.port)

    def owner_url(self, key: bytes) -> URL | None:
        """The owner's base URL, None when it is this worker. Raises KeyError when unknown."""
        url = self.app.router.key_store(STATE_TABLE, key)
        return None if self.is_self(url) else URL(str(url))

    def other_workers(self) -> list[str]:
        """The advertised URLs of the group's other workers (the assignor's metadata)."""
        urls = {str(url) for url in self.app.router.table_metadata(STATE_TABLE)}
        return sorted(url for url in urls if not self.is_self(url))

    def _target(self, base: URL, raw_path: str) -> URL:
        # encoded=True: the raw path goes out byte for byte as the marker signed it.
        return URL(str(base).rstrip("/") + raw_path, encoded=True)

    def _headers(self, method: str, raw_path: str, body: bytes, who: OnBehalfOf) -> dict[str, str]:
        assert self.peers is not None
        marker = self.peers.marker(
            method,
            raw_path,
            body,
            role=who.role,
            actor=who.actor,
            source=who.source,
            attempt_id=who.attempt_id,
        )
        return {PEER_HEADER: marker}

    async def forward(self, url: URL, request: Any, body: bytes, who: OnBehalfOf) -> Any:
        """`request` sent on to the worker at `url` on behalf of `who`; its answer.

        Answers 503 when this worker has no peer secret, and 502 when the owner
        cannot be reached or refuses the marker (a secret that differs between
        workers), so the client never sees the owner's 401 as its own.
        """
        if self.peers is None:
            return json_response(
                503,
                {
                    "error": f"the mailbox is owned by the worker at {url}, and this worker "
                    f"cannot forward to it: start every worker with {SECRET_ENV}"
                },
            )
        raw_path = request.raw_path
        headers = self._headers(request.method, raw_path, body, who)
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        try:
            async with self.app.http_client.request(
                request.method,
                self._target(url, raw_path),
                headers=headers,
                data=body if body else None,
                timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S),
                allow_redirects=False,
            ) as response:
                text = await response.text()
                status, content_type = response.status, response.content_type
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            return json_response(
                502, {"error": f"the worker owning this mailbox ({url}) did not answer: {error}"}
            )
        if status == 401:
            log.error("the worker at %s refused a forwarded request: %s", url, text[:300])
            return json_response(
                502,
                {
                    "error": f"the worker owning this mailbox ({url}) refused the forwarded "
                    f"request; check that every worker has the same {SECRET_ENV}"
                },
            )
        return aioweb.Response(text=text, status=status, content_type=content_type)

    async def blocks_of_others(
        self, tenant: str | None
    ) -> tuple[list[dict[str, Any]], list[dict[str, str]]]:
        """(block rows of every other worker, [{worker, error}] of those that did not answer).

        Asked as admin, on behalf of whoever asked this worker.
        """
        rows: list[dict[str, Any]] = []
        unavailable: list[dict[str, str]] = []
        raw_path = "/api/blocks"
        if tenant is not None:
            raw_path += "?" + urllib.parse.urlencode({"tenant": tenant})
        for url in self.other_workers():
            if self.peers is None:
                unavailable.append({"worker": url, "error": f"no {SECRET_ENV} on this worker"})
                continue
            headers = self._headers("GET", raw_path, b"", OnBehalfOf("admin"))
            try:
                async with self.app.http_client.get(
                    self._target(URL(url), raw_path),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=BLOCKS_TIMEOUT_S),
                    allow_redirects=False,
                ) as response:
                    if response.status != 200:
                        text = (await response.text())[:200]
                        raise RuntimeError(f"HTTP {response.status}: {text}")
                    rows.extend((await response.json())["blocks"])
            except Exception as error:  # one unreachable worker must not hide the others
                log.warning("blocks of %s unavailable: %s", url, error)
                unavailable.append({"worker": url, "error": str(error)[:300]})
        return rows, unavailable
