"""The real mail loop: Postfix -> rspamd (milter) -> sendguard ingest -> mail.verdicts ->
sendguard worker -> mailbox.control -> sendguard gateway (Postfix's policy service).

Debian's `postfix` and `rspamd` run as private instances on loopback (see
mail_support.py); scripts/setup.sh installs them as root when SENDGUARD_SETUP_MAIL=1
(scripts/test.sh sets it). Where they are not installed these tests are skipped
and say so. The worker runs the short test policy of worker_support.py (5 in 20 s,
blocks of 3 s, then 6 s, then permanent), so a block ends within the test.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from ingest_support import IngestProcess
from mail_support import (
    GTUBE,
    SPAM_MARKER,
    Postfix,
    Rspamd,
    Sent,
    mail_packages_missing,
    new_message,
    send,
    wait_port,
)
from worker_support import SENDGUARD, Deployment, WorkerProcess, free_port, wait_for

from processor.local.process_group import stop_process_group

OUTSIDE = "203.0.113.7"  # TEST-NET-3: an outside client, via XCLIENT ADDR=
FRIEND = "friend@example.net"


def gateway_available() -> bool:
    from processor.cli import COMMANDS, LazyGroup

    return "gateway" in COMMANDS and LazyGroup._available("gateway")


class GatewayProcess:
    """`sendguard gateway`, the Postfix policy server."""

    def __init__(self, deployment: Deployment, tenants: Path, tmp: Path) -> None:
        self.port = free_port()
        self.web_port = free_port()
        self.log = tmp / "gateway.log"
        self.args = [
            SENDGUARD,
            "gateway",
            "--listen",
            f"127.0.0.1:{self.port}",
            "--tenants",
            str(tenants),
            "--bootstrap",
            deployment.bootstrap,
            "--topic-prefix",
            deployment.names.prefix,
            "--web-port",
            str(self.web_port),
        ]
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> GatewayProcess:
        self.process = subprocess.Popen(
            self.args,
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until its /ready says it has read mailbox.control (and it listens)."""
        import urllib.request

        def ready() -> bool:
            try:
                url = f"http://127.0.0.1:{self.web_port}/ready"
                with urllib.request.urlopen(url, timeout=2) as response:
                    return bool(response.status == 200)
            except OSError:
                return False

        wait_for(ready, timeout_s, "sendguard gateway /ready", every_s=0.3, diagnose=self.log_tail)
        wait_port(self.port, 10, "sendguard gateway", self.log_tail)

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"--- gateway ({self.log}):\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)


@dataclass
class MailLoop:
    deployment: Deployment
    worker: WorkerProcess
    ingest: IngestProcess
    rspamd: Rspamd
    postfix: Postfix
    gateway: GatewayProcess | None
    started_s: float
    sent: list[tuple[str, Sent]] = field(default_factory=list)

    def send(self, sender: str, recipient: str, **options: Any) -> Sent:
        result = send(self.postfix.port, sender, recipient, **options)
        self.sent.append((sender, result))
        print(f"SMTP {sender} -> {recipient}: {result}")
        return result

    def verdicts(self) -> list[dict[str, Any]]:
        return self.deployment.read(self.deployment.names.verdicts, idle_s=1.0)

    def control(self) -> list[dict[str, Any]]:
        return self.deployment.read(self.deployment.names.control, idle_s=1.0)

    def diagnose(self) -> str:
        parts = [
            "--- SMTP answers so far:\n"
            + "\n".join(f"{who}: {result}" for who, result in self.sent),
            self.postfix.log_tail(),
            self.rspamd.log_tail(),
            self.ingest.log_tail(),
            self.worker.log_tail(),
        ]
        if self.gateway is not None:
            parts.append(self.gateway.log_tail())
        return "\n".join(parts)

    def wait(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        wait_for(predicate, timeout_s, what, every_s=0.5, diagnose=self.diagnose)


@pytest.fixture(scope="module")
def loop(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MailLoop]:
    missing = mail_packages_missing()
    if missing:
        pytest.skip(
            f"Debian packages not installed: {' '.join(missing)} (as root: apt-get install "
            f"{' '.join(missing)}, or SENDGUARD_SETUP_MAIL=1 bash scripts/setup.sh)"
        )
    if os.geteuid() != 0:
        pytest.skip("a private Postfix and rspamd (-u root) start only as root")
    started = time.monotonic()
    tmp = tmp_path_factory.mktemp("mail-loop")
    deployment = Deployment.create(bootstrap, tmp)
    stack: list[Any] = []
    try:
        worker = deployment.worker().start()
        stack.append(worker)
        ingest = IngestProcess(bootstrap, deployment.names.prefix, tmp).start()
        stack.append(ingest)
        rspamd = Rspamd(tmp / "rspamd", ingest.url).start()
        stack.append(rspamd)
        gateway = None
        if gateway_available():
            gateway = GatewayProcess(deployment, ingest.tenants, tmp).start()
            stack.append(gateway)
        policy = f"127.0.0.1:{gateway.port}" if gateway is not None else None
        postfix = Postfix(rspamd.proxy_port, policy).start()
        stack.append(postfix)

        ingest.wait_ready()
        rspamd.wait_ready()
        postfix.wait_ready()
        if gateway is not None:
            gateway.wait_ready()
        worker.wait_ready(timeout_s=90)
        yield MailLoop(deployment, worker, ingest, rspamd, postfix, gateway, started)
    finally:
        for part in reversed(stack):
            part.stop()
        print(f"mail loop: {time.monotonic() - started:.1f} s from set-up to tear-down")


def _blocks(records: list[dict[str, Any]], mailbox: str, action: str = "BLOCK") -> list[Any]:
    return [
        r
        for r in records
        if r["tenant_id"] == "acme" and r["mailbox"] == mailbox and r["action"] == action
    ]


def test_outbound_spam_blocks_its_sender_and_inbound_spam_never_counts(loop: MailLoop) -> None:
    jdoe, forged, tester = "j.doe@acme.example", "colleague@acme.example", "gtube@acme.example"

    # Outside spam that forges a tenant address: rspamd rejects it, sendguard sees INBOUND.
    inbound = [
        loop.send(forged, "j.doe@acme.example", subject=f"{SPAM_MARKER} {i}", client_ip=OUTSIDE)
        for i in range(6)
    ]
    # GTUBE: rspamd 3.4 rejects it and skips everything else, metadata_exporter included.
    gtube = loop.send(tester, FRIEND, body=GTUBE, login=tester)
    clean_after_gtube = loop.send(tester, FRIEND, login=tester)
    outbound = [
        loop.send(jdoe, FRIEND, subject=f"{SPAM_MARKER} offer {i}", login=jdoe) for i in range(5)
    ]

    assert all(r.code == 554 and "Spam message rejected" in r.text for r in inbound), loop.sent
    assert (gtube.code, gtube.text) == (554, "5.7.1 Gtube pattern"), loop.sent
    assert clean_after_gtube.code == 250, loop.sent
    assert all(r.code == 554 for r in outbound), loop.sent

    loop.wait(lambda: _blocks(loop.control(), jdoe), 30, f"a BLOCK of {jdoe}")
    block = _blocks(loop.control(), jdoe)[0]
    assert (block["offense"], block["permanent"]) == (1, False)

    verdicts = loop.verdicts()
    mine = [v for v in verdicts if v["mailbox"] == jdoe]
    assert [(v["direction"], v["verdict"]) for v in mine] == [("OUTBOUND", "SPAM")] * 5
    assert len({v["message_id"] for v in mine}) == 5
    theirs = [v for v in verdicts if v["mailbox"] == forged]
    assert [(v["tenant_id"], v["direction"], v["verdict"]) for v in theirs] == [
        ("acme", "INBOUND", "SPAM")
    ] * 6
    assert not _blocks(loop.control(), forged)
    # Only the clean message of the GTUBE sender reached sendguard.
    assert [v["verdict"] for v in verdicts if v["mailbox"] == tester] == ["CLEAN"]

    # The test policy's first block lasts 3 s; the worker ends it by itself.
    loop.wait(lambda: _blocks(loop.control(), jdoe, "UNBLOCK"), 30, f"the UNBLOCK of {jdoe}")


@pytest.mark.skipif(
    not gateway_available(),
    reason="`sendguard gateway` (processor/mail/gateway_command.py) is not importable; "
    "the loop up to the BLOCK is tested above",
)
def test_the_gateway_refuses_a_blocked_sender_until_the_block_ends(loop: MailLoop) -> None:
    blocked, colleague = "m.smith@acme.example", "k.jones@acme.example"
    for i in range(5):
        loop.send(blocked, FRIEND, subject=f"{SPAM_MARKER} {i}", login=blocked)
    loop.wait(lambda: _blocks(loop.control(), blocked), 30, f"a BLOCK of {blocked}")

    def refused() -> bool:
        return loop.send(blocked, FRIEND, login=blocked).code != 250

    # The gateway learns the block from mailbox.control: give it a moment.
    loop.wait(refused, 15, f"Postfix to refuse {blocked}")
    answer = loop.sent[-1][1]
    assert (answer.code, answer.step) == (554, "rcpt") and answer.text.startswith("5.7.1"), answer
    assert loop.send(colleague, FRIEND, login=colleague).code == 250  # same tenant, not blocked
    assert loop.send(FRIEND, blocked, client_ip=OUTSIDE).code == 250  # mail *to* it still arrives

    loop.wait(lambda: _blocks(loop.control(), blocked, "UNBLOCK"), 30, f"the UNBLOCK of {blocked}")
    loop.wait(
        lambda: loop.send(blocked, FRIEND, login=blocked).code == 250,
        15,
        f"{blocked} to send again once the block ended",
    )


def test_mail_is_deferred_while_ingest_cannot_take_its_verdict(loop: MailLoop) -> None:
    sender = "r.lee@acme.example"
    message = new_message(sender, FRIEND, "quarterly numbers", "See you Monday.")
    loop.ingest.stop()
    try:
        deferred = loop.send(sender, FRIEND, login=sender, message=message)
    finally:
        loop.ingest.start()
    # rspamd's POST failed, so (defer = true) it answered "soft reject": Postfix tempfails.
    assert deferred.code // 100 == 4, loop.sent
    loop.ingest.wait_ready()

    retried = loop.send(sender, FRIEND, login=sender, message=message)

    assert retried.code == 250, loop.sent
    loop.wait(
        lambda: any(v["mailbox"] == sender for v in loop.verdicts()), 20, f"the verdict of {sender}"
    )
    ids = [v["message_id"] for v in loop.verdicts() if v["mailbox"] == sender]
    assert len(ids) == 1 and ids[0].startswith(message["Message-ID"].strip("<>") + "#")
