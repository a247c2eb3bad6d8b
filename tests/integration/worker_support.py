"""Running `sendguard worker` and `sendguard produce` as processes, and reading results.

Each test gets its own topic prefix and app id, so tests never see each other's
records, groups or internal topics on the shared broker.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from processor.codec.wire import Codec
from processor.local.process_group import stop_process_group
from processor.policy import (
    Decision,
    Engine,
    PolicyConfig,
)
from processor.scenario import format_timestamp, parse_line
from processor.simulate import run
from processor.stream.connection import KafkaConnection
from processor.stream.topic_admin import apply_topics
from processor.stream.topics import TopicNames
from processor.tools.tail import read_topic
from processor.topics import load_topics

SENDGUARD = str(Path(sys.executable).parent / "sendguard")
POLICY_YAML = "window: 20s\nfirst_block: 3s\ngrowth_factor: 2\npermanent_on_offense: 3\n"
POLICY = PolicyConfig.from_mapping(
    {"window": "20s", "first_block": "3s", "growth_factor": 2, "permanent_on_offense": 3}
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Deployment:
    """One isolated sendguard on the broker: its topics, app id and scratch dir."""

    bootstrap: str
    tmp: Path
    names: TopicNames
    #: SENDGUARD_ACTION_KEYS of this deployment's workers and of `produce` (which
    #: signs the scenario's releases with it).
    action_keys: str = dataclasses.field(default_factory=lambda: f"it1:{secrets.token_urlsafe(32)}")

    @classmethod
    def create(cls, bootstrap: str, tmp: Path) -> Deployment:
        run = uuid.uuid4().hex[:10]
        names = TopicNames(prefix=f"it{run}.", app_id=f"it{run}")
        specs = [dataclasses.replace(s, name=names.external(s.name)) for s in load_topics()]
        apply_topics(KafkaConnection(bootstrap), specs)
        (tmp / "policy.yaml").write_text(POLICY_YAML)
        return cls(bootstrap, tmp, names)

    @property
    def env(self) -> dict[str, str]:
        """The environment of this deployment's processes (the test's, plus its keys)."""
        return {**os.environ, "SENDGUARD_ACTION_KEYS": self.action_keys}

    @property
    def client(self) -> dict[str, Any]:
        return {"bootstrap.servers": self.bootstrap}

    def worker(
        self,
        name: str = "w1",
        store: str = "rocksdb",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> WorkerProcess:
        """A worker binding `host`:`port` (a free port by default); `args` and `env` are
        added to its command line and environment."""
        return WorkerProcess(self, name, store, host=host, port=port, args=args, env=env)

    def produce(self, lines: list[str], *, pace: str = "realtime") -> subprocess.Popen[bytes]:
        path = self.tmp / f"scenario-{uuid.uuid4().hex[:6]}.jsonl"
        path.write_text("\n".join(lines) + "\n")
        return subprocess.Popen(
            [
                SENDGUARD,
                "produce",
                str(path),
                "--bootstrap",
                self.bootstrap,
                "--topic-prefix",
                self.names.prefix,
                "--pace",
                pace,
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(self.tmp / "produce.log", "ab"),
            env=self.env,
        )

    def read(self, topic: str, idle_s: float = 2.0) -> list[dict[str, Any]]:
        """Every record of `topic` so far (values decoded)."""
        return [
            r["value"].get("record") or r["value"].get("json") or {}
            for r in read_topic(
                self.client, topic, Codec.from_config(), from_beginning=True, idle_timeout_s=idle_s
            )
        ]

    def table_state(self) -> dict[tuple[str, str], dict[str, Any]]:
        """The latest state record per mailbox, from the table's changelog."""
        state: dict[tuple[str, str], dict[str, Any]] = {}
        topic = self.names.state_changelog
        for r in read_topic(
            self.client, topic, Codec.from_config(), from_beginning=True, idle_timeout_s=2.0
        ):
            key = tuple(r["key"]["json"])
            value = r["value"].get("json")
            if value is None:
                state.pop(key, None)  # type: ignore[arg-type]
            else:
                state[key] = value["state"]  # type: ignore[index]
        return state


#: Log lines repeated many times a second while the broker is unreachable.
_RECONNECT_NOISE = (
    "Connect call failed",
    "Connection refused",
    "NodeNotReadyError",
    "Unable to update metadata",
    "Unable to request metadata",
    "not found in cache",
    "Disconnected",
)


class WorkerProcess:
    """`sendguard worker` in a subprocess (its edge stage is its child)."""

    def __init__(
        self,
        deployment: Deployment,
        name: str,
        store: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        self.deployment = deployment
        self.name = name
        self.store = store
        self.host = host
        self.port = port if port is not None else free_port()
        self.args = args
        self.env = env or {}
        self.log = deployment.tmp / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, env: dict[str, str] | None = None) -> WorkerProcess:
        """Start the worker; `env` is added to this start's environment only."""
        d = self.deployment
        self.starts += 1
        self.process = subprocess.Popen(
            [
                SENDGUARD,
                "worker",
                "--bootstrap",
                d.bootstrap,
                "--topic-prefix",
                d.names.prefix,
                "--app-id",
                d.names.app_id,
                "--policy",
                str(d.tmp / "policy.yaml"),
                "--store",
                self.store,
                "--data-dir",
                str(d.tmp / f"data-{self.name}"),
                "--web-host",
                self.host,
                "--web-port",
                str(self.port),
                "--partitions",
                "4",
                "--instance-id",
                self.name,
                *self.args,
            ],
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # Line by line: a SIGKILLed worker's last words are the ones that matter.
            env={**d.env, **self.env, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        return self

    @property
    def url(self) -> str:
        """Where this worker's web server answers."""
        return f"http://{self.host}:{self.port}"

    def wait_ready(self, timeout_s: float = 60) -> None:
        """Until the worker's web server answers /metrics (its app has started)."""
        import urllib.request

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/metrics", timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"worker not ready in {timeout_s}s: {self.log.read_text()[-3000:]}")

    def metrics(self) -> str:
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def kill(self) -> None:
        """SIGKILL, no goodbye (the edge process dies with it: PR_SET_PDEATHSIG)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def log_tail(self, lines: int = 40) -> str:
        """The end of the worker's log (both starts), without librdkafka's and aiokafka's
        reconnect chatter, which would bury everything else after a broker outage."""
        if not self.log.exists():
            return f"--- {self.name}: no log"
        kept = [
            line
            for line in self.log.read_text(errors="replace").splitlines()
            if not any(noise in line for noise in _RECONNECT_NOISE)
        ]
        return f"--- {self.name} (started {self.starts}x), last {lines} lines of {self.log}:\n" + (
            "\n".join(kept[-lines:])
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)


# -- cost of a process tree ----------------------------------------------------------


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and all its descendants, the
    ones that already exited included (/proc: a process's own time plus the time of
    its children it has waited for). The difference of two readings is what the tree
    used in between, even if a child died and was replaced meanwhile."""
    stats = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue  # exited while we looked
            # The command name (field 2) may hold spaces and parentheses: split after it.
            fields = text.rsplit(")", 1)[1].split()
            stats[int(entry.name)] = (int(fields[1]), sum(int(f) for f in fields[11:15]))
    tree, grew = {pid}, True
    while grew:
        children = {p for p, (ppid, _) in stats.items() if ppid in tree} - tree
        tree |= children
        grew = bool(children)
    return sum(stats[p][1] for p in tree if p in stats) / os.sysconf("SC_CLK_TCK")


# -- expectations --------------------------------------------------------------------


@dataclasses.dataclass
class Expected:
    decisions: list[Decision]
    refused_reports: list[Decision]
    engine: Engine


def expected(lines: Iterable[str], config: PolicyConfig = POLICY) -> Expected:
    """What `simulate` decides for these lines, plus refused releases' reports."""
    simulation = run(lines, config)
    assert all(reason.startswith("release refused") for _, reason in simulation.rejected)
    refused: list[Decision] = [r.report for r in simulation.refused]
    return Expected(simulation.decisions, refused, simulation.engine)


def wait_for(
    predicate: Any,
    timeout_s: float,
    what: str,
    every_s: float = 1.0,
    diagnose: Callable[[], str] | None = None,
) -> None:
    """Poll `predicate` until true; on timeout, fail with `diagnose()`'s account."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    detail = f"\n{diagnose()}" if diagnose is not None else ""
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}{detail}")


def verdict_line(
    tenant: str,
    mailbox: str,
    message_id: str,
    at_ms: int,
    verdict: str = "SPAM",
    direction: str = "OUTBOUND",
) -> str:
    return json.dumps(
        {
            "type": "verdict",
            "tenant_id": tenant,
            "mailbox": mailbox,
            "message_id": message_id,
            "direction": direction,
            "verdict": verdict,
            "scanned_at": format_timestamp(at_ms),
        }
    )


def burst(tenant: str, mailbox: str, start_ms: int, tag: str, n: int = 5) -> list[str]:
    """`n` qualifying verdicts 200 ms apart, with a clean one and an inbound one between."""
    lines = []
    for i in range(n):
        at = start_ms + 200 * i
        lines.append(verdict_line(tenant, mailbox, f"{tag}-{i}", at, "VIRUS" if i % 2 else "SPAM"))
        lines.append(verdict_line(tenant, mailbox, f"{tag}-c{i}", at + 50, "CLEAN"))
    lines.append(verdict_line(tenant, mailbox, f"{tag}-in", start_ms + 60, "SPAM", "INBOUND"))
    return sorted(lines, key=line_time)


def line_time(text: str) -> int:
    """The time of a scenario line, in epoch ms."""
    from processor.scenario import event_time

    return event_time(parse_line(text))


def control_summary(records: list[dict[str, Any]]) -> set[tuple[str, str, str, int, str]]:
    return {
        (r["tenant_id"], r["mailbox"], r["action"], r["offense"], r["command_id"]) for r in records
    }


def expected_control(decisions: list[Decision]) -> set[tuple[str, str, str, int, str]]:
    from processor.policy import Block, Unblock

    return {
        (
            d.key.tenant_id,
            d.key.mailbox,
            "BLOCK" if isinstance(d, Block) else "UNBLOCK",
            d.offense,
            d.command_id,
        )
        for d in decisions
        if isinstance(d, Block | Unblock)
    }
