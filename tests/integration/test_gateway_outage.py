"""The gateway keeps answering from memory while its broker is down, says it is stale,
and catches up when the broker is back.

A broker of its own (like test_broker_restart_mid_stream): stopping the shared one
would disturb every other test. Two gateways follow it: one with the default
`--when-stale keep-enforcing`, one with `fail-open`.
"""

from __future__ import annotations

import time
from pathlib import Path

from gateway_support import ControlProducer, GatewayProcess, now_ms, wait_until
from worker_support import Deployment, free_port

from processor.local import BrokerConfig, LocalBroker

STALE_AFTER_S = 3


def test_the_gateway_answers_from_memory_while_its_broker_is_down(tmp_path: Path) -> None:
    broker = LocalBroker(
        BrokerConfig(port=free_port(), controller_port=free_port(), data_dir=tmp_path / "kafka")
    )
    broker.up()
    gateways: list[GatewayProcess] = []
    try:
        deployment = Deployment.create(broker.config.bootstrap, tmp_path)
        control = ControlProducer(deployment.bootstrap, deployment.names.control)
        control.block("acme", "alice@acme.example")  # one hour
        # A timed block that ends while the broker is down, with no UNBLOCK ever sent.
        brief_until = now_ms() + 20_000
        control.block("acme", "brief@acme.example", until_ms=brief_until)
        for name, policy in (("keep", "keep-enforcing"), ("open", "fail-open")):
            gateways.append(
                GatewayProcess(
                    deployment.bootstrap,
                    deployment.names.prefix,
                    tmp_path,
                    "--stale-after",
                    str(STALE_AFTER_S),
                    "--when-stale",
                    policy,
                    name=name,
                ).start()
            )
        keep, fail_open = gateways
        for gateway in gateways:
            assert gateway.ask(sender="alice@acme.example").startswith("REJECT")
            assert gateway.ready()[0] == 200

        broker.down()
        down_at = time.monotonic()

        def stale(gateway: GatewayProcess) -> bool:
            status, body = gateway.ready()
            return status == 503 and body["stale"] and body["caught_up"]

        wait_until(lambda: stale(keep) and stale(fail_open), 30, "/ready to report staleness")
        _, body = keep.ready()
        assert body["state_age_seconds"] > STALE_AFTER_S
        assert keep.metric("sendguard_gateway_state_stale") == 1
        assert keep.metric("sendguard_gateway_state_age_seconds") > STALE_AFTER_S

        # Still answering from the last known state, at once.
        with keep.connect() as postfix:
            started = time.monotonic()
            assert postfix.ask(sender="alice@acme.example").startswith("REJECT")
            assert postfix.ask(sender="bob@acme.example") == "DUNNO"
            assert time.monotonic() - started < 1
            # The timed block ends on its own clock, though no UNBLOCK can arrive.
            assert postfix.ask(sender="brief@acme.example").startswith("REJECT")
            wait_until(
                lambda: postfix.ask(sender="brief@acme.example") == "DUNNO",
                max(5.0, (brief_until - now_ms()) / 1000 + 5),
                "the timed block to end during the outage",
            )
        assert time.monotonic() - down_at > STALE_AFTER_S  # it ended while still down
        # The fail-open gateway lets everyone through while stale.
        assert fail_open.ask(sender="alice@acme.example") == "DUNNO"

        broker.up()
        for gateway in gateways:
            wait_until(lambda g=gateway: g.ready()[0] == 200, 60, "the gateway to catch up")
        assert fail_open.ask(sender="alice@acme.example").startswith("REJECT")
        ControlProducer(deployment.bootstrap, deployment.names.control).block(
            "acme", "carol@acme.example"
        )
        wait_until(
            lambda: keep.ask(sender="carol@acme.example").startswith("REJECT"),
            30,
            "a BLOCK made after the outage to be enforced",
        )
        assert keep.metric("sendguard_gateway_state_stale") == 0
    finally:
        for gateway in gateways:
            gateway.stop()
        broker.down()
