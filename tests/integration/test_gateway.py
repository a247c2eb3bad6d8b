"""`sendguard gateway` on the real broker, spoken to over TCP as Postfix does.

Each test has its own topic prefix (worker_support.Deployment) and its own gateway
process; the commands are encoded exactly as the worker encodes its decisions.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_support import (
    ControlProducer,
    GatewayProcess,
    PolicyClient,
    now_ms,
    unblock_command,
    wait_until,
)
from worker_support import Deployment

from processor.codec.command_signing import SIGNATURE_HEADER, CommandKeys
from processor.mail.policy_protocol import MAX_LINE_BYTES


@pytest.fixture
def deployment(bootstrap: str, tmp_path: Path) -> Deployment:
    return Deployment.create(bootstrap, tmp_path)


@pytest.fixture
def control(deployment: Deployment) -> ControlProducer:
    return ControlProducer(deployment.bootstrap, deployment.names.control)


@pytest.fixture
def gateway_factory(deployment: Deployment) -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


def start(
    deployment: Deployment, started: list[GatewayProcess], *extra: str, name: str = "gateway"
) -> GatewayProcess:
    process = GatewayProcess(
        deployment.bootstrap, deployment.names.prefix, deployment.tmp, *extra, name=name
    )
    started.append(process)
    return process.start()


def test_blocked_senders_are_rejected_from_the_topic_state(
    deployment: Deployment, control: ControlProducer, gateway_factory: list[GatewayProcess]
) -> None:
    # State written before the gateway starts: it must read the topic from the start.
    control.block("acme", "Alice@acme.example")  # one hour
    control.block("acme", "perm@acme.example", sequence=6, permanent=True)
    control.block("acme", "old@acme.example", sequence=2)
    control.block("acme", "old@acme.example", sequence=1)  # older: must not win
    control.unblock("acme", "old@acme.example", sequence=2)
    control.block("acme", "old@acme.example", sequence=2)  # a replayed BLOCK after its UNBLOCK
    control.raw(b"junk", b"not a MailboxCommand")
    directory_topic = deployment.names.directory
    control.directory(directory_topic, "initech", "carol@initech.example")
    control.block("initech", "carol@initech.example")

    gateway = start(deployment, gateway_factory)

    with gateway.connect() as postfix:  # several requests on one connection
        reject = postfix.ask(sender="alice@acme.example", protocol_state="RCPT")
        assert reject.startswith("REJECT 5.7.1 This mailbox is blocked from sending until 20")
        assert postfix.ask(sender="bob@acme.example") == "DUNNO"
        permanent = postfix.ask(sender="x@elsewhere.example", sasl_username="PERM@acme.example")
        assert permanent.startswith("REJECT 5.7.1 ") and "contact support" in permanent
        assert postfix.ask(sender="old@acme.example") == "DUNNO"
        assert postfix.ask(sender="") == "DUNNO"  # the null sender
        assert postfix.ask(sender="carol@initech.example").startswith("REJECT")  # directory
        assert postfix.ask(sender="dave@unknown.example") == "DUNNO"

    assert (
        gateway.metric(
            "sendguard_gateway_undecodable_records_total",
            topic="mailbox.control",
            reason="not_avro",
        )
        == 1
    )
    assert gateway.metric("sendguard_gateway_requests_total", action="reject") == 3
    assert gateway.metric("sendguard_gateway_blocked_answers_total", block="permanent") == 1
    assert gateway.metric("sendguard_gateway_tenant_lookups_total", source="directory") == 1
    assert gateway.metric("sendguard_gateway_tenant_lookups_total", source="none") == 1
    assert gateway.metric("sendguard_gateway_commands_total", result="outdated") == 2
    assert gateway.metric("sendguard_gateway_mailboxes_blocked", block="permanent") == 1
    status, ready = gateway.ready()
    assert status == 200 and ready["ready"] and not ready["stale"]
    assert gateway.get("/health")[0] == 200


def test_live_blocks_unblocks_and_timed_ends(
    deployment: Deployment, control: ControlProducer, gateway_factory: list[GatewayProcess]
) -> None:
    gateway = start(deployment, gateway_factory)
    with gateway.connect() as postfix:
        assert postfix.ask(sender="eve@globex.example") == "DUNNO"

        # A BLOCK produced now is enforced within moments, on the open connection.
        produced = time.monotonic()
        control.block("globex", "eve@globex.example", until_ms=now_ms() + 4000)
        wait_until(
            lambda: postfix.ask(sender="eve@globex.example").startswith("REJECT"),
            10,
            "the live BLOCK to be enforced",
            every_s=0.02,
        )
        assert time.monotonic() - produced < 5

        # The timed block ends by itself at its until: no UNBLOCK was produced.
        wait_until(
            lambda: postfix.ask(sender="eve@globex.example") == "DUNNO",
            15,
            "the timed block to end at its until",
        )

        control.block("globex", "frank@globex.example", sequence=6, permanent=True)
        wait_until(
            lambda: postfix.ask(sender="frank@globex.example").startswith("REJECT"),
            10,
            "the permanent BLOCK",
        )
        control.unblock("globex", "frank@globex.example", sequence=6)
        wait_until(lambda: postfix.ask(sender="frank@globex.example") == "DUNNO", 10, "the UNBLOCK")


def test_malformed_input_is_answered_and_counted(
    deployment: Deployment, gateway_factory: list[GatewayProcess]
) -> None:
    gateway = start(deployment, gateway_factory)
    with gateway.connect() as postfix:
        postfix.sock.sendall(b"request=smtpd_access_policy\nsender=\xe9ve@acme.example\n\n")
        assert postfix.answer() == "DEFER 4.5.2 Malformed policy request (not_utf8)"
        postfix.sock.sendall(b"sender=a@acme.example\n\n")
        assert postfix.answer() == "DEFER 4.5.2 Malformed policy request (missing_request)"
        postfix.sock.sendall(b"request=smtpd_access_policy\nno equals sign\n\n")
        assert postfix.answer() == "DEFER 4.5.2 Malformed policy request (bad_line)"
        assert postfix.ask(sender="a@acme.example") == "DUNNO"  # the connection goes on

    with gateway.connect() as postfix:
        postfix.sock.sendall(b"request=smtpd_access_policy\nsender=" + b"a" * (MAX_LINE_BYTES + 1))
        assert postfix.answer() == "DEFER 4.5.2 Malformed policy request (line_too_long)"
        assert postfix.sock.recv(10) == b""  # and then closed

    with gateway.connect() as postfix:
        postfix.sock.sendall(b"".join(b"a%d=1\n" % i for i in range(150)))
        assert postfix.answer() == "DEFER 4.5.2 Malformed policy request (too_many_attributes)"

    for reason in (
        "not_utf8",
        "missing_request",
        "bad_line",
        "line_too_long",
        "too_many_attributes",
    ):
        assert gateway.metric("sendguard_gateway_malformed_requests_total", reason=reason) == 1
    assert gateway.metric("sendguard_gateway_requests_total", action="defer") == 5


def test_a_silent_client_does_not_stall_others_and_is_closed(
    deployment: Deployment, gateway_factory: list[GatewayProcess]
) -> None:
    gateway = start(deployment, gateway_factory, "--read-timeout", "1", "--idle-timeout", "2")
    silent = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    silent.sendall(b"request=smtpd_access_policy\nsender=half")  # and nothing more
    idle = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)

    open_ones = {"silent": silent, "idle": idle}
    closed_after: dict[str, float] = {}
    began = time.monotonic()
    with gateway.connect() as postfix:
        # This connection keeps talking, and is answered at once throughout, while the
        # other two are closed for silence: the half request after ~1 s, the idle
        # connection after ~2 s.
        while open_ones and time.monotonic() - began < 15:
            started = time.monotonic()
            assert postfix.ask(sender="bob@acme.example") == "DUNNO"
            assert time.monotonic() - started < 0.5
            for name, sock in list(open_ones.items()):
                sock.settimeout(0.05)
                with contextlib.suppress(TimeoutError):
                    assert sock.recv(10) == b""
                    closed_after[name] = time.monotonic() - began
                    del open_ones[name]
        assert not open_ones, f"still open: {sorted(open_ones)}"
        assert postfix.ask(sender="bob@acme.example") == "DUNNO"
    assert 0.9 < closed_after["silent"] < 4
    assert 1.9 < closed_after["idle"] < 5
    silent.close()
    idle.close()
    assert gateway.metric("sendguard_gateway_timeouts_total", kind="read") == 1
    assert gateway.metric("sendguard_gateway_timeouts_total", kind="idle") == 1


def test_connections_over_the_limit_are_refused_and_counted(
    deployment: Deployment, gateway_factory: list[GatewayProcess]
) -> None:
    gateway = start(deployment, gateway_factory, "--max-connections", "3")
    clients = [PolicyClient(gateway.port) for _ in range(3)]
    for client in clients:
        assert client.ask(sender="a@acme.example") == "DUNNO"
    extra = socket.create_connection(("127.0.0.1", gateway.port), timeout=10)
    with contextlib.suppress(ConnectionResetError):  # a reset is a refusal too
        assert extra.recv(10) == b""
    extra.close()
    clients[0].sock.close()
    wait_until(lambda: gateway.metric("sendguard_gateway_connections") == 2, 5, "a slot to free up")
    with gateway.connect() as postfix:  # the freed slot is usable again
        assert postfix.ask(sender="a@acme.example") == "DUNNO"
    assert gateway.metric("sendguard_gateway_connections_refused_total") == 1
    for client in clients[1:]:
        client.sock.close()


def test_defer_instead_of_reject(
    deployment: Deployment, control: ControlProducer, gateway_factory: list[GatewayProcess]
) -> None:
    control.block("acme", "alice@acme.example")
    gateway = start(
        deployment,
        gateway_factory,
        "--block-action",
        "defer",
        "--timed-text",
        "held until {until}",
    )
    answer = gateway.ask(sender="alice@acme.example")
    assert answer.startswith("DEFER 4.7.1 held until 20") and answer.endswith("Z")
    assert gateway.metric("sendguard_gateway_requests_total", action="defer") == 1


def test_with_control_keys_only_signed_commands_are_enforced(
    deployment: Deployment, gateway_factory: list[GatewayProcess]
) -> None:
    current, old = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    gateway_keys = f"current:{current},old:{old}"
    worker = ControlProducer(
        deployment.bootstrap, deployment.names.control, CommandKeys.parse(f"current:{current}")
    )
    # A worker not yet moved to the new key: its commands still hold (rotation).
    lagging = ControlProducer(
        deployment.bootstrap, deployment.names.control, CommandKeys.parse(f"old:{old}")
    )
    attacker = ControlProducer(deployment.bootstrap, deployment.names.control)
    evil = CommandKeys.parse(f"current:{secrets.token_urlsafe(32)}")  # right id, wrong secret

    worker.block("acme", "alice@acme.example", sequence=6, permanent=True)
    lagging.block("acme", "bob@acme.example")
    attacker.block("acme", "carol@acme.example")  # a forged BLOCK would deny her mail
    gateway = start(deployment, gateway_factory, "--control-keys", gateway_keys)

    with gateway.connect() as postfix:
        assert postfix.ask(sender="alice@acme.example").startswith("REJECT 5.7.1 ")
        assert postfix.ask(sender="bob@acme.example").startswith("REJECT 5.7.1 ")
        assert postfix.ask(sender="carol@acme.example") == "DUNNO"

        # Forgeries, each of which would lift alice's permanent block if enforced.
        release = unblock_command("acme", "alice@acme.example", 6)
        key, value = attacker.encode(release)
        attacker.raw(key, value)  # unsigned
        attacker.raw(key, value, [evil.header(key, value)])  # a key the gateway lacks
        bob_key, bob_value = worker.encode(unblock_command("acme", "bob@acme.example", 1))
        signed_for_bob = worker.keys.header(bob_key, bob_value)  # type: ignore[union-attr]
        attacker.raw(key, value, [signed_for_bob])  # a real signature of another record
        attacker.raw(key, None)  # an unsigned tombstone would forget the block
        attacker.raw(key, value, [(SIGNATURE_HEADER, b"\xff" * 5000)])  # junk header

        def skipped() -> float:
            return gateway.metric(
                "sendguard_gateway_undecodable_records_total",
                topic="mailbox.control",
                reason="unauthenticated_command",
            )

        wait_until(lambda: skipped() == 6, 15, "six unsigned or forged commands skipped")
        assert postfix.ask(sender="alice@acme.example").startswith("REJECT 5.7.1 ")

        worker.unblock("acme", "alice@acme.example", sequence=6)  # the real release
        wait_until(
            lambda: postfix.ask(sender="alice@acme.example") == "DUNNO", 10, "the signed UNBLOCK"
        )
    assert skipped() == 6
    status, ready = gateway.ready()
    assert status == 200 and ready["commands_authenticated"] is True
