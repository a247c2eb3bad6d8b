"""Health tells the truth about the edge stage, on the real broker: an edge that is
frozen or killed makes /ready fail and shows in the metrics (edge down, restarts, and
the input lag the worker measures from the broker growing), and a restarted edge
catches up and blocks again."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

from confluent_kafka import Producer
from worker_support import Deployment, WorkerProcess, burst, wait_for

from processor.codec.wire import Codec

CODEC = Codec.from_config()


def ready(worker: WorkerProcess) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/ready", timeout=5) as r:
            return int(r.status), ""
    except urllib.error.HTTPError as error:
        return int(error.code), str(json.loads(error.read()).get("reason", ""))
    except OSError:
        return 0, "not listening"


def not_ready(worker: WorkerProcess, reasons: list[str]) -> bool:
    """Whether /ready answers 503; its reason is kept (the next answer may differ)."""
    status, reason = ready(worker)
    reasons.append(reason)
    return status == 503


def metric(worker: WorkerProcess, name: str, topic: str | None = None) -> float:
    total = 0.0
    for line in worker.metrics().splitlines():
        if (line.startswith(name + " ") or line.startswith(name + "{")) and (
            topic is None or f'topic="{topic}"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def edge_pid(worker: WorkerProcess) -> int:
    assert worker.process is not None
    pid = worker.process.pid
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in map(int, (task / "children").read_text().split()):
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
            if b"resource_tracker" not in cmdline:
                return child
    raise AssertionError("no edge process under the worker")


def verdicts(n: int, tag: str) -> list[bytes]:
    now = int(time.time() * 1000)
    return [
        CODEC.encode(
            "Verdict",
            {
                "tenant_id": "t1",
                "message_id": f"{tag}-{i}",
                "mailbox": f"u{i}@x.com",
                "direction": "OUTBOUND",
                "verdict": "CLEAN",
                "scanned_at": now,
            },
        )
        for i in range(n)
    ]


def test_a_frozen_or_dead_edge_makes_the_worker_not_ready(bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment.create(bootstrap, tmp_path)
    worker = deployment.worker().start()
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    try:
        wait_for(lambda: ready(worker)[0] == 200, 90, "/ready", every_s=0.5)
        assert metric(worker, "sendguard_edge_up") == 1

        # Frozen: alive, but it neither reports nor commits, while verdicts arrive.
        pid = edge_pid(worker)
        os.kill(pid, signal.SIGSTOP)
        try:
            for value in verdicts(500, "frozen"):
                producer.produce(deployment.names.verdicts, value)
            assert producer.flush(30) == 0
            reasons: list[str] = []
            wait_for(lambda: not_ready(worker, reasons), 30, "not ready while frozen", every_s=0.5)
            assert "edge stage silent" in reasons[-1], reasons[-1]
            assert metric(worker, "sendguard_edge_up") == 0
            # Measured by the worker from the broker, not reported by the frozen edge.
            wait_for(
                lambda: metric(worker, "sendguard_input_lag", deployment.names.verdicts) == 500,
                20,
                "the input lag of the frozen edge",
                every_s=0.5,
            )
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_for(lambda: ready(worker)[0] == 200, 30, "ready once it runs again", every_s=0.5)
        wait_for(
            lambda: metric(worker, "sendguard_input_lag", deployment.names.verdicts) == 0,
            20,
            "the lag consumed",
            every_s=0.5,
        )

        # Killed: not ready, counted as a restart, and restarted after its backoff. (The
        # thawed edge may itself have restarted: frozen past the session timeout, its
        # static group membership can be fenced, a fatal consumer error.)
        restarts = metric(worker, "sendguard_edge_restarts_total")
        pid = edge_pid(worker)
        os.kill(pid, signal.SIGKILL)
        reasons = []
        wait_for(lambda: not_ready(worker, reasons), 10, "not ready once killed", every_s=0.2)
        # Exited (waiting out its backoff), or already restarted and not reporting yet.
        assert "edge stage exited" in reasons[-1] or "starting" in reasons[-1], reasons[-1]
        wait_for(
            lambda: metric(worker, "sendguard_edge_restarts_total") == restarts + 1,
            10,
            "the restart",
        )
        wait_for(lambda: ready(worker)[0] == 200, 60, "ready after the restart", every_s=0.5)
        assert edge_pid(worker) != pid

        # And the restarted edge still protects: a burst is blocked.
        lines = burst("t1", "after@x.com", int(time.time() * 1000), "after")
        assert deployment.produce(lines, pace="none").wait(60) == 0
        wait_for(
            lambda: any(
                r["action"] == "BLOCK" and r["mailbox"] == "after@x.com"
                for r in deployment.read(deployment.names.control, 1.0)
            ),
            30,
            "the BLOCK after the restart",
            diagnose=worker.log_tail,
        )
        assert metric(worker, "sendguard_verdicts_total") >= 500
    finally:
        worker.stop()
