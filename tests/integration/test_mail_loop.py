"""The real mail loop: Postfix -> rspamd (milter) -> sendguard ingest -> mail.verdicts ->
sendguard worker -> mailbox.control -> sendguard gateway (Postfix's policy service).

Debian's `postfix` and `rspamd` run as private instances on loopback, started with
sendguard ingest and gateway by processor/local/mail_loop.py (the mail demo runs the
same); scripts/setup.sh installs them as root when SENDGUARD_SETUP_MAIL=1
(scripts/test.sh sets it). Where they are not installed these tests are skipped
and say so. The worker runs the short test policy of worker_support.py (5 in 20 s,
blocks of 3 s, then 6 s, then permanent), so a block ends within the test.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from worker_support import Deployment, WorkerProcess, wait_for

from processor.local.mail_loop import MailServices
from processor.local.mailstack import GTUBE, SPAM_MARKER, mail_packages_missing
from processor.local.sendguard_services import IngestProcess
from processor.local.smtp_client import Sent, new_message, send

OUTSIDE = "203.0.113.7"  # TEST-NET-3: an outside client, via XCLIENT ADDR=
FRIEND = "friend@example.net"


@dataclass
class MailLoop:
    deployment: Deployment
    worker: WorkerProcess
    services: MailServices
    started_s: float
    sent: list[tuple[str, Sent]] = field(default_factory=list)

    @property
    def ingest(self) -> IngestProcess:
        return self.services.ingest

    def send(self, sender: str, recipient: str, **options: Any) -> Sent:
        result = send(self.services.smtp_port, sender, recipient, **options)
        self.sent.append((sender, result))
        print(f"SMTP {sender} -> {recipient}: {result}")
        return result

    def verdicts(self) -> list[dict[str, Any]]:
        return self.deployment.read(self.deployment.names.verdicts, idle_s=1.0)

    def control(self) -> list[dict[str, Any]]:
        return self.deployment.read(self.deployment.names.control, idle_s=1.0)

    def diagnose(self) -> str:
        return "\n".join(
            [
                "--- SMTP answers so far:\n"
                + "\n".join(f"{who}: {result}" for who, result in self.sent),
                self.services.diagnose(),
                self.worker.log_tail(),
            ]
        )

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
    # The worker signs its commands; the gateway enforces only what it signed.
    control_keys = f"loop:{secrets.token_urlsafe(32)}"
    services = MailServices(bootstrap, deployment.names.prefix, tmp, control_keys)
    worker = deployment.worker(env={"SENDGUARD_CONTROL_KEYS": control_keys})
    try:
        worker.start()
        services.start()
        worker.wait_ready(timeout_s=90)
        yield MailLoop(deployment, worker, services, started)
    finally:
        services.stop()
        worker.stop()
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
    # The gateway checks the worker's signatures, and every command it read was signed.
    gateway = loop.services.gateway
    assert gateway.ready()[1]["commands_authenticated"] is True
    skipped = gateway.metric(
        "sendguard_gateway_undecodable_records_total",
        topic="mailbox.control",
        reason="unauthenticated_command",
    )
    assert skipped == 0

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
