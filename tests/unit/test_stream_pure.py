"""The worker's pure parts, without Kafka: the internal event format, the policy step
the agent takes, the expiry index, and decisions as output records."""

from __future__ import annotations

import pytest
from confluent_kafka import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from processor.codec.wire import Codec
from processor.policy import (
    Block,
    Direction,
    DirectoryEntry,
    MailboxKey,
    Outcome,
    PolicyConfig,
    Release,
    Report,
    Unblock,
    Verdict,
    VerdictKind,
)
from processor.stream.edge import ConsumerFailed, EdgeConfig, EdgeCounts, EdgeStage
from processor.stream.events import (
    EventFormatError,
    ExpiryTick,
    MailboxEvent,
    Pack,
    SweepTick,
    decode_key,
    decode_record,
    encode_key,
    murmur2,
    partition_for,
)
from processor.stream.expiry import ExpiryIndex
from processor.stream.handling import DELETE, KEEP, STORE, Step, handle, stored_position
from processor.stream.outputs import Outputs
from processor.stream.packing import Packer
from processor.stream.topics import TopicNames
from tests.unit.policy_dsl import ALICE, t, verdict


class Directory:
    def __init__(self, entries: dict[MailboxKey, DirectoryEntry] | None = None) -> None:
        self.entries = entries or {}

    def owner_of(self, key: MailboxKey) -> DirectoryEntry | None:
        return self.entries.get(key)

    def synchronized_security(self, tenant_id: str) -> bool | None:
        return None


# -------------------------------------------------------------- events ---


@given(
    tenant=st.text(min_size=1, max_size=20),
    mailbox=st.text(min_size=1, max_size=40),
    message_id=st.text(min_size=1, max_size=40),
    at=st.integers(min_value=0, max_value=253_402_300_799_999),
)
def test_internal_events_round_trip_in_a_pack(
    tenant: str, mailbox: str, message_id: str, at: int
) -> None:
    key = MailboxKey.of(tenant, mailbox)
    events = [
        Verdict(key, message_id, Direction.OUTBOUND, VerdictKind.VIRUS, at),
        Release(key, "actor", "reason ✓", at),
        Release(key, "actor", "reason", at, "action-1"),
        ExpiryTick(key, at),
        SweepTick(key),
    ]
    assert decode_key(encode_key(key)) == key
    packer = Packer(1)
    for event in events:
        packer.add(event)
    [pack] = packer.drain(at)
    partition, value = pack.partition, pack.value
    assert partition == 0
    assert decode_record(None, value, 0) == Pack(at, events)


def test_a_record_written_before_packs_is_read_with_its_record_time() -> None:
    value = (
        b'{"type":"verdict","message_id":"m","direction":"OUTBOUND","verdict":"SPAM",'
        b'"scanned_at":5,"v":1}'
    )
    pack = decode_record(encode_key(ALICE), value, 1234)
    assert pack == Pack(1234, [Verdict(ALICE, "m", Direction.OUTBOUND, VerdictKind.SPAM, 5)])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v": 3, "at": 1, "events": []}',
        b'{"v": 2, "events": []}',
        b'{"v": 2, "at": "1", "events": []}',
        b'{"v": 2, "at": 1, "events": [["t1", "a@x"]]}',
        b'{"v": 2, "at": 1, "events": [["t1", "a@x", {"type": "nope"}]]}',
        b'{"v": 2, "at": 1, "events": [["t1", 7, {"type": "sweep"}]]}',
        b'{"v": 2, "at": 1, "events": [["t1", "a@x", {"type": "verdict", "message_id": "m"}]]}',
        b'{"v": 2, "at": 1, "events": [["t1", "a@x", {"type": "verdict", "message_id": "m",'
        b' "direction": "UP", "verdict": "SPAM", "scanned_at": 1}]]}',
        b'{"v": 1, "type": "sweep"}',  # a version-1 record needs its key (none given)
    ],
)
def test_unreadable_internal_records_raise_the_format_error(data: bytes) -> None:
    with pytest.raises(EventFormatError):
        decode_record(None, data, 0)


@pytest.mark.parametrize("data", [b"", b"{}", b'["only-one"]', b"[1, 2]", b"\xff"])
def test_unreadable_keys_raise_the_format_error(data: bytes) -> None:
    with pytest.raises(EventFormatError):
        decode_key(data)


@given(st.binary(max_size=300))
def test_murmur2_is_kafkas(data: bytes) -> None:
    from aiokafka.partitioner import murmur2 as reference

    assert murmur2(data) & 0x7FFFFFFF == reference(data) & 0x7FFFFFFF
    assert partition_for(data, 7) == (reference(data) & 0x7FFFFFFF) % 7


# ------------------------------------------------------------- packing ---


def test_packs_keep_each_mailboxs_order_on_its_partition_and_stay_bounded() -> None:
    packer = Packer(4, max_events=10, max_bytes=2_000)
    keys = [MailboxKey.of("t1", f"user{n}@x.com") for n in range(8)]
    added = [
        Verdict(keys[i % 8], f"m{i}-" + "x" * (i % 50), Direction.OUTBOUND, VerdictKind.SPAM, i)
        for i in range(300)
    ]
    for event in added:
        assert packer.add(event) == partition_for(encode_key(event.key), 4)
    assert len(packer) == 300
    records = packer.drain(77)
    assert len(packer) == 0 and packer.drain(78) == []
    seen: list[Verdict] = []
    for record in records:
        partition, pack = record.partition, decode_record(None, record.value, 0)
        assert pack.at_ms == 77
        assert 1 <= len(pack.events) <= 10 and len(record.value) <= 2_000
        assert all(partition_for(encode_key(e.key), 4) == partition for e in pack.events)
        seen += [e for e in pack.events if isinstance(e, Verdict)]
    for key in keys:  # every event once, each mailbox's in the order added
        assert [e for e in seen if e.key == key] == [e for e in added if e.key == key]


def test_an_event_larger_than_a_pack_goes_alone() -> None:
    packer = Packer(1, max_bytes=500)
    packer.add(verdict("small", "10:00"))
    packer.add(verdict("x" * 1_000, "10:01"))
    packer.add(verdict("small2", "10:02"))
    sizes = [len(decode_record(None, pack.value, 0).events) for pack in packer.drain(1)]
    assert sizes == [1, 1, 1]


# ------------------------------------------------------------ handling ---


def one(
    config: PolicyConfig,
    stored: dict | None,
    event: MailboxEvent,
    now: int,
    context: Directory | None = None,
    offset: int = 0,
) -> Step:
    """`handle` of a pack holding just `event`, at `now`."""
    return handle(config, stored, [((offset, 0), now, event)], context or Directory())


def _burst(config: PolicyConfig, stored: dict | None = None) -> tuple[dict | None, list]:
    decisions = []
    for i in range(5):
        step = one(config, stored, verdict(f"m{i}", f"10:0{i}"), t(f"10:0{i}"), offset=i)
        decisions.extend(step.decisions)
        if step.action == STORE:
            stored = step.value
    return stored, decisions


def test_a_verdict_step_stores_the_new_state_and_a_clean_one_stores_nothing() -> None:
    config = PolicyConfig()
    stored, decisions = _burst(config)
    assert stored is not None and stored["state"]["offenses"] == 1
    assert stored["pos"] == [4, 0] and stored["clock"] == t("10:04")
    assert isinstance(decisions[0], Block)
    clean = one(config, stored, verdict("c", "10:05", kind="CLEAN"), t("10:05"), offset=5)
    assert (clean.action, clean.decisions) == (KEEP, [])


def test_a_release_or_tick_never_creates_state_for_an_unknown_mailbox() -> None:
    config = PolicyConfig()
    refused = one(config, None, Release(ALICE, "s", "r", t("10:00")), t("10:00"))
    assert refused.action == KEEP
    assert isinstance(refused.decisions[-1], Report)
    assert refused.decisions[-1].event == "release_refused"
    tick = one(config, None, ExpiryTick(ALICE, t("10:00")), t("10:00"))
    assert (tick.action, tick.decisions) == (KEEP, [])


def test_an_expiry_tick_unblocks_at_until_even_when_late() -> None:
    config = PolicyConfig()
    stored, _ = _burst(config)
    # the worker was down: the tick is handled at 13:00, the block ended at 11:04
    step = one(config, stored, ExpiryTick(ALICE, t("11:04")), t("13:00"), offset=5)
    unblock = step.decisions[0]
    assert isinstance(unblock, Unblock) and unblock.at_ms == t("11:04")
    assert step.action == STORE and step.value is not None
    assert step.value["state"]["until"] is None
    again = one(config, step.value, ExpiryTick(ALICE, t("11:04")), t("13:01"), offset=6)
    assert (again.action, again.decisions) == (KEEP, [])  # a repeated tick is harmless


def test_a_sweep_deletes_only_state_that_may_be_forgotten() -> None:
    #   10:00 one stray spam; rule 6 (window 10 min, max_lateness 1 d): forgettable from
    #   +1d 10:10:00.001 on, by the same `forgettable` the engine of `simulate` uses
    config = PolicyConfig()
    first = one(config, None, verdict("m0", "10:00"), t("10:00"))
    assert first.action == STORE
    early = one(config, first.value, SweepTick(ALICE), t("+1d 10:10"), offset=1)
    assert early.action == KEEP
    late = one(config, first.value, SweepTick(ALICE), t("+1d 10:10:00.001"), offset=1)
    assert late.action == DELETE
    offender, _ = _burst(config)
    kept = one(config, offender, SweepTick(ALICE), t("+9d 10:00"), offset=5)
    assert kept.action == STORE  # the block expired on the way; the offense is kept
    assert kept.value is not None and kept.value["state"]["offenses"] == 1


def test_a_mailboxs_events_in_one_pack_equal_the_same_events_one_by_one() -> None:
    config = PolicyConfig()
    directory = Directory({ALICE: DirectoryEntry(ALICE, "u1", ("d1",), t("09:00"))})
    events: list[MailboxEvent] = [verdict(f"m{i}", f"10:00:0{i}") for i in range(7)]
    events += [Release(ALICE, "s", "early", t("10:00:08")), ExpiryTick(ALICE, t("10:00:09"))]
    at = t("10:00:10")
    packed = handle(config, None, [((3, i), at, e) for i, e in enumerate(events)], directory)
    stored: dict | None = None
    singly: list = []
    for i, event in enumerate(events):
        step = handle(config, stored, [((3, i), at, event)], directory)
        singly += step.decisions
        stored = step.value if step.action == STORE else stored
    assert packed.decisions == singly
    assert [type(d).__name__ for d in packed.decisions][:1] == ["Block"]
    assert packed.value is not None and stored is not None
    assert packed.value["state"] == stored["state"]
    # The refused release and the early tick changed nothing: the position stored is
    # the last event's anyway, as the whole pack is in the state.
    assert packed.value["pos"] == [3, len(events) - 1]
    # The block's latency is measured from the verdict that triggered it.
    assert packed.sent[0][1] == t("10:00:04")


def test_a_backlogged_verdict_completes_a_window_the_sweep_kept() -> None:
    #   10:00 … 10:03 four spam; at 10:45 (more than two windows on) the sweep keeps the
    #   state, and a verdict scanned 10:04 arriving from a backlog completes the window
    config = PolicyConfig()
    stored = None
    for i in range(4):
        step = one(config, stored, verdict(f"m{i}", f"10:0{i}"), t(f"10:0{i}"), offset=i)
        stored = step.value
    assert one(config, stored, SweepTick(ALICE), t("10:45"), offset=4).action == KEEP
    step = one(config, stored, verdict("backlog", "10:04"), t("10:45"), offset=5)
    assert isinstance(step.decisions[0], Block) and step.decisions[0].at_ms == t("10:45")


def test_a_late_verdict_of_an_unknown_mailbox_stores_nothing() -> None:
    config = PolicyConfig()
    step = one(config, None, verdict("old", "10:00"), t("+1d 10:00:00.001"))
    assert (step.outcomes, step.action, step.decisions) == ([Outcome.LATE], KEEP, [])


# ------------------------------------------------------------- replays ---


def test_a_replayed_pack_skips_what_the_stored_state_includes_and_repeats_the_rest() -> None:
    # A pack at offset 9: alice's 5th spam (-> BLOCK) and bob's 5th spam (-> BLOCK).
    # The worker stored alice's state, then was killed before bob's. Read again
    # after the restart at a later wall clock, the pack is stepped at its own
    # `at`: alice's event is skipped (her state is stored again, for the
    # changelog) and bob's BLOCK comes out identical, times included.
    config = PolicyConfig(threshold=2)
    bob = MailboxKey.of("t1", "bob@example.com")
    at = t("10:00")
    first: dict[MailboxKey, dict] = {}
    for key in (ALICE, bob):
        v = verdict("a", "09:59:58", mailbox=key.mailbox)
        first[key] = handle(config, None, [((8, 0), at - 5, v)], Directory()).value or {}
    pack = [
        ((9, 0), at, verdict("b", "09:59:59", mailbox="alice@example.com")),
        ((9, 1), at, verdict("b", "09:59:59", mailbox="bob@example.com")),
    ]
    steps = {
        key: handle(config, first[key], [p], Directory())
        for key, p in zip((ALICE, bob), pack, strict=True)
    }
    assert all(isinstance(s.decisions[0], Block) for s in steps.values())
    stored_alice = steps[ALICE].value
    replay_alice = handle(config, stored_alice, [pack[0]], Directory())
    assert replay_alice.skipped == 1 and replay_alice.decisions == []
    assert replay_alice.action == STORE and replay_alice.value == stored_alice
    replay_bob = handle(config, first[bob], [pack[1]], Directory())
    assert replay_bob.decisions == steps[bob].decisions  # every field, at and until too


def test_a_replayed_event_the_stored_state_includes_is_skipped() -> None:
    # 10:00-10:04  five spam verdicts -> BLOCK until 11:04          (offsets 0-4)
    # 11:03        a verdict stamped 11:05 (scanner clock ahead,
    #              within the 5-minute allowance): ignored, blocked   (offset 5)
    # 11:04        expiry tick -> UNBLOCK, state stored              (offset 6)
    # crash before the offsets were committed: 5 and 6 are read again.
    # Applied again, the 11:05 verdict would now count (the block is over in the
    # stored state): a different state than the run without the crash.
    from prometheus_client import CollectorRegistry

    from processor.ops.metrics import Metrics
    from processor.stream.lookups import Lookups
    from processor.stream.runtime import Record, Runtime

    metrics = Metrics(CollectorRegistry())
    table: dict[bytes, bytes] = {}
    rt = Runtime(
        app=None,
        table=table,
        policy=PolicyConfig(),
        names=TopicNames(),
        partitions=1,
        outputs=None,  # type: ignore[arg-type]
        lookups=Lookups(),
        metrics=metrics,
    )
    key = encode_key(ALICE)
    events: list[tuple[MailboxEvent, int]] = [
        (verdict(f"m{i}", f"10:0{i}"), t(f"10:0{i}")) for i in range(5)
    ]
    events += [
        (verdict("skewed", "11:05"), t("11:03")),
        (ExpiryTick(ALICE, t("11:04")), t("11:04")),
    ]
    kinds = []
    for offset, (event, now) in enumerate(events):
        [mailbox] = rt.step([Record(None, 0, offset, Pack(now, [event]))])
        assert mailbox.key == key
        kinds += [type(d).__name__ for d in mailbox.step.decisions]
        rt.store(0, key, mailbox.step)
    assert kinds.count("Block") == 1 and kinds.count("Unblock") == 1
    after_first_run = table[key]

    for offset in (5, 6):
        event, now = events[offset]
        [mailbox] = rt.step([Record(None, 0, offset, Pack(t("11:10"), [event]))])
        assert mailbox.step.decisions == [] and mailbox.step.skipped == 1
        rt.store(0, key, mailbox.step)
    assert table[key] == after_first_run
    assert rt.load(key) is not None and rt.load(key)["window"] == []  # type: ignore[index]
    replayed = metrics.registry.get_sample_value("sendguard_events_replayed_total")
    assert replayed == 2
    # The next new event is handled as usual.
    [mailbox] = rt.step([Record(None, 0, 7, Pack(t("11:11"), [verdict("next", "11:11")]))])
    assert mailbox.step.skipped == 0 and mailbox.step.action == STORE


def test_a_state_written_before_packs_counts_as_including_its_record() -> None:
    config = PolicyConfig()
    stored, _ = _burst(config)
    assert stored is not None
    old = {"key": "k", "state": stored["state"], "offset": 4}
    assert stored_position(old) == (4, 0)
    assert one(config, old, verdict("m4", "10:04"), t("10:05"), offset=4).skipped == 1
    assert one(config, old, verdict("m5", "10:05"), t("10:05"), offset=5).skipped == 0


def test_a_pack_stamped_behind_the_mailboxs_clock_is_stepped_at_the_clock() -> None:
    # Two writers whose clocks disagree: a pack stamped 10:00 after one stamped
    # 10:05 must not move the mailbox's time back (a BLOCK before an UNBLOCK).
    config = PolicyConfig()
    stored, _ = _burst(config)
    assert stored is not None
    later = dict(stored, clock=t("10:30"))
    step = one(config, later, verdict("m9", "10:09"), t("10:10"), offset=9)
    assert step.value is not None and step.value["clock"] == t("10:30")


# -------------------------------------------------------------- expiry ---


def test_expiry_index_reports_due_blocks_in_until_order_and_retries_later() -> None:
    index = ExpiryIndex(retry_ms=10_000)
    index.update(0, b"a", {"until": 2_000, "permanent": False})
    index.update(1, b"b", {"until": 1_000, "permanent": False})
    index.update(1, b"p", {"until": None, "permanent": True})
    assert index.counts() == (2, 1)
    assert index.due(500) == []
    assert index.due(2_000) == [(1, b"b", 1_000), (0, b"a", 2_000)]
    assert index.due(2_500) == []  # already ticked, not yet worth a retry
    assert index.due(12_000) == [(1, b"b", 1_000), (0, b"a", 2_000)]
    index.update(1, b"b", {"until": None, "permanent": False})  # unblocked
    index.retain({1})  # partition 0 was revoked
    assert index.due(99_000) == []
    assert index.counts() == (0, 1)


# ------------------------------------------------------------- outputs ---


def test_decisions_become_avro_records_on_their_topics_commands_first() -> None:
    codec = Codec.from_config()
    outputs = Outputs(codec, TopicNames(prefix="x."))
    directory = Directory({ALICE: DirectoryEntry(ALICE, "u1", ("d1", "d2"), t("09:00"))})
    decisions = []
    stored = None
    for i in range(5):
        step = one(
            PolicyConfig(), stored, verdict(f"m{i}", f"10:0{i}"), t(f"10:0{i}"), directory, i
        )
        stored = step.value or stored
        decisions.extend(step.decisions)
    commands, rest = outputs.split_commands(decisions)
    assert [r.topic for r in commands] == ["x.mailbox.control"]
    assert [r.topic for r in rest] == ["x.endpoint.scan-requests"] * 2 + [
        "x.security.alerts",
        "x.mail.reports",
    ]
    name, command = codec.decode(commands[0].value)
    assert name.endswith("MailboxCommand")
    assert (command["action"], command["offense"], command["mailbox"]) == (
        "BLOCK",
        1,
        "alice@example.com",
    )
    assert command["command_id"] == decisions[0].command_id
    _, key = codec.decode(commands[0].key)
    assert key == {"tenant_id": "t1", "mailbox": "alice@example.com"}
    _, device_key = codec.decode(rest[0].key)
    assert device_key["device_id"] == "d1"


# ---------------------------------------------------------------- edge ---


class _ErrorMessage:
    def __init__(self, error: KafkaError) -> None:
        self._error = error

    def error(self) -> KafkaError:
        return self._error


class _Consumer:
    """Returns the given batches, then nothing; records commits and close."""

    def __init__(self, batches: list[list[_ErrorMessage]]) -> None:
        self.batches = batches
        self.polls = 0
        self.closed = False

    def subscribe(self, topics: list[str]) -> None:
        pass

    def consume(self, num_messages: int, timeout: float) -> list[_ErrorMessage]:
        self.polls += 1
        return self.batches.pop(0) if self.batches else []

    def commit(self, **options: object) -> None:
        pass

    def assignment(self) -> list[object]:
        return []

    def close(self) -> None:
        self.closed = True


class _Producer:
    def flush(self, timeout: float) -> int:
        return 0


def test_the_edge_stage_stops_on_a_fatal_consumer_error_and_not_on_others() -> None:
    # librdkafka reports FENCED_INSTANCE_ID of a static member as a fatal error, once;
    # the consumer then returns nothing for ever, so looping on would stall the stage.
    consumer = _Consumer(
        [
            [_ErrorMessage(KafkaError(KafkaError._TRANSPORT, "broker down"))],
            # As the consumer delivers it: code _FATAL, but fatal() false.
            [_ErrorMessage(KafkaError(KafkaError._FATAL, "fenced"))],
        ]
    )
    stage = EdgeStage(EdgeConfig({}, "g", "v", "s", "i", "d"), consumer, _Producer())
    reports: list[EdgeCounts] = []
    with pytest.raises(ConsumerFailed, match="fenced"):
        stage.run(lambda: consumer.polls >= 5, reports.append)
    assert consumer.polls == 2 and consumer.closed


# --------------------------------------------------------------- table ---


def test_a_state_recovered_from_the_changelog_is_found_under_the_agents_key() -> None:
    # The agent reads the table with the internal topic's key bytes. Recovery (after
    # a rebalance or a restart) decodes changelog keys with the table's own key
    # serializer: when that was JSON, the memory store filed the state under
    # ('t1', 'a@x.com') and the agent stepped the mailbox from scratch.
    import asyncio
    import json

    import faust
    from faust.types import Message

    from processor.stream.tables import define_state_table

    app = faust.App("unit", broker="kafka://127.0.0.1:9", autodiscover=False, store="memory://")
    table = define_state_table(app, 4)
    key = encode_key(ALICE)
    value = json.dumps({"key": key.decode(), "state": {"v": 1}}).encode()
    message = Message(
        topic=table.changelog_topic.get_topic_name(),
        partition=0,
        offset=0,
        timestamp=0.0,
        timestamp_type=0,
        headers=[],
        key=key,
        value=value,
        checksum=None,
    )
    event = asyncio.run(table.changelog_topic.decode(message))
    table.apply_changelog_batch([event])
    assert table.get(key) == value  # JSON bytes, decoded by the runtime


def test_a_partition_scope_makes_faust_see_the_named_event() -> None:
    # Faust's RocksDB store picks the database of a read or write from
    # faust.streams.current_event(); the agent names the record of each mailbox's
    # partition through PartitionScope. If Faust stops reading that variable, this fails.
    import inspect

    import faust.stores.rocksdb
    from faust.streams import current_event

    from processor.stream.tables import PartitionScope

    class _Event:  # what the store reads: event.message.partition
        class message:
            partition = 3

    event, other = _Event(), _Event()
    assert "current_event()" in inspect.getsource(faust.stores.rocksdb.Store._set)
    assert faust.stores.rocksdb.current_event is current_event
    scope = PartitionScope()
    assert current_event() is None
    scope.enter(event)
    assert current_event() is event
    scope.enter(other)
    assert current_event() is other
    scope.close()
    assert current_event() is None


def test_a_mailbox_whose_stored_value_cannot_be_read_does_not_fail_the_batch() -> None:
    from prometheus_client import CollectorRegistry

    from processor.ops.metrics import Metrics
    from processor.stream.lookups import Lookups
    from processor.stream.runtime import Record, Runtime

    bob = MailboxKey.of("t1", "bob@example.com")
    table = {encode_key(ALICE): b'{"key": "x", "state": {"v": 99}}'}
    rt = Runtime(
        app=None,
        table=table,
        policy=PolicyConfig(),
        names=TopicNames(),
        partitions=1,
        outputs=None,  # type: ignore[arg-type]
        lookups=Lookups(),
        metrics=Metrics(CollectorRegistry()),
    )
    pack = Pack(t("10:00"), [verdict("a", "10:00"), verdict("b", "10:00", mailbox=bob.mailbox)])
    [mailbox] = rt.step([Record(None, 0, 0, pack)])
    assert mailbox.key == encode_key(bob) and mailbox.step.action == STORE
