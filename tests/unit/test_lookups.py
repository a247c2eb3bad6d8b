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


class LeaderMoving:
    """A consumer whose first answers say the broker does not lead the partition yet."""

    def __init__(self, failures: int, code: int) -> None:
        self.failures, self.code, self.calls = failures, code, 0

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        from confluent_kafka import KafkaError, KafkaException

        self.calls += 1
        if self.calls <= self.failures:
            raise KafkaException(KafkaError(self.code))
        return 0, 7


def test_watermarks_are_asked_again_while_a_new_partitions_leader_moves() -> None:
    import time

    from confluent_kafka import KafkaError, TopicPartition

    from processor.stream.lookups import watermarks

    consumer = LeaderMoving(2, KafkaError.NOT_LEADER_FOR_PARTITION)
    tp = TopicPartition("directory.mailboxes", 0)
    assert watermarks(consumer, tp, time.monotonic() + 10) == (0, 7)
    assert consumer.calls == 3

    other = LeaderMoving(1, KafkaError.TOPIC_AUTHORIZATION_FAILED)
    with pytest.raises(RuntimeError, match=r"directory.mailboxes\[0\]"):
        watermarks(other, tp, time.monotonic() + 10)
    late = LeaderMoving(99, KafkaError.LEADER_NOT_AVAILABLE)
    with pytest.raises(RuntimeError):
        watermarks(late, tp, time.monotonic() + 0.5)
