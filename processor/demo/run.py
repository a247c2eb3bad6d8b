"""The demo itself: start what is missing, play the scenario, summarise, stop it all."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

import click

from processor.demo.parts import (
    Worker,
    broker_answers,
    free_port,
    release_via_api,
    scrape_metrics,
)
from processor.demo.scenario import DEMO_POLICY, END_S, Step, build_scenario
from processor.demo.show import (
    Console,
    DemoRecords,
    SummaryRow,
    Watcher,
    print_summary,
    summarise,
)
from processor.local.sendguard_services import sendguard_command
from processor.stream.topics import TopicNames


@dataclass
class DemoResult:
    records: DemoRecords
    summary: list[SummaryRow]
    metrics: dict[str, float]
    elapsed_s: float


@dataclass(frozen=True)
class DemoOptions:
    bootstrap: str | None = None
    web_port: int = 6066
    keep_topics: bool = False
    #: Extra seconds to wait for the last events after the scenario.
    settle_s: float = 15.0


Cleanup = list[Callable[[], object]]


def undo_all(cleanup: Cleanup, console: Console) -> None:
    """Undoes what the demo started, newest first; an undo that fails is reported and
    the rest still run."""
    for undo in reversed(cleanup):
        try:
            undo()
        except Exception as error:  # keep undoing the rest
            console.line(f"cleanup: {error}", fg="red")
    console.line("stopped everything the demo started")


def run_demo(
    options: DemoOptions,
    out: TextIO,
    *,
    color: bool = False,
    on_running: Callable[[str, str, dict[str, str]], None] | None = None,
) -> DemoResult:
    """Run the whole demo, printing to `out`; returns what the output topics said.

    `on_running(worker url, admin token, support tokens by person)` is called once
    the worker is ready (tests use it to look at the API while the demo runs). Raises
    click.ClickException when something it needs cannot be started.
    """
    from processor.codec.wire import Codec
    from processor.tools.produce import ScenarioProducer

    started = time.monotonic()
    console = Console(out, started, color)
    run = uuid.uuid4().hex[:8]
    names = TopicNames(prefix=f"demo{run}.", app_id=f"sendguard-demo-{run}")
    tokens = DemoTokens.make()
    cleanup: Cleanup = []
    console.plain(click.style("sendguard demo", bold=color) + f" (run {run})")
    try:
        bootstrap = options.bootstrap or local_broker(console, cleanup)
        client = {"bootstrap.servers": bootstrap}
        create_topics(bootstrap, names, options.keep_topics, console, cleanup)
        worker = start_worker(bootstrap, names, tokens, options.web_port, console, cleanup)
        if on_running is not None:
            on_running(worker.url, tokens.admin, tokens.support)

        codec = Codec.from_config()
        watcher = Watcher(client, output_topics(names), console, codec)
        watcher.start()
        cleanup.append(watcher.stop)
        records = watcher.records
        producer = ScenarioProducer(client, codec, names.prefix)
        steps = build_scenario(int(time.time() * 1000) + 500)
        play(steps, producer, worker, tokens, console, records)
        del producer  # its client must be gone before the broker stops (no reconnect noise)

        # The last events: every timed block's UNBLOCK.
        deadline = time.monotonic() + options.settle_s
        while time.monotonic() < deadline and not _settled(records):
            time.sleep(0.3)
        if watcher.error:
            console.line(f"watcher failed: {watcher.error}", fg="red")
        time.sleep(1.5)  # the edge stage reports its counts to the worker every second
        metrics = scrape_metrics(worker.url)
        summary = summarise(records)
        print_summary(console, summary, metrics, color)
        return DemoResult(records, summary, metrics, time.monotonic() - started)
    finally:
        undo_all(cleanup, console)


@dataclass(frozen=True)
class DemoTokens:
    """Made up for this run: the worker's admin token, a support token for each person
    of the scenario, the key that signs support actions and the one that signs the
    worker's commands (which the mail demo's gateway checks)."""

    admin: str
    support: dict[str, str]
    action_key: str
    control_key: str

    @classmethod
    def make(cls) -> DemoTokens:
        actors = sorted({s.release.actor for s in build_scenario(0) if s.release is not None})
        return cls(
            secrets.token_urlsafe(32),
            {actor: secrets.token_urlsafe(32) for actor in actors},
            secrets.token_urlsafe(32),
            secrets.token_urlsafe(32),
        )

    @property
    def control_keys(self) -> str:
        """SENDGUARD_CONTROL_KEYS of the demo's worker and gateway."""
        return f"demo:{self.control_key}"

    def token_file(self) -> str:
        """The worker's support token file: hashes and names, never the tokens."""
        from processor.ops.support_tokens import token_line

        lines = [token_line(token, actor) for actor, token in self.support.items()]
        return "# made up by sendguard demo for one run\n" + "\n".join(lines) + "\n"


def local_broker(console: Console, cleanup: Cleanup) -> str:
    """The local broker's address: the running one, or one started (and stopped later)."""
    from processor.local import BrokerConfig, LocalBroker

    broker = LocalBroker(BrokerConfig.from_env(), progress=lambda m: console.line(m))
    status = broker.status()
    if status.running or broker_answers(status.bootstrap):
        console.line(f"Kafka: using the broker at {status.bootstrap}")
        return status.bootstrap
    console.line("Kafka: no broker answers; starting the local one")
    broker.up()
    cleanup.append(broker.down)
    bootstrap = broker.status().bootstrap
    console.line(f"Kafka: started at {bootstrap} (stopped at the end)")
    return bootstrap


def create_topics(
    bootstrap: str, names: TopicNames, keep: bool, console: Console, cleanup: Cleanup
) -> None:
    """topics.yaml under the run's prefix (deleted at the end, with the worker's own)."""
    from processor.stream.connection import KafkaConnection
    from processor.stream.topic_admin import apply_topics, delete_topics
    from processor.topics import load_topics

    connection = KafkaConnection(bootstrap)
    specs = [replace(s, name=names.external(s.name)) for s in load_topics()]
    apply_topics(connection, specs)
    if not keep:
        created = [s.name for s in specs] + names.internal_topics
        cleanup.append(lambda: delete_topics(connection, created))
    console.line(f"topics: {len(specs)} topics as {names.prefix}* (topics.yaml)")


def start_worker(
    bootstrap: str,
    names: TopicNames,
    tokens: DemoTokens,
    web_port: int,
    console: Console,
    cleanup: Cleanup,
) -> Worker:
    """`sendguard worker` with the demo policy, ready; its URLs printed."""
    worker = launch_worker(bootstrap, names, tokens, web_port, DEMO_POLICY, cleanup)
    console.line(
        "worker: starting (policy: 5 qualifying in 20s; blocks 5s, 10s, "
        "then permanent on the 3rd offense)"
    )
    worker.wait_ready(120)
    announce_worker(worker, tokens, console, "globex", "sales@globex.example")
    return worker


def launch_worker(
    bootstrap: str,
    names: TopicNames,
    tokens: DemoTokens,
    web_port: int,
    policy: dict[str, object],
    cleanup: Cleanup,
) -> Worker:
    """Starts `sendguard worker` with `policy` (memory store, a scratch directory of its
    own); `Worker.wait_ready` waits for it. Its stop and scratch removal go to `cleanup`."""
    import yaml

    scratch = Path(tempfile.mkdtemp(prefix="sendguard-demo-"))
    cleanup.append(lambda: shutil.rmtree(scratch, ignore_errors=True))
    policy_file = scratch / "policy.yaml"
    policy_file.write_text(yaml.safe_dump(policy, sort_keys=False))
    port = free_port(web_port)
    log_path = scratch / "worker.log"
    token_file = scratch / "support-tokens"
    token_file.write_text(tokens.token_file())
    env = {
        **os.environ,
        "SENDGUARD_ADMIN_TOKEN": tokens.admin,
        "SENDGUARD_SUPPORT_TOKENS_FILE": str(token_file),
        # The worker signs the releases it sends with this key and verifies them.
        "SENDGUARD_ACTION_KEYS": f"demo:{tokens.action_key}",
        # ... and signs its BLOCK/UNBLOCK commands, which the mail demo's gateway checks.
        "SENDGUARD_CONTROL_KEYS": tokens.control_keys,
    }
    for own in (
        "SENDGUARD_ACTION_KEYS_FILE",
        "SENDGUARD_CONTROL_KEYS_FILE",
        "SENDGUARD_ADVERTISED_URL",
    ):
        env.pop(own, None)  # the demo's worker is configured here, not by the shell
    # fmt: off
    command = [
        *sendguard_command(), "worker", "--bootstrap", bootstrap,
        "--topic-prefix", names.prefix, "--app-id", names.app_id,
        "--policy", str(policy_file), "--store", "memory",
        "--data-dir", str(scratch / "data"), "--web-host", "127.0.0.1", "--web-port", str(port),
        "--partitions", "2",
    ]
    # fmt: on
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # its own group: stopped with its edge process
        )
    worker = Worker(process, f"http://127.0.0.1:{port}", log_path)
    cleanup.append(worker.stop)
    return worker


def announce_worker(
    worker: Worker, tokens: DemoTokens, console: Console, tenant: str, mailbox: str
) -> None:
    """Where to look while the demo runs: metrics, status page, the API for `mailbox`."""
    console.line(f"worker: ready, pid {worker.process.pid}, logs (JSON lines) in {worker.log}")
    console.plain()
    console.plain(f"  metrics      {worker.url}/metrics")
    console.plain(f"  status page  {worker.url}/status?token={tokens.admin}")
    console.plain(
        f"  API          SENDGUARD_URL={worker.url} SENDGUARD_ADMIN_TOKEN={tokens.admin} "
        f"sendguard status {tenant} {mailbox}"
    )
    console.plain()


def output_topics(names: TopicNames) -> dict[str, str]:
    """The topics the watcher prints, and what kind of record each carries."""
    from processor import topics as contract

    return {
        names.control: "command",
        names.external(contract.SCAN_REQUESTS): "scan",
        names.external(contract.SECURITY_ALERTS): "alert",
        names.external(contract.MAIL_REPORTS): "report",
    }


def play(
    steps: list[Step],
    producer: Any,
    worker: Worker,
    tokens: DemoTokens,
    console: Console,
    records: DemoRecords,
) -> None:
    """Send each step when its time comes; captions and releases as they happen."""
    from processor.scenario import parse_line

    begin = time.monotonic()
    total = len(steps)
    for done, step in enumerate(steps, start=1):
        delay = step.at_s - (time.monotonic() - begin)
        if delay > 0:
            producer.producer.flush(delay)  # deliver what is queued while waiting
            remaining = step.at_s - (time.monotonic() - begin)
            if remaining > 0:
                time.sleep(remaining)
        if step.caption:
            console.line(f"▶ {step.caption}  ({done}/{total} steps)", fg="cyan")
        for line in step.lines:
            producer.send(parse_line(line))
        if step.release is not None:
            producer.producer.flush(5)
            token = tokens.support[step.release.actor]  # the person's own token
            status, answer = release_via_api(worker.url, token, step.release)
            records.releases.append((step.release.mailbox, status, answer))
            outcome = answer.get("outcome", answer.get("error"))
            detail = answer.get("reason") or answer.get("refusal") or ""
            console.line(
                f"support API: release {step.release.mailbox} → HTTP {status} {outcome}"
                + (f": {detail}" if detail and status != 200 else ""),
                fg="green" if status == 200 else "magenta",
            )
    failed = producer.flush()
    if failed:
        console.line(f"produce failures: {failed[:3]}", fg="red")
    console.line(f"scenario played: {producer.sent} records in {END_S:.0f}s of scenario time")


def _settled(records: DemoRecords) -> bool:
    """Every BLOCK has its UNBLOCK (permanent ones: released) and the release reported."""
    blocks = {(b["tenant_id"], b["mailbox"], b["offense"]) for b in records.blocks()}
    unblocks = {(u["tenant_id"], u["mailbox"], u["offense"]) for u in records.unblocks()}
    released = any(r["event"] == "released" for r in records.reports)
    return bool(blocks) and blocks <= unblocks and released


@click.command()
@click.option(
    "--bootstrap",
    envvar="SENDGUARD_BOOTSTRAP",
    show_envvar=True,
    help="Use this Kafka instead of the local broker (started if none answers).",
)
@click.option(
    "--web-port",
    default=6066,
    show_default=True,
    type=int,
    help="Worker web port (metrics, API, status page); another if taken.",
)
@click.option("--keep-topics", is_flag=True, help="Keep the demo's topics afterwards.")
@click.option(
    "--mail/--no-mail",
    default=None,
    help="Play the mail loop (real SMTP through a private Postfix and rspamd, sendguard "
    "ingest and gateway) or the classic scenario on Kafka.  [default: the mail loop when "
    "rspamd and postfix are installed and it runs as root, else the classic one]",
)
def demo(bootstrap: str | None, web_port: int, keep_topics: bool, mail: bool | None) -> None:
    """Show sendguard working, live, in well under two minutes."""
    from processor.demo.choice import choose_demo
    from processor.local.mailstack import mail_packages_missing

    out = sys.stdout
    options = DemoOptions(bootstrap=bootstrap, web_port=web_port, keep_topics=keep_topics)
    choice = choose_demo(mail, mail_packages_missing(), os.geteuid() == 0)
    if choice.note:
        click.echo(choice.note)
    if choice.mail:
        from processor.demo.mail_run import run_mail_demo

        mail_result = run_mail_demo(options, out, color=out.isatty())
        click.echo(f"demo finished in {mail_result.elapsed_s:.0f}s")
        if mail_result.failures:
            raise click.ClickException("the mail loop did not do what it should (see above)")
        return
    result = run_demo(options, out, color=out.isatty())
    click.echo(f"demo finished in {result.elapsed_s:.0f}s")
    if not _settled(result.records):
        raise click.ClickException("some expected events did not arrive (see above)")
