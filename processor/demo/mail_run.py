"""`sendguard demo`'s mail loop: real SMTP mail through a private Postfix and rspamd,
`sendguard ingest`, the worker and `sendguard gateway`, each step shown as it happens.

Starts what is missing and stops what it started: the broker (only if none answers),
the topics under a fresh prefix `maildemo<run>.`, a worker with a short policy
(`mail_story.MAIL_DEMO_POLICY`), and `processor.local.mail_loop.MailServices` (ingest,
rspamd, gateway, Postfix). Then `MailStory.play` sends the story of `mail_story` with
smtplib, and after each message prints what rspamd decided (its controller's
/history), the Verdict ingest wrote (read back from mail.verdicts) and Postfix's
answer; the worker's BLOCK and UNBLOCK come from mailbox.control, the gateway's view
from its /ready.
"""

from __future__ import annotations

import shutil
import smtplib
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import click

from processor.demo.mail_show import (
    MailSent,
    counts,
    describe_verdict,
    format_mail_table,
    format_timeline,
    group_mails,
    mail_headline,
    mail_outcome,
)
from processor.demo.mail_story import (
    BILLING,
    COLLEAGUE,
    FORGED_COUNT,
    JDOE,
    MAIL_DEMO_POLICY,
    OUTSIDE_IP,
    PARTNER,
    POLICY_WORDS,
    SPAM_COUNT,
    SPAM_VICTIMS,
    TENANT,
    forged_subject,
    spam_subject,
)
from processor.demo.run import (
    Cleanup,
    DemoOptions,
    DemoTokens,
    announce_worker,
    create_topics,
    launch_worker,
    local_broker,
    undo_all,
)
from processor.demo.show import Console, DemoRecords, Watcher, describe_record
from processor.local.errors import ServiceStartError
from processor.local.mail_loop import MailServices
from processor.local.smtp_client import new_message, send
from processor.stream.topics import TopicNames

#: How long a verdict may take to show on mail.verdicts once Postfix has answered
#: (ingest answers rspamd only once it is delivered, so normally it is already there).
VERDICT_WAIT_S = 5.0
#: rspamd writes its /history row as the scan ends, around the milter's answer.
SCAN_WAIT_S = 2.0
BLOCK_WAIT_S = 30.0


@dataclass
class MailDemoResult:
    mails: list[MailSent]
    records: DemoRecords
    #: (seconds since the start, what happened) for j.doe@'s block, in order.
    timeline: list[tuple[float, str]]
    #: Each expectation of the story that did not hold (empty when all did).
    failures: list[str]
    #: sendguard gateway's answers by action, sendguard ingest's requests by outcome.
    gateway_answers: dict[str, float]
    ingest_outcomes: dict[str, float]
    elapsed_s: float
    #: Where the mail services ran (removed at the end), and the ports they listened on.
    workdir: Path
    ports: dict[str, int]


def run_mail_demo(options: DemoOptions, out: TextIO, *, color: bool = False) -> MailDemoResult:
    """Run the whole mail demo, printing to `out`; returns what each part said. Raises
    click.ClickException when something it needs cannot be started or a step of the
    loop does not happen in time (with the logs that say why)."""
    from processor.codec.wire import Codec

    started = time.monotonic()
    console = Console(out, started, color)
    run = uuid.uuid4().hex[:8]
    names = TopicNames(prefix=f"maildemo{run}.", app_id=f"sendguard-maildemo-{run}")
    tokens = DemoTokens.make()
    cleanup: Cleanup = []
    console.plain(
        click.style("sendguard demo: the mail loop", bold=color)
        + f" (run {run}): real SMTP through Postfix, rspamd and sendguard"
    )
    try:
        bootstrap = options.bootstrap or local_broker(console, cleanup)
        create_topics(bootstrap, names, options.keep_topics, console, cleanup)
        worker = launch_worker(
            bootstrap, names, tokens, options.web_port, MAIL_DEMO_POLICY, cleanup
        )
        console.line(f"worker: starting (policy: {POLICY_WORDS})")
        workdir = Path(tempfile.mkdtemp(prefix="sendguard-maildemo-"))
        cleanup.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
        services = MailServices(bootstrap, names.prefix, workdir, tokens.control_keys)
        cleanup.append(services.stop)
        try:
            services.start(progress=console.line)
        except ServiceStartError as error:
            raise click.ClickException(str(error)) from None
        worker.wait_ready(120)
        announce_worker(worker, tokens, console, TENANT, JDOE)

        story = MailStory(console, services, started, lambda: worker.tail(15))
        watcher = Watcher(
            {"bootstrap.servers": bootstrap},
            {names.verdicts: "verdict", names.control: "command"},
            None,
            Codec.from_config(),
            story.arrived,
        )
        story.records = watcher.records
        watcher.start()
        cleanup.append(watcher.stop)
        story.play()
        if watcher.error:
            story.expect(False, f"the watcher to keep reading ({watcher.error})")
        result = MailDemoResult(
            mails=story.mails,
            records=watcher.records,
            timeline=story.timeline,
            failures=story.failures,
            gateway_answers=_by_label(services.gateway, "sendguard_gateway_requests_total"),
            ingest_outcomes=_by_label(services.ingest, "sendguard_ingest_requests_total"),
            elapsed_s=time.monotonic() - started,
            workdir=workdir,
            ports=services.ports(),
        )
        print_mail_summary(console, result, color)
        return result
    finally:
        undo_all(cleanup, console)


def _by_label(service: Any, name: str) -> dict[str, float]:
    """A counter's samples by their one label's value, from the service's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    try:
        _, text = service.ops("/metrics")
    except OSError:
        return {}
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and len(sample.labels) == 1:
                values[next(iter(sample.labels.values()))] = sample.value
    return values


@dataclass
class _Arrival:
    record: dict[str, Any]
    written_ms: int  # the record's Kafka timestamp
    seen_s: float  # when the watcher read it (monotonic)


@dataclass
class MailStory:
    """Sends the story's messages and waits for, and shows, what each part did."""

    console: Console
    services: MailServices
    started: float
    worker_tail: Callable[[], str]
    records: DemoRecords = field(default_factory=DemoRecords)
    mails: list[MailSent] = field(default_factory=list)
    timeline: list[tuple[float, str]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _commands: list[_Arrival] = field(default_factory=list)
    #: message_id -> when ingest wrote its Verdict (Kafka timestamp, epoch ms)
    _verdicts_written_ms: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- what the watcher thread reports ---------------------------------------------
    def arrived(self, kind: str, record: dict[str, Any], written_ms: int) -> None:
        with self._lock:
            if kind == "command":
                self._commands.append(_Arrival(record, written_ms, time.monotonic()))
            elif kind == "verdict":
                self._verdicts_written_ms[str(record["message_id"])] = written_ms

    def command(self, mailbox: str, action: str) -> _Arrival | None:
        with self._lock:
            for arrival in self._commands:
                record = arrival.record
                if (record["tenant_id"], record["mailbox"], record["action"]) == (
                    TENANT,
                    mailbox,
                    action,
                ):
                    return arrival
        return None

    # -- the story -------------------------------------------------------------------
    def play(self) -> None:
        """The whole story (mail_story's docstring), each expectation checked as it goes."""
        self.caption("a normal morning: acme's users log in and send clean mail")
        for sender, subject in ((JDOE, "Project update"), (COLLEAGUE, "Lunch on Friday?")):
            mail = self.mail(sender, PARTNER, subject, login=sender)
            self.expect_verdict(mail, 250, "OUTBOUND", "CLEAN")

        self.caption(
            f"j.doe@'s password is phished: the attacker sends spam from his account "
            f"({SPAM_COUNT} messages)"
        )
        for number, victim in enumerate(SPAM_VICTIMS[:SPAM_COUNT], start=1):
            spam = self.mail(JDOE, victim, spam_subject(number, SPAM_COUNT), login=JDOE)
            self.expect_verdict(spam, 554, "OUTBOUND", "SPAM")
        self.at(spam.at_s, f"spam {SPAM_COUNT} of {SPAM_COUNT}: refused by rspamd, verdict written")
        block, _ = self.wait_block(spam)
        until_ms = int(block.record["until"] or 0)

        self.caption("j.doe@ sends again, a harmless message this time: Postfix asks the gateway")
        refused = self.mail(JDOE, PARTNER, "Re: Project update", login=JDOE)
        self.expect(
            (refused.answer.code, refused.answer.step) == (554, "rcpt")
            and refused.answer.text.startswith("5.7.1")
            and "blocked from sending until" in refused.answer.text,
            f"Postfix to refuse j.doe@ with 554 5.7.1 at RCPT (got {refused.answer})",
        )
        self.at(refused.at_s, f"his next message refused at RCPT: {refused.answer.code} 5.7.1")

        self.caption("his colleague m.smith@ is not blocked")
        colleague = self.mail(COLLEAGUE, PARTNER, "Re: Lunch on Friday?", login=COLLEAGUE)
        self.expect_verdict(colleague, 250, "OUTBOUND", "CLEAN")

        self.caption(
            f"a spammer on the internet ({OUTSIDE_IP}) forges m.smith@acme.example as the "
            f"sender: {FORGED_COUNT} spam, more than the threshold"
        )
        for number in range(1, FORGED_COUNT + 1):
            mail = self.mail(COLLEAGUE, BILLING, forged_subject(number), client_ip=OUTSIDE_IP)
            self.expect_verdict(mail, 554, "INBOUND", "SPAM")
        # The worker blocked j.doe@ this long after his last spam was answered; give it
        # twice that (at least 2 s) to block m.smith@, which it must not.
        block_took_s = block.seen_s - self.started - spam.at_s
        settle_until = time.monotonic() + max(2.0, 2 * block_took_s)
        while time.monotonic() < settle_until and self.command(COLLEAGUE, "BLOCK") is None:
            time.sleep(0.1)
        not_blocked = self.command(COLLEAGUE, "BLOCK") is None
        self.expect(not_blocked, "no BLOCK of m.smith@ for spam forged in her name")
        if not_blocked:
            self.console.line(
                f"no BLOCK for {COLLEAGUE}: those {FORGED_COUNT} verdicts are INBOUND, and "
                "mail from outside never counts against the address it claims",
                fg="green",
            )
        again = self.mail(COLLEAGUE, PARTNER, "Quarterly numbers", login=COLLEAGUE)
        self.expect_verdict(again, 250, "OUTBOUND", "CLEAN")

        self.caption("mail to j.doe@ still arrives: a block stops his sending, not his mail")
        inbound = self.mail(PARTNER, JDOE, "Re: Project update", client_ip=OUTSIDE_IP)
        self.expect_verdict(inbound, 250, "INBOUND", "CLEAN")

        self.wait_block_end(until_ms)
        self.caption("j.doe@ sends again")
        back = self.mail(JDOE, PARTNER, "Back online", login=JDOE)
        self.expect_verdict(back, 250, "OUTBOUND", "CLEAN")
        if back.answer.accepted:
            self.at(back.at_s, "his message accepted again: 250")

    # -- steps -------------------------------------------------------------------------
    def mail(
        self,
        sender: str,
        recipient: str,
        subject: str,
        *,
        login: str | None = None,
        client_ip: str | None = None,
    ) -> MailSent:
        """Send one message, then show rspamd's decision, the Verdict ingest wrote and
        Postfix's answer. Raises click.ClickException when Postfix cannot be reached."""
        via = "logged in" if login else client_ip or "loopback"
        self.console.line(mail_headline(sender, recipient, subject, via))
        message = new_message(sender, recipient, subject, f"{subject}\n\nsendguard demo\n")
        message_id = str(message["Message-ID"])
        try:
            answer = send(
                self.services.smtp_port,
                sender,
                recipient,
                login=login,
                client_ip=client_ip,
                message=message,
            )
        except (OSError, smtplib.SMTPException, ServiceStartError) as error:
            raise click.ClickException(
                f"SMTP to Postfix failed: {error}\n{self.services.diagnose()}"
            ) from None
        answered_s = self.now()
        scan = verdict = None
        if answer.step == "data":  # it reached DATA, so rspamd scanned it
            verdict = self.wait_verdict(message_id)
            scan = self.wait_scan(message_id)
        sent = MailSent(answered_s, sender, recipient, subject, via, answer, scan, verdict)
        self.mails.append(sent)
        text, colour = mail_outcome(sent)
        self.console.line(text, fg=colour)
        return sent

    def wait_verdict(self, message_id: str) -> dict[str, Any] | None:
        """The Verdict of this message on mail.verdicts (ingest's message_id is the
        Message-ID without <>, '#', a digest), or None if none comes in time."""
        prefix = message_id.strip().strip("<>") + "#"
        deadline = time.monotonic() + VERDICT_WAIT_S
        while True:
            for verdict in list(self.records.verdicts):
                if str(verdict["message_id"]).startswith(prefix):
                    return verdict
            if time.monotonic() > deadline:
                return None
            time.sleep(0.02)

    def wait_scan(self, message_id: str) -> dict[str, Any] | None:
        deadline = time.monotonic() + SCAN_WAIT_S
        while True:
            scan = self.services.rspamd.scan_result(message_id)
            if scan is not None or time.monotonic() > deadline:
                return scan
            time.sleep(0.05)

    def wait_block(self, last_spam: MailSent) -> tuple[_Arrival, int | None]:
        """The worker's BLOCK of j.doe@ on mailbox.control, and when (epoch ms) the
        gateway's /ready first counted it, polled every 10 ms from now on (None if not
        within 10 s of the BLOCK). Shows both, with how long after ingest wrote the
        last spam's verdict the worker wrote its BLOCK (Kafka timestamps). Raises
        click.ClickException (with the logs) if the BLOCK does not come."""
        deadline = time.monotonic() + BLOCK_WAIT_S
        gateway_ms: int | None = None
        block: _Arrival | None = None
        while True:
            if gateway_ms is None:
                status, body = self.gateway_ready()
                if status == 200 and body["blocked"]["timed"] >= 1:
                    gateway_ms = int(time.time() * 1000)
            if block is None:
                block = self.command(JDOE, "BLOCK")
            if block is not None and (
                gateway_ms is not None or time.monotonic() > block.seen_s + 10
            ):
                break
            if block is None and time.monotonic() > deadline:
                raise click.ClickException(
                    f"no BLOCK of {JDOE} within {BLOCK_WAIT_S:.0f}s after his spam\n"
                    f"{self.services.diagnose()}\n--- worker:\n{self.worker_tail()}"
                )
            time.sleep(0.01)
        text, colour = describe_record("command", block.record)
        verdict_id = str((last_spam.verdict or {}).get("message_id", ""))
        with self._lock:
            verdict_ms = self._verdicts_written_ms.get(verdict_id)
        after = ""
        if verdict_ms is not None:
            took_ms = block.written_ms - verdict_ms
            after = f", {took_ms} ms after ingest wrote spam verdict {SPAM_COUNT}"
        self.console.line(f"{text}  ← the worker, on mailbox.control{after}", fg=colour, bold=True)
        offense = block.record["offense"]
        self.at(block.seen_s - self.started, f"BLOCK on mailbox.control (offense {offense})")
        self.expect(
            (block.record["offense"], block.record["permanent"]) == (1, False),
            f"a first, timed block (got offense {block.record['offense']})",
        )
        self.expect(gateway_ms is not None, "the gateway to know the block within 10 s")
        if gateway_ms is not None:
            self.console.line(
                "gateway: enforces it (its /ready counts 1 timed block), "
                f"{max(0, gateway_ms - block.written_ms)} ms after the worker wrote the BLOCK",
                fg="yellow",
            )
            self.at(gateway_ms / 1000 - time.time() + self.now(), "the gateway enforces it")
        return block, gateway_ms

    def wait_block_end(self, until_ms: int) -> None:
        """Until the block is over for the gateway (its clock, at `until`) and the
        worker's UNBLOCK is on mailbox.control, each shown as it happens."""
        left_s = max(0.0, until_ms / 1000 - time.time())
        self.caption(
            f"waiting for j.doe@'s block to end (in {left_s:.0f} s): a timed block ends by "
            "itself, and nobody can shorten it"
        )
        gateway_done = unblock_done = False
        deadline = time.monotonic() + left_s + 20
        while not (gateway_done and unblock_done) and time.monotonic() < deadline:
            if not gateway_done:
                status, body = self.gateway_ready()
                if status == 200 and body["blocked"]["timed"] == 0:
                    gateway_done = True
                    self.console.line(
                        "gateway: the block is over (ended at its until, by the gateway's own "
                        "clock)",
                        fg="green",
                    )
                    self.at(self.now(), "block over for the gateway")
            if not unblock_done and (unblock := self.command(JDOE, "UNBLOCK")) is not None:
                unblock_done = True
                text, colour = describe_record("command", unblock.record)
                self.console.line(f"{text}  ← the worker's expiry timer", fg=colour, bold=True)
                self.at(unblock.seen_s - self.started, "UNBLOCK (expired) on mailbox.control")
                self.expect(unblock.record["reason"] == "expired", "the UNBLOCK to say expired")
            time.sleep(0.05)
        self.expect(gateway_done, "the gateway to end the block")
        self.expect(unblock_done, f"the worker's UNBLOCK of {JDOE}")

    # -- helpers -----------------------------------------------------------------------
    def expect_verdict(self, mail: MailSent, code: int, direction: str, verdict: str) -> None:
        got = f"{mail.answer.code}, {describe_verdict(mail.verdict)}"
        self.expect(
            mail.answer.code == code
            and mail.verdict is not None
            and (mail.verdict["direction"], mail.verdict["verdict"]) == (direction, verdict)
            and mail.verdict["mailbox"] == mail.sender,
            f"{mail.sender} → {mail.recipient}: {code} and a {direction} {verdict} verdict "
            f"(got {got})",
        )

    def gateway_ready(self) -> tuple[int, dict[str, Any]]:
        """The gateway's /ready (status, body); (0, {}) while it does not answer."""
        try:
            return self.services.gateway.ready()
        except (OSError, ValueError):
            return 0, {}

    def expect(self, holds: bool, what: str) -> None:
        if not holds:
            self.failures.append(what)
            self.console.line(f"✗ expected {what}", fg="red", bold=True)

    def caption(self, text: str) -> None:
        self.console.line(f"▶ {text}", fg="cyan")

    def at(self, seconds: float, what: str) -> None:
        self.timeline.append((seconds, what))

    def now(self) -> float:
        return time.monotonic() - self.started


def print_mail_summary(console: Console, result: MailDemoResult, color: bool) -> None:
    """The messages and their fates, j.doe@'s timeline, the blocks, the counters."""
    console.plain()
    console.plain(click.style("Summary", bold=color) + f" ({len(result.mails)} messages over SMTP)")
    console.plain(format_mail_table(group_mails(result.mails)))
    console.plain()
    console.plain(f"{JDOE}, step by step (seconds since the demo started):")
    console.plain(format_timeline(sorted(result.timeline)))
    blocks = [f"{b['mailbox']} (offense {b['offense']})" for b in result.records.blocks()]
    unblocks = [f"{u['mailbox']} ({u['reason']})" for u in result.records.unblocks()]
    console.plain()
    console.plain(
        f"mailbox.control: BLOCK {', '.join(blocks) or 'none'}; "
        f"UNBLOCK {', '.join(unblocks) or 'none'}"
    )
    verdicts: dict[str, float] = {}
    for v in result.records.verdicts:
        kind = f"{v['direction']} {v['verdict']}"
        verdicts[kind] = verdicts.get(kind, 0) + 1
    console.plain(f"mail.verdicts (from sendguard ingest): {counts(verdicts)}")
    console.plain(f"sendguard gateway answered: {counts(result.gateway_answers)}")
    console.plain(f"sendguard ingest took rspamd's results: {counts(result.ingest_outcomes)}")
    if result.failures:
        console.line(f"{len(result.failures)} expectation(s) did not hold (see ✗ above)", fg="red")
    console.plain(
        "the classic scenario (escalation to a permanent block, a support release, device "
        "scans): sendguard demo --no-mail"
    )
