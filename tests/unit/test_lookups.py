"""The directory and settings a worker sees: records of the compacted topics applied
in log order, tombstones deleting their key."""

from __future__ import annotations

import pytest

from processor.codec.errors import DecodeError
from processor.codec.records import key_of, record_of
from processor.codec.wire import Codec
from processor.policy import DirectoryEntry, MailboxKey, TenantSettings
from processor.stream.lookups import Lookups, apply_record

CODEC = Codec.from_config()
ALICE = MailboxKey("t1", "alice@x.com")


def encoded(obj: DirectoryEntry | TenantSettings) -> tuple[bytes, bytes]:
    """(key bytes, value bytes) as the directory service would produce them."""
    key_name, key = key_of(obj)
    value_name, value = record_of(obj)
    return CODEC.encode(key_name, key), CODEC.encode(value_name, value)


def test_newest_directory_entry_wins_and_a_tombstone_deletes_it() -> None:
    lookups = Lookups()
    old = DirectoryEntry(ALICE, "u-old", ("d1",), at_ms=1_000)
    new = DirectoryEntry(ALICE, "u-new", ("d2", "d3"), at_ms=2_000)
    for entry in (new, old):  # the older one arrives last and loses
        apply_record(lookups, CODEC, True, *encoded(entry))
    assert lookups.owner_of(ALICE) == new

    key, _ = encoded(new)
    apply_record(lookups, CODEC, True, key, None)
    assert lookups.owner_of(ALICE) is None


def test_a_settings_tombstone_brings_back_the_default() -> None:
    lookups = Lookups()
    off = TenantSettings("t1", synchronized_security=False, at_ms=1_000)
    key, value = encoded(off)
    apply_record(lookups, CODEC, False, key, value)
    assert lookups.synchronized_security("t1") is False

    apply_record(lookups, CODEC, False, key, None)
    assert lookups.synchronized_security("t1") is None  # no record: the policy default


def test_a_tombstone_of_an_unknown_key_or_without_a_key_changes_nothing() -> None:
    lookups = Lookups()
    entry = DirectoryEntry(ALICE, "u1", (), at_ms=1_000)
    apply_record(lookups, CODEC, True, *encoded(entry))
    other, _ = encoded(DirectoryEntry(MailboxKey("t1", "bob@x.com"), "u2", (), at_ms=1))
    apply_record(lookups, CODEC, True, other, None)
    apply_record(lookups, CODEC, True, None, None)
    assert lookups.owner_of(ALICE) == entry


def test_bytes_that_are_not_the_topics_records_raise_decode_error() -> None:
    with pytest.raises(DecodeError):
        apply_record(Lookups(), CODEC, True, b"not avro", None)
    with pytest.raises(DecodeError):
        apply_record(Lookups(), CODEC, False, None, b"not avro")
