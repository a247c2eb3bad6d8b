"""The policy server: many concurrent Postfix connections on one asyncio event loop.

Each connection is an `asyncio.Protocol` (not a stream reader/writer pair): bytes are
framed and answered inside `data_received`, with no task or future per request,
which is what lets one core answer tens of thousands of requests a second (see
`benchmarks/gateway_bench.py`). Answers come from memory (`Answerer`), so no request
waits on anything but the CPU.

No client can stall another or hold resources without bound:

* `max_connections` (default `DEFAULT_MAX_CONNECTIONS`): a connection beyond it is
  closed at once and counted; Postfix falls back to its
  `smtpd_policy_service_default_action` for it.
* idle timeout (`DEFAULT_IDLE_TIMEOUT_S`): a connection silent between requests is
  closed. It is longer than Postfix's own `smtpd_policy_service_max_idle` (300 s),
  so Postfix, which knows when it is done, normally closes first.
* read timeout (`DEFAULT_READ_TIMEOUT_S`): a request begun must be finished within
  it (Postfix writes a request in one go).
* write stall (`DEFAULT_READ_TIMEOUT_S` too): a client that stops reading its answers
  fills its send buffer (`WRITE_BUFFER_HIGH_BYTES`); the server then stops reading
  that connection and closes it if it does not drain in time.
* the protocol's own limits on lines, attributes and request size
  (`processor.mail.policy_protocol`).

Timeouts are enforced by one sweep a second (`SWEEP_INTERVAL_S`) over all
connections, not by a timer per request: rescheduling a timer on every request
would cost more than answering it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

from processor.mail.policy_answers import Answerer, malformed_reply
from processor.mail.policy_protocol import PolicyRequest, RequestReader

if TYPE_CHECKING:  # prometheus-client is imported when the gateway runs, not for --help
    from processor.mail.gateway_metrics import GatewayMetrics

log = logging.getLogger(__name__)

#: Postfix holds one policy connection per smtpd process (`default_process_limit`
#: is 100), so 1000 leaves room for a busy MTA or several sharing one gateway.
DEFAULT_MAX_CONNECTIONS: Final = 1000
#: Longer than Postfix's `smtpd_policy_service_max_idle` (300 s).
DEFAULT_IDLE_TIMEOUT_S: Final = 330.0
#: Postfix writes a whole request at once; ten seconds is a stalled client.
DEFAULT_READ_TIMEOUT_S: Final = 10.0
#: Unsent answers buffered per connection before its reading pauses (~150 answers).
WRITE_BUFFER_HIGH_BYTES: Final = 64 * 1024
#: How often connections are checked against their timeouts.
SWEEP_INTERVAL_S: Final = 1.0
#: At most one log line per this many seconds about malformed requests or refusals.
LOG_EVERY_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class ServerLimits:
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    idle_timeout_s: float = DEFAULT_IDLE_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S

    def __post_init__(self) -> None:
        if self.max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        if not (self.idle_timeout_s > 0 and self.read_timeout_s > 0):
            raise ValueError("timeouts must be positive")


class PolicyServer:
    """Accepts connections and answers their requests with `answerer`.

    `state_age_s()` gives the state's age at the moment of a request (for the stale
    policy). Call `start`, then `close` to stop.
    """

    def __init__(
        self,
        answerer: Answerer,
        state_age_s: Callable[[], float],
        metrics: GatewayMetrics,
        limits: ServerLimits = ServerLimits(),
    ) -> None:
        self.answerer = answerer
        self.state_age_s = state_age_s
        self.metrics = metrics
        self.limits = limits
        self.connections: set[PolicyConnection] = set()
        self._server: asyncio.Server | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._last_log: dict[str, float] = {}

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on host:port (port 0: any free one); returns the address bound."""
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: PolicyConnection(self), host, port, backlog=1024
        )
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="policy-sweeper")
        address = self._server.sockets[0].getsockname()
        return str(address[0]), int(address[1])

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            connection.transport_close()
        if self._server is not None:
            await self._server.wait_closed()

    # -- timeouts ------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_S)
            self.sweep(time.monotonic())
            self.metrics.flush()

    def sweep(self, now: float) -> None:
        """Close every connection that has been silent or stalled too long at `now`."""
        idle, read = self.limits.idle_timeout_s, self.limits.read_timeout_s
        for connection in list(self.connections):
            if connection.stalled_since is not None and now - connection.stalled_since > read:
                self.metrics.timeout("write")
            elif connection.partial_since is not None and now - connection.partial_since > read:
                self.metrics.timeout("read")
            elif connection.partial_since is None and now - connection.last_active > idle:
                self.metrics.timeout("idle")
            else:
                continue
            connection.transport_close()

    # -- called by connections ---------------------------------------------------------
    def log_rate_limited(self, what: str, message: str, *args: object) -> None:
        now = time.monotonic()
        last = self._last_log.get(what)
        if last is None or now - last >= LOG_EVERY_S:
            self._last_log[what] = now
            log.warning(message, *args, extra={"event": what})


class PolicyConnection(asyncio.Protocol):
    """One Postfix connection: requests in, answers out, in order."""

    __slots__ = (
        "last_active",
        "partial_since",
        "reader",
        "server",
        "stalled_since",
        "transport",
    )

    def __init__(self, server: PolicyServer) -> None:
        self.server = server
        self.reader = RequestReader()
        self.transport: asyncio.Transport | None = None
        self.last_active = time.monotonic()
        #: When the unfinished request now buffered began (None: none is).
        self.partial_since: float | None = None
        #: When the client stopped reading its answers (None: it reads them).
        self.stalled_since: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A TCP transport; cast rather than asserted, as a third-party loop's (uvloop)
        # implements asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        server = self.server
        if len(server.connections) >= server.limits.max_connections:
            server.metrics.connections_refused.inc()
            server.log_rate_limited(
                "connection_refused",
                "connection limit (%d) reached: closing a new connection",
                server.limits.max_connections,
            )
            transport.abort()
            return
        self.transport = transport
        transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH_BYTES)
        server.connections.add(self)
        server.metrics.connections.inc()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.transport = None
            self.server.connections.discard(self)
            self.server.metrics.connections.dec()

    def data_received(self, data: bytes) -> None:
        started = time.perf_counter()
        now = time.monotonic()
        self.last_active = now
        server = self.server
        items = self.reader.feed(data)
        if self.reader.pending:
            if items or self.partial_since is None:
                self.partial_since = now
        else:
            self.partial_since = None
        if not items:
            return
        metrics = server.metrics
        answerer = server.answerer
        now_ms = int(time.time() * 1000)
        age = server.state_age_s()
        replies = []
        for item in items:
            if type(item) is PolicyRequest:
                answer = answerer.answer(item, now_ms, age)
                metrics.answered(answer)
                replies.append(answer.reply)
            else:
                metrics.malformed(item.reason)  # type: ignore[union-attr]
                replies.append(malformed_reply(item))  # type: ignore[arg-type]
                server.log_rate_limited("malformed_request", "malformed policy request: %s", item)
        transport = self.transport
        if transport is not None:
            transport.write(replies[0] if len(replies) == 1 else b"".join(replies))
            if self.reader.closed:
                transport.close()  # after the answer is flushed
        elapsed = time.perf_counter() - started
        for _ in items:
            metrics.observe_latency(elapsed)

    def eof_received(self) -> bool:
        return False  # close our side too

    def pause_writing(self) -> None:
        self.stalled_since = time.monotonic()
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.stalled_since = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def transport_close(self) -> None:
        if self.transport is not None:
            self.transport.abort()
