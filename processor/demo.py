"""`sendguard demo`: sendguard working, live in the terminal, in well under two minutes.

Starts what is missing and stops what it started:

    local Kafka broker ─ only if none answers (stopped at the end only then)
    topics             ─ topics.yaml under a fresh prefix `demo<run>.` (deleted at the end)
    worker             ─ `sendguard worker` subprocess: demo policy (processor.demo_scenario),
                         memory store, fresh app id, admin and support tokens made up here
    scenario           ─ played in real time through `sendguard produce`'s producer
    watcher            ─ a consumer thread on the four output topics, printing each record

Releases go through the worker's support API, as a helpdesk would make them. At the
end it prints a summary table built from what the output topics said, plus a few
numbers scraped from the worker's /metrics.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import click

from processor.demo_scenario import DEMO_POLICY, END_S, Step, SupportRelease, build_scenario


@dataclass
class DemoRecords:
    """What the output topics said, by kind (decoded Avro records)."""

    commands: list[dict[str, Any]] = field(default_factory=list)
    scans: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    #: (mailbox, HTTP status, answer) of each support release made through the API.
    releases: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)

    def blocks(self) -> list[dict[str, Any]]:
        return [c for c in self.commands if c["action"] == "BLOCK"]

    def unblocks(self) -> list[dict[str, Any]]:
        return [c for c in self.commands if c["action"] == "UNBLOCK"]


@dataclass(frozen=True)
class SummaryRow:
    tenant_id: str
    mailbox: str
    blocks: str  # "1 2 3P"
    unblocks: str  # "expired×2 released×1"
    scans: int
    alerts: int
    state: str


@dataclass
class DemoResult:
    records: DemoRecords
    summary: list[SummaryRow]
    metrics: dict[str, float]
    elapsed_s: float


def summarise(records: DemoRecords) -> list[SummaryRow]:
    """One row per mailbox that was blocked or scanned, from the output records."""
    keys = sorted(
        {(c["tenant_id"], c["mailbox"]) for c in records.commands}
        | {(s["tenant_id"], s["mailbox"]) for s in records.scans}
    )
    rows = []
    for key in keys:
        mine = [c for c in records.commands if (c["tenant_id"], c["mailbox"]) == key]
        blocks = [c for c in mine if c["action"] == "BLOCK"]
        unblocks = [c for c in mine if c["action"] == "UNBLOCK"]
        reasons: dict[str, int] = {}
        for u in unblocks:
            reasons[u["reason"]] = reasons.get(u["reason"], 0) + 1
        last = mine[-1] if mine else None
        if last is None or last["action"] == "UNBLOCK":
            state = "unblocked" if last is not None else "-"
        else:
            state = "PERMANENT" if last["permanent"] else "blocked"
        rows.append(
            SummaryRow(
                tenant_id=key[0],
                mailbox=key[1],
                blocks=" ".join(f"{b['offense']}{'P' if b['permanent'] else ''}" for b in blocks),
                unblocks=" ".join(f"{r}×{n}" for r, n in sorted(reasons.items())),
                scans=sum(1 for s in records.scans if (s["tenant_id"], s["mailbox"]) == key),
                alerts=sum(1 for a in records.alerts if (a["tenant_id"], a["mailbox"]) == key),
                state=state,
            )
        )
    return rows


def format_table(rows: list[SummaryRow]) -> str:
    header = ("tenant", "mailbox", "blocks", "unblocks", "scans", "alerts", "now")
    cells = [header] + [
        (r.tenant_id, r.mailbox, r.blocks, r.unblocks, str(r.scans), str(r.alerts), r.state)
        for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# -- output ---------------------------------------------------------------------------


class Console:
    """Timestamped, optionally coloured lines; safe from several threads."""

    def __init__(self, out: TextIO, started: float, color: bool) -> None:
        self._out = out
        self._started = started
        self._color = color
        self._lock = threading.Lock()

    def line(self, text: str, fg: str | None = None, bold: bool = False) -> None:
        stamp = f"[{time.monotonic() - self._started:5.1f}s] "
        styled = click.style(text, fg=fg, bold=bold) if self._color and (fg or bold) else text
        with self._lock:
            click.echo(stamp + styled, file=self._out)

    def plain(self, text: str = "") -> None:
        with self._lock:
            click.echo(text, file=self._out)


def _clock(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3]


def describe_record(kind: str, record: dict[str, Any]) -> tuple[str, str | None]:
    """(one terminal line, colour) for an output record."""
    who = f"{record['tenant_id']:<8} {record['mailbox']}"
    if kind == "command" and record["action"] == "BLOCK":
        if record["permanent"]:
            return f"BLOCK    {who}  offense {record['offense']}: PERMANENT", "red"
        span = (record["until"] - record["at"]) / 1000
        return (
            f"BLOCK    {who}  offense {record['offense']} until {_clock(record['until'])} "
            f"({span:.0f}s)",
            "yellow",
        )
    if kind == "command":
        by = f" by {record['actor']}" if record.get("actor") else ""
        return f"UNBLOCK  {who}  offense {record['offense']} ({record['reason']}{by})", "green"
    if kind == "scan":
        return f"  scan   {who}  → device {record['device_id']} (owner {record['owner_id']})", None
    if kind == "alert":
        scans = "scans requested" if record["scans_requested"] else "NO scans (Sync Security off)"
        if record["kind"] == "allowlisted":
            return f"  alert  {who}  allowlisted: would have been blocked", None
        ends = "permanent" if record["permanent"] else f"until {_clock(record['until'])}"
        return (
            f"  alert  {who}  to the tenant's admins: offense {record['offense']}, {ends}, "
            f"{len(record['evidence'])} messages, {scans}",
            None,
        )
    event = record["event"]
    extra = f" by {record['actor']}: {record['reason']}" if record.get("actor") else ""
    return f"  report {who}  {event}{extra}", "magenta" if "release" in event else None


class Watcher(threading.Thread):
    """Reads the output topics from their beginning (they are the demo's own) and prints."""

    def __init__(
        self, client: dict[str, Any], topics: dict[str, str], console: Console, codec: Any
    ) -> None:
        super().__init__(name="sendguard-demo-watcher", daemon=True)
        from confluent_kafka import Consumer

        self._topics = topics  # topic name -> kind
        self._console = console
        self._codec = codec
        self.records = DemoRecords()
        self._stop_event = threading.Event()
        self._consumer = Consumer(
            {
                **client,
                "group.id": f"sendguard-demo-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self.error: str | None = None

    def run(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        try:
            metadata = self._consumer.list_topics(timeout=15)
            self._consumer.assign(
                [
                    TopicPartition(topic, p, OFFSET_BEGINNING)
                    for topic in self._topics
                    for p in metadata.topics[topic].partitions
                ]
            )
            while not self._stop_event.is_set():
                for message in self._consumer.consume(100, 0.2):
                    if message.error() is None:
                        self._handle(message)
        except Exception as error:  # shown by the demo; the worker keeps running
            self.error = f"{type(error).__name__}: {error}"
        finally:
            self._consumer.close()

    def _handle(self, message: Any) -> None:
        kind = self._topics[message.topic()]
        _, record = self._codec.decode(message.value())
        target = {
            "command": self.records.commands,
            "scan": self.records.scans,
            "alert": self.records.alerts,
            "report": self.records.reports,
        }[kind]
        target.append(record)
        if kind == "report" and record["event"] not in ("released", "release_refused"):
            return  # the BLOCK/UNBLOCK line says it already
        text, colour = describe_record(kind, record)
        self._console.line(text, fg=colour, bold=kind == "command")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


# -- the parts it starts --------------------------------------------------------------


def _free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sendguard() -> list[str]:
    script = Path(sys.executable).parent / "sendguard"
    if script.exists():
        return [str(script)]
    found = shutil.which("sendguard")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from processor.cli import main; sys.exit(main())"]


def _broker_answers(bootstrap: str) -> bool:
    """A Kafka broker (not run by `sendguard kafka`, e.g. docker compose) answers there."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    try:
        # A refused TCP connect answers at once; librdkafka would retry and log each try.
        socket.create_connection((host, int(port)), timeout=2).close()
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=3)
        return True
    except Exception:
        return False


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_ready(self, timeout_s: float) -> None:
        """Until /ready answers 200. Raises click.ClickException with the log's tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise click.ClickException(f"the worker exited early:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise click.ClickException(f"the worker was not ready in {timeout_s:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        from processor.local.process_group import stop_process_group

        stop_process_group(self.process)


def release_via_api(url: str, token: str, release: SupportRelease) -> tuple[int, dict[str, Any]]:
    from processor.ops.client import call, mailbox_path

    target = url + mailbox_path(release.tenant_id, release.mailbox) + "/release"
    try:
        return call("POST", target, token, {"actor": release.actor, "reason": release.reason})
    except click.ClickException as error:
        return 0, {"error": error.message}


def scrape_metrics(url: str) -> dict[str, float]:
    """Totals of the worker's main counters and gauges (labels summed)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


# -- the demo ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoOptions:
    bootstrap: str | None = None
    web_port: int = 6066
    keep_topics: bool = False
    #: Extra seconds to wait for the last events after the scenario.
    settle_s: float = 15.0


def run_demo(
    options: DemoOptions,
    out: TextIO,
    *,
    color: bool = False,
    on_running: Callable[[str, str, str], None] | None = None,
) -> DemoResult:
    """Run the whole demo, printing to `out`; returns what the output topics said.

    `on_running(worker url, admin token, support token)` is called once the worker
    is ready (tests use it to look at the API while the demo runs). Raises
    click.ClickException when something it needs cannot be started.
    """
    import yaml

    from processor import topics as contract
    from processor.codec.wire import Codec
    from processor.local import BrokerConfig, LocalBroker
    from processor.stream.topic_admin import apply_topics, delete_topics
    from processor.stream.topics import TopicNames
    from processor.tools.produce import ScenarioProducer
    from processor.topics import load_topics

    started = time.monotonic()
    console = Console(out, started, color)
    run = uuid.uuid4().hex[:8]
    names = TopicNames(prefix=f"demo{run}.", app_id=f"sendguard-demo-{run}")
    admin_token, support_token = secrets.token_urlsafe(18), secrets.token_urlsafe(18)
    cleanup: list[Callable[[], object]] = []
    console.plain(click.style("sendguard demo", bold=color) + f" (run {run})")
    try:
        # 1. Kafka
        broker = None
        bootstrap = options.bootstrap
        if bootstrap is None:
            broker = LocalBroker(BrokerConfig.from_env(), progress=lambda m: console.line(m))
            status = broker.status()
            if status.running or _broker_answers(status.bootstrap):
                bootstrap = status.bootstrap
                console.line(f"Kafka: using the broker at {bootstrap}")
            else:
                console.line("Kafka: no broker answers; starting the local one")
                broker.up()
                cleanup.append(broker.down)
                bootstrap = broker.status().bootstrap
                console.line(f"Kafka: started at {bootstrap} (stopped at the end)")
        client = {"bootstrap.servers": bootstrap}

        # 2. topics
        specs = [replace(s, name=names.external(s.name)) for s in load_topics()]
        apply_topics(bootstrap, specs)
        if not options.keep_topics:
            internal = [
                names.mailbox_events,
                f"{names.app_id}-mailbox-state-changelog",
                f"{names.app_id}-__assignor-__leader",
            ]
            cleanup.append(lambda: delete_topics(bootstrap, [s.name for s in specs] + internal))
        console.line(f"topics: {len(specs)} topics as {names.prefix}* (topics.yaml)")

        # 3. worker
        scratch = Path(tempfile.mkdtemp(prefix="sendguard-demo-"))
        cleanup.append(lambda: shutil.rmtree(scratch, ignore_errors=True))
        policy_file = scratch / "policy.yaml"
        policy_file.write_text(yaml.safe_dump(DEMO_POLICY, sort_keys=False))
        port = _free_port(options.web_port)
        log_path = scratch / "worker.log"
        env = {
            **os.environ,
            "SENDGUARD_ADMIN_TOKEN": admin_token,
            "SENDGUARD_SUPPORT_TOKEN": support_token,
        }
        # fmt: off
        command = [
            *_sendguard(), "worker", "--bootstrap", bootstrap,
            "--topic-prefix", names.prefix, "--app-id", names.app_id,
            "--policy", str(policy_file), "--store", "memory",
            "--data-dir", str(scratch / "data"), "--web-port", str(port),
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
        console.line(
            "worker: starting (policy: 5 qualifying in 20s; blocks 5s, 10s, "
            "then permanent on the 3rd offense)"
        )
        worker.wait_ready(120)
        console.line(f"worker: ready, pid {process.pid}, logs (JSON lines) in {log_path}")
        console.plain()
        console.plain(f"  metrics      {worker.url}/metrics")
        console.plain(f"  status page  {worker.url}/status?token={admin_token}")
        console.plain(
            f"  API          SENDGUARD_URL={worker.url} SENDGUARD_ADMIN_TOKEN={admin_token} "
            "sendguard status globex sales@globex.example"
        )
        console.plain()
        if on_running is not None:
            on_running(worker.url, admin_token, support_token)

        # 4. watch and play
        codec = Codec.from_config()
        watcher = Watcher(
            client,
            {
                names.control: "command",
                names.external(contract.SCAN_REQUESTS): "scan",
                names.external(contract.SECURITY_ALERTS): "alert",
                names.external(contract.MAIL_REPORTS): "report",
            },
            console,
            codec,
        )
        watcher.start()
        cleanup.append(watcher.stop)
        records = watcher.records
        producer = ScenarioProducer(client, codec, names.prefix)
        play(
            build_scenario(int(time.time() * 1000) + 500),
            producer,
            worker,
            support_token,
            console,
            records,
        )
        del producer  # its client must be gone before the broker stops (no reconnect noise)

        # 5. the last events: every timed block's UNBLOCK
        deadline = time.monotonic() + options.settle_s
        while time.monotonic() < deadline and not _settled(records):
            time.sleep(0.3)
        if watcher.error:
            console.line(f"watcher failed: {watcher.error}", fg="red")
        time.sleep(1.5)  # the edge stage reports its counts to the worker every second
        metrics = scrape_metrics(worker.url)
        summary = summarise(records)
        console.plain()
        console.plain(click.style("Summary", bold=color) + " (from the output topics)")
        console.plain(format_table(summary))
        console.plain()
        console.plain(
            "worker metrics: "
            + ", ".join(
                f"{label} {metrics.get(name, 0):.0f}"
                for label, name in (
                    ("verdicts", "sendguard_verdicts_total"),
                    ("qualifying", "sendguard_qualifying_verdicts_total"),
                    ("ignored", "sendguard_verdicts_ignored_total"),
                    ("blocks", "sendguard_blocks_total"),
                    ("unblocks", "sendguard_unblocks_total"),
                    ("scan requests", "sendguard_scan_requests_total"),
                    ("alerts", "sendguard_alerts_total"),
                    ("refused releases", "sendguard_release_refusals_total"),
                )
            )
        )
        return DemoResult(records, summary, metrics, time.monotonic() - started)
    finally:
        for undo in reversed(cleanup):
            try:
                undo()
            except Exception as error:  # keep undoing the rest
                console.line(f"cleanup: {error}", fg="red")
        console.line("stopped everything the demo started")


def play(
    steps: list[Step],
    producer: Any,
    worker: Worker,
    support_token: str,
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
            status, answer = release_via_api(worker.url, support_token, step.release)
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
def demo(bootstrap: str | None, web_port: int, keep_topics: bool) -> None:
    """Show sendguard working: a live scenario on the local broker, in about a minute."""
    out = sys.stdout
    result = run_demo(
        DemoOptions(bootstrap=bootstrap, web_port=web_port, keep_topics=keep_topics),
        out,
        color=out.isatty(),
    )
    click.echo(f"demo finished in {result.elapsed_s:.0f}s")
    if not _settled(result.records):
        raise click.ClickException("some expected events did not arrive (see above)")
