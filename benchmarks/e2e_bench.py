"""End-to-end benchmark of `sendguard worker` on a real broker. Not a test.

    python -m benchmarks.e2e_bench [--bootstrap HOST:PORT] [--shares 0.02,0.2,0.5]
                                   [--verdicts 1000000] [--mailboxes 100000]
                                   [--store rocksdb|memory] [--latency-seconds 20]
                                   [--latency-fraction 0.8] [--probes 200] [--seed N]

Bootstrap: the flag, else SENDGUARD_BOOTSTRAP, else the local broker of
`processor.local` (started here, and stopped at the end, if none is reachable).

Each qualifying share (by default 2 %, 20 % and 50 % of the stream, one after the
other in one run) is measured on topics and a worker of its own:

1. Throughput. Fresh topic prefix and app id; the contract topics are created.
   The directory, the tenant settings and VERDICTS verdicts (the workload model of
   `benchmarks.workload`: realistic bursts, scanner retries, reordering, the share
   of them qualifying) are produced as Avro single-object records, keyed by mailbox,
   BEFORE the worker starts. Then `sendguard worker` runs as a subprocess until its
   edge group has committed `mail.verdicts` to its end and its Faust group has
   committed the internal topic to its end (AdminClient committed offsets vs
   watermarks, polled every 0.1 s). The clock starts at the first record the edge
   stage forwards (the earliest CreateTime on `<app-id>-mailbox-events`: the edge
   stamps it while handling its first consumed batch) and stops when the poll sees
   both lags at 0. Faust commits every 2.8 s, so this includes up to 2.8 s of
   commit delay; the "processing" figure stops instead at the worker's last write
   (the latest CreateTime on the internal topic and the table changelog). The CPU
   time of the worker's two processes over the same span is printed too. The
   BLOCKs on `mailbox.control` are compared with what `simulate`'s Engine decides
   for the same stream. The stream's event time spans less than the first block
   (50 min < 1 h), so no block expires in either and the live wall clock and
   simulate's input clock cannot disagree about expiry.
2. Latency, at LATENCY_FRACTION (80 %) of the measured end-to-end rate: a paced
   live stream (the same traffic mix replayed with live timestamps and fresh
   message ids) in which PROBES mailboxes each send 5 qualifying verdicts 250 ms
   apart; for each, the time from producing the 5th (threshold-reaching) verdict to
   its BLOCK arriving at a separate consumer of `mailbox.control` (both clocks:
   this process's monotonic).
3. Ceiling, after the worker stopped: a plain confluent-kafka consumer (fresh group,
   the edge's fetch settings) reading and Avro-decoding the same 1st-phase records.

A summary table of every share, and each share's targets (MET / NOT MET), close
the run. Finally the worker is stopped and every topic and group of the run is deleted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.kafka_support import (
    Offsets,
    bulk_producer,
    create_topics,
    delete_topics,
    fresh_names,
    partitions_of,
    produce_all,
)
from benchmarks.workload import (
    MINUTE,
    Workload,
    cpu_model,
    generate,
    load_average,
    python_version,
)
from processor.codec import records
from processor.codec.wire import Codec, CodecConfig
from processor.local.process_group import stop_process_group
from processor.policy import (
    Block,
    Direction,
    DirectoryEntry,
    Engine,
    MailboxKey,
    PolicyConfig,
    Verdict,
    VerdictKind,
)
from processor.stream.topics import TopicNames

TARGET_P99_S = 1.0
SENDGUARD = str(Path(sys.executable).parent / "sendguard")
#: Gap between a probe's qualifying verdicts; the 5th reaches the default threshold.
PROBE_GAP_S = 0.25
PROBE_BURST = 5
POLL_S = 0.1

BlockId = tuple[str, str, int, str]  # tenant, mailbox, offense, command id


def out(text: str = "") -> None:
    print(text, flush=True)


def load() -> str:
    return f"load {load_average()}"


# -- broker ---------------------------------------------------------------------------


def _answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient

    try:
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=5)
        return True
    except Exception:
        return False


def resolve_bootstrap(flag: str | None) -> tuple[str, Any]:
    """(bootstrap, the LocalBroker this run started or None)."""
    given = flag or os.environ.get("SENDGUARD_BOOTSTRAP")
    if given:
        return given, None
    from processor.local import BrokerConfig, LocalBroker

    config = BrokerConfig.from_env()
    if _answers(config.bootstrap):
        return config.bootstrap, None
    broker = LocalBroker(config, progress=lambda m: out(f"  {m}"))
    started = broker.up()
    return broker.status().bootstrap, broker if started else None


# -- phase 0: the workload on the broker ------------------------------------------------


@dataclass
class Produced:
    workload: Workload
    verdict_ends: dict[int, int]
    keys: dict[MailboxKey, bytes]
    encode_rate: float
    produce_rate: float
    probes: list[MailboxKey]


def _directory_records(
    codec: Codec, workload: Workload, probes: list[MailboxKey], at_ms: int
) -> Iterator[tuple[bytes | None, bytes]]:
    entries = list(workload.directory) + [
        DirectoryEntry(key, f"owner-{key.mailbox}", (f"device-{key.mailbox}",), at_ms)
        for key in probes
    ]
    for entry in entries:
        key_name, key = records.key_of(entry)
        name, value = records.record_of(entry)
        yield codec.encode(key_name, key), codec.encode(name, value)


def produce_workload(
    bootstrap: str, names: TopicNames, codec: Codec, workload: Workload, n_probes: int
) -> Produced:
    producer = bulk_producer(bootstrap, **{"enable.idempotence": True})
    tenants = workload.tenants
    run = names.app_id
    probes = [
        MailboxKey.of(tenants[i % len(tenants)], f"probe-{run}-{i}@probes.example")
        for i in range(n_probes)
    ]
    at_ms = workload.stream[0].scanned_at_ms - 24 * 3_600_000
    produce_all(producer, names.directory, _directory_records(codec, workload, probes, at_ms))
    settings = []
    for s in workload.settings:
        key_name, key = records.key_of(s)
        name, value = records.record_of(s)
        settings.append((codec.encode(key_name, key), codec.encode(name, value)))
    produce_all(producer, names.settings, settings)

    started = time.perf_counter()
    keys: dict[MailboxKey, bytes] = {}
    encoded: list[tuple[bytes | None, bytes]] = []
    encode = codec.encode
    for verdict in workload.stream:
        key_bytes = keys.get(verdict.key)
        if key_bytes is None:
            key_bytes = keys[verdict.key] = encode("MailboxKey", records.key_of(verdict)[1])
        encoded.append((key_bytes, encode("Verdict", records.record_of(verdict)[1])))
    encode_s = time.perf_counter() - started
    started = time.perf_counter()
    produce_all(producer, names.verdicts, encoded)
    produce_s = time.perf_counter() - started
    parts = partitions_of(bootstrap, names.verdicts)
    ends = Offsets(bootstrap).ends(names.verdicts, parts)
    n = len(encoded)
    if sum(ends.values()) != n:
        raise RuntimeError(f"{names.verdicts} holds {sum(ends.values())} records, expected {n}")
    return Produced(workload, ends, keys, n / encode_s, n / produce_s, probes)


def expected_blocks(workload: Workload) -> set[BlockId]:
    """The BLOCKs `simulate` decides for the stream (directory and settings first)."""
    engine = Engine(PolicyConfig())
    for entry in workload.directory:
        engine.directory(entry)
    for settings in workload.settings:
        engine.settings(settings)
    blocks: set[BlockId] = set()
    for verdict in workload.stream:
        for decision in engine.verdict(verdict)[1]:
            if isinstance(decision, Block):
                key = decision.key
                blocks.add((key.tenant_id, key.mailbox, decision.offense, decision.command_id))
    return blocks


# -- the worker ---------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    """`sendguard worker` in its own session (its edge process dies with it)."""

    def __init__(
        self,
        bootstrap: str,
        names: TopicNames,
        store: str,
        loglevel: str,
        tmp: Path,
        profile: Path | None = None,
        pythonpath: Path | None = None,
    ) -> None:
        self.port = _free_port()
        self.log = tmp / "worker.log"
        # The worker's settings come from the flags only: no SENDGUARD_* of the caller
        # (a policy file or schema registry there would change what is measured).
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENDGUARD_")}
        if pythonpath is not None:  # a scratch copy's `processor` instead of the installed one
            env["PYTHONPATH"] = os.pathsep.join(
                [str(pythonpath), *filter(None, [env.get("PYTHONPATH")])]
            )
        self.started_at = time.time()
        # --profile-worker: the worker's main process (the Faust agent; not the edge
        # process it spawns) under cProfile, written when it stops.
        under = [sys.executable, "-m", "cProfile", "-o", str(profile)] if profile else []
        if pythonpath is not None and not under:
            under = [sys.executable]  # the script itself, so PYTHONPATH decides the package
        self.process = subprocess.Popen(
            [
                *under,
                SENDGUARD,
                "worker",
                "--bootstrap",
                bootstrap,
                "--topic-prefix",
                names.prefix,
                "--app-id",
                names.app_id,
                "--store",
                store,
                "--data-dir",
                str(tmp / "data"),
                "--web-port",
                str(self.port),
                "--loglevel",
                loglevel,
            ],
            stdout=open(self.log, "ab"),  # noqa: SIM115 (the child owns it)
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )

    def check_alive(self) -> None:
        if self.process.poll() is not None:
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"worker exited with {self.process.returncode}:\n{tail}")

    def metrics(self) -> str:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def lags(self) -> tuple[int, int]:
        """(edge lag on mail.verdicts, agent lag on the internal topic), as the worker
        reports them (sendguard_input_lag, measured from the broker every 2 s, and
        sendguard_consumer_lag, the agent's every 1 s)."""
        edge = agent = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("sendguard_consumer_lag{") and "mailbox-events" in line:
                agent += float(line.rsplit(" ", 1)[1])
            elif line.startswith("sendguard_input_lag{") and "mail.verdicts" in line:
                edge += float(line.rsplit(" ", 1)[1])
        return int(edge), int(agent)

    def verdicts_counted(self) -> int:
        total = 0.0
        for line in self.metrics().splitlines():
            if line.startswith("sendguard_verdicts_total{"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def stop(self) -> None:
        stop_process_group(self.process)


class Workers:
    """Several `sendguard worker` processes of one deployment (same app id): the
    consumer groups split the partitions between them, as on several hosts."""

    def __init__(self, workers: list[Worker]) -> None:
        self.workers = workers
        self.started_at = min(w.started_at for w in workers)
        self.log = workers[0].log

    def check_alive(self) -> None:
        for worker in self.workers:
            worker.check_alive()

    def lags(self) -> tuple[int, int]:
        edge = agent = 0
        for worker in self.workers:
            e, a = worker.lags()
            edge, agent = edge + e, agent + a
        return edge, agent

    def verdicts_counted(self) -> int:
        return sum(worker.verdicts_counted() for worker in self.workers)

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


# -- reading topics -----------------------------------------------------------------------


def _consumer(bootstrap: str, group: str, **extra: Any) -> Any:
    from confluent_kafka import Consumer

    return Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            **extra,
        }
    )


def record_times(bootstrap: str, topic: str, first: bool) -> list[int]:
    """CreateTime (epoch ms) of the first (or last) record of each non-empty partition."""
    from confluent_kafka import TopicPartition

    parts = partitions_of(bootstrap, topic)
    offsets = Offsets(bootstrap)
    ends = offsets.ends(topic, parts)
    wanted = [TopicPartition(topic, p, 0 if first else ends[p] - 1) for p in parts if ends[p] > 0]
    if not wanted:
        return []
    consumer = _consumer(bootstrap, f"{topic}-times")
    consumer.assign(wanted)
    times: dict[int, int] = {}
    deadline = time.monotonic() + 20
    while len(times) < len(wanted) and time.monotonic() < deadline:
        for message in consumer.consume(100, 0.5):
            if message.error() is None and message.partition() not in times:
                times[message.partition()] = message.timestamp()[1]
    consumer.close()
    return list(times.values())


def read_blocks(bootstrap: str, topic: str, codec: Codec) -> Counter[BlockId]:
    """Every BLOCK on `topic` up to its current end (a Counter: repeats are visible)."""
    from confluent_kafka import TopicPartition

    parts = partitions_of(bootstrap, topic)
    ends = Offsets(bootstrap).ends(topic, parts)
    consumer = _consumer(bootstrap, f"{topic}-read")
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    remaining = {p for p in parts if ends[p] > 0}
    found: Counter[BlockId] = Counter()
    deadline = time.monotonic() + 60
    while remaining and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error() is not None:
                continue
            record = codec.decode_as("MailboxCommand", message.value())
            if record["action"] == "BLOCK":
                found[
                    (
                        record["tenant_id"],
                        record["mailbox"],
                        record["offense"],
                        record["command_id"],
                    )
                ] += 1
            if message.offset() >= ends[message.partition()] - 1:
                remaining.discard(message.partition())
    consumer.close()
    return found


# -- phase 1: throughput ------------------------------------------------------------------


@dataclass
class Throughput:
    first_ms: int
    edge_done_s: float  # wall time the poll first saw the edge group at lag 0
    done_s: float  # wall time the poll first saw both groups at lag 0
    last_write_ms: int
    worker_started_s: float
    load_before: str
    load_after: str
    verdicts: int

    @property
    def seconds(self) -> float:
        return self.done_s - self.first_ms / 1000

    @property
    def rate(self) -> float:
        return self.verdicts / self.seconds

    @property
    def processing_rate(self) -> float:
        return self.verdicts / (self.last_write_ms / 1000 - self.first_ms / 1000)


def run_throughput(
    bootstrap: str,
    names: TopicNames,
    worker: Workers,
    produced: Produced,
    timeout_s: float,
    on_first: Any = None,
) -> Throughput:
    """Phase 1; `on_first()` is called once the edge has committed its first records."""
    offsets = Offsets(bootstrap)
    verdict_parts = sorted(produced.verdict_ends)
    n = sum(produced.verdict_ends.values())
    load_before = load_average()
    internal_parts = partitions_of(bootstrap, names.mailbox_events, timeout_s=60)
    deadline = time.monotonic() + timeout_s
    edge_done: float | None = None
    last_report = time.monotonic()
    while True:
        worker.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker did not finish in {timeout_s}s (see {worker.log})")
        committed = offsets.committed(names.edge_group, names.verdicts, verdict_parts)
        edge_lag = sum(produced.verdict_ends[p] - committed.get(p, 0) for p in verdict_parts)
        if on_first is not None and edge_lag < n:
            on_first()
            on_first = None
        now = time.time()
        if edge_lag == 0:
            edge_done = edge_done or now
            agent_lag = offsets.lag(names.app_id, names.mailbox_events, internal_parts)
            if agent_lag == 0:
                done = time.time()
                break
        if time.monotonic() - last_report >= 5:
            out(f"  ... edge committed {n - edge_lag:,}/{n:,} ({load()})")
            last_report = time.monotonic()
        time.sleep(POLL_S)
    load_after = load_average()
    assert edge_done is not None
    first = min(record_times(bootstrap, names.mailbox_events, first=True))
    changelog = names.state_changelog
    last = max(
        record_times(bootstrap, names.mailbox_events, first=False)
        + record_times(bootstrap, changelog, first=False)
    )
    return Throughput(first, edge_done, done, last, worker.started_at, load_before, load_after, n)


# -- phase 2: latency ---------------------------------------------------------------------


@dataclass
class ControlWatch:
    """A consumer of mailbox.control from its current end: BLOCK arrival per mailbox."""

    bootstrap: str
    topic: str
    codec: Codec
    arrivals: dict[tuple[str, str], float] = field(default_factory=dict)
    #: CreateTime (epoch ms) of each mailbox's BLOCK: when the worker produced it.
    written_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    blocks: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        from confluent_kafka import TopicPartition

        parts = partitions_of(self.bootstrap, self.topic)
        ends = Offsets(self.bootstrap).ends(self.topic, parts)
        consumer = _consumer(self.bootstrap, f"{self.topic}-latency", **{"fetch.wait.max.ms": 10})
        consumer.assign([TopicPartition(self.topic, p, ends[p]) for p in parts])

        def run() -> None:
            while not self._stop.is_set():
                for message in consumer.consume(500, 0.05):
                    arrived = time.monotonic()
                    if message.error() is not None:
                        continue
                    record = self.codec.decode_as("MailboxCommand", message.value())
                    if record["action"] == "BLOCK":
                        self.blocks += 1
                        key = (record["tenant_id"], record["mailbox"])
                        self.arrivals.setdefault(key, arrived)
                        self.written_ms.setdefault(key, message.timestamp()[1])
            consumer.close()

        self._thread = threading.Thread(target=run, name="control-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)


@dataclass
class LagSampler:
    """Samples the worker's lag gauges every half second while the live stream runs."""

    worker: Workers
    max_edge: int = 0
    max_agent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        def run() -> None:
            while not self._stop.wait(0.5):
                with contextlib.suppress(OSError):
                    edge, agent = self.worker.lags()
                    self.max_edge = max(self.max_edge, edge)
                    self.max_agent = max(self.max_agent, agent)

        self._thread = threading.Thread(target=run, name="lag-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)


@dataclass
class Latency:
    rate: float
    achieved_rate: float
    sent: int
    latencies: list[float]
    #: Latencies in probe order (the order their threshold verdicts were produced).
    in_order: list[float]
    missing: int
    background_blocks: int
    load_after: str
    #: Per probe, seconds: produced -> forwarded by the edge (internal-topic CreateTime),
    #: forwarded -> BLOCK written by the agent (control CreateTime), written -> consumed.
    stages: list[tuple[float, float, float]] = field(default_factory=list)


def _live_background(
    codec: Codec, produced: Produced, n: int, start_ms: int, rate: float, run: str
) -> list[tuple[bytes | None, bytes]]:
    """The first-phase traffic again, re-stamped at its planned send time, new message ids."""
    stream = produced.workload.stream
    encode = codec.encode
    keys = produced.keys
    out_: list[tuple[bytes | None, bytes]] = []
    for i in range(n):
        verdict = stream[i % len(stream)]
        record = records.record_of(verdict)[1]
        record["message_id"] = f"live-{run}-{i}"
        record["scanned_at"] = start_ms + int(i * 1000 / rate)
        out_.append((keys[verdict.key], encode("Verdict", record)))
    return out_


def run_latency(
    bootstrap: str,
    names: TopicNames,
    codec: Codec,
    produced: Produced,
    rate: float,
    seconds: float,
) -> Latency:
    n = int(rate * seconds)
    # Pre-encode the background (not timed); its planned times start after encoding.
    lead_s = n / produced.encode_rate * 1.3 + 2
    start_ms = int((time.time() + lead_s) * 1000)
    background = _live_background(codec, produced, n, start_ms, rate, names.app_id)
    probes = produced.probes
    # Probe i reaches the threshold at 1 s + i * spacing into the stream.
    spacing = max(0.0, seconds - 2 - PROBE_GAP_S * PROBE_BURST) / max(1, len(probes))
    plan: list[tuple[float, int, int]] = sorted(
        (1.0 + i * spacing - (PROBE_BURST - 1 - j) * PROBE_GAP_S, i, j)
        for i in range(len(probes))
        for j in range(PROBE_BURST)
    )
    probe_keys = [
        codec.encode("MailboxKey", {"tenant_id": k.tenant_id, "mailbox": k.mailbox}) for k in probes
    ]
    watch = ControlWatch(bootstrap, names.control, codec)
    watch.start()
    internal_parts = partitions_of(bootstrap, names.mailbox_events)
    internal_start = Offsets(bootstrap).ends(names.mailbox_events, internal_parts)
    produced_wall: dict[tuple[str, str], float] = {}
    producer = bulk_producer(bootstrap, **{"linger.ms": 5, "enable.idempotence": True})
    produced_at: dict[tuple[str, str], float] = {}
    while time.time() * 1000 < start_ms:
        time.sleep(0.01)
    t0 = time.monotonic() - (time.time() * 1000 - start_ms) / 1000
    sent, next_probe = 0, 0
    topic = names.verdicts
    while sent < n or next_probe < len(plan):
        elapsed = time.monotonic() - t0
        due = min(n, int(elapsed * rate) + 1)
        while sent < due:
            key, value = background[sent]
            try:
                producer.produce(topic, value, key)
            except BufferError:
                producer.poll(0.01)
                continue
            sent += 1
        while next_probe < len(plan) and plan[next_probe][0] <= elapsed:
            _, i, j = plan[next_probe]
            probe = probes[i]
            verdict = Verdict(
                probe,
                f"probe-{names.app_id}-{i}-{j}",
                Direction.OUTBOUND,
                VerdictKind.SPAM,
                int(time.time() * 1000),
            )
            value = codec.encode("Verdict", records.record_of(verdict)[1])
            if j == PROBE_BURST - 1:
                produced_at[probe.tenant_id, probe.mailbox] = time.monotonic()
                produced_wall[probe.tenant_id, probe.mailbox] = time.time()
            producer.produce(topic, value, probe_keys[i])
            next_probe += 1
        producer.poll(0)
        time.sleep(0.002)
    duration = time.monotonic() - t0
    producer.flush(60)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not produced_at.keys() <= watch.arrivals.keys():
        time.sleep(0.1)
    watch.stop()
    in_order = [watch.arrivals[k] - produced_at[k] for k in produced_at if k in watch.arrivals]
    forwarded = _forwarded_ms(bootstrap, names, internal_start)
    stages = [
        (
            forwarded[k] / 1000 - produced_wall[k],
            (watch.written_ms[k] - forwarded[k]) / 1000,
            watch.arrivals[k] - produced_at[k] - (watch.written_ms[k] / 1000 - produced_wall[k]),
        )
        for k in produced_at
        if k in watch.arrivals and k in forwarded
    ]
    return Latency(
        rate=rate,
        achieved_rate=sent / duration,
        sent=sent + len(plan),
        latencies=sorted(in_order),
        in_order=in_order,
        missing=len(produced_at) - len(in_order),
        background_blocks=watch.blocks - len(in_order),
        load_after=load_average(),
        stages=stages,
    )


def _forwarded_ms(
    bootstrap: str, names: TopicNames, start: dict[int, int]
) -> dict[tuple[str, str], int]:
    """CreateTime of each probe's threshold verdict on the internal topic (edge output)."""
    from confluent_kafka import TopicPartition

    from processor.stream.events import decode_record

    suffix = f"-{PROBE_BURST - 1}"
    ends = Offsets(bootstrap).ends(names.mailbox_events, start)
    consumer = _consumer(bootstrap, f"{names.app_id}-forwarded")
    consumer.assign([TopicPartition(names.mailbox_events, p, o) for p, o in start.items()])
    remaining = {p for p in start if ends[p] > start[p]}
    found: dict[tuple[str, str], int] = {}
    deadline = time.monotonic() + 30
    while remaining and time.monotonic() < deadline:
        for message in consumer.consume(1000, 0.5):
            if message.error() is not None:
                continue
            pack = decode_record(message.key(), message.value(), message.timestamp()[1])
            for event in pack.events:
                mid = event.message_id if isinstance(event, Verdict) else ""
                if mid.startswith("probe-") and mid.endswith(suffix):
                    found[event.key.tenant_id, event.key.mailbox] = message.timestamp()[1]
            if message.offset() >= ends[message.partition()] - 1:
                remaining.discard(message.partition())
    consumer.close()
    return found


# -- phase 3: ceiling ---------------------------------------------------------------------


def run_ceiling(
    bootstrap: str, names: TopicNames, codec: Codec, ends: dict[int, int]
) -> tuple[float, int, str]:
    """Plain consume + Avro decode of the first-phase records: (verdicts/s, records, load)."""
    consumer = _consumer(
        bootstrap,
        f"{names.app_id}-ceiling",
        **{"fetch.min.bytes": 65536, "fetch.wait.max.ms": 100},
    )
    consumer.subscribe([names.verdicts])
    decode = codec.decode
    remaining = {p for p, end in ends.items() if end > 0}
    count = 0
    first: float | None = None
    deadline = time.monotonic() + 600
    while remaining and time.monotonic() < deadline:
        messages = consumer.consume(5000, 0.2)
        if not messages:
            continue
        if first is None:
            first = time.perf_counter()
        for message in messages:
            if message.error() is not None:
                continue
            partition, offset = message.partition(), message.offset()
            if offset < ends[partition]:
                decode(message.value())
                count += 1
                if offset == ends[partition] - 1:
                    remaining.discard(partition)
    elapsed = time.perf_counter() - (first or time.perf_counter())
    consumer.close()
    return count / elapsed, count, load_average()


# -- report -------------------------------------------------------------------------------


#: Targets per qualifying share (issue 11): verdicts/s end to end, and the least
#: ratio to the ceiling measured in the same run (None: no ratio target).
TARGETS: dict[float, tuple[int, float | None]] = {
    0.02: (90_000, 0.75),
    0.2: (60_000, 0.5),
    0.5: (30_000, None),
}


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of sorted values."""
    if not sorted_values:
        return float("nan")
    rank = max(1, int(-(-q * len(sorted_values) // 1)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


@dataclass
class ShareResult:
    """What one qualifying share measured."""

    share: float
    verdicts: int
    qualifying: int
    rate: float
    ceiling: float
    blocks_live: int
    blocks_simulate: int
    agree: bool
    latency_rate: float
    p50_ms: float
    p99_ms: float
    missing: int
    load: str
    cpu: str

    @property
    def ratio(self) -> float:
        return self.rate / self.ceiling

    def targets(self) -> list[tuple[str, bool]]:
        """(description, met) of every target of this share."""
        found: list[tuple[str, bool]] = []
        target = TARGETS.get(self.share)
        if target is not None:
            rate, ratio = target
            found.append((f">= {rate:,} verdicts/s", self.rate >= rate))
            if ratio is not None:
                found.append((f">= {ratio:g} of the ceiling", self.ratio >= ratio))
        found.append(
            (
                f"BLOCK p99 < {TARGET_P99_S:g} s",
                self.missing == 0 and self.p99_ms < TARGET_P99_S * 1000,
            )
        )
        found.append(("BLOCKs equal simulate's", self.agree))
        return found


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc), or None."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as children:
            return [int(child) for child in children.read().split()]
    except OSError:
        return []


def run_share(args: argparse.Namespace, bootstrap: str, share: float) -> ShareResult:
    """Phases 1-3 for one qualifying share, on topics of its own (deleted afterwards)."""
    names = fresh_names("e2e")
    out(f"run       : topic prefix {names.prefix!r}, app id {names.app_id!r}")
    tmp = Path(tempfile.mkdtemp(prefix="sendguard-e2e-"))
    codec = Codec.from_config(CodecConfig())  # single-object encoding, as scanners send
    worker: Workers | None = None
    failed = True
    try:
        create_topics(bootstrap, names)
        started = time.perf_counter()
        # Event time ends a minute before now: a backlog, nothing in the future.
        t0_ms = int(time.time() * 1000) - int((args.minutes + 1) * MINUTE)
        workload = generate(
            args.verdicts,
            args.mailboxes,
            args.seed,
            args.minutes / 60,
            t0_ms=t0_ms,
            qualifying=share,
        )
        n = len(workload.stream)
        out(
            f"workload  : {n:,} verdicts, {workload.mailboxes:,} mailboxes in "
            f"{len(workload.tenants)} tenants, {args.minutes:g} min of event time, seed "
            f"{args.seed} (generated in {time.perf_counter() - started:.1f} s)"
        )
        out(
            f"            {workload.qualifying:,} qualifying ({workload.qualifying / n:.2%}), "
            f"{workload.compromised:,} compromised mailboxes, {workload.duplicates:,} "
            f"retries, {workload.reordered:,} reordered, {workload.backlog:,} backlog"
        )
        produced = produce_workload(bootstrap, names, codec, workload, args.probes)
        out(
            f"produced  : directory {len(workload.directory) + args.probes:,}, settings "
            f"{len(workload.settings)}, verdicts {n:,} to {len(produced.verdict_ends)} "
            f"partitions (Avro single-object, keyed by MailboxKey; encode "
            f"{produced.encode_rate:,.0f}/s, produce {produced.produce_rate:,.0f}/s)"
        )
        expected = expected_blocks(workload)
        out(f"simulate  : Engine decides {len(expected):,} BLOCKs for this stream")

        out()
        out(
            f"[1] throughput: {args.workers} x sendguard worker --store {args.store} "
            f"--loglevel {args.worker_loglevel} ({load()})"
        )
        worker_dirs = [tmp / f"w{i}" for i in range(args.workers)]
        for directory in worker_dirs:
            directory.mkdir()
        worker = Workers(
            [
                Worker(
                    bootstrap,
                    names,
                    args.store,
                    args.worker_loglevel,
                    directory,
                    args.profile_worker if i == 0 else None,
                    args.worker_pythonpath,
                )
                for i, directory in enumerate(worker_dirs)
            ]
        )
        cpu_before: dict[int, float | None] = {}
        tp = run_throughput(
            bootstrap,
            names,
            worker,
            produced,
            args.timeout,
            on_first=lambda: cpu_before.update(_process_cpu(worker)),
        )
        cpu = _describe_cpu(cpu_before, _process_cpu(worker), n, workload.qualifying)
        out(
            f"  worker started -> first record forwarded: "
            f"{tp.first_ms / 1000 - tp.worker_started_s:.1f} s (startup, not timed)"
        )
        out(
            f"  edge group at lag 0 after {tp.edge_done_s - tp.first_ms / 1000:.2f} s, "
            f"both groups at lag 0 after {tp.seconds:.2f} s, last worker write after "
            f"{(tp.last_write_ms - tp.first_ms) / 1000:.2f} s"
        )
        out(
            f"  END TO END: {tp.rate:,.0f} verdicts/s ({n:,} verdicts, first forwarded -> "
            f"both consumer groups committed to the end; load before {tp.load_before}, "
            f"after {tp.load_after})"
        )
        out(
            f"  processing: {tp.processing_rate:,.0f} verdicts/s (same start -> the worker's "
            f"last write; excludes Faust's <= 2.8 s commit interval)"
        )
        out(f"  cpu       : {cpu}")
        counted = 0
        for _ in range(10):  # the edge reports its counters to the worker every second
            counted = worker.verdicts_counted()
            if counted >= n:
                break
            time.sleep(0.5)
        out(f"  metrics   : sendguard_verdicts_total = {counted:,} (of {n:,})")
        found = read_blocks(bootstrap, names.control, codec)
        live = set(found)
        repeats = sum(found.values()) - len(found)
        agree = live == expected
        out(
            f"  BLOCKs on mailbox.control: {len(live):,} distinct ({repeats} repeated records)"
            f"; simulate: {len(expected):,} -> {'AGREE' if agree else 'DIFFER'}"
        )
        if not agree:
            for label, diff in (
                ("only live", live - expected),
                ("only simulate", expected - live),
            ):
                out(f"    {label}: {len(diff)} e.g. {sorted(diff)[:3]}")

        out()
        rate = tp.rate * args.latency_fraction
        out(
            f"[2] latency: {args.latency_seconds:g} s paced at {rate:,.0f} verdicts/s "
            f"({args.latency_fraction:.0%} of the end-to-end rate), {args.probes} probe "
            f"mailboxes ({load()})"
        )
        sampler = LagSampler(worker)
        sampler.start()
        lat = run_latency(bootstrap, names, codec, produced, rate, args.latency_seconds)
        sampler.stop()
        values = lat.latencies
        p50 = statistics.median(values) if values else float("nan")
        p99 = _percentile(values, 0.99)
        out(
            f"  sent {lat.sent:,} verdicts at {lat.achieved_rate:,.0f}/s; blocks of other "
            f"mailboxes seen: {lat.background_blocks}"
        )
        out(
            f"  threshold verdict produced -> BLOCK consumed: n={len(values)}, "
            f"p50 {p50 * 1000:,.0f} ms, p99 {p99 * 1000:,.0f} ms, "
            f"max {(values[-1] if values else float('nan')) * 1000:,.0f} ms, missing "
            f"{lat.missing} (load after {lat.load_after})"
        )
        quarter = max(1, len(lat.in_order) // 4)
        out(
            "  median by quarter of the stream: "
            + ", ".join(
                f"{statistics.median(lat.in_order[i : i + quarter]) * 1000:,.0f} ms"
                for i in range(0, len(lat.in_order), quarter)
            )
            + f"; worker-reported max lag: edge {sampler.max_edge:,}, agent {sampler.max_agent:,}"
        )
        if lat.stages:
            out(
                "  by stage (p50 / p99): "
                + ", ".join(
                    f"{label} {statistics.median(v) * 1000:,.0f} / "
                    f"{_percentile(sorted(v), 0.99) * 1000:,.0f} ms"
                    for label, v in zip(
                        (
                            "produce -> edge forwarded",
                            "forwarded -> BLOCK written",
                            "written -> consumed",
                        ),
                        zip(*lat.stages, strict=True),
                        strict=True,
                    )
                )
            )
        worker.stop()
        worker = None

        out()
        out(f"[3] ceiling: plain confluent-kafka consume + Avro decode, worker stopped ({load()})")
        ceiling, read, ceiling_load = run_ceiling(bootstrap, names, codec, produced.verdict_ends)
        out(f"  {ceiling:,.0f} verdicts/s ({read:,} records; load after {ceiling_load})")
        out(f"  end to end / ceiling = {tp.rate / ceiling:.2f}")
        failed = False
        return ShareResult(
            share=share,
            verdicts=n,
            qualifying=workload.qualifying,
            rate=tp.rate,
            ceiling=ceiling,
            blocks_live=len(live),
            blocks_simulate=len(expected),
            agree=agree,
            latency_rate=rate,
            p50_ms=p50 * 1000,
            p99_ms=p99 * 1000,
            missing=lat.missing,
            load=f"{tp.load_before} / {tp.load_after}",
            cpu=cpu,
        )
    finally:
        if worker is not None:
            worker.stop()
        groups = [names.edge_group, names.app_id, f"{names.app_id}-ceiling"]
        deleted = delete_topics(bootstrap, names, groups)
        out(f"cleanup   : worker stopped, {len(deleted)} topics deleted ({load()})")
        if failed:
            out(f"worker log kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _process_cpu(workers: Workers) -> dict[int, float | None]:
    """CPU seconds so far of the workers' main processes (key 0) and edge processes (1)."""
    pids = [worker.process.pid for worker in workers.workers]
    children = [child for pid in pids for child in _children(pid)]
    main = [_cpu_seconds(pid) for pid in pids]
    return {
        0: None if None in main else sum(filter(None, main)),
        1: sum(filter(None, map(_cpu_seconds, children))) or None,
    }


def _describe_cpu(
    before: dict[int, float | None], after: dict[int, float | None], n: int, qualifying: int
) -> str:
    agent = (after.get(0) or 0) - (before.get(0) or 0) if after.get(0) is not None else None
    edge = (after.get(1) or 0) - (before.get(1) or 0) if after.get(1) is not None else None
    if agent is None or edge is None:
        return "not measured (no /proc)"
    return (
        f"lockout process(es) {agent:.1f} s ({agent / max(1, qualifying) * 1e6:.0f} us per "
        f"qualifying verdict), edge process(es) {edge:.1f} s ({edge / n * 1e6:.1f} us per "
        "verdict)"
        " from the first forwarded record to lag 0"
    )


def summary(results: list[ShareResult], args: argparse.Namespace) -> None:
    out()
    out("summary (end to end: first record forwarded -> both groups committed to the end;")
    out(f"         latency: paced at {args.latency_fraction:.0%} of that share's end-to-end rate)")
    out(
        "  share | verdicts  | end to end | ceiling   | ratio | BLOCK p50 / p99 at rate      "
        "| BLOCKs live / simulate | load before / after"
    )
    for r in results:
        out(
            f"  {r.share:5.0%} | {r.verdicts:>9,} | {r.rate:>8,.0f}/s | {r.ceiling:>7,.0f}/s "
            f"| {r.ratio:5.2f} | {r.p50_ms:>5,.0f} / {r.p99_ms:>5,.0f} ms "
            f"at {r.latency_rate:>7,.0f}/s "
            f"| {r.blocks_live:>6,} / {r.blocks_simulate:>6,} {'AGREE' if r.agree else 'DIFFER'} "
            f"| {r.load}"
        )
    for r in results:
        out(
            f"  targets at {r.share:.0%}: "
            + "; ".join(f"{what}: {_met(ok)}" for what, ok in r.targets())
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.e2e_bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--bootstrap", help="default: SENDGUARD_BOOTSTRAP, else local broker")
    parser.add_argument("--verdicts", type=int, default=1_000_000, help="per share")
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument(
        "--shares",
        default="0.02,0.2,0.5",
        help="qualifying shares of the stream, each measured in turn (comma-separated)",
    )
    parser.add_argument("--seed", type=int, default=20260105)
    parser.add_argument(
        "--minutes", type=float, default=50, help="event-time span (keep under the 1 h block)"
    )
    parser.add_argument("--store", choices=("rocksdb", "memory"), default="rocksdb")
    parser.add_argument("--worker-loglevel", default="info", help="the worker's --loglevel")
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="worker processes of the deployment (same app id, partitions split between them)",
    )
    parser.add_argument("--latency-seconds", type=float, default=20)
    parser.add_argument(
        "--latency-fraction",
        type=float,
        default=0.8,
        help="pace the latency phase at this fraction of the measured end-to-end rate",
    )
    parser.add_argument("--probes", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=600, help="phase 1 limit, seconds")
    parser.add_argument(
        "--profile-worker",
        type=Path,
        metavar="FILE",
        help="run the worker's main process (the Faust agent) under cProfile, stats to FILE",
    )
    parser.add_argument(
        "--worker-pythonpath",
        type=Path,
        metavar="DIR",
        help="run the worker from a scratch copy of the repo (to measure a change)",
    )
    args = parser.parse_args(argv)
    shares = [float(share) for share in args.shares.split(",") if share.strip()]

    from processor.local import KAFKA_VERSION

    out(f"machine   : {cpu_model()}, {os.cpu_count()} logical CPUs, {load()}")
    out(f"python    : {python_version()}")
    bootstrap, broker = resolve_bootstrap(args.bootstrap)
    out(
        f"kafka     : {bootstrap} ({'started by this run' if broker else 'already running'}); "
        f"processor.local Kafka version {KAFKA_VERSION}"
    )
    results: list[ShareResult] = []
    try:
        for share in shares:
            out()
            out(f"=== qualifying share {share:.0%} " + "=" * 60)
            results.append(run_share(args, bootstrap, share))
        out()
        out(f"parameters: {vars(args)}")
        summary(results, args)
        return 0
    finally:
        if broker is not None:
            with contextlib.suppress(Exception):
                broker.down()


if __name__ == "__main__":
    raise SystemExit(main())
