"""Signed mailbox commands: the worker signs what it writes to mailbox.control, a
gateway with the keys enforces nothing else (docs: processor.codec.command_signing)."""

from __future__ import annotations

import secrets

import pytest

from processor.codec import records
from processor.codec.command_signing import SIGNATURE_HEADER, CommandKeys
from processor.codec.errors import DecodeError
from processor.codec.wire import Codec
from processor.credentials import CredentialError
from processor.mail.state_follower import decode_update
from processor.policy.decisions import Block, Unblock, decision_id
from processor.policy.events import MailboxKey
from processor.stream.outputs import Outputs
from processor.stream.topics import TopicNames

CODEC = Codec.from_config()
NEW, OLD = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
KEYS = CommandKeys.parse(f"new:{NEW}\n# rotated out soon\nold:{OLD}")
KEY = MailboxKey.of("acme", "alice@acme.example")
T0 = 1_767_607_200_000
BLOCK = Block(KEY, T0, 6, True, None, 6, decision_id(KEY, 6, "BLOCK"), ("m1",))
UNBLOCK = Unblock(KEY, T0 + 1, 6, "released", 6, decision_id(KEY, 6, "UNBLOCK"), "maria", "ok")


def encoded(decision: Block | Unblock) -> tuple[bytes, bytes]:
    return CODEC.encode(*records.key_of(decision)), CODEC.encode(*records.record_of(decision))


def refusal(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]]) -> str:
    with pytest.raises(DecodeError) as caught:
        KEYS.verify(key, value, headers)
    assert caught.value.reason == "unauthenticated_command"
    return caught.value.detail


def test_a_signed_command_and_tombstone_verify_under_every_key() -> None:
    key, value = encoded(BLOCK)
    KEYS.verify(key, value, [KEYS.header(key, value)])
    KEYS.verify(key, None, [KEYS.header(key, None)])
    lagging = CommandKeys.parse(f"old:{OLD}")  # a worker still signing with the old key
    KEYS.verify(key, value, [("other", b"x"), lagging.header(key, value)])
    name, text = KEYS.header(key, value)
    assert name == SIGNATURE_HEADER and text.startswith(b"new:")


def test_unsigned_foreign_and_moved_signatures_are_refused() -> None:
    key, value = encoded(UNBLOCK)
    block_key, block_value = encoded(BLOCK)
    assert "not signed" in refusal(key, value, [])
    assert "not signed" in refusal(key, None, [])  # a tombstone too
    forged = CommandKeys.parse(f"new:{secrets.token_urlsafe(32)}")
    assert "does not match" in refusal(key, value, [forged.header(key, value)])
    unknown = CommandKeys.parse(f"evil:{NEW}")
    assert "unknown key id" in refusal(key, value, [unknown.header(key, value)])
    # A real signature of another record, of the same record under another key, or of
    # the record's value as a tombstone: each covers other bytes.
    assert "does not match" in refusal(key, value, [KEYS.header(block_key, block_value)])
    other_key = CODEC.encode(
        *records.key_of(
            Block(MailboxKey.of("acme", "bob@acme.example"), T0, 1, False, T0 + 1, 1, "id", ())
        )
    )
    assert "does not match" in refusal(other_key, value, [KEYS.header(key, value)])
    assert "does not match" in refusal(key, None, [KEYS.header(key, value)])
    header = KEYS.header(key, value)
    assert "more than one" in refusal(key, value, [header, header])
    assert "unknown key id" in refusal(key, value, [(SIGNATURE_HEADER, b"\xff" * 100_000)])


def test_key_text_is_checked_and_secrets_never_shown() -> None:
    with pytest.raises(CredentialError, match="SENDGUARD_CONTROL_KEYS"):
        CommandKeys.parse("new:short")
    with pytest.raises(CredentialError, match="the same key id twice"):
        CommandKeys.parse(f"a:{NEW},a:{OLD}")
    assert NEW not in repr(KEYS) and "new" in repr(KEYS)
    with pytest.raises(ValueError, match="no control keys"):
        CommandKeys().header(b"k", b"v")


def test_the_worker_signs_commands_and_nothing_else() -> None:
    signed = Outputs(CODEC, TopicNames(), control_keys=KEYS)
    for decision in (BLOCK, UNBLOCK):
        out = signed.encode(decision)
        KEYS.verify(out.key, out.value, list(out.headers))
    unsigned = Outputs(CODEC, TopicNames())
    assert unsigned.encode(BLOCK).headers == ()


def test_the_gateway_decodes_only_signed_commands_when_it_has_keys() -> None:
    key, value = encoded(UNBLOCK)
    update = decode_update(CODEC, "control", key, value, [KEYS.header(key, value)], KEYS)
    assert update is not None and update.kind == "command"
    with pytest.raises(DecodeError, match="unauthenticated_command"):
        decode_update(CODEC, "control", key, value, [], KEYS)
    with pytest.raises(DecodeError, match="unauthenticated_command"):
        decode_update(CODEC, "control", key, None, None, KEYS)
    # Without keys every command counts (a gateway that does not authenticate).
    assert decode_update(CODEC, "control", key, value) is not None
