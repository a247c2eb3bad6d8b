"""`sendguard topics` and the Avro codec against a real broker.

Topic names carry a per-run prefix so reruns and concurrent sessions on the same
broker never see each other's topics; the topics are deleted afterwards.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from processor.cli import cli
from processor.codec.schemas import SchemaRegistry
from processor.codec.wire import Codec, CodecConfig
from processor.stream.connection import KafkaConnection
from processor.stream.topic_admin import (
    TopicAdminError,
    apply_topics,
    delete_topics,
    existing_topics,
)
from processor.topics import TopicSpec, load_topics

T0 = 1_767_607_200_000


@pytest.fixture
def prefix(bootstrap: str) -> Iterator[str]:
    """A fresh topic-name prefix; every topic under it is deleted at the end."""
    run = f"it-{uuid.uuid4().hex[:10]}."
    yield run
    leftovers = [
        name for name in existing_topics(KafkaConnection(bootstrap)) if name.startswith(run)
    ]
    if leftovers:
        delete_topics(KafkaConnection(bootstrap), leftovers)


def _prefixed(prefix: str) -> list[TopicSpec]:
    return [dataclasses.replace(s, name=prefix + s.name) for s in load_topics()]


def test_apply_creates_every_topic_then_changes_nothing(bootstrap: str, prefix: str) -> None:
    specs = _prefixed(prefix)
    first = apply_topics(KafkaConnection(bootstrap), specs)
    assert first.created == [s.name for s in specs]
    assert first.differences == []

    on_broker = existing_topics(KafkaConnection(bootstrap))
    for spec in specs:
        assert on_broker[spec.name] == (spec.partitions, spec.replication_factor)

    second = apply_topics(KafkaConnection(bootstrap), specs)
    assert (second.created, second.differences) == ([], [])
    assert second.unchanged == [s.name for s in specs]


def test_apply_reports_a_differing_topic_and_leaves_it_alone(bootstrap: str, prefix: str) -> None:
    (spec,) = [s for s in _prefixed(prefix) if s.name.endswith("mail.reports")]
    apply_topics(KafkaConnection(bootstrap), [spec])
    wanted = dataclasses.replace(spec, partitions=spec.partitions + 1, cleanup_policy="compact")

    result = apply_topics(KafkaConnection(bootstrap), [wanted])

    assert result.created == [] and result.unchanged == []
    assert {(d.setting, d.expected, d.actual) for d in result.differences} == {
        ("partitions", str(spec.partitions + 1), str(spec.partitions)),
        ("cleanup.policy", "compact", "delete"),
    }
    assert (
        existing_topics(KafkaConnection(bootstrap))[spec.name][0] == spec.partitions
    )  # not changed


def test_the_command_creates_lists_and_exits_2_on_drift(
    bootstrap: str, prefix: str, tmp_path: Path
) -> None:
    doc = yaml.safe_load(Path("topics.yaml").read_text())
    for topic in doc["topics"]:
        topic["name"] = prefix + topic["name"]
    topics_file = tmp_path / "topics.yaml"
    topics_file.write_text(yaml.safe_dump(doc))
    runner = CliRunner()
    args = ["topics", "apply", "--bootstrap", bootstrap, "--file", str(topics_file)]

    created = runner.invoke(cli, args)
    assert created.exit_code == 0, created.output
    assert created.output.count("created") == len(doc["topics"])

    again = runner.invoke(cli, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("unchanged") == len(doc["topics"])

    listed = runner.invoke(
        cli, ["topics", "list", "--bootstrap", bootstrap, "--file", str(topics_file)]
    )
    assert listed.exit_code == 0, listed.output
    assert listed.output.count("[exists p=") == len(doc["topics"])

    drift = runner.invoke(cli, [*args, "--replication-factor", "2"])
    assert drift.exit_code == 2
    assert "replication_factor is 1, wanted 2" in drift.output


def test_an_unreachable_broker_is_a_quick_clear_error() -> None:
    started = time.monotonic()
    with pytest.raises(TopicAdminError, match=r"cannot reach Kafka at 127\.0\.0\.1:1 "):
        apply_topics(KafkaConnection("127.0.0.1:1"), load_topics())
    assert time.monotonic() - started < 10


def test_the_command_exits_1_when_the_broker_is_unreachable() -> None:
    result = CliRunner().invoke(cli, ["topics", "apply", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 1
    assert "cannot reach Kafka" in result.output


# -- every schema through the broker --------------------------------------------


def example_record(schema: Any, label: str) -> Any:
    """A deterministic, fully populated record of an Avro schema (as written)."""
    if isinstance(schema, list):  # nullable: take the value branch, to carry data
        return example_record(next(b for b in schema if b != "null"), label)
    if isinstance(schema, str):
        return {"string": f"{label}-é✓", "int": 7, "long": 2**40, "boolean": True,
                "bytes": b"\x00\xc3\x01\xff"}[schema]  # fmt: skip
    if schema.get("logicalType") == "timestamp-millis":
        return T0
    if schema["type"] == "enum":
        return schema["symbols"][-1]
    if schema["type"] == "array":
        return [
            example_record(schema["items"], f"{label}0"),
            example_record(schema["items"], f"{label}1"),
        ]
    if schema["type"] == "record":
        return {f["name"]: example_record(f["type"], f["name"]) for f in schema["fields"]}
    return example_record(schema["type"], label)


SCHEMAS = SchemaRegistry.load()
EXAMPLES = {e.name: example_record(json.loads(e.text), e.short_name) for e in SCHEMAS}


@pytest.mark.parametrize(
    "registry_url", [None, "mock://integration"], ids=["single-object", "confluent"]
)
def test_every_schema_survives_the_broker(
    bootstrap: str, prefix: str, registry_url: str | None
) -> None:
    from confluent_kafka import Consumer, Producer

    codec = Codec.from_config(CodecConfig(schema_registry_url=registry_url))
    topic = f"{prefix}schemas"
    apply_topics(
        KafkaConnection(bootstrap),
        [TopicSpec(topic, 1, 1, "delete", None, "MailboxKey", "Verdict", "test")],
    )

    producer = Producer({"bootstrap.servers": bootstrap})
    key = codec.encode("MailboxKey", {"tenant_id": "t1", "mailbox": "alice@example.com"})
    for name, record in EXAMPLES.items():
        producer.produce(topic, key=key, value=codec.encode(name, record))
    assert producer.flush(15) == 0

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"{prefix}group",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    received: dict[str, Any] = {}
    try:
        consumer.subscribe([topic])
        deadline = time.monotonic() + 30
        while len(received) < len(EXAMPLES) and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None or message.error() is not None:
                continue
            key_bytes, value_bytes = message.key(), message.value()
            assert key_bytes is not None and value_bytes is not None
            assert codec.decode(key_bytes) == (
                "io.sendguard.v1.MailboxKey",
                {"tenant_id": "t1", "mailbox": "alice@example.com"},
            )
            name, record = codec.decode(value_bytes)
            received[name] = record
    finally:
        consumer.close()
    assert received == EXAMPLES
