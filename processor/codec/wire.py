"""Avro on the wire: single-object encoding by default, Confluent framing with a registry.

Single-object encoding (Avro specification, "Single-object encoding"):

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing
          | Canonical Form | Avro binary body

Confluent framing (when a schema registry URL is configured):

    00 | 4-byte big-endian schema id | Avro binary body

`Codec.decode` accepts both, whichever format the codec writes, so producers can
migrate one at a time. Records are plain dicts; timestamps are `int` epoch
milliseconds both ways, as in the policy types.

confluent-kafka is imported only when a registry is configured, so commands that
never talk to Kafka do not pay for it.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from fastavro import schemaless_reader, schemaless_writer

from processor.codec.errors import DecodeError, EncodeError
from processor.codec.schemas import SchemaEntry, SchemaRegistry

SCHEMA_REGISTRY_URL_ENV = "SENDGUARD_SCHEMA_REGISTRY_URL"

SINGLE_OBJECT_MARKER = b"\xc3\x01"
_SOE_HEADER_LEN = 10  # marker + fingerprint
_CONFLUENT_MAGIC = 0
_CONFLUENT_HEADER_LEN = 5  # magic + schema id

WireFormat = Literal["single-object", "confluent"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MILLISECOND = timedelta(milliseconds=1)


@dataclass(frozen=True, slots=True)
class CodecConfig:
    """What a Codec is built from. No registry URL means single-object encoding."""

    schemas_dir: Path | None = None
    schema_registry_url: str | None = None
    # Extra schema registry client settings, e.g. {"basic.auth.user.info": "..."}.
    schema_registry_conf: Mapping[str, Any] = field(default_factory=dict)
    # Off in production if schemas are registered by a deploy step, not by the worker.
    auto_register_schemas: bool = True

    @classmethod
    def from_env(cls) -> CodecConfig:
        """From SENDGUARD_SCHEMAS_DIR and SENDGUARD_SCHEMA_REGISTRY_URL (both optional)."""
        schemas_dir = os.environ.get("SENDGUARD_SCHEMAS_DIR")
        return cls(
            schemas_dir=Path(schemas_dir) if schemas_dir else None,
            schema_registry_url=os.environ.get(SCHEMA_REGISTRY_URL_ENV) or None,
        )


def _to_millis(node: Any) -> Any:
    """Datetimes back to epoch ms (the Confluent deserializer applies logical types)."""
    if isinstance(node, datetime):
        return (node - _EPOCH) // _MILLISECOND
    if isinstance(node, dict):
        return {k: _to_millis(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_to_millis(v) for v in node]
    return node


class Codec:
    """Encodes and decodes the records of `schemas/` by record name.

    Names may be full (`io.sendguard.v1.Verdict`) or short (`Verdict`); `decode`
    returns the full name.
    """

    def __init__(
        self,
        schemas: SchemaRegistry,
        registry_client: Any | None = None,
        *,
        auto_register_schemas: bool = True,
    ) -> None:
        """`registry_client` is a confluent_kafka SchemaRegistryClient or None."""
        self.schemas = schemas
        self._registry = registry_client
        self._auto_register = auto_register_schemas
        self.wire_format: WireFormat = (
            "confluent" if registry_client is not None else "single-object"
        )
        self._serializers: dict[str, Any] = {}
        self._deserializers: dict[str, Any] = {}
        # Schema ids never change meaning in a registry, so their names are cached forever.
        self._name_of_id: dict[int, str | None] = {}

    @classmethod
    def from_config(cls, config: CodecConfig | None = None) -> Codec:
        """Load the schemas and, if a registry URL is set, connect a client (`mock://` works)."""
        config = config if config is not None else CodecConfig.from_env()
        schemas = SchemaRegistry.load(config.schemas_dir)
        client = None
        if config.schema_registry_url:
            from confluent_kafka.schema_registry import SchemaRegistryClient

            conf = {**config.schema_registry_conf, "url": config.schema_registry_url}
            # new_client returns the in-memory mock for mock:// URLs.
            client = SchemaRegistryClient.new_client(conf)
        return cls(schemas, client, auto_register_schemas=config.auto_register_schemas)

    # -- encoding -------------------------------------------------------------

    def encode(self, record_name: str, record: Mapping[str, Any]) -> bytes:
        """The record in this codec's wire format; EncodeError if it does not fit its schema."""
        entry = self._entry(record_name)
        if self._registry is not None:
            return self._encode_confluent(entry, record)
        return self.encode_single_object(entry.name, record)

    def encode_single_object(self, record_name: str, record: Mapping[str, Any]) -> bytes:
        """The record in single-object encoding, whatever this codec's default format."""
        entry = self._entry(record_name)
        out = io.BytesIO()
        out.write(SINGLE_OBJECT_MARKER)
        out.write(entry.fingerprint)
        try:
            # strict: a misspelt or missing field is an error, not a silent default.
            schemaless_writer(out, entry.parsed, record, strict=True)
        except Exception as exc:  # fastavro raises ValueError, TypeError, AttributeError...
            raise EncodeError(f"{entry.name}: {exc}") from exc
        return out.getvalue()

    def _encode_confluent(self, entry: SchemaEntry, record: Mapping[str, Any]) -> bytes:
        serializer = self._serializers.get(entry.name)
        if serializer is None:
            from confluent_kafka.schema_registry import record_subject_name_strategy
            from confluent_kafka.schema_registry.avro import AvroSerializer

            # One subject per record type (RecordNameStrategy): encode() is called
            # by record name, and MailboxKey is the key of several topics.
            serializer = AvroSerializer(
                self._registry,
                entry.text,
                conf={
                    "auto.register.schemas": self._auto_register,
                    "subject.name.strategy": record_subject_name_strategy,
                    "validate.strict": True,
                },
            )
            self._serializers[entry.name] = serializer
        try:
            data = serializer(dict(record), None)
        except Exception as exc:
            raise EncodeError(f"{entry.name}: {exc}") from exc
        assert isinstance(data, bytes)
        return data

    # -- decoding -------------------------------------------------------------

    def decode(self, data: bytes) -> tuple[str, dict[str, Any]]:
        """(full record name, record) of either wire format; raises only DecodeError."""
        if data[:2] == SINGLE_OBJECT_MARKER:
            return self._decode_single_object(data)
        if data[:1] == b"\x00" and len(data) >= _CONFLUENT_HEADER_LEN:
            return self._decode_confluent(data)
        raise DecodeError(
            "not_avro",
            f"{len(data)} bytes starting {data[:4].hex() or '(empty)'}: neither Avro "
            "single-object encoding (c3 01) nor Confluent framing (00 + schema id)",
        )

    def decode_as(self, record_name: str, data: bytes) -> dict[str, Any]:
        """The record, which must be of `record_name`; DecodeError `wrong_schema` otherwise."""
        expected = self.schemas.get(record_name).name  # KeyError: a bug in the caller
        name, record = self.decode(data)
        if name != expected:
            raise DecodeError("wrong_schema", f"expected {expected}, got {name}")
        return record

    def _decode_single_object(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if len(data) < _SOE_HEADER_LEN:
            raise DecodeError("not_avro", f"single-object header truncated ({len(data)} bytes)")
        entry = self.schemas.by_fingerprint(data[2:_SOE_HEADER_LEN])
        if entry is None:
            raise DecodeError(
                "unknown_schema", f"no schema with fingerprint {data[2:_SOE_HEADER_LEN].hex()}"
            )
        body = io.BytesIO(data)
        body.seek(_SOE_HEADER_LEN)
        try:
            record = schemaless_reader(body, entry.parsed, None)
        except Exception as exc:  # EOFError, UnicodeDecodeError, IndexError, ValueError...
            raise DecodeError("bad_body", f"{entry.name}: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data):
            raise DecodeError(
                "bad_body", f"{entry.name}: {len(data) - body.tell()} bytes after the record"
            )
        assert isinstance(record, dict)
        return entry.name, record

    def _decode_confluent(self, data: bytes) -> tuple[str, dict[str, Any]]:
        if self._registry is None:
            raise DecodeError(
                "confluent_without_registry",
                "Confluent-framed record (magic byte 0) but no schema registry URL is configured",
            )
        from confluent_kafka.schema_registry.error import SchemaRegistryError

        schema_id = int.from_bytes(data[1:_CONFLUENT_HEADER_LEN], "big")
        name = self._name_of_schema_id(schema_id)
        deserializer = self._deserializer(name)
        try:
            record = deserializer(data, None)
        except SchemaRegistryError as exc:
            raise DecodeError("registry_unavailable", f"schema id {schema_id}: {exc}") from exc
        except Exception as exc:
            raise DecodeError("bad_body", f"{name}: {type(exc).__name__}: {exc}") from exc
        if not isinstance(record, dict):
            raise DecodeError("bad_body", f"{name}: decoded to {type(record).__name__}")
        return name, _to_millis(record)

    def _name_of_schema_id(self, schema_id: int) -> str:
        if schema_id not in self._name_of_id:
            from confluent_kafka.schema_registry.error import SchemaRegistryError

            try:
                schema = self._registry.get_schema(schema_id)  # type: ignore[union-attr]
            except SchemaRegistryError as exc:
                if exc.http_status_code == 404:
                    raise DecodeError("unknown_schema", f"schema id {schema_id}: {exc}") from exc
                raise DecodeError("registry_unavailable", f"schema id {schema_id}: {exc}") from exc
            except Exception as exc:  # connection refused, timeout, TLS...
                raise DecodeError("registry_unavailable", f"schema id {schema_id}: {exc}") from exc
            name: str | None = None
            try:
                raw = json.loads(schema.schema_str)
                if isinstance(raw, dict) and isinstance(raw.get("name"), str):
                    ns = raw.get("namespace")
                    name = raw["name"] if "." in raw["name"] or not ns else f"{ns}.{raw['name']}"
            except (TypeError, ValueError):
                pass
            self._name_of_id[schema_id] = name
        name = self._name_of_id[schema_id]
        if name is None or name not in self.schemas:
            raise DecodeError(
                "unknown_schema", f"schema id {schema_id} is {name or 'not a named record'}"
            )
        return self.schemas.get(name).name

    def _deserializer(self, name: str) -> Any:
        deserializer = self._deserializers.get(name)
        if deserializer is None:
            from confluent_kafka.schema_registry.avro import AvroDeserializer

            # Our schema as the reader: the writer's version is resolved against it.
            deserializer = AvroDeserializer(self._registry, self.schemas.get(name).text)
            self._deserializers[name] = deserializer
        return deserializer

    def _entry(self, record_name: str) -> SchemaEntry:
        try:
            return self.schemas.get(record_name)
        except KeyError as exc:
            raise EncodeError(str(exc)) from None
