"""`processor.codec.records`: records -> policy events (validated) and decisions -> records."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processor.codec.errors import DecodeError
from processor.codec.records import (
    MAX_TIMESTAMP_MS,
    dead_letter_record,
    directory_entry_from_record,
    key_of,
    mailbox_key_from_record,
    record_of,
    release_attempt_record,
    release_from_record,
    tenant_settings_from_record,
    topic_of,
    verdict_from_record,
)
from processor.codec.wire import Codec, CodecConfig
from processor.policy.decisions import Decision, decision_id
from processor.policy.events import (
    Direction,
    DirectoryEntry,
    Release,
    TenantSettings,
    Verdict,
    VerdictKind,
)
from processor.topics import load_topics
from tests.unit.decision_fixtures import HOUR, KEY, T0, one_of_each

CODEC = Codec.from_config(CodecConfig())

VERDICT = {
    "tenant_id": "t1",
    "message_id": "m1",
    "mailbox": "  Alice@Example.COM ",
    "direction": "OUTBOUND",
    "verdict": "SPAM",
    "scanned_at": T0,
}


def test_a_verdict_record_becomes_a_normalised_verdict() -> None:
    assert verdict_from_record(VERDICT) == Verdict(
        KEY, "m1", Direction.OUTBOUND, VerdictKind.SPAM, T0
    )


def test_a_decoded_verdict_validates() -> None:
    _, record = CODEC.decode(CODEC.encode("Verdict", VERDICT))
    assert verdict_from_record(record).key == KEY


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("tenant_id", None, "missing"),
        ("message_id", None, "missing"),
        ("mailbox", None, "missing"),
        ("direction", None, "missing"),
        ("verdict", None, "missing"),
        ("scanned_at", None, "missing"),
        ("tenant_id", "", "empty"),
        ("tenant_id", 7, "expected a string"),
        ("message_id", "   ", "empty"),
        ("mailbox", " ", "empty"),
        ("direction", "SIDEWAYS", "not one of"),
        ("direction", ["OUTBOUND"], "not one of"),
        ("verdict", "spam?", "not one of"),
        ("scanned_at", -1, "before 1970 or after year 9999"),
        ("scanned_at", MAX_TIMESTAMP_MS + 1, "before 1970 or after year 9999"),
        ("scanned_at", 1.5e12, "expected epoch milliseconds"),
        ("scanned_at", True, "expected epoch milliseconds"),
        ("scanned_at", "2026-01-05T10:00:00Z", "expected epoch milliseconds"),
    ],
)
def test_a_bad_verdict_field_is_named(field: str, value: object, problem: str) -> None:
    record = dict(VERDICT)
    if value is None:
        del record[field]
    else:
        record[field] = value
    with pytest.raises(DecodeError) as raised:
        verdict_from_record(record)
    assert raised.value.reason == "invalid_record"
    assert f"Verdict.{field}" in raised.value.detail
    assert problem in raised.value.detail


def test_the_last_millisecond_of_year_9999_is_still_a_timestamp() -> None:
    assert verdict_from_record({**VERDICT, "scanned_at": MAX_TIMESTAMP_MS}).scanned_at_ms == (
        MAX_TIMESTAMP_MS
    )


def test_a_verdict_that_is_not_a_record_is_invalid() -> None:
    with pytest.raises(DecodeError) as raised:
        verdict_from_record(["not", "a", "dict"])  # type: ignore[arg-type]
    assert raised.value.reason == "invalid_record"


_ANY_VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**64), 2**64),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.sampled_from(["OUTBOUND", "INBOUND", "CLEAN", "SPAM", "VIRUS", "x@y"]),
    st.lists(st.integers(), max_size=2),
)


@given(changes=st.dictionaries(st.sampled_from(sorted(VERDICT)), _ANY_VALUE, max_size=3))
def test_verdict_validation_accepts_or_names_a_field(changes: dict[str, Any]) -> None:
    # The fast path and the slow path that explains a rejection must agree: any
    # record is either a Verdict or an invalid_record naming one of its fields.
    record = {**VERDICT, **changes}
    try:
        verdict = verdict_from_record(record)
    except DecodeError as exc:
        assert exc.reason == "invalid_record"
        assert any(f"Verdict.{field}:" in exc.detail for field in VERDICT), exc.detail
    else:
        assert verdict.message_id == record["message_id"]
        assert verdict.scanned_at_ms == record["scanned_at"]


def test_a_directory_record_becomes_a_directory_entry() -> None:
    entry = directory_entry_from_record(
        {
            "tenant_id": "t1",
            "mailbox": "Alice@example.com",
            "owner_id": "u1",
            "devices": ["d1", "d2"],
            "at": T0,
        }
    )
    assert entry == DirectoryEntry(KEY, "u1", ("d1", "d2"), T0)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"owner_id": ""}, "DirectoryEntry.owner_id"),
        ({"devices": "d1"}, "DirectoryEntry.devices"),
        ({"devices": ["d1", ""]}, "DirectoryEntry.devices[1]"),
        ({"at": -5}, "DirectoryEntry.at"),
        ({"mailbox": 3}, "DirectoryEntry.mailbox"),
    ],
)
def test_a_bad_directory_field_is_named(change: dict[str, object], named: str) -> None:
    record = {"tenant_id": "t1", "mailbox": "a@b", "owner_id": "u", "devices": [], "at": T0}
    with pytest.raises(DecodeError, match=re.escape(named)):
        directory_entry_from_record({**record, **change})


def test_tenant_settings_need_a_real_boolean() -> None:
    record = {"tenant_id": "t1", "synchronized_security": False, "at": T0}
    assert tenant_settings_from_record(record) == TenantSettings("t1", False, T0)
    with pytest.raises(DecodeError, match=r"TenantSettings\.synchronized_security"):
        tenant_settings_from_record({**record, "synchronized_security": 0})


def test_a_support_action_becomes_a_release() -> None:
    record = {
        "action_id": "a1",
        "action": "RELEASE",
        "tenant_id": "t1",
        "mailbox": "ALICE@example.com",
        "actor": "sup-1",
        "reason": "owner verified",
        "at": T0,
    }
    assert release_from_record(record) == Release(KEY, "sup-1", "owner verified", T0, "a1")
    for field in ("action_id", "actor", "reason"):
        with pytest.raises(DecodeError, match=rf"SupportAction\.{field}:"):
            release_from_record({**record, field: ""})
    with pytest.raises(DecodeError, match=r"SupportAction\.action:"):
        release_from_record({**record, "action": "DELETE"})


def test_a_mailbox_key_record_is_normalised() -> None:
    assert mailbox_key_from_record({"tenant_id": "t1", "mailbox": " Alice@Example.com"}) == KEY


# -- outbound -------------------------------------------------------------------

DECISIONS: list[Decision] = one_of_each()
EVENTS: list[Verdict | DirectoryEntry | TenantSettings | Release] = [
    Verdict(KEY, "m1", Direction.OUTBOUND, VerdictKind.VIRUS, T0),
    DirectoryEntry(KEY, "u1", ("d1", "d2"), T0),
    TenantSettings("t1", True, T0),
    Release(KEY, "sup-1", "owner verified", T0, "action-1"),
]
TOPICS = {spec.name: spec for spec in load_topics()}


@pytest.mark.parametrize("obj", [*DECISIONS, *EVENTS], ids=lambda o: type(o).__name__)
def test_records_fit_their_schema_key_and_topic(obj: Any) -> None:
    name, record = record_of(obj)
    key_name, key = key_of(obj)
    spec = TOPICS[topic_of(obj)]
    assert spec.value_schema == name
    assert spec.key_schema in (key_name, None)  # None: the topic's key is free-form
    assert CODEC.decode(CODEC.encode(name, record)) == (f"io.sendguard.v1.{name}", record)
    assert CODEC.decode(CODEC.encode(key_name, key)) == (f"io.sendguard.v1.{key_name}", key)


def test_a_block_is_a_block_command() -> None:
    _, record = record_of(DECISIONS[0])
    assert record == {
        "command_id": decision_id(KEY, 3, "block"),
        "action": "BLOCK",
        "tenant_id": "t1",
        "mailbox": "alice@example.com",
        "at": T0,
        "offense": 2,
        "permanent": False,
        "until": T0 + 2 * HOUR,
        "reason": None,
        "actor": None,
        "note": None,
        "block_sequence": 3,
    }


def test_a_release_unblock_carries_its_actor_and_note() -> None:
    _, record = record_of(DECISIONS[3])
    assert record["action"] == "UNBLOCK"
    assert (record["reason"], record["actor"], record["note"]) == ("released", "sup-1", "verified")
    assert (record["permanent"], record["until"], record["offense"]) == (False, None, 6)


def test_an_alert_carries_its_evidence() -> None:
    _, record = record_of(DECISIONS[5])
    assert record["evidence"] == [
        {"message_id": "m1", "scanned_at": T0 - 60_000},
        {"message_id": "m2", "scanned_at": T0},
    ]
    assert record["devices"] == ["d1"]
    assert record["scans_requested"] is True


def test_scan_requests_are_keyed_by_device() -> None:
    assert key_of(DECISIONS[4]) == ("DeviceKey", {"tenant_id": "t1", "device_id": "d1"})


@pytest.mark.parametrize("event", EVENTS, ids=lambda o: type(o).__name__)
def test_input_events_survive_the_wire(event: Any) -> None:
    parse = {
        Verdict: verdict_from_record,
        DirectoryEntry: directory_entry_from_record,
        TenantSettings: tenant_settings_from_record,
        Release: release_from_record,
    }[type(event)]
    name, record = record_of(event)
    assert parse(CODEC.decode_as(name, CODEC.encode(name, record))) == event


def test_a_release_built_twice_has_one_action_id() -> None:
    release = Release(KEY, "sup-1", "owner verified", T0)  # no id of its own (scenario)
    assert record_of(release)[1]["action_id"] == record_of(release)[1]["action_id"]
    later = Release(KEY, "sup-1", "owner verified", T0 + 1)
    assert record_of(later)[1]["action_id"] != record_of(release)[1]["action_id"]
    assert record_of(EVENTS[3])[1]["action_id"] == "action-1"  # the API's id is kept


def test_a_release_attempt_is_a_report_with_its_own_fields() -> None:
    record = release_attempt_record(
        attempt_id="att-1",
        tenant_id="t1",
        mailbox="alice@example.com",
        at_ms=T0,
        actor=None,
        reason=None,
        source="192.0.2.7",
        outcome="unauthenticated",
        status=401,
    )
    decoded = CODEC.decode_as("Report", CODEC.encode("Report", record))
    assert decoded == record
    assert (decoded["event"], decoded["action_id"], decoded["status"]) == (
        "release_attempt",
        "att-1",
        401,
    )
    again = release_attempt_record(**{**_attempt_fields(record), "status": 401})
    assert again["report_id"] == record["report_id"]  # one attempt, one id
    other = release_attempt_record(**{**_attempt_fields(record), "attempt_id": "att-2"})
    assert other["report_id"] != record["report_id"]


def _attempt_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "attempt_id": record["action_id"],
        "tenant_id": record["tenant_id"],
        "mailbox": record["mailbox"],
        "at_ms": record["at"],
        "actor": record["actor"],
        "reason": record["reason"],
        "source": record["source"],
        "outcome": record["outcome"],
        "status": record["status"],
    }


def test_a_dead_letter_keeps_the_original_bytes() -> None:
    record = dead_letter_record(
        "not_avro",
        "3 bytes",
        source_topic="mail.verdicts",
        source_partition=2,
        source_offset=41,
        key=None,
        value=b"{x}",
        at_ms=T0,
    )
    assert CODEC.decode_as("DeadLetter", CODEC.encode("DeadLetter", record))["value"] == b"{x}"
