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
    SweepTick,
    decode_event,
    decode_key,
    encode_event,
    encode_key,
)
from processor.stream.expiry import ExpiryIndex
from processor.stream.handling import DELETE, KEEP, STORE, handle
from processor.stream.outputs import Outputs
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
def test_internal_events_round_trip(tenant: str, mailbox: str, message_id: str, at: int) -> None:
    key = MailboxKey.of(tenant, mailbox)
    for event in (
        Verdict(key, message_id, Direction.OUTBOUND, VerdictKind.VIRUS, at),
        Release(key, "actor", "reason ✓", at),
        Release(key, "actor", "reason", at, "action-1"),
        ExpiryTick(key, at),
        SweepTick(key),
    ):
        assert decode_key(encode_key(key)) == key
        assert decode_event(key, encode_event(event)) == event


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"[]",
        b'{"v": 2, "type": "sweep"}',
        b'{"v": 1, "type": "nope"}',
        b'{"v": 1, "type": "verdict", "message_id": "m"}',
        b'{"v": 1, "type": "verdict", "message_id": "m", "direction": "UP", "verdict": "SPAM",'
        b' "scanned_at": 1}',
    ],
)
def test_unreadable_internal_events_raise_the_format_error(data: bytes) -> None:
    with pytest.raises(EventFormatError):
        decode_event(ALICE, data)


@pytest.mark.parametrize("data", [b"", b"{}", b'["only-one"]', b"[1, 2]", b"\xff"])
def test_unreadable_keys_raise_the_format_error(data: bytes) -> None:
    with pytest.raises(EventFormatError):
        decode_key(data)


# ------------------------------------------------------------ handling ---


def _burst(config: PolicyConfig, stored: dict | None = None) -> tuple[dict | None, list]:
    decisions = []
    for i in range(5):
        step = handle(config, stored, verdict(f"m{i}", f"10:0{i}"), t(f"10:0{i}"), Directory())
        decisions.extend(step.decisions)
        if step.action == STORE:
            stored = step.record
    return stored, decisions


def test_a_verdict_step_stores_the_new_state_and_a_clean_one_stores_nothing() -> None:
    config = PolicyConfig()
    stored, decisions = _burst(config)
    assert stored is not None and stored["offenses"] == 1
    assert isinstance(decisions[0], Block)
    clean = handle(config, stored, verdict("c", "10:05", kind="CLEAN"), t("10:05"), Directory())
    assert (clean.action, clean.decisions) == (KEEP, [])


def test_a_release_or_tick_never_creates_state_for_an_unknown_mailbox() -> None:
    config = PolicyConfig()
    refused = handle(config, None, Release(ALICE, "s", "r", t("10:00")), t("10:00"), Directory())
    assert refused.action == KEEP and refused.refused is not None
    assert isinstance(refused.decisions[-1], Report)
    assert refused.decisions[-1].event == "release_refused"
    tick = handle(config, None, ExpiryTick(ALICE, t("10:00")), t("10:00"), Directory())
    assert (tick.action, tick.decisions) == (KEEP, [])


def test_an_expiry_tick_unblocks_at_until_even_when_late() -> None:
    config = PolicyConfig()
    stored, _ = _burst(config)
    # the worker was down: the tick is handled at 13:00, the block ended at 11:04
    step = handle(config, stored, ExpiryTick(ALICE, t("11:04")), t("13:00"), Directory())
    unblock = step.decisions[0]
    assert isinstance(unblock, Unblock) and unblock.at_ms == t("11:04")
    assert step.action == STORE and step.record is not None and step.record["until"] is None
    again = handle(config, step.record, ExpiryTick(ALICE, t("11:04")), t("13:01"), Directory())
    assert (again.action, again.decisions) == (KEEP, [])  # a repeated tick is harmless


def test_a_sweep_deletes_only_state_that_may_be_forgotten() -> None:
    #   10:00 one stray spam; rule 6 (window 10 min, max_lateness 1 d): forgettable from
    #   +1d 10:10:00.001 on, by the same `forgettable` the engine of `simulate` uses
    config = PolicyConfig()
    first = handle(config, None, verdict("m0", "10:00"), t("10:00"), Directory())
    assert first.action == STORE
    early = handle(config, first.record, SweepTick(ALICE), t("+1d 10:10"), Directory())
    assert early.action == KEEP
    late = handle(config, first.record, SweepTick(ALICE), t("+1d 10:10:00.001"), Directory())
    assert late.action == DELETE
    offender, _ = _burst(config)
    kept = handle(config, offender, SweepTick(ALICE), t("+9d 10:00"), Directory())
    assert kept.action == STORE  # the block expired on the way; the offense is kept
    assert kept.record is not None and kept.record["offenses"] == 1


def test_a_backlogged_verdict_completes_a_window_the_sweep_kept() -> None:
    #   10:00 … 10:03 four spam; at 10:45 (more than two windows on) the sweep keeps the
    #   state, and a verdict scanned 10:04 arriving from a backlog completes the window
    config = PolicyConfig()
    stored = None
    for i in range(4):
        step = handle(config, stored, verdict(f"m{i}", f"10:0{i}"), t(f"10:0{i}"), Directory())
        stored = step.record
    assert handle(config, stored, SweepTick(ALICE), t("10:45"), Directory()).action == KEEP
    step = handle(config, stored, verdict("backlog", "10:04"), t("10:45"), Directory())
    assert isinstance(step.decisions[0], Block) and step.decisions[0].at_ms == t("10:45")


def test_a_late_verdict_of_an_unknown_mailbox_stores_nothing() -> None:
    config = PolicyConfig()
    step = handle(config, None, verdict("old", "10:00"), t("+1d 10:00:00.001"), Directory())
    assert (step.outcome, step.action, step.decisions) == (Outcome.LATE, KEEP, [])


# ------------------------------------------------------------- replays ---


def test_a_replayed_event_the_stored_state_includes_is_skipped() -> None:
    # 10:00-10:04  five spam verdicts -> BLOCK until 11:04          (offsets 0-4)
    # 11:03        a verdict stamped 11:05 (scanner clock ahead,
    #              within the 5-minute allowance): ignored, blocked   (offset 5)
    # 11:04        expiry tick -> UNBLOCK, state stored              (offset 6)
    # crash before the offsets were committed: 5 and 6 are read again at 11:10.
    # Applied again, the 11:05 verdict would now count (the block is over in the
    # stored state): a different state than the run without the crash.
    from prometheus_client import CollectorRegistry

    from processor.ops.metrics import Metrics
    from processor.stream.lookups import Lookups
    from processor.stream.runtime import Runtime

    metrics = Metrics(CollectorRegistry())
    rt = Runtime(
        app=None,
        table={},
        policy=PolicyConfig(),
        names=TopicNames(),
        partitions=4,
        outputs=None,
        lookups=Lookups(),
        metrics=metrics,
    )
    key = encode_key(ALICE)
    events = [(verdict(f"m{i}", f"10:0{i}"), t(f"10:0{i}")) for i in range(5)]
    events += [
        (verdict("skewed", "11:05"), t("11:03")),
        (ExpiryTick(ALICE, t("11:04")), t("11:04")),
    ]
    kinds = []
    for offset, (event, now) in enumerate(events):
        step = rt.step(key, 0, offset, event, now)
        assert step is not None
        kinds += [type(d).__name__ for d in step.decisions]
        rt.store(key, 0, offset, step)
    assert kinds.count("Block") == 1 and kinds.count("Unblock") == 1
    after_first_run = dict(rt.table[key])

    for offset in (5, 6):
        event, _ = events[offset]
        assert rt.step(key, 0, offset, event, t("11:10")) is None
    assert rt.table[key] == after_first_run
    assert after_first_run["state"]["window"] == []
    replayed = metrics.registry.get_sample_value("sendguard_events_replayed_total")
    assert replayed == 2
    # The next new event is handled as usual.
    assert rt.step(key, 0, 7, verdict("next", "11:11"), t("11:11")) is not None


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
        step = handle(
            PolicyConfig(), stored, verdict(f"m{i}", f"10:0{i}"), t(f"10:0{i}"), directory
        )
        stored = step.record or stored
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
    assert table.get(key) == {"key": key.decode(), "state": {"v": 1}}
