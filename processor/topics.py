"""The topics of `topics.yaml`, as typed specs, and their names as constants.

`load_topics` validates the file strictly (unknown keys, bad values and duplicate
names are errors naming the topic and key), so a typo cannot silently create a
topic with broker defaults.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from processor.policy.config import DURATION_UNITS_MS, split_duration

TOPICS_FILE_ENV = "SENDGUARD_TOPICS_FILE"

# Topic names are a contract with scanners, gateways, endpoint agents and connectors.
MAIL_VERDICTS = "mail.verdicts"
MAILBOX_CONTROL = "mailbox.control"
SCAN_REQUESTS = "endpoint.scan-requests"
SECURITY_ALERTS = "security.alerts"
MAIL_REPORTS = "mail.reports"
DIRECTORY_MAILBOXES = "directory.mailboxes"
TENANT_SETTINGS = "tenant.settings"
SUPPORT_ACTIONS = "mailbox.support-actions"
DEAD_LETTER = "sendguard.dead-letter"

CLEANUP_POLICIES = ("delete", "compact", "compact,delete")


class TopicsFileError(ValueError):
    """topics.yaml is missing, not YAML, or has a bad entry (the message names it)."""


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """One topic as it must exist on the broker."""

    name: str
    partitions: int
    replication_factor: int
    cleanup_policy: str
    retention_ms: int | None  # None: broker default (compacted topics); -1: forever
    key_schema: str | None  # None: the key is not Avro or not sendguard's (see purpose)
    value_schema: str
    purpose: str
    configs: dict[str, str] = field(default_factory=dict)  # further topic configs

    def broker_configs(self) -> dict[str, str]:
        """The topic configs to create it with and to compare against the broker."""
        configs = {"cleanup.policy": self.cleanup_policy}
        if self.retention_ms is not None:
            configs["retention.ms"] = str(self.retention_ms)
        configs.update(self.configs)
        return configs


def default_topics_file() -> Path:
    """`$SENDGUARD_TOPICS_FILE`, else the repository's `topics.yaml`."""
    override = os.environ.get(TOPICS_FILE_ENV)
    return Path(override) if override else Path(__file__).resolve().parents[1] / "topics.yaml"


def parse_retention(value: object, where: str) -> int:
    """`7d`, `12h`, `30m`, ... in milliseconds; `forever` is -1 (Kafka's "keep").

    The policy's duration syntax, restricted to whole numbers of a unit.
    """
    if value == "forever":
        return -1
    parts = split_duration(value)
    if parts is None or not parts[0].isdigit():
        raise TopicsFileError(f"{where}: retention {value!r} is not like 7d, 12h, 30m or forever")
    number, unit = parts
    return int(number) * DURATION_UNITS_MS[unit]


_REQUIRED = {"name", "partitions", "cleanup_policy", "value_schema", "purpose"}
_OPTIONAL = {"replication_factor", "retention", "key_schema", "configs"}


def _spec(raw: object, index: int, default_rf: int) -> TopicSpec:
    if not isinstance(raw, dict):
        raise TopicsFileError(f"topics[{index}]: expected a mapping")
    where = f"topic {raw.get('name', f'#{index}')!s}"
    unknown = set(raw) - _REQUIRED - _OPTIONAL
    if unknown:
        raise TopicsFileError(f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    missing = _REQUIRED - set(raw)
    if missing:
        raise TopicsFileError(f"{where}: missing key(s) {', '.join(sorted(missing))}")

    def positive_int(key: str, value: Any) -> int:
        if type(value) is not int or value < 1:
            raise TopicsFileError(f"{where}: {key} must be a positive integer, not {value!r}")
        return value

    def text(key: str, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise TopicsFileError(f"{where}: {key} must be a non-empty string, not {value!r}")
        return value

    cleanup = raw["cleanup_policy"]
    if cleanup not in CLEANUP_POLICIES:
        raise TopicsFileError(
            f"{where}: cleanup_policy must be one of {', '.join(CLEANUP_POLICIES)}"
        )
    retention = raw.get("retention")
    configs = raw.get("configs") or {}
    if not isinstance(configs, dict):
        raise TopicsFileError(f"{where}: configs must be a mapping")
    key_schema = raw.get("key_schema")
    return TopicSpec(
        name=text("name", raw["name"]),
        partitions=positive_int("partitions", raw["partitions"]),
        replication_factor=positive_int(
            "replication_factor", raw.get("replication_factor", default_rf)
        ),
        cleanup_policy=cleanup,
        retention_ms=None if retention is None else parse_retention(retention, where),
        key_schema=None if key_schema is None else text("key_schema", key_schema),
        value_schema=text("value_schema", raw["value_schema"]),
        purpose=text("purpose", raw["purpose"]),
        # Broker configs are strings; YAML may give numbers or booleans.
        configs={
            str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in configs.items()
        },
    )


def load_topics(path: Path | None = None) -> list[TopicSpec]:
    """Every topic of the file (default: `default_topics_file()`), in file order."""
    path = path if path is not None else default_topics_file()
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise TopicsFileError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("topics"), list):
        raise TopicsFileError(f"{path}: expected a mapping with a 'topics' list")
    unknown = set(doc) - {"defaults", "topics"}
    if unknown:
        raise TopicsFileError(f"{path}: unknown key(s) {', '.join(sorted(map(str, unknown)))}")
    defaults = doc.get("defaults") or {}
    if not isinstance(defaults, dict) or set(defaults) - {"replication_factor"}:
        raise TopicsFileError(f"{path}: defaults may only set replication_factor")
    default_rf = defaults.get("replication_factor", 1)
    specs = [_spec(raw, i, default_rf) for i, raw in enumerate(doc["topics"])]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise TopicsFileError(f"{path}: topic {spec.name} is listed twice")
        seen.add(spec.name)
    return specs
