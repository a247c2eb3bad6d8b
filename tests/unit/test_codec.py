"""`processor.codec`: schema loading, single-object encoding and Confluent framing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.codec.errors import DECODE_REASONS, DecodeError, EncodeError
from processor.codec.records import MAX_TIMESTAMP_MS
from processor.codec.schemas import SchemaLoadError, SchemaRegistry, default_schemas_dir
from processor.codec.wire import SINGLE_OBJECT_MARKER, Codec, CodecConfig

SCHEMAS = SchemaRegistry.load()
NAMES = [entry.short_name for entry in SCHEMAS]
EXPECTED_NAMES = {
    "Alert",
    "DeadLetter",
    "DeviceKey",
    "DirectoryEntry",
    "MailboxCommand",
    "MailboxKey",
    "Report",
    "ScanRequest",
    "SupportAction",
    "TenantKey",
    "TenantSettings",
    "Verdict",
}


def records_of(schema: Any, named: dict[str, Any] | None = None) -> st.SearchStrategy[Any]:
    """Valid records of an Avro schema (as written, JSON), timestamps in range."""
    named = {} if named is None else named
    if isinstance(schema, str):
        primitives: dict[str, st.SearchStrategy[Any]] = {
            "null": st.none(),
            "boolean": st.booleans(),
            "int": st.integers(-(2**31), 2**31 - 1),
            "long": st.integers(-(2**63), 2**63 - 1),
            "string": st.text(max_size=20),
            "bytes": st.binary(max_size=20),
        }
        return primitives[schema] if schema in primitives else named[schema]
    if isinstance(schema, list):
        return st.one_of([records_of(branch, named) for branch in schema])
    kind = schema["type"]
    if schema.get("logicalType") == "timestamp-millis":
        return st.integers(0, MAX_TIMESTAMP_MS)
    if kind == "enum":
        strategy: st.SearchStrategy[Any] = st.sampled_from(schema["symbols"])
    elif kind == "array":
        strategy = st.lists(records_of(schema["items"], named), max_size=3)
    elif kind == "record":
        strategy = st.fixed_dictionaries(
            {f["name"]: records_of(f["type"], named) for f in schema["fields"]}
        )
    else:
        return records_of(kind, named)
    if "name" in schema:  # arrays are anonymous
        named[schema["name"]] = strategy
    return strategy


STRATEGIES = {e.short_name: records_of(json.loads(e.text)) for e in SCHEMAS}
VERDICT = {
    "tenant_id": "t1",
    "message_id": "m1",
    "mailbox": "alice@example.com",
    "direction": "OUTBOUND",
    "verdict": "SPAM",
    "scanned_at": 1_767_607_200_000,
}


@pytest.fixture(scope="module")
def plain() -> Codec:
    return Codec.from_config(CodecConfig())


@pytest.fixture(scope="module")
def confluent() -> Codec:
    # The mock registry lives in the client, so one codec both encodes and decodes.
    return Codec.from_config(CodecConfig(schema_registry_url="mock://test-codec"))


def test_every_record_type_has_a_schema() -> None:
    assert set(NAMES) == EXPECTED_NAMES
    assert {e.name for e in SCHEMAS} == {f"io.sendguard.v1.{n}" for n in EXPECTED_NAMES}


def test_every_field_is_documented() -> None:
    for entry in SCHEMAS:
        schema = json.loads(entry.text)
        assert schema.get("doc"), entry.name
        undocumented = [f["name"] for f in schema["fields"] if not f.get("doc")]
        assert not undocumented, f"{entry.name}: {undocumented}"


# -- single-object encoding: the header is the one of the Avro specification ----


def _crc64_avro(data: bytes) -> int:
    """The reference algorithm of the Avro specification ("Schema Fingerprints")."""
    empty = 0xC15D213AA4D7A795
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (empty & -(fp & 1))
        table.append(fp)
    fp = empty
    for byte in data:
        fp = (fp >> 8) ^ table[(fp ^ byte) & 0xFF]
    return fp


def test_reference_crc_matches_the_specification_vector() -> None:
    # The Avro test suite's fingerprint of the schema "null".
    assert _crc64_avro(b'"null"') == 7195948357588979594


@pytest.mark.parametrize("name", NAMES)
def test_fingerprint_is_little_endian_crc64_of_canonical_form(name: str) -> None:
    entry = SCHEMAS.get(name)
    expected = _crc64_avro(entry.canonical_form.encode()).to_bytes(8, "little")
    assert entry.fingerprint == expected
    assert '"doc"' not in entry.canonical_form  # docs are not part of the identity


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_single_object_round_trip(name: str, data: st.DataObject, plain: Codec) -> None:
    record = data.draw(STRATEGIES[name])
    encoded = plain.encode(name, record)
    assert encoded[:10] == SINGLE_OBJECT_MARKER + SCHEMAS.get(name).fingerprint
    assert plain.decode(encoded) == (f"io.sendguard.v1.{name}", record)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_confluent_round_trip(name: str, data: st.DataObject, confluent: Codec) -> None:
    record = data.draw(STRATEGIES[name])
    encoded = confluent.encode(name, record)
    assert encoded[0] == 0  # Confluent magic byte, then the schema id
    assert confluent.decode(encoded) == (f"io.sendguard.v1.{name}", record)


def test_confluent_registers_one_subject_per_record_type(confluent: Codec) -> None:
    encoded = confluent.encode("MailboxKey", {"tenant_id": "t1", "mailbox": "a@example.com"})
    registry = confluent._registry
    assert registry is not None
    schema_id = int.from_bytes(encoded[1:5], "big")
    assert registry.get_latest_version("io.sendguard.v1.MailboxKey").schema_id == schema_id


def test_a_codec_with_a_registry_still_reads_single_object(plain: Codec, confluent: Codec) -> None:
    encoded = plain.encode("Verdict", VERDICT)
    assert confluent.decode(encoded) == ("io.sendguard.v1.Verdict", VERDICT)


def test_confluent_without_a_registry_is_a_clear_error(plain: Codec, confluent: Codec) -> None:
    encoded = confluent.encode("Verdict", VERDICT)
    with pytest.raises(DecodeError) as raised:
        plain.decode(encoded)
    assert raised.value.reason == "confluent_without_registry"


def test_an_unregistered_confluent_schema_id_is_unknown_schema(confluent: Codec) -> None:
    with pytest.raises(DecodeError) as raised:
        confluent.decode(b"\x00\x00\x00\x7f\xff" + b"\x02a")
    assert raised.value.reason == "unknown_schema"
    assert "32767" in raised.value.detail


def test_a_registered_schema_of_someone_else_is_unknown_schema(confluent: Codec) -> None:
    from confluent_kafka.schema_registry import Schema

    foreign = '{"type": "record", "name": "com.other.Thing", "fields": []}'
    schema_id = confluent._registry.register_schema("com.other.Thing", Schema(foreign, "AVRO"))  # type: ignore[union-attr]
    with pytest.raises(DecodeError) as raised:
        confluent.decode(b"\x00" + schema_id.to_bytes(4, "big") + b"\x00")
    assert raised.value.reason == "unknown_schema"
    assert "com.other.Thing" in raised.value.detail


# -- decoding errors -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not_avro"),
        (b'{"tenant_id": "t"}', "not_avro"),
        (b"\xc3\x01\x00\x01", "not_avro"),  # header cut short
        (b"\xc3\x01" + b"\xee" * 8 + b"\x00", "unknown_schema"),
        (b"\x00\x00\x01", "not_avro"),  # too short to be Confluent framing
    ],
)
def test_undecodable_bytes_give_the_reason(data: bytes, reason: str, plain: Codec) -> None:
    with pytest.raises(DecodeError) as raised:
        plain.decode(data)
    assert raised.value.reason == reason
    assert reason in DECODE_REASONS


def test_a_truncated_body_is_bad_body(plain: Codec) -> None:
    encoded = plain.encode("Verdict", VERDICT)
    with pytest.raises(DecodeError) as raised:
        plain.decode(encoded[:-1])
    assert raised.value.reason == "bad_body"
    assert "Verdict" in raised.value.detail


def test_bytes_after_the_record_are_bad_body(plain: Codec) -> None:
    # A valid record followed by junk is not a record we understand: refuse it whole.
    encoded = plain.encode("TenantKey", {"tenant_id": "t1"})
    with pytest.raises(DecodeError) as raised:
        plain.decode(encoded + b"\x00")
    assert raised.value.reason == "bad_body"


def test_decode_as_refuses_another_record_type(plain: Codec) -> None:
    encoded = plain.encode("TenantKey", {"tenant_id": "t1"})
    assert plain.decode_as("TenantKey", encoded) == {"tenant_id": "t1"}
    with pytest.raises(DecodeError) as raised:
        plain.decode_as("Verdict", encoded)
    assert raised.value.reason == "wrong_schema"


@settings(max_examples=400)
@given(data=st.binary(max_size=64))
def test_arbitrary_bytes_raise_only_decode_error(data: bytes) -> None:
    for codec in (_PLAIN, _CONFLUENT):
        try:
            codec.decode(data)
        except DecodeError as exc:
            assert exc.reason in DECODE_REASONS


@settings(max_examples=400)
@given(
    fingerprint=st.sampled_from([e.fingerprint for e in SCHEMAS]),
    body=st.binary(max_size=64),
)
def test_a_known_header_with_arbitrary_body_raises_only_decode_error(
    fingerprint: bytes, body: bytes
) -> None:
    # Random bytes rarely carry a valid header; this drives the body decoder itself.
    try:
        _PLAIN.decode(SINGLE_OBJECT_MARKER + fingerprint + body)
    except DecodeError as exc:
        assert exc.reason == "bad_body"


@settings(max_examples=200)
@given(data=st.data())
def test_corrupted_encodings_raise_only_decode_error(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(NAMES))
    encoded = bytearray(_PLAIN.encode(name, data.draw(STRATEGIES[name])))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    try:
        _PLAIN.decode(bytes(encoded[:cut]))
    except DecodeError as exc:
        assert exc.reason in DECODE_REASONS


_PLAIN = Codec.from_config(CodecConfig())
_CONFLUENT = Codec.from_config(CodecConfig(schema_registry_url="mock://test-codec-fuzz"))


# -- encoding errors -----------------------------------------------------------


def test_encoding_a_record_missing_a_field_names_the_problem(plain: Codec) -> None:
    with pytest.raises(EncodeError, match="Verdict"):
        plain.encode("Verdict", {"tenant_id": "t1"})


def test_encoding_an_unknown_field_is_refused(plain: Codec) -> None:
    # strict: a misspelt field must not silently vanish from the wire.
    with pytest.raises(EncodeError):
        plain.encode("TenantKey", {"tenant_id": "t1", "tenant": "t1"})


def test_encoding_an_unknown_record_name_is_refused(plain: Codec) -> None:
    with pytest.raises(EncodeError, match="Nope"):
        plain.encode("Nope", {})


def test_names_may_be_short_or_full(plain: Codec) -> None:
    record = {"tenant_id": "t1"}
    assert plain.encode("TenantKey", record) == plain.encode("io.sendguard.v1.TenantKey", record)


# -- loading -------------------------------------------------------------------


def test_schemas_dir_can_be_overridden(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "TenantKey.avsc").write_text(SCHEMAS.get("TenantKey").text)
    monkeypatch.setenv("SENDGUARD_SCHEMAS_DIR", str(tmp_path))
    assert default_schemas_dir() == tmp_path
    codec = Codec.from_config(CodecConfig.from_env())
    assert [e.short_name for e in codec.schemas] == ["TenantKey"]


def test_a_broken_schema_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "Broken.avsc").write_text(
        '{"type": "record", "name": "B", "fields": [{"name": 1}]}'
    )
    with pytest.raises(SchemaLoadError, match=r"Broken\.avsc"):
        SchemaRegistry.load(tmp_path)


def test_an_empty_schemas_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SchemaLoadError, match=r"no \*\.avsc"):
        SchemaRegistry.load(tmp_path)


def test_two_files_defining_one_record_are_an_error(tmp_path: Path) -> None:
    text = SCHEMAS.get("TenantKey").text
    (tmp_path / "A.avsc").write_text(text)
    (tmp_path / "B.avsc").write_text(text)
    with pytest.raises(SchemaLoadError, match="already used"):
        SchemaRegistry.load(tmp_path)
