"""What the demo shows: each output record as a line, and the summary table."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import click


@dataclass
class DemoRecords:
    """What the output topics said, by kind (decoded Avro records)."""

    commands: list[dict[str, Any]] = field(default_factory=list)
    scans: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    #: Verdicts on mail.verdicts (the mail demo watches them; the classic one writes them).
    verdicts: list[dict[str, Any]] = field(default_factory=list)
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


#: (kind, record, when the record was written: its Kafka timestamp in epoch ms)
OnRecord = Callable[[str, dict[str, Any], int], None]


class Watcher(threading.Thread):
    """Reads the demo's topics from their beginning (they are the demo's own), keeps
    each record in `records`, tells `on_record`, and prints it unless `console` is None."""

    def __init__(
        self,
        client: dict[str, Any],
        topics: dict[str, str],
        console: Console | None,
        codec: Any,
        on_record: OnRecord | None = None,
    ) -> None:
        super().__init__(name="sendguard-demo-watcher", daemon=True)
        from confluent_kafka import Consumer

        self._topics = topics  # topic name -> kind
        self._console = console
        self._codec = codec
        self._on_record = on_record
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
                # poll returns as soon as one record is there (consume(n, timeout) would
                # hold it until n arrive or the timeout ends); then take what else came.
                first = self._consumer.poll(0.2)
                if first is None:
                    continue
                for message in [first, *self._consumer.consume(100, 0)]:
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
            "verdict": self.records.verdicts,
        }[kind]
        target.append(record)
        if self._on_record is not None:
            self._on_record(kind, record, message.timestamp()[1])
        if self._console is None:
            return
        if kind == "report" and record["event"] not in ("released", "release_refused"):
            return  # the BLOCK/UNBLOCK line says it already
        text, colour = describe_record(kind, record)
        self._console.line(text, fg=colour, bold=kind == "command")

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


#: The worker's counters the summary shows, with their labels.
SUMMARY_METRICS = (
    ("verdicts", "sendguard_verdicts_total"),
    ("qualifying", "sendguard_qualifying_verdicts_total"),
    ("ignored", "sendguard_verdicts_ignored_total"),
    ("blocks", "sendguard_blocks_total"),
    ("unblocks", "sendguard_unblocks_total"),
    ("scan requests", "sendguard_scan_requests_total"),
    ("alerts", "sendguard_alerts_total"),
    ("refused releases", "sendguard_release_refusals_total"),
)


def print_summary(
    console: Console, summary: list[SummaryRow], metrics: dict[str, float], color: bool
) -> None:
    """The summary table (from the output topics) and the worker's main counters."""
    console.plain()
    console.plain(click.style("Summary", bold=color) + " (from the output topics)")
    console.plain(format_table(summary))
    console.plain()
    counters = ", ".join(f"{label} {metrics.get(name, 0):.0f}" for label, name in SUMMARY_METRICS)
    console.plain("worker metrics: " + counters)
