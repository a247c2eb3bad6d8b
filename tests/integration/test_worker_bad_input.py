"""Bad records on mail.verdicts are dead-lettered with their origin; the stream goes on."""

from __future__ import annotations

import io
import time
from pathlib import Path

from confluent_kafka import Producer
from fastavro import parse_schema, schemaless_writer
from worker_support import Deployment, burst, wait_for

from processor.codec.wire import SINGLE_OBJECT_MARKER, Codec


def _verdict(**changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "tenant_id": "t1",
        "message_id": "bad-1",
        "mailbox": "bad@x.com",
        "direction": "OUTBOUND",
        "verdict": "SPAM",
        "scanned_at": int(time.time() * 1000),
    }
    record.update(changes)
    return record


def _missing_fields(codec: Codec) -> bytes:
    """A Verdict header whose body was written without most of its fields."""
    partial = parse_schema(
        {"type": "record", "name": "Partial", "fields": [{"name": "tenant_id", "type": "string"}]}
    )
    body = io.BytesIO()
    schemaless_writer(body, partial, {"tenant_id": "t1"})
    return SINGLE_OBJECT_MARKER + codec.schemas.get("Verdict").fingerprint + body.getvalue()


def test_bad_verdicts_go_to_dead_letter(bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment.create(bootstrap, tmp_path)
    codec = Codec.from_config()
    bad = {
        b"\x00\x01garbage": "confluent_without_registry",  # magic byte 0, no registry
        b"definitely not avro": "not_avro",
        codec.encode(
            "TenantSettings", {"tenant_id": "t1", "synchronized_security": True, "at": 1}
        ): "wrong_schema",
        _missing_fields(codec): "bad_body",
        codec.encode("Verdict", _verdict(mailbox="  ")): "invalid_record",
        codec.encode("Verdict", _verdict(scanned_at=-5)): "invalid_record",
        codec.encode("Verdict", _verdict(scanned_at=10**17)): "invalid_record",
    }
    worker = deployment.worker().start()
    try:
        worker.wait_ready()
        producer = Producer({"bootstrap.servers": bootstrap})
        for value in bad:
            producer.produce(deployment.names.verdicts, value, b"scanner-key", partition=0)
        assert producer.flush(10) == 0
        # Then a good burst, which must still block.
        lines = burst("t1", "good@x.com", int(time.time() * 1000), "g")
        assert deployment.produce(lines, pace="none").wait(60) == 0

        wait_for(
            lambda: any(
                r["action"] == "BLOCK" and r["mailbox"] == "good@x.com"
                for r in deployment.read(deployment.names.control, 1.0)
            ),
            30,
            "the good burst's BLOCK",
        )
        dead = deployment.read(deployment.names.dead_letter)
        assert len(dead) == len(bad)
        by_value = {r["value"]: r for r in dead}
        for value, reason in bad.items():
            record = by_value[value]
            assert record["reason"] == reason, record
            assert record["detail"]
            assert record["source_topic"] == deployment.names.verdicts
            assert record["source_partition"] == 0
            assert record["key"] == b"scanner-key"
        assert sorted(r["source_offset"] for r in dead) == list(range(len(bad)))
        metrics = worker.metrics()
        assert 'sendguard_dead_letters_total{reason="invalid_record"} 3.0' in metrics
        assert "sendguard_blocks_total" in metrics
    finally:
        worker.stop()
