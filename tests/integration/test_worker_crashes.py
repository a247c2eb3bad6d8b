"""The worker survives SIGKILL, losing a group member, and a broker restart.

Each test streams bursts for many mailboxes (paced, in real time), disturbs the
worker mid-stream, and then checks against `simulate` for the same input:
  * every BLOCK and UNBLOCK the policy requires is on mailbox.control (same ids),
    and nothing else: no two command ids for one offense of a mailbox;
  * the final table state (from the changelog) equals the engine's, apart from
    wall-clock stamps (block start, end, counts_from), which differ by latency.

The bursts are spaced so that downtime of up to ~20 s cannot change an outcome
(see SECOND_BURST_MS).
"""

from __future__ import annotations

import json
import random
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from worker_support import (
    Deployment,
    WorkerProcess,
    burst,
    control_summary,
    expected,
    expected_control,
    free_port,
    line_time,
    wait_for,
)

from processor.local import BrokerConfig, LocalBroker
from processor.scenario import format_timestamp

#: A mailbox's second burst follows its first by this much: more than the first
#: block (3 s) plus the longest lag a restart causes, so downtime cannot change it.
SECOND_BURST_MS = 25_000
#: State fields that do not depend on when the worker processed an event.
STABLE_FIELDS = ("offenses", "sequence", "permanent", "high_water", "allowlist_hits")


def many_mailboxes(t0: int, seed: int, mailboxes: int = 16, span_s: int = 16) -> list[str]:
    rng = random.Random(seed)
    # `produce --pace realtime` sends the first line at once and the rest relative to
    # it; a line at t0 anchors the pacing, so no verdict is sent before its scanned_at.
    lines = [
        json.dumps(
            {
                "type": "settings",
                "tenant_id": "t1",
                "synchronized_security": True,
                "at": format_timestamp(t0),
            }
        )
    ]
    for n in range(mailboxes):
        start = t0 + 1000 + rng.randrange(span_s * 1000)
        lines += burst("t1", f"user{n}@x.com", start, f"u{n}-1")
        if n % 3 == 0:
            lines += burst("t1", f"user{n}@x.com", start + SECOND_BURST_MS, f"u{n}-2")
        # A retry of the scanner: a duplicate that must not count twice.
        lines.append(lines[-2])
    lines[1:] = sorted(lines[1:], key=line_time)
    last = line_time(lines[-1])
    # simulate needs time to move on for the last blocks to expire; the live clock moves anyway.
    lines.append(json.dumps({"type": "tick", "at": format_timestamp(last + 60_000)}))
    return lines


def check(deployment: Deployment, lines: list[str]) -> None:
    want = expected(lines)
    required = expected_control(want.decisions)
    control_topic = deployment.names.control
    wait_for(
        lambda: control_summary(deployment.read(control_topic, 1.0)) >= required,
        90,
        "every required BLOCK and UNBLOCK",
    )
    control = deployment.read(control_topic)
    got = control_summary(control)
    assert got == required, f"missing {required - got}, unexpected {got - required}"
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for record in control:
        if record["action"] == "BLOCK":
            ids[record["mailbox"], record["offense"]].add(record["command_id"])
    assert all(len(v) == 1 for v in ids.values()), ids

    expected_state = {
        (key.tenant_id, key.mailbox): state.to_record() for key, state in want.engine.states.items()
    }

    def stable(record: dict[str, Any]) -> dict[str, Any]:
        return {
            **{f: record[f] for f in STABLE_FIELDS},
            "blocked": record["until"] is not None or record["permanent"],
            "window": sorted(mid for _, mid in record["window"]),
        }

    def table_matches() -> bool:
        table = deployment.table_state()
        return {k: stable(v) for k, v in table.items()} == {
            k: stable(v) for k, v in expected_state.items()
        }

    # The last expiries' state writes may trail their UNBLOCKs by a moment.
    wait_for(table_matches, 20, "the table state to equal simulate's", every_s=2)


def test_sigkill_mid_stream_several_times(bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment.create(bootstrap, tmp_path)
    worker = deployment.worker().start()
    rng = random.Random()
    try:
        worker.wait_ready()
        lines = many_mailboxes(int(time.time() * 1000), seed=11)
        producer = deployment.produce(lines)
        for _ in range(3):
            time.sleep(rng.uniform(1, 6))
            worker.kill()
            worker.start()
            # Killing it again during its start-up would only stretch the outage
            # beyond what the scenario's spacing tolerates.
            worker.wait_ready()
        assert producer.wait(90) == 0
        check(deployment, lines)
    finally:
        worker.stop()


def test_one_of_two_workers_killed(bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment.create(bootstrap, tmp_path)
    first = deployment.worker("w1", store="memory").start()
    second = deployment.worker("w2", store="memory").start()
    try:
        first.wait_ready()
        second.wait_ready()
        lines = many_mailboxes(int(time.time() * 1000), seed=12)
        producer = deployment.produce(lines)
        time.sleep(8)
        second.kill()
        assert producer.wait(90) == 0
        check(deployment, lines)
        assert first.alive()
    finally:
        first.stop()
        second.stop()


def test_broker_restart_mid_stream(tmp_path: Path) -> None:
    # A broker of its own: stopping the shared one would disturb every other test.
    broker = LocalBroker(
        BrokerConfig(port=free_port(), controller_port=free_port(), data_dir=tmp_path / "kafka")
    )
    broker.up()
    try:
        deployment = Deployment.create(broker.config.bootstrap, tmp_path)
        worker = deployment.worker().start()
        try:
            worker.wait_ready()
            lines = many_mailboxes(int(time.time() * 1000), seed=13)
            producer = deployment.produce(lines)
            time.sleep(6)
            broker.down()
            time.sleep(4)
            broker.up()
            # The worker's own clients reconnect; if Faust gave up during the outage,
            # a process supervisor (systemd, Kubernetes) restarts it, as here.
            _restart_if_exited(worker, seconds=30)
            assert producer.wait(120) == 0
            check(deployment, lines)
        finally:
            worker.stop()
    finally:
        broker.down()


def _restart_if_exited(worker: WorkerProcess, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not worker.alive():
            worker.start()
        time.sleep(1)
