"""`sendguard gateway`, wired together: follower thread -> state <- policy server, web port.

Start-up order, so that Postfix never gets an answer from a half-read state:

1. the web port (`/health` at once; `/ready` is 503 until step 3);
2. the follower reads `mailbox.control` (and `directory.mailboxes`) from the start;
3. once it has read them to their end, the policy port opens and one line says so:
   `gateway serving policy requests on HOST:PORT (...)`, on stdout and in the log.

Until then Postfix's connections are refused and it applies its
`smtpd_policy_service_default_action`. A broker that is down at start-up is waited
for (logged every 10 s), not an error: a supervisor restarting the gateway would not
bring the broker back sooner.

Runs until SIGINT or SIGTERM, then stops listening, closes connections and the
consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from processor.codec.command_signing import CommandKeys
from processor.codec.wire import CodecConfig
from processor.mail.policy_answers import AnswerConfig
from processor.mail.policy_server import ServerLimits
from processor.stream.connection import KafkaConnection
from processor.stream.topics import TopicNames

log = logging.getLogger(__name__)

#: Default policy port (127.0.0.1 only: Postfix runs on the same host).
DEFAULT_LISTEN: Final = "127.0.0.1:10040"
DEFAULT_WEB_PORT: Final = 6067
#: How often a line says the gateway is still catching up.
PROGRESS_EVERY_S: Final = 10.0


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    connection: KafkaConnection = field(default_factory=KafkaConnection)
    names: TopicNames = field(default_factory=TopicNames)
    codec: CodecConfig = field(default_factory=CodecConfig)
    listen_host: str = "127.0.0.1"
    listen_port: int = 10040
    web_host: str = "127.0.0.1"
    web_port: int = DEFAULT_WEB_PORT
    tenants_path: Path | None = None
    use_directory: bool = True
    answers: AnswerConfig = field(default_factory=AnswerConfig)
    limits: ServerLimits = field(default_factory=ServerLimits)
    #: Enforce only commands signed by one of these keys (none: every command).
    control_keys: CommandKeys = field(default_factory=CommandKeys)


def parse_listen(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port). ValueError when it is neither."""
    host, sep, port = text.strip().rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def run_gateway(settings: GatewaySettings) -> None:
    """Run until interrupted. Raises TenantMapError for a bad tenant map and OSError
    when a port cannot be bound."""
    asyncio.run(serve(settings))


async def serve(settings: GatewaySettings, stop: asyncio.Event | None = None) -> None:
    """The gateway on the running loop, until `stop` is set (or SIGINT/SIGTERM)."""
    from prometheus_client import CollectorRegistry

    from processor.codec.wire import Codec
    from processor.mail.gateway_metrics import GatewayMetrics
    from processor.mail.gateway_state import GatewayState, Update
    from processor.mail.gateway_web import build_web_app, start_web
    from processor.mail.policy_answers import Answerer
    from processor.mail.policy_server import PolicyServer
    from processor.mail.state_follower import StateFollower, TopicKind
    from processor.mail.tenant_resolution import TenantResolver
    from processor.mail.tenants import TenantMap

    tenant_map = TenantMap.load(settings.tenants_path) if settings.tenants_path else None
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Not possible off the main thread (a test running serve() in a thread).
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)

    metrics = GatewayMetrics(CollectorRegistry())
    state = GatewayState(time.monotonic(), settings.answers.stale_after_s, metrics.command)
    answerer = Answerer(
        settings.answers,
        state.blocklist,
        TenantResolver(tenant_map, state.directory if settings.use_directory else None),
    )
    server = PolicyServer(answerer, lambda: state.age_s(time.monotonic()), metrics, settings.limits)
    serving: dict[str, Any] = {"policy": None}
    caught_up = asyncio.Event()

    def readiness() -> dict[str, Any]:
        now = time.monotonic()
        stale = state.stale(now)
        timed, permanent = state.blocklist.counts(int(time.time() * 1000))
        return {
            "ready": serving["policy"] is not None and not stale,
            "serving": serving["policy"],
            "caught_up": state.caught_up_at is not None,
            "state_age_seconds": round(state.age_s(now), 3),
            "stale_after_seconds": state.stale_after_s,
            "stale": stale,
            "when_stale": settings.answers.when_stale,
            "commands_authenticated": bool(settings.control_keys),
            "mailboxes_known": len(state.blocklist),
            "blocked": {"timed": timed, "permanent": permanent},
            "directory_entries": state.directory.entries,
        }

    metrics.watch(
        state_age_s=lambda: state.age_s(time.monotonic()),
        stale=lambda: state.stale(time.monotonic()),
        blocked=lambda: state.blocklist.counts(int(time.time() * 1000)),
        directory_entries=lambda: state.directory.entries,
    )
    runner, web_port = await start_web(
        build_web_app(metrics, readiness), settings.web_host, settings.web_port
    )
    log.info("web port on %s:%d (/health, /ready, /metrics)", settings.web_host, web_port)

    def apply(updates: list[Update], caught_up_at: float | None) -> None:
        state.apply(updates)
        if caught_up_at is not None:
            state.mark_caught_up(caught_up_at)
            caught_up.set()

    topics: dict[str, TopicKind] = {settings.names.control: "control"}
    if settings.use_directory:
        topics[settings.names.directory] = "directory"
    codec = Codec.from_config(settings.codec)

    def deliver(updates: list[Update], caught_up_at: float | None) -> None:
        # From the follower thread: the state is touched on the loop only.
        loop.call_soon_threadsafe(apply, updates, caught_up_at)

    if not settings.control_keys:
        log.warning(
            "no control keys (SENDGUARD_CONTROL_KEYS): every command on %s is enforced, "
            "signed or not; anyone who can write that topic can unblock a mailbox here",
            settings.names.control,
        )
    follower = StateFollower(
        settings.connection.confluent(),
        codec,
        topics,
        deliver,
        metrics.undecodable,
        settings.control_keys,
    )
    follower.start()
    try:
        log.info("reading %s from the beginning", ", ".join(topics))
        while not caught_up.is_set():
            waiter = asyncio.ensure_future(caught_up.wait())
            stopper = asyncio.ensure_future(stop.wait())
            await asyncio.wait(
                {waiter, stopper}, timeout=PROGRESS_EVERY_S, return_when="FIRST_COMPLETED"
            )
            waiter.cancel()
            stopper.cancel()
            if stop.is_set():
                return
            if not caught_up.is_set():
                log.info("still catching up: %d record(s) read so far", follower.records)
        state.live = True
        host, port = await server.start(settings.listen_host, settings.listen_port)
        serving["policy"] = f"{host}:{port}"
        timed, permanent = state.blocklist.counts(int(time.time() * 1000))
        line = (
            f"gateway serving policy requests on {host}:{port} "
            f"(caught up: {len(state.blocklist)} mailbox(es) known, {timed} timed and "
            f"{permanent} permanent block(s) in force, {state.directory.entries} directory "
            f"entries; web on {settings.web_host}:{web_port})"
        )
        log.info(line, extra={"event": "serving", "port": port, "web_port": web_port})
        print(line, flush=True)
        await stop.wait()
        log.info("stopping")
    finally:
        await server.close()
        follower.stop()
        await runner.cleanup()
