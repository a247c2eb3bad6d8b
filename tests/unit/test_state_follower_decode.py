"""What one record of mailbox.control or directory.mailboxes means to the gateway (pure:
the codec, no broker)."""

from __future__ import annotations

import pytest

from processor.codec import records
from processor.codec.errors import DecodeError
from processor.codec.wire import Codec
from processor.mail.state_follower import decode_update
from processor.policy.decisions import Block, decision_id
from processor.policy.events import DirectoryEntry, MailboxKey

CODEC = Codec.from_config()
KEY = MailboxKey.of("acme", "Alice@acme.example")
T0 = 1_767_607_200_000


def encoded(obj: Block | DirectoryEntry) -> tuple[bytes, bytes]:
    return CODEC.encode(*records.key_of(obj)), CODEC.encode(*records.record_of(obj))


def test_a_block_as_the_worker_writes_it() -> None:
    block = Block(KEY, T0, 2, False, T0 + 7_200_000, 2, decision_id(KEY, 2, "BLOCK"), ())
    key, value = encoded(block)

    update = decode_update(CODEC, "control", key, value)

    assert update is not None and update.kind == "command" and update.command is not None
    assert (update.tenant_id, update.mailbox) == ("acme", "alice@acme.example")
    assert update.command.until_ms == T0 + 7_200_000
    assert update.command.block_sequence == 2
    assert update.command.command_id == block.command_id


def test_tombstones_forget_and_a_keyless_one_is_nothing() -> None:
    key = CODEC.encode(*records.key_of(DirectoryEntry(KEY, "o", (), T0)))
    control = decode_update(CODEC, "control", key, None)
    directory = decode_update(CODEC, "directory", key, None)

    assert control is not None and control.kind == "forget_mailbox"
    assert directory is not None and directory.kind == "forget_directory"
    assert (directory.tenant_id, directory.mailbox) == ("acme", "alice@acme.example")
    assert decode_update(CODEC, "control", None, None) is None


def test_a_directory_entry() -> None:
    key, value = encoded(DirectoryEntry(KEY, "owner-1", ("laptop",), T0))
    update = decode_update(CODEC, "directory", key, value)
    assert update is not None and update.kind == "directory" and update.tenant_id == "acme"


@pytest.mark.parametrize(
    ("kind", "key", "value", "reason"),
    [
        ("control", b"k", b"not avro", "not_avro"),
        # A directory entry where a command belongs (and the other way round).
        ("control", None, encoded(DirectoryEntry(KEY, "o", (), T0))[1], "wrong_schema"),
        (
            "directory",
            None,
            encoded(Block(KEY, T0, 1, True, None, 1, "c", ()))[1],
            "wrong_schema",
        ),
        ("directory", b"\xc3\x01" + b"\x00" * 8, None, "unknown_schema"),
    ],
)
def test_records_that_are_not_the_topics_raise_decode_errors(
    kind: str, key: bytes | None, value: bytes | None, reason: str
) -> None:
    with pytest.raises(DecodeError) as raised:
        decode_update(CODEC, kind, key, value)  # type: ignore[arg-type]
    assert raised.value.reason == reason
