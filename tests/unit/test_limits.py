"""Every field limit of `processor.limits` at the boundary where records enter: at the
limit a record is accepted, one over it is `field_too_long` naming the field, and a
record larger than any valid one is `record_too_large` before it is decoded."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from processor import limits
from processor.codec.errors import DecodeError
from processor.codec.records import (
    bounded_copy,
    bounded_message_id,
    check_record_size,
    dead_letter_record,
    directory_entry_from_record,
    key_of,
    mailbox_key_from_record,
    record_of,
    release_from_record,
    tenant_key_from_record,
    tenant_settings_from_record,
    verdict_from_record,
)
from processor.codec.wire import Codec
from processor.policy import DirectoryEntry, MailboxKey
from processor.stream.lookups import Lookups, apply_record

CODEC = Codec.from_config()
T0 = 1_767_607_200_000
#: The characters that cost most: 4 bytes in UTF-8 (Avro), 6 in escaped JSON.
WIDE, CONTROL = "\U0010ffff", "\x01"

VERDICT: dict[str, Any] = {
    "tenant_id": "t1",
    "message_id": "m1",
    "mailbox": "a@x.com",
    "direction": "OUTBOUND",
    "verdict": "SPAM",
    "scanned_at": T0,
}
DIRECTORY: dict[str, Any] = {
    "tenant_id": "t1",
    "mailbox": "a@x.com",
    "owner_id": "u1",
    "devices": ["d1"],
    "at": T0,
}
RELEASE: dict[str, Any] = {
    "action_id": "a1",
    "action": "RELEASE",
    "tenant_id": "t1",
    "mailbox": "a@x.com",
    "actor": "sup-1",
    "reason": "verified",
    "at": T0,
}
SETTINGS: dict[str, Any] = {"tenant_id": "t1", "synchronized_security": True, "at": T0}

CASES = [
    (verdict_from_record, VERDICT, "Verdict", "tenant_id", limits.MAX_TENANT_ID),
    (verdict_from_record, VERDICT, "Verdict", "mailbox", limits.MAX_MAILBOX),
    (directory_entry_from_record, DIRECTORY, "DirectoryEntry", "tenant_id", limits.MAX_TENANT_ID),
    (directory_entry_from_record, DIRECTORY, "DirectoryEntry", "mailbox", limits.MAX_MAILBOX),
    (directory_entry_from_record, DIRECTORY, "DirectoryEntry", "owner_id", limits.MAX_OWNER_ID),
    (release_from_record, RELEASE, "SupportAction", "tenant_id", limits.MAX_TENANT_ID),
    (release_from_record, RELEASE, "SupportAction", "mailbox", limits.MAX_MAILBOX),
    (release_from_record, RELEASE, "SupportAction", "actor", limits.MAX_ACTOR),
    (release_from_record, RELEASE, "SupportAction", "reason", limits.MAX_REASON),
    (release_from_record, RELEASE, "SupportAction", "action_id", limits.MAX_ACTION_ID),
    (tenant_settings_from_record, SETTINGS, "TenantSettings", "tenant_id", limits.MAX_TENANT_ID),
]


@pytest.mark.parametrize(
    ("parse", "base", "record", "field", "limit"),
    CASES,
    ids=[f"{record}.{field}" for _, _, record, field, _ in CASES],
)
def test_a_field_at_its_limit_passes_and_one_over_is_too_long(
    parse: Any, base: dict[str, Any], record: str, field: str, limit: int
) -> None:
    for char in (WIDE, CONTROL, "a"):
        parse({**base, field: char * limit})  # at the limit: accepted
        with pytest.raises(DecodeError) as raised:
            parse({**base, field: char * (limit + 1)})
        assert raised.value.reason == "field_too_long"
        assert f"{record}.{field}: {limit + 1} characters" in raised.value.detail


def test_a_message_id_over_its_limit_counts_under_its_digest() -> None:
    # The sender writes the Message-ID: refusing a long one would let spam escape
    # counting. The digest tells one message's retries from other messages.
    at_limit = "m" * limits.MAX_MESSAGE_ID
    assert verdict_from_record({**VERDICT, "message_id": at_limit}).message_id == at_limit
    for long in ("m" * (limits.MAX_MESSAGE_ID + 1), "\x01" * 170_000, WIDE * 250_000):
        counted = verdict_from_record({**VERDICT, "message_id": long}).message_id
        assert counted == bounded_message_id(long)
        assert counted == "digest:" + hashlib.sha256(long.encode()).hexdigest()
    assert bounded_message_id("a" * 999) != bounded_message_id("a" * 1000)
    with pytest.raises(DecodeError, match=r"Verdict\.message_id: empty"):
        verdict_from_record({**VERDICT, "message_id": " " * 2000})


def test_the_limits_are_the_agreed_values() -> None:
    # Shared with `simulate`'s line parser: the two must never disagree.
    assert (
        limits.MAX_TENANT_ID,
        limits.MAX_MAILBOX,
        limits.MAX_MESSAGE_ID,
        limits.MAX_OWNER_ID,
        limits.MAX_DEVICE_ID,
        limits.MAX_DEVICES,
        limits.MAX_ACTOR,
        limits.MAX_REASON,
    ) == (256, 320, 998, 256, 256, 64, 200, 2000)


def test_a_mailbox_that_lower_casing_lengthens_past_the_limit_is_too_long() -> None:
    # "İ".lower() is two characters: the stored (normalised) mailbox is what must fit.
    mailbox = "İ" * (limits.MAX_MAILBOX // 2 + 1)
    assert len(mailbox) <= limits.MAX_MAILBOX < len(mailbox.lower())
    with pytest.raises(DecodeError) as raised:
        verdict_from_record({**VERDICT, "mailbox": mailbox})
    assert raised.value.reason == "field_too_long"
    assert "normalised" in raised.value.detail


def test_directory_devices_are_limited_in_number_and_length() -> None:
    most = [f"d{i}" for i in range(limits.MAX_DEVICES)]
    assert len(directory_entry_from_record({**DIRECTORY, "devices": most}).devices) == 64
    for devices, named in (
        ([*most, "one-more"], "DirectoryEntry.devices: 65 devices"),
        (["d1", "x" * (limits.MAX_DEVICE_ID + 1)], "DirectoryEntry.devices[1]: 257 characters"),
    ):
        with pytest.raises(DecodeError) as raised:
            directory_entry_from_record({**DIRECTORY, "devices": devices})
        assert raised.value.reason == "field_too_long"
        assert named in raised.value.detail


def test_key_records_are_limited_too() -> None:
    with pytest.raises(DecodeError, match=r"MailboxKey\.mailbox: 321 characters"):
        mailbox_key_from_record({"tenant_id": "t1", "mailbox": "m" * 321})
    with pytest.raises(DecodeError, match=r"TenantKey\.tenant_id: 257 characters"):
        tenant_key_from_record({"tenant_id": "t" * 257})


def test_a_record_larger_than_any_valid_one_is_refused_by_size() -> None:
    check_record_size(b"x" * limits.MAX_RECORD_BYTES)
    with pytest.raises(DecodeError) as raised:
        check_record_size(b"x" * (limits.MAX_RECORD_BYTES + 1))
    assert raised.value.reason == "record_too_large"


def test_the_largest_valid_input_records_are_kept_whole_in_a_dead_letter() -> None:
    # Every field at its limit, in the widest characters: any record that could have
    # been valid is kept whole, and so can be replayed from its dead letter.
    def wide(limit: int) -> str:
        return WIDE * limit

    largest = {
        "Verdict": {
            **VERDICT,
            "tenant_id": wide(limits.MAX_TENANT_ID),
            "mailbox": wide(limits.MAX_MAILBOX),
            "message_id": wide(limits.MAX_MESSAGE_ID),
        },
        "DirectoryEntry": {
            **DIRECTORY,
            "tenant_id": wide(limits.MAX_TENANT_ID),
            "mailbox": wide(limits.MAX_MAILBOX),
            "owner_id": wide(limits.MAX_OWNER_ID),
            "devices": [wide(limits.MAX_DEVICE_ID)] * limits.MAX_DEVICES,
        },
        "SupportAction": {
            **RELEASE,
            "action_id": wide(limits.MAX_ACTION_ID),
            "tenant_id": wide(limits.MAX_TENANT_ID),
            "mailbox": wide(limits.MAX_MAILBOX),
            "actor": wide(limits.MAX_ACTOR),
            "reason": wide(limits.MAX_REASON),
            # The signature's fields (any size passes the limits: a forged one fails
            # the signature check first; the API writes its own).
            "source": wide(64),
            "key_id": wide(64),
            "signature": b"\xff" * 32,
        },
        "TenantSettings": {**SETTINGS, "tenant_id": wide(limits.MAX_TENANT_ID)},
        "MailboxKey": {"tenant_id": wide(limits.MAX_TENANT_ID), "mailbox": wide(320)},
        "TenantKey": {"tenant_id": wide(limits.MAX_TENANT_ID)},
    }
    for name, record in largest.items():
        size = len(CODEC.encode(name, record))
        assert size <= limits.DEAD_LETTER_KEEP_BYTES <= limits.MAX_RECORD_BYTES, (name, size)


def test_a_dead_letter_keeps_what_could_be_valid_whole_and_a_prefix_of_the_rest() -> None:
    small, large = b"s" * limits.DEAD_LETTER_KEEP_BYTES, b"L" * 999_000
    assert bounded_copy(small) == small and bounded_copy(None) is None
    assert bounded_copy(large) == b"L" * limits.DEAD_LETTER_PREFIX_BYTES

    record = dead_letter_record(
        "record_too_large",
        "d" * 5000,
        source_topic="mail.verdicts",
        source_partition=1,
        source_offset=7,
        key=large,
        value=large,
        at_ms=T0,
    )
    decoded = CODEC.decode_as("DeadLetter", CODEC.encode("DeadLetter", record))
    assert decoded["value"] == decoded["key"] == b"L" * limits.DEAD_LETTER_PREFIX_BYTES
    assert decoded["value_size"] == decoded["key_size"] == 999_000
    assert decoded["value_sha256"] == hashlib.sha256(large).hexdigest()
    assert len(decoded["detail"]) == limits.MAX_DEAD_LETTER_DETAIL
    tombstone = dead_letter_record(
        "not_avro",
        "no value",
        source_topic="t",
        source_partition=0,
        source_offset=0,
        key=None,
        value=None,
        at_ms=T0,
    )
    assert (tombstone["value"], tombstone["value_size"], tombstone["value_sha256"]) == (
        None,
        None,
        None,
    )


def test_the_directory_reader_refuses_entries_over_the_limits() -> None:
    key = MailboxKey("t1", "a@x.com")
    entry = DirectoryEntry(key, "u1", tuple(f"d{i}" for i in range(limits.MAX_DEVICES + 1)), T0)
    key_name, key_record = key_of(entry)
    name, value = record_of(entry)
    lookups = Lookups()
    with pytest.raises(DecodeError) as raised:
        apply_record(
            lookups, CODEC, True, CODEC.encode(key_name, key_record), CODEC.encode(name, value)
        )
    assert raised.value.reason == "field_too_long"
    with pytest.raises(DecodeError) as raised:
        apply_record(lookups, CODEC, True, None, b"\xc3\x01" + b"x" * limits.MAX_RECORD_BYTES)
    assert raised.value.reason == "record_too_large"
    with pytest.raises(DecodeError) as raised:
        apply_record(lookups, CODEC, False, b"k" * (limits.MAX_RECORD_BYTES + 1), None)
    assert raised.value.reason == "record_too_large"
    assert lookups.owner_of(key) is None
