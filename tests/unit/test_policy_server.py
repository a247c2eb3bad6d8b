"""The policy server on a real loopback socket, in-process: framing over TCP, limits,
timeouts (the sweep is called with a clock moved forward: no sleeping)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from processor.mail.blocklist import Blocklist, command_from_record
from processor.mail.gateway_metrics import GatewayMetrics
from processor.mail.policy_answers import AnswerConfig, Answerer
from processor.mail.policy_protocol import MAX_LINE_BYTES, format_request
from processor.mail.policy_server import PolicyServer, ServerLimits
from processor.mail.tenant_resolution import TenantResolver
from processor.mail.tenants import TenantMap

BLOCKED = format_request({"request": "smtpd_access_policy", "sender": "alice@acme.example"})
OTHER = format_request({"request": "smtpd_access_policy", "sender": "bob@acme.example"})


def make_server(limits: ServerLimits) -> PolicyServer:
    blocks = Blocklist()
    blocks.apply(
        command_from_record(
            {
                "command_id": "c1",
                "action": "BLOCK",
                "tenant_id": "acme",
                "mailbox": "alice@acme.example",
                "at": 0,
                "offense": 6,
                "permanent": True,
                "until": None,
                "block_sequence": 6,
            }
        )
    )
    resolver = TenantResolver(TenantMap.from_mapping({"acme.example": "acme"}), None)
    answerer = Answerer(AnswerConfig(), blocks, resolver)
    return PolicyServer(answerer, lambda: 0.0, GatewayMetrics(CollectorRegistry()), limits)


def run(test: Callable[[PolicyServer, int], Awaitable[None]], **limits: Any) -> PolicyServer:
    server = make_server(ServerLimits(**limits))

    async def main() -> None:
        _, port = await server.start("127.0.0.1", 0)
        try:
            await asyncio.wait_for(test(server, port), timeout=20)
        finally:
            await server.close()

    asyncio.run(main())
    return server


async def answer(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\n\n")


def metric(server: PolicyServer, name: str, **labels: str) -> float:
    server.metrics.flush()
    value = server.metrics.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


def test_requests_on_one_connection_are_answered_in_order() -> None:
    async def test(server: PolicyServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(BLOCKED)
        assert (await answer(reader)).startswith(b"action=REJECT 5.7.1 ")
        writer.write(OTHER)
        assert await answer(reader) == b"action=DUNNO\n\n"
        # Written together (pipelined) and split mid-line: still one answer each, in order.
        both = OTHER + BLOCKED
        writer.write(both[:7])
        await writer.drain()
        writer.write(both[7:])
        assert await answer(reader) == b"action=DUNNO\n\n"
        assert (await answer(reader)).startswith(b"action=REJECT")
        writer.close()

    server = run(test)
    assert metric(server, "sendguard_gateway_requests_total", action="reject") == 2
    assert metric(server, "sendguard_gateway_requests_total", action="dunno") == 2


def test_a_malformed_request_is_answered_and_the_connection_goes_on() -> None:
    async def test(server: PolicyServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"request=smtpd_access_policy\nsender=\xff@x\n\n")
        assert await answer(reader) == b"action=DEFER 4.5.2 Malformed policy request (not_utf8)\n\n"
        writer.write(OTHER)
        assert await answer(reader) == b"action=DUNNO\n\n"
        writer.close()

    server = run(test)
    assert metric(server, "sendguard_gateway_malformed_requests_total", reason="not_utf8") == 1


def test_an_over_long_line_is_answered_then_the_connection_closed() -> None:
    async def test(server: PolicyServer, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"request=smtpd_access_policy\nsender=" + b"x" * (MAX_LINE_BYTES * 3))
        assert await answer(reader) == (
            b"action=DEFER 4.5.2 Malformed policy request (line_too_long)\n\n"
        )
        assert await reader.read() == b""  # closed by the server
        writer.close()

    server = run(test)
    assert metric(server, "sendguard_gateway_malformed_requests_total", reason="line_too_long") == 1


def test_connections_beyond_the_limit_are_closed_and_counted() -> None:
    async def test(server: PolicyServer, port: int) -> None:
        kept = [await asyncio.open_connection("127.0.0.1", port) for _ in range(2)]
        for reader, writer in kept:  # both served
            writer.write(OTHER)
            assert await answer(reader) == b"action=DUNNO\n\n"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        assert await reader.read() == b""
        assert len(server.connections) == 2
        for _, kept_writer in kept:
            kept_writer.close()
        writer.close()

    server = run(test, max_connections=2)
    assert metric(server, "sendguard_gateway_connections_refused_total") == 1


def test_the_sweep_closes_silent_and_stalled_connections_only() -> None:
    async def test(server: PolicyServer, port: int) -> None:
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        half_reader, half_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_reader, busy_writer = await asyncio.open_connection("127.0.0.1", port)
        half_writer.write(b"request=smtpd_access_policy\nsender=a")
        await half_writer.drain()
        while len(server.connections) < 3 or not any(
            c.partial_since is not None for c in server.connections
        ):
            await asyncio.sleep(0.01)  # the server has read the partial request

        now = time.monotonic()
        server.sweep(now + 5)  # read timeout 2 s: the half-sent request is closed
        assert await half_reader.read() == b""
        server.sweep(now + 20)  # idle timeout 30 s: nothing else yet
        busy_writer.write(OTHER)
        assert await answer(busy_reader) == b"action=DUNNO\n\n"
        server.sweep(time.monotonic() + 31)
        assert await idle_reader.read() == b""
        assert await busy_reader.read() == b""
        for writer in (idle_writer, half_writer, busy_writer):
            writer.close()

    server = run(test, idle_timeout_s=30, read_timeout_s=2)
    assert metric(server, "sendguard_gateway_timeouts_total", kind="read") == 1
    assert metric(server, "sendguard_gateway_timeouts_total", kind="idle") == 2


def test_a_client_that_never_reads_stops_being_read() -> None:
    async def test(server: PolicyServer, port: int) -> None:
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # answers back up soon
        client.setblocking(False)
        await loop.sock_connect(client, ("127.0.0.1", port))
        while not server.connections:
            await asyncio.sleep(0.01)
        for connection in server.connections:  # and the server's side sends little at once
            assert connection.transport is not None
            sock = connection.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        # Requests without end and never an answer read: the socket buffers fill, then
        # the server's send buffer, and the server stops reading (so this send stalls).
        sending = asyncio.ensure_future(loop.sock_sendall(client, OTHER * 200_000))
        while not any(c.stalled_since is not None for c in server.connections):
            assert not sending.done()
            await asyncio.sleep(0.01)
        server.sweep(time.monotonic() + 5)
        while server.connections:  # closed on the loop's next turn
            await asyncio.sleep(0.01)
        with contextlib.suppress(ConnectionError, asyncio.CancelledError):
            sending.cancel()
            await sending
        client.close()

    server = run(test, read_timeout_s=2)
    assert metric(server, "sendguard_gateway_timeouts_total", kind="write") == 1
