"""Signed support actions: what is signed, who can verify, what is refused."""

from __future__ import annotations

import hmac
import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from processor.codec import action_signing
from processor.codec.action_signing import (
    MAX_AGE_MS,
    MAX_SKEW_MS,
    SIGNATURE_FIELD,
    SIGNED_FIELDS,
    ActionKeys,
    canonical_bytes,
)
from processor.codec.errors import DecodeError
from processor.codec.records import record_of, release_from_record
from processor.codec.schemas import default_schemas_dir
from processor.codec.wire import Codec, CodecConfig
from processor.credentials import CredentialError
from processor.policy import MailboxKey, Release

NOW = 1_767_607_200_000
OLD_SECRET, NEW_SECRET = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
KEYS = ActionKeys.parse(f"k2:{NEW_SECRET}, k1:{OLD_SECRET}")
RELEASE = Release(MailboxKey.of("t1", "alice@example.com"), "maria", "reimaged", NOW, "act-1")


def action(**change: Any) -> dict[str, Any]:
    _, record = record_of(RELEASE)
    return {**record, "source": "192.0.2.7", **change}


def refusal(record: dict[str, Any], now: int = NOW) -> str:
    with pytest.raises(DecodeError) as caught:
        KEYS.verify(record, now)
    assert caught.value.reason == "unauthenticated_action"
    return caught.value.detail


def test_every_schema_field_but_the_signature_is_signed() -> None:
    schema = json.loads((default_schemas_dir() / "SupportAction.avsc").read_text())
    names = [field["name"] for field in schema["fields"]]
    assert [n for n in names if n != SIGNATURE_FIELD] == list(SIGNED_FIELDS)


def test_canonical_bytes_are_length_prefixed_and_typed() -> None:
    data = canonical_bytes(action())
    # Moving text from one field to the next changes the bytes (no ambiguity) ...
    assert canonical_bytes(action(actor="mar", reason="iareimaged")) != canonical_bytes(
        action(actor="maria", reason="reimaged")
    )
    # ... null is not "", and a number is not its digits.
    assert canonical_bytes(action(source=None)) != canonical_bytes(action(source=""))
    assert canonical_bytes(action(at=5)) != canonical_bytes(action(at="5"))
    # The layout: a context, then for each field its name and value, each with a
    # 4-byte big-endian length.
    length = int.from_bytes(data[:4], "big")
    offset = 4 + length
    seen = []
    while offset < len(data):
        n = int.from_bytes(data[offset : offset + 4], "big")
        name = data[offset + 4 : offset + 4 + n].decode()
        offset += 4 + n
        m = int.from_bytes(data[offset : offset + 4], "big")
        value = data[offset + 4 : offset + 4 + m]
        offset += 4 + m
        seen.append((name, value))
    assert offset == len(data)
    assert [name for name, _ in seen] == list(SIGNED_FIELDS)
    assert dict(seen)["actor"] == b"Smaria" and dict(seen)["at"] == f"I{NOW}".encode()
    assert dict(seen)["key_id"] == b"N"  # unsigned yet
    assert canonical_bytes({**action(), "signature": b"x", "extra": 1}) == data


def test_signed_actions_verify_and_survive_the_wire() -> None:
    signed = KEYS.sign(action())
    assert signed["key_id"] == "k2" and len(signed[SIGNATURE_FIELD]) == 32
    KEYS.verify(signed, NOW)
    codec = Codec.from_config(CodecConfig())
    decoded = codec.decode_as("SupportAction", codec.encode("SupportAction", signed))
    KEYS.verify(decoded, NOW + 1000)
    assert release_from_record(decoded) == RELEASE


@pytest.mark.parametrize(
    "field",
    [f for f in SIGNED_FIELDS if f not in ("key_id", "at")],
)
def test_a_change_to_any_field_breaks_the_signature(field: str) -> None:
    signed = KEYS.sign(action())
    forged = {**signed, field: "x" if signed[field] is None else signed[field] + "x"}
    assert "does not match" in refusal(forged)


def test_a_change_of_time_breaks_the_signature() -> None:
    signed = KEYS.sign(action())
    assert "does not match" in refusal({**signed, "at": NOW + 1})


def test_unsigned_unknown_key_and_wrong_type_are_refused() -> None:
    assert "not signed" in refusal(action())
    signed = KEYS.sign(action())
    assert "unknown key id 'k9'" in refusal({**signed, "key_id": "k9"})
    assert "does not match" in refusal({**signed, SIGNATURE_FIELD: signed[SIGNATURE_FIELD][:-1]})
    stranger = ActionKeys.parse(f"k2:{secrets.token_urlsafe(32)}")
    assert "does not match" in refusal(stranger.sign(action()))
    assert "not signed" in refusal({**signed, SIGNATURE_FIELD: None})


def test_stale_and_future_actions_are_refused() -> None:
    old = KEYS.sign(action(at=NOW - MAX_AGE_MS - 1))
    assert "minutes before now" in refusal(old)
    KEYS.verify(KEYS.sign(action(at=NOW - MAX_AGE_MS)), NOW)
    ahead = KEYS.sign(action(at=NOW + MAX_SKEW_MS + 1))
    assert "ahead of now" in refusal(ahead)
    KEYS.verify(KEYS.sign(action(at=NOW + MAX_SKEW_MS)), NOW)


def test_rotation_old_keys_verify_the_first_signs() -> None:
    before = ActionKeys.parse(f"k1:{OLD_SECRET}")
    during = KEYS  # k2 signs, k1 still verifies
    after = ActionKeys.parse(f"k2:{NEW_SECRET}")
    by_old = before.sign(action())
    during.verify(by_old, NOW)
    by_new = during.sign(action())
    assert by_new["key_id"] == "k2"
    after.verify(by_new, NOW)
    before_refuses = pytest.raises(DecodeError, match="unknown key id 'k2'")
    with before_refuses:
        before.verify(by_new, NOW)
    with pytest.raises(DecodeError, match="unknown key id 'k1'"):
        after.verify(by_old, NOW)


def test_signatures_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    compare = hmac.compare_digest

    def recording(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(action_signing.hmac, "compare_digest", recording)
    signed = KEYS.sign(action())
    KEYS.verify(signed, NOW)
    assert calls and calls[-1][0] == signed[SIGNATURE_FIELD]


def test_key_text_comments_lines_and_problems(tmp_path: Path) -> None:
    text = f"# rotated 2026-01\nk2:{NEW_SECRET}\n\nk1:{OLD_SECRET}  # retire after March\n"
    keys = ActionKeys.parse(text)
    assert keys.signing_id == "k2" and [k for k, _ in keys.keys] == ["k2", "k1"]
    assert NEW_SECRET not in repr(keys)
    file = tmp_path / "keys"
    file.write_text(text)
    assert ActionKeys.from_options(None, file) == keys
    assert not ActionKeys.from_options(None, None)
    with pytest.raises(CredentialError, match="the same key id twice"):
        ActionKeys.parse(f"k1:{NEW_SECRET},k1:{OLD_SECRET}")
    with pytest.raises(CredentialError, match="the secret of key 'k1' is 5 characters"):
        ActionKeys.parse("k1:short")
    with pytest.raises(CredentialError, match="expected id:secret"):
        ActionKeys.parse(NEW_SECRET)
    with pytest.raises(CredentialError, match="no keys"):
        ActionKeys.parse("# nothing\n")
    with pytest.raises(CredentialError, match="no action keys"):
        ActionKeys().sign(action())
    with pytest.raises(DecodeError, match="not signed"):
        ActionKeys().verify(action(), NOW)
