"""Loading the Avro schemas of `schemas/*.avsc` and finding them by name or fingerprint.

One record type per file. Each schema is parsed once with fastavro; its Parsing
Canonical Form and CRC-64-AVRO fingerprint identify it in single-object encoding.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import SchemaParseException, fingerprint, to_parsing_canonical_form

SCHEMAS_DIR_ENV = "SENDGUARD_SCHEMAS_DIR"
NAMESPACE = "io.sendguard.v1"


class SchemaLoadError(Exception):
    """A schema file is missing, not JSON, not valid Avro, or clashes with another."""


@dataclass(frozen=True, slots=True)
class SchemaEntry:
    """One loaded record schema.

    `parsed` has its `logicalType`s removed: on this hot path timestamps stay plain
    `int` epoch milliseconds both ways, which is what the policy types use and
    avoids a datetime per field. The canonical form drops logical types anyway, so
    the fingerprint is the one of the schema as written.
    """

    name: str  # full name, e.g. io.sendguard.v1.Verdict
    short_name: str  # Verdict
    text: str  # the schema as written (with docs): what a schema registry stores
    canonical_form: str
    fingerprint: bytes  # 8 bytes, little-endian CRC-64-AVRO, as on the wire
    parsed: Any  # fastavro parsed schema, logical types stripped
    path: Path


def default_schemas_dir() -> Path:
    """`$SENDGUARD_SCHEMAS_DIR`, else the repository's `schemas/` directory."""
    override = os.environ.get(SCHEMAS_DIR_ENV)
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "schemas"


def _strip_logical_types(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_logical_types(v) for k, v in node.items() if k != "logicalType"}
    if isinstance(node, list):
        return [_strip_logical_types(v) for v in node]
    return node


def _full_name(schema: dict[str, Any]) -> str:
    name = str(schema["name"])
    namespace = schema.get("namespace")
    return name if "." in name or not namespace else f"{namespace}.{name}"


def load_schema_file(path: Path) -> SchemaEntry:
    """Parse one `.avsc` file; raises SchemaLoadError naming the file."""
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except (OSError, ValueError) as exc:
        raise SchemaLoadError(f"{path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise SchemaLoadError(f"{path}: top-level type must be a record")
    try:
        canonical = to_parsing_canonical_form(parse_schema(raw))
        parsed = parse_schema(_strip_logical_types(raw))
    except (SchemaParseException, ValueError, TypeError, KeyError) as exc:
        raise SchemaLoadError(f"{path}: {exc}") from exc
    name = _full_name(raw)
    return SchemaEntry(
        name=name,
        short_name=name.rpartition(".")[2],
        text=text,
        canonical_form=canonical,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
        parsed=parsed,
        path=path,
    )


class SchemaRegistry:
    """The loaded schemas, by full name, short name and fingerprint."""

    def __init__(self, entries: list[SchemaEntry]) -> None:
        self._by_name: dict[str, SchemaEntry] = {}
        self._by_fingerprint: dict[bytes, SchemaEntry] = {}
        for entry in entries:
            for name in (entry.name, entry.short_name):
                other = self._by_name.get(name)
                if other is not None:
                    raise SchemaLoadError(f"{entry.path}: name {name} already used by {other.path}")
                self._by_name[name] = entry
            if entry.fingerprint in self._by_fingerprint:
                other = self._by_fingerprint[entry.fingerprint]
                raise SchemaLoadError(f"{entry.path}: same canonical form as {other.path}")
            self._by_fingerprint[entry.fingerprint] = entry
        self._entries = tuple(sorted(entries, key=lambda e: e.name))

    @classmethod
    def load(cls, directory: Path | None = None) -> SchemaRegistry:
        """Every `*.avsc` in `directory` (default: `default_schemas_dir()`)."""
        directory = directory if directory is not None else default_schemas_dir()
        paths = sorted(directory.glob("*.avsc"))
        if not paths:
            raise SchemaLoadError(f"no *.avsc schema files in {directory}")
        return cls([load_schema_file(p) for p in paths])

    def get(self, name: str) -> SchemaEntry:
        """By full (`io.sendguard.v1.Verdict`) or short (`Verdict`) name; KeyError if unknown."""
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown record schema {name!r}") from None

    def by_fingerprint(self, fp: bytes) -> SchemaEntry | None:
        return self._by_fingerprint.get(fp)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[SchemaEntry]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
