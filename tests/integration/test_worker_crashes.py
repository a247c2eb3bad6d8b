"""The worker survives SIGKILL (from outside, or from itself between sending a
batch's decisions and storing its states), losing a group member, and a broker
restart.

Each test streams bursts for many mailboxes (paced, in real time), disturbs the
worker mid-stream, and then checks against `simulate` for the same input:
  * every BLOCK and UNBLOCK the policy requires is on mailbox.control (same ids),
    and nothing else: no two command ids for one offense of a mailbox;
  * a record written again under an id already written (a replay) equals the
    first one in every field, times included, on every output topic;
  * the final table state (from the changelog) equals the engine's, apart from
    wall-clock stamps (block start, end, counts_from), which differ by latency.

The bursts are spaced so that downtime of up to ~20 s cannot change an outcome
(see SECOND_BURST_MS). Waits are derived from the scenario's own clock (when its
last record and its last decision are due), plus a fixed slack for a slow machine,
and a timeout says what was missing and shows the end of each worker's log.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import subprocess
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
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

from processor import topics as contract
from processor.local import BrokerConfig, LocalBroker
from processor.scenario import format_timestamp

#: A mailbox's second burst follows its first by this much: more than the first
#: block (3 s) plus the longest lag a restart causes, so downtime cannot change it.
SECOND_BURST_MS = 25_000
#: How long `produce` may run past the time its last record is due (its own start-up,
#: redelivery after a broker outage) before the test gives up on it.
PRODUCE_SLACK_S = 60
#: How long after the last decision is due the worker may take to have made them all
#: (recovery, a rebalance after a 10 s session timeout, restarts, a loaded machine).
SETTLE_S = 90
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


@dataclasses.dataclass
class Stream:
    """A scenario being produced in real time by `sendguard produce --pace realtime`."""

    deployment: Deployment
    #: The whole scenario, for simulate: closed by a tick past the last expiry.
    lines: list[str]
    producer: subprocess.Popen[bytes]
    #: Wall-clock time (epoch s) at which the last record is due to be sent.
    last_record_at: float


def start_stream(deployment: Deployment, seed: int) -> Stream:
    lines = many_mailboxes(int(time.time() * 1000), seed=seed)
    # The closing tick only moves simulate's clock; paced, it would keep `produce`
    # idle for a minute after the last record, for nothing.
    assert json.loads(lines[-1])["type"] == "tick"
    producer = deployment.produce(lines[:-1])
    return Stream(deployment, lines, producer, line_time(lines[-2]) / 1000)


def finish_stream(
    stream: Stream, workers: Sequence[WorkerProcess], supervise: Sequence[WorkerProcess] = ()
) -> None:
    """Wait until `produce` has sent (and had delivered) every record.

    Meanwhile every worker in `supervise` that exits is started again, as a process
    supervisor (systemd, Kubernetes) would.
    """
    deadline = stream.last_record_at + PRODUCE_SLACK_S
    while stream.producer.poll() is None:
        if time.time() > deadline:
            stream.producer.kill()
            stream.producer.wait(10)
            raise AssertionError(
                f"produce still running {PRODUCE_SLACK_S}s after its last record was due\n"
                + diagnostics(stream, workers)
            )
        _restart_exited(supervise)
        time.sleep(0.5)
    assert stream.producer.returncode == 0, "produce failed\n" + diagnostics(stream, workers)


def _restart_exited(workers: Sequence[WorkerProcess]) -> None:
    for worker in workers:
        if not worker.alive():
            worker.start()


def diagnostics(stream: Stream, workers: Sequence[WorkerProcess], missing: str = "") -> str:
    produce_log = stream.deployment.tmp / "produce.log"
    parts = [missing] if missing else []
    if produce_log.exists():
        parts.append("--- produce:\n" + "\n".join(produce_log.read_text().splitlines()[-10:]))
    parts += [worker.log_tail() for worker in workers]
    return "\n".join(parts)


def _describe(items: set[tuple[str, str, str, int, str]]) -> str:
    return ", ".join(
        f"{action} {mailbox} #{offense}" for _, mailbox, action, offense, _ in sorted(items)
    )


def check(
    stream: Stream, workers: Sequence[WorkerProcess], supervise: Sequence[WorkerProcess] = ()
) -> None:
    deployment, lines = stream.deployment, stream.lines
    want = expected(lines)
    required = expected_control(want.decisions)
    control_topic = deployment.names.control
    got: set[tuple[str, str, str, int, str]] = set()

    def complete() -> bool:
        nonlocal got
        _restart_exited(supervise)
        got = control_summary(deployment.read(control_topic, 1.0))
        return got >= required

    def missing() -> str:
        return diagnostics(
            stream,
            workers,
            f"missing ({len(required - got)} of {len(required)}): {_describe(required - got)}\n"
            f"unexpected: {_describe(got - required) or 'none'}",
        )

    last_due = max(d.at_ms for d in want.decisions) / 1000
    wait_for(
        complete,
        max(0.0, last_due - time.time()) + SETTLE_S,
        "every required BLOCK and UNBLOCK",
        diagnose=missing,
    )
    control = deployment.read(control_topic)
    got = control_summary(control)
    assert got == required, missing()
    ids: dict[tuple[str, int], set[str]] = defaultdict(set)
    for record in control:
        if record["action"] == "BLOCK":
            ids[record["mailbox"], record["offense"]].add(record["command_id"])
    assert all(len(v) == 1 for v in ids.values()), ids
    repeated_ids(deployment)  # asserts that every repeat is identical to its first copy

    expected_state = {
        (key.tenant_id, key.mailbox): stable(state.to_record())
        for key, state in want.engine.states.items()
    }
    table: dict[tuple[str, str], dict[str, Any]] = {}

    def table_matches() -> bool:
        nonlocal table
        table = {k: stable(v) for k, v in deployment.table_state().items()}
        return table == expected_state

    def differences() -> str:
        keys = sorted(set(table) | set(expected_state))
        lines = [
            f"{key}: table {table.get(key)} simulate {expected_state.get(key)}"
            for key in keys
            if table.get(key) != expected_state.get(key)
        ]
        return diagnostics(stream, workers, "\n".join(lines))

    # The last expiries' state writes may trail their UNBLOCKs by a moment.
    wait_for(
        table_matches, 20, "the table state to equal simulate's", every_s=2, diagnose=differences
    )


#: Each output topic and the field that identifies its records (POLICY.md rule 13).
ID_FIELDS = {
    contract.MAILBOX_CONTROL: "command_id",
    contract.SCAN_REQUESTS: "request_id",
    contract.SECURITY_ALERTS: "alert_id",
    contract.MAIL_REPORTS: "report_id",
}


def repeated_ids(deployment: Deployment) -> dict[str, int]:
    """Per output topic, how many ids were written more than once (replays), after
    asserting that every record written under one id is the same, field for field
    (times included): a gateway that drops repeated ids keeps the first copy."""
    repeated: dict[str, int] = {}
    for topic, id_field in ID_FIELDS.items():
        by_id: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for record in deployment.read(deployment.names.external(topic)):
            by_id[record[id_field]].append(record)
        for records in by_id.values():
            assert all(r == records[0] for r in records), (
                f"{topic}: one id, different records: {records}"
            )
        repeated[topic] = sum(1 for records in by_id.values() if len(records) > 1)
    return repeated


def stable(record: dict[str, Any]) -> dict[str, Any]:
    """The state fields that do not depend on when the worker processed an event."""
    return {
        **{f: record[f] for f in STABLE_FIELDS},
        "blocked": record["until"] is not None or record["permanent"],
        "window": sorted(mid for _, mid in record["window"]),
    }


def test_sigkill_mid_stream_several_times(
    bootstrap: str, tmp_path: Path, rng: random.Random
) -> None:
    deployment = Deployment.create(bootstrap, tmp_path)
    worker = deployment.worker().start()
    try:
        worker.wait_ready()
        stream = start_stream(deployment, seed=rng.randrange(2**32))
        for _ in range(3):
            time.sleep(rng.uniform(1, 6))
            worker.kill()
            worker.start()
            # Killing it again during its start-up would only stretch the outage
            # beyond what the scenario's spacing tolerates.
            worker.wait_ready()
        finish_stream(stream, [worker])
        check(stream, [worker])
    finally:
        worker.stop()


@pytest.mark.parametrize("point", ["after_send", "mid_store"])
def test_killed_between_sending_a_batch_and_storing_its_states(
    bootstrap: str, tmp_path: Path, rng: random.Random, point: str
) -> None:
    # The worker kills itself (SIGKILL, processor.stream.faults) when a batch's
    # decisions were delivered and none (after_send) or half (mid_store) of its
    # states were stored; its supervisor starts it again. The batch is read again:
    # the mailboxes stored are skipped, the others send the same decisions again,
    # identical to the first copies in every field (the pack's time, not the
    # restarted worker's clock, stamps them), and nothing is lost.
    deployment = Deployment.create(bootstrap, tmp_path)
    worker = deployment.worker()
    nth = rng.randrange(1, 4)
    worker.start(env={"SENDGUARD_FAULT": f"{point}@{nth}"})
    try:
        worker.wait_ready()
        stream = start_stream(deployment, seed=rng.randrange(2**32))
        finish_stream(stream, [worker], supervise=[worker])
        check(stream, [worker], supervise=[worker])
        assert worker.starts == 2, f"the fault {point}@{nth} never fired\n" + worker.log_tail()
        repeated = repeated_ids(deployment)
        if point == "after_send":
            # The whole batch was sent again: its commands are on the topic twice.
            assert repeated[contract.MAILBOX_CONTROL] >= 1, repeated
        else:
            replayed = re.search(r"^sendguard_events_replayed_total (\S+)$", worker.metrics(), re.M)
            assert replayed is not None and float(replayed.group(1)) >= 1, worker.log_tail()
    finally:
        worker.stop()


def _kill_one_of_two_workers(
    bootstrap: str, tmp_path: Path, rng: random.Random, store: str, restart: bool
) -> None:
    """Two workers share the group; the second is SIGKILLed mid-stream and, when
    `restart`, started again by its supervisor after 2 s."""
    deployment = Deployment.create(bootstrap, tmp_path)
    first = deployment.worker("w1", store=store).start()
    second = deployment.worker("w2", store=store).start()
    try:
        first.wait_ready()
        second.wait_ready()
        stream = start_stream(deployment, seed=rng.randrange(2**32))
        time.sleep(8)
        second.kill()
        if restart:
            time.sleep(2)
            second.start()
            second.wait_ready()
        finish_stream(stream, [first, second])
        check(stream, [first, second])
        assert first.alive(), first.log_tail()
    finally:
        first.stop()
        second.stop()


def test_one_of_two_workers_killed_and_restarted(
    bootstrap: str, tmp_path: Path, rng: random.Random
) -> None:
    # The supervisor (systemd, Kubernetes) starts the dead worker again; static
    # membership gives it its partitions back without a rebalance, and the other
    # worker goes on undisturbed. RocksDB, the default store: with the memory store
    # this lost a block in some runs (README, known limitations).
    _kill_one_of_two_workers(bootstrap, tmp_path, rng, "rocksdb", restart=True)


@pytest.mark.parametrize("store", ["rocksdb", "memory"])
def test_one_of_two_workers_killed_survivor_takes_over(
    bootstrap: str, tmp_path: Path, rng: random.Random, store: str
) -> None:
    # The dead worker stays dead: after the session timeout the survivor takes its
    # partitions over, recovers their state from the changelog and goes on from the
    # committed offsets. Often the dead worker had not committed yet (it was killed
    # in its first seconds); that case lost events until faust_fixes rewound such
    # partitions to their beginning.
    _kill_one_of_two_workers(bootstrap, tmp_path, rng, store, restart=False)


def test_broker_restart_mid_stream(tmp_path: Path, rng: random.Random) -> None:
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
            stream = start_stream(deployment, seed=rng.randrange(2**32))
            time.sleep(6)
            broker.down()
            time.sleep(4)
            broker.up()
            # The worker's own clients reconnect; if Faust gives up during the outage,
            # a process supervisor (systemd, Kubernetes) restarts it, as here.
            finish_stream(stream, [worker], supervise=[worker])
            check(stream, [worker], supervise=[worker])
        finally:
            worker.stop()
    finally:
        broker.down()
