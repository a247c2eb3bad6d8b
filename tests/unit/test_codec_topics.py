"""topics.yaml against the contract and the schemas; the loader's errors; drift comparison."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from processor import topics
from processor.codec.schemas import SchemaRegistry
from processor.stream.topic_admin import compare
from processor.topics import TopicsFileError, load_topics

SPECS = {spec.name: spec for spec in load_topics()}


def test_every_contract_topic_is_declared_and_nothing_else() -> None:
    assert set(SPECS) == {
        topics.MAIL_VERDICTS,
        topics.MAILBOX_CONTROL,
        topics.SCAN_REQUESTS,
        topics.SECURITY_ALERTS,
        topics.MAIL_REPORTS,
        topics.DIRECTORY_MAILBOXES,
        topics.TENANT_SETTINGS,
        topics.SUPPORT_ACTIONS,
        topics.DEAD_LETTER,
    }


def test_state_topics_are_compacted_and_event_topics_expire() -> None:
    compacted = {n for n, s in SPECS.items() if s.cleanup_policy == "compact"}
    assert compacted == {"mailbox.control", "directory.mailboxes", "tenant.settings"}
    for name, spec in SPECS.items():
        if name not in compacted:
            assert spec.retention_ms is not None and spec.retention_ms > 0, name


def test_every_named_schema_exists() -> None:
    schemas = SchemaRegistry.load()
    for spec in SPECS.values():
        assert spec.value_schema in schemas, spec.name
        assert spec.key_schema is None or spec.key_schema in schemas, spec.name


def test_support_actions_are_partitioned_like_the_mailbox_topics() -> None:
    # Releases must reach the worker that owns the mailbox's state.
    assert SPECS["mailbox.support-actions"].partitions == SPECS["mail.verdicts"].partitions


def test_broker_configs_are_strings() -> None:
    assert SPECS["mail.verdicts"].broker_configs() == {
        "cleanup.policy": "delete",
        "retention.ms": str(3 * 86_400_000),
    }


GOOD_ENTRY = {
    "name": "a",
    "partitions": 1,
    "cleanup_policy": "delete",
    "value_schema": "V",
    "purpose": "p",
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "topic a: unknown key"),
        ({"partitions": 0}, "topic a: partitions must be a positive integer"),
        ({"cleanup_policy": "keep"}, "topic a: cleanup_policy"),
        ({"retention": "7 weeks"}, "topic a: retention '7 weeks'"),
        ({"purpose": None}, "topic a: missing key.*purpose"),
    ],
)
def test_a_bad_topic_entry_is_named(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    entry = {k: v for k, v in {**GOOD_ENTRY, **change}.items() if v is not None}
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump({"topics": [entry]}))
    with pytest.raises(TopicsFileError, match=message):
        load_topics(path)


def test_a_duplicate_topic_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(yaml.safe_dump({"topics": [GOOD_ENTRY, GOOD_ENTRY]}))
    with pytest.raises(TopicsFileError, match="listed twice"):
        load_topics(path)


def test_forever_is_minus_one_and_configs_become_strings(tmp_path: Path) -> None:
    path = tmp_path / "topics.yaml"
    path.write_text(
        "defaults: {replication_factor: 3}\n"
        "topics:\n"
        "  - {name: a, partitions: 2, cleanup_policy: delete, retention: forever,\n"
        "     value_schema: V, purpose: p, configs: {min.insync.replicas: 2, preallocate: true}}\n"
    )
    (spec,) = load_topics(path)
    assert spec.replication_factor == 3
    assert spec.broker_configs() == {
        "cleanup.policy": "delete",
        "retention.ms": "-1",
        "min.insync.replicas": "2",
        "preallocate": "true",
    }


def test_a_matching_topic_has_no_differences() -> None:
    spec = SPECS["mail.verdicts"]
    configs: dict[str, str | None] = {"cleanup.policy": "delete", "retention.ms": "259200000",
                                      "segment.bytes": "1073741824"}  # fmt: skip
    assert compare(spec, 6, 1, configs) == []


def test_every_difference_is_reported() -> None:
    spec = dataclasses.replace(SPECS["mailbox.control"], replication_factor=3)
    differences = compare(spec, 3, 1, {"cleanup.policy": "delete"})
    assert [(d.setting, d.expected, d.actual) for d in differences] == [
        ("partitions", "6", "3"),
        ("replication_factor", "3", "1"),
        ("cleanup.policy", "compact", "delete"),
    ]
    assert str(differences[0]) == "mailbox.control: partitions is 3, wanted 6"
