"""`sendguard ingest` on the real broker: rspamd bodies in, verdicts and dead letters out,
and what it answers when it cannot deliver."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ingest_support import IngestProcess
from worker_support import Deployment, free_port, wait_for

from processor.codec.wire import Codec

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rspamd"


@pytest.fixture
def deployment(bootstrap: str, tmp_path: Path) -> Deployment:
    return Deployment.create(bootstrap, tmp_path)


@pytest.fixture
def ingest(deployment: Deployment, tmp_path: Path) -> Iterator[IngestProcess]:
    process = IngestProcess(
        deployment.bootstrap,
        deployment.names.prefix,
        tmp_path,
        "--max-body",
        "65536",
        "--read-timeout",
        "4",
    ).start()
    try:
        process.wait_ready()
        yield process
    finally:
        process.stop()


def test_rspamd_results_become_verdicts_and_the_unusable_ones_dead_letters(
    deployment: Deployment, ingest: IngestProcess
) -> None:
    bodies = {p.stem: p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))}
    answers = {name: ingest.post(body) for name, body in bodies.items()}
    # A retry of one message (rspamd scans it again after a deferral).
    again = json.loads(bodies["outbound-spam-reject"]) | {"qid": "RETRY1", "scan_time": 3}
    retried = ingest.post(json.dumps(again).encode())
    unknown = json.loads(bodies["outbound-clean"]) | {"user": "x@unknown.example"}
    dead = [
        ingest.post(b"this is not json"),
        ingest.post(json.dumps(unknown).encode()),
        ingest.post(b"[" + b" " * 70_000 + b"]"),
    ]

    assert all(status == 200 for status, _ in answers.values()), answers
    assert answers["outbound-virus-clamav"][1] == {"result": "verdict", "verdict": "VIRUS"}
    assert retried == (200, {"result": "verdict", "verdict": "SPAM"})
    assert [status for status, _ in dead] == [200, 200, 413]
    assert [answer["reason"] for _, answer in dead] == [
        "not_json",
        "unknown_tenant",
        "body_too_large",
    ]

    verdicts = deployment.read(deployment.names.verdicts)
    assert len(verdicts) == len(bodies) + 1
    summary = {(v["mailbox"], v["direction"], v["verdict"]) for v in verdicts}
    assert ("j.doe@acme.example", "OUTBOUND", "VIRUS") in summary
    assert ("j.doe@acme.example", "OUTBOUND", "SPAM") in summary
    assert ("spammer@evil.example", "INBOUND", "SPAM") in summary
    spam_ids = [
        v["message_id"] for v in verdicts if v["verdict"] == "SPAM" and v["direction"] == "OUTBOUND"
    ]
    assert len(spam_ids) == 2 and spam_ids[0] == spam_ids[1]  # the retry: same id
    now_ms = time.time() * 1000
    assert all(now_ms - 60_000 < v["scanned_at"] <= now_ms for v in verdicts)

    letters = {d["reason"]: d for d in deployment.read(deployment.names.dead_letter)}
    assert sorted(letters) == ["body_too_large", "not_json", "unknown_tenant"]
    assert letters["not_json"]["value"] == b"this is not json"
    assert letters["not_json"]["source_topic"] == "rspamd"
    assert letters["not_json"]["source_offset"] == -1
    assert "x@unknown.example" in letters["unknown_tenant"]["detail"]
    assert len(letters["body_too_large"]["value"]) == 65536  # the kept prefix

    assert ingest.metric('sendguard_ingest_requests_total{outcome="verdict"}') == 8
    assert ingest.metric('sendguard_ingest_requests_total{outcome="dead_letter"}') == 3
    assert (
        ingest.metric('sendguard_ingest_verdicts_total{direction="OUTBOUND",verdict="SPAM"}') == 2
    )
    assert ingest.metric('sendguard_ingest_dead_letters_total{reason="unknown_tenant"}') == 1
    assert ingest.metric("sendguard_ingest_delivery_seconds_count") == 11


def test_a_slow_client_stalls_nobody_and_gets_408(
    deployment: Deployment, ingest: IngestProcess
) -> None:
    body = (FIXTURES / "outbound-clean.json").read_bytes()
    with socket.create_connection(("127.0.0.1", ingest.port), timeout=10) as slow:
        slow.sendall(
            b"POST /rspamd HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n" + body[:100]
        )

        status, _ = ingest.post(body)

        # Answered while the slow one still waits for the rest of its body.
        assert status == 200
        slow.setblocking(False)
        with pytest.raises(BlockingIOError):
            slow.recv(1)
        slow.settimeout(10)
        answer = slow.recv(4096)
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert ingest.metric('sendguard_ingest_requests_total{outcome="bad_request"}') == 1
    status, _ = ingest.post(b"{}", timeout_s=5)
    assert status == 200  # still serving: an empty result is a dead letter


def test_without_a_broker_it_is_not_ready_and_answers_503_in_time(tmp_path: Path) -> None:
    # No broker, and room for one record: the first POST waits out --ack-timeout (its
    # record stays queued), the second finds the queue full and is refused at once.
    ingest = IngestProcess(
        f"127.0.0.1:{free_port()}",
        "nobroker.",
        tmp_path,
        "--ack-timeout",
        "1",
        "--max-pending",
        "1",
    ).start()
    try:
        ingest.wait_ready(want=503)
        wait_for(
            lambda: "broker not reachable" in ingest.ops("/ready")[1],
            15,
            "/ready to name the unreachable broker",
            every_s=0.5,
            diagnose=ingest.log_tail,
        )
        body = (FIXTURES / "outbound-spam-reject.json").read_bytes()
        started = time.monotonic()

        first = ingest.post(body)
        waited = time.monotonic() - started
        second = ingest.post(body)

        assert first == (503, {"result": "not_delivered", "reason": "no acknowledgement in time"})
        assert 0.9 < waited < 3
        assert second == (503, {"result": "busy", "reason": "the producer queue is full"})
        assert ingest.metric("sendguard_ingest_broker_up") == 0
        assert ingest.metric('sendguard_ingest_requests_total{outcome="busy"}') == 1
        assert ingest.metric('sendguard_ingest_requests_total{outcome="not_delivered"}') == 1
    finally:
        ingest.stop()


def test_the_codec_reads_what_ingest_wrote(deployment: Deployment, ingest: IngestProcess) -> None:
    """The records are the schema's Verdicts (the worker's codec decodes them)."""
    ingest.post((FIXTURES / "outbound-clean.json").read_bytes())
    from processor.tools.tail import read_topic

    raw = list(
        read_topic(
            deployment.client,
            deployment.names.verdicts,
            Codec.from_config(),
            from_beginning=True,
            idle_timeout_s=2.0,
        )
    )
    assert raw[0]["value"]["schema"] == "io.sendguard.v1.Verdict"
    assert raw[0]["key"]["schema"] == "io.sendguard.v1.MailboxKey"
