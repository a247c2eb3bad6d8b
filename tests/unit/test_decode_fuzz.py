"""Fuzzing the Avro decode path the edge stage runs on every input record.

Whatever bytes arrive, `Codec.decode` returns a record or raises DecodeError, never
anything else (anything else would be a bug the edge has to catch as `internal_error`);
and whatever record decodes, its validator returns a policy event or raises
DecodeError. Both with single-object encoding and with Confluent framing against an
in-memory schema registry.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from processor.codec import records
from processor.codec.errors import DecodeError
from processor.codec.wire import SINGLE_OBJECT_MARKER, Codec, CodecConfig

PLAIN = Codec.from_config(CodecConfig())
REGISTRY = Codec.from_config(CodecConfig(schema_registry_url="mock://fuzz"))

VALIDATORS: dict[str, Callable[[Any], object]] = {
    "io.sendguard.v1.Verdict": records.verdict_from_record,
    "io.sendguard.v1.SupportAction": records.release_from_record,
    "io.sendguard.v1.DirectoryEntry": records.directory_entry_from_record,
    "io.sendguard.v1.TenantSettings": records.tenant_settings_from_record,
    "io.sendguard.v1.MailboxKey": records.mailbox_key_from_record,
    "io.sendguard.v1.TenantKey": records.tenant_key_from_record,
}

_T = 1_767_607_200_000
SAMPLES: dict[str, dict[str, Any]] = {
    "Verdict": {
        "tenant_id": "t1",
        "message_id": "m1",
        "mailbox": "a@x.com",
        "direction": "OUTBOUND",
        "verdict": "SPAM",
        "scanned_at": _T,
    },
    "SupportAction": {
        "action_id": "a1",
        "action": "RELEASE",
        "tenant_id": "t1",
        "mailbox": "a@x.com",
        "actor": "s",
        "reason": "r",
        "at": _T,
        "source": None,
        "key_id": "k1",
        "signature": b"\x00" * 32,
    },
    "DirectoryEntry": {
        "tenant_id": "t1",
        "mailbox": "a@x.com",
        "owner_id": "u",
        "devices": ["d1", "d2"],
        "at": _T,
    },
    "TenantSettings": {"tenant_id": "t1", "synchronized_security": True, "at": _T},
}
ENCODED = {
    name: (PLAIN.encode(name, record), REGISTRY.encode(name, record))
    for name, record in SAMPLES.items()
}
HEADERS = [SINGLE_OBJECT_MARKER + entry.fingerprint for entry in PLAIN.schemas] + [
    b"\x00" + (i).to_bytes(4, "big") for i in range(0, 8)
]


def decode_or_decode_error(codec: Codec, data: bytes) -> tuple[str, dict[str, Any]] | None:
    """The decoded record, or None after a DecodeError; anything else fails the test."""
    try:
        return codec.decode(data)
    except DecodeError:
        return None


def validate_or_decode_error(name: str, record: dict[str, Any]) -> None:
    validator = VALIDATORS.get(name)
    if validator is not None:
        with contextlib.suppress(DecodeError):
            validator(record)


def check(data: bytes) -> None:
    for codec in (PLAIN, REGISTRY):
        decoded = decode_or_decode_error(codec, data)
        if decoded is not None:
            validate_or_decode_error(*decoded)


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_decode_error(data: bytes) -> None:
    check(data)


@FUZZ
@given(header=st.sampled_from(HEADERS), body=st.binary(max_size=300))
def test_a_known_header_with_any_body_decodes_or_raises_decode_error(
    header: bytes, body: bytes
) -> None:
    check(header + body)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid encoded record with bytes flipped, inserted, cut or appended."""
    plain, framed = ENCODED[draw(st.sampled_from(sorted(ENCODED)))]
    data = bytearray(draw(st.sampled_from([plain, framed])))
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "cut", "append"]))
        if action == "flip" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "cut":
            del data[position:]
        else:
            data += draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@FUZZ
@given(mutated())
def test_a_mutated_record_decodes_or_raises_decode_error(data: bytes) -> None:
    check(data)


# Records that are valid Avro of each input schema, with any field values the schema
# allows (long, odd and empty strings, any long): validation accepts or names them.
_TEXT = st.one_of(
    st.text(max_size=12),
    st.text(min_size=200, max_size=2100),
    st.sampled_from(["", " ", "İ" * 161, "\x00", "a@x.com"]),
)
_LONG = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([0, -1, _T, 2**63 - 1]))


@st.composite
def schema_records(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(SAMPLES)))
    record = dict(SAMPLES[name])
    for field, value in SAMPLES[name].items():
        if not draw(st.booleans()):
            continue
        if value is None or isinstance(value, bytes):
            continue  # optional fields of the signature: not validated here
        if isinstance(value, bool):
            record[field] = draw(st.booleans())
        elif isinstance(value, int):
            record[field] = draw(_LONG)
        elif isinstance(value, list):
            record[field] = draw(st.lists(_TEXT, max_size=70))
        elif field in ("direction", "verdict", "action"):
            continue  # enums: the schema allows only its symbols
        else:
            record[field] = draw(_TEXT)
    return name, record


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(schema_records())
def test_a_record_that_decodes_validates_or_raises_decode_error(
    named: tuple[str, dict[str, Any]],
) -> None:
    name, record = named
    for codec in (PLAIN, REGISTRY):
        # Confluent's deserializer turns timestamps into datetimes, so one outside
        # Python's years 1..9999 is already a DecodeError (bad_body) there.
        decoded = decode_or_decode_error(codec, codec.encode(name, record))
        if codec is PLAIN:
            assert decoded is not None  # single-object decoding keeps any long
        if decoded is not None:
            validate_or_decode_error(*decoded)
