"""rspamd result -> Verdict: real captured bodies, the decisions, the limits, and fuzzing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.codec import records
from processor.codec.wire import Codec
from processor.mail.rspamd import (
    MAPPING_REASONS,
    MAX_ADDRESS,
    MappingRules,
    RspamdMappingError,
    map_rspamd,
    parse_networks,
    verdict_of,
)
from processor.mail.tenants import TenantMap
from processor.policy.events import Direction, VerdictKind

FIXTURES = Path(__file__).parents[1] / "fixtures" / "rspamd"
TENANTS = TenantMap.from_mapping({"acme.example": "acme", "globex.example": "globex"})
RULES = MappingRules(TENANTS)
AT = 1_796_046_373_000


def fixture(name: str) -> dict[str, Any]:
    payload: dict[str, Any] = json.loads((FIXTURES / f"{name}.json").read_text())
    return payload


def mapped(payload: dict[str, Any], rules: MappingRules = RULES) -> Any:
    return map_rspamd(json.dumps(payload).encode(), rules, AT)


@pytest.mark.parametrize(
    ("name", "tenant", "mailbox", "direction", "verdict"),
    [
        ("outbound-clean", "acme", "j.doe@acme.example", "OUTBOUND", "CLEAN"),
        ("outbound-spam-reject", "acme", "j.doe@acme.example", "OUTBOUND", "SPAM"),
        ("outbound-virus-clamav", "acme", "j.doe@acme.example", "OUTBOUND", "VIRUS"),
        ("inbound-spam-reject", "acme", "spammer@evil.example", "INBOUND", "SPAM"),
        ("inbound-clean", "acme", "friend@example.net", "INBOUND", "CLEAN"),
        ("bounce-no-message-id-add-header", "acme", "<>", "INBOUND", "SPAM"),
        ("inbound-spoofed-sender-8bit-headers", "acme", "spoof@acme.example", "INBOUND", "SPAM"),
    ],
)
def test_real_rspamd_bodies_map_to_the_expected_verdict(
    name: str, tenant: str, mailbox: str, direction: str, verdict: str
) -> None:
    body = (FIXTURES / f"{name}.json").read_bytes()

    result = map_rspamd(body, RULES, AT)

    assert (result.key.tenant_id, result.key.mailbox) == (tenant, mailbox)
    assert (result.direction.value, result.verdict.value) == (direction, verdict)
    assert result.scanned_at_ms == AT
    raw_id = json.loads(body)["message_id"]
    if raw_id == "undef":
        assert result.message_id.startswith("no-message-id#")
    else:
        assert result.message_id.startswith(raw_id + "#")


def test_every_fixture_is_covered_by_the_table() -> None:
    names = {p.stem for p in FIXTURES.glob("*.json")}
    assert len(names) == 7  # the parametrized table above names each one


# -- message id ----------------------------------------------------------------------


def test_a_rescan_of_the_same_message_gets_the_same_id() -> None:
    first = fixture("outbound-spam-reject")
    # What differs when Postfix retries the message and rspamd scans it again.
    again = {**first, "qid": "9F00A1B2C3", "ip": "127.0.0.2", "scan_time": 7, "score": 21.5}
    again["symbols"] = [*first["symbols"], {"name": "NEW_RULE", "score": 1.0}]

    assert mapped(first).message_id == mapped(again).message_id


@pytest.mark.parametrize(
    "change",
    [
        {"rcpt": ["other@example.net"]},
        {"header_subject": ["another subject"]},
        {"header_date": ["Tue, 01 Dec 2026 09:00:00 +0000"]},
        {"header_to": ["else@example.net"]},
    ],
)
def test_a_reused_message_id_on_a_different_message_gets_another_id(
    change: dict[str, Any],
) -> None:
    first = fixture("outbound-spam-reject")

    other = mapped({**first, **change})

    assert other.message_id != mapped(first).message_id
    assert other.message_id.split("#")[0] == first["message_id"]


def test_without_a_message_id_the_id_is_still_stable_and_distinct() -> None:
    payload = {**fixture("outbound-clean"), "message_id": "undef"}

    one = mapped(payload)

    assert one.message_id.startswith("no-message-id#")
    assert one.message_id == mapped(payload).message_id
    assert one.message_id != mapped({**payload, "rcpt": ["z@example.net"]}).message_id


def test_a_hostile_message_id_is_cut_and_cleaned_but_still_tells_messages_apart() -> None:
    base = fixture("outbound-clean")
    long_id = "x" * 5000 + "\u0000\ud800"

    one = mapped({**base, "message_id": long_id})
    two = mapped({**base, "message_id": long_id + "y"})

    readable, _, digest = one.message_id.partition("#")
    assert readable == "x" * 200 and len(digest) == 16
    assert one.message_id != two.message_id


# -- mailbox, direction, tenant ------------------------------------------------------


def test_the_authenticated_login_is_the_mailbox_whatever_the_envelope_sender() -> None:
    payload = {**fixture("outbound-spam-reject"), "from": "someone-else@globex.example"}

    result = mapped(payload)

    assert result.key == type(result.key)("acme", "j.doe@acme.example")
    assert result.direction is Direction.OUTBOUND


def test_a_bare_login_falls_back_to_the_envelope_sender_and_stays_outbound() -> None:
    payload = {**fixture("outbound-spam-reject"), "user": "jdoe", "from": "J.Doe@Acme.Example"}

    result = mapped(payload)

    assert result.key.mailbox == "j.doe@acme.example"
    assert result.direction is Direction.OUTBOUND


def test_an_unauthenticated_client_on_a_local_network_is_outbound() -> None:
    payload = {**fixture("outbound-spam-reject"), "user": "unknown", "ip": "10.1.2.3"}
    rules = MappingRules(TENANTS, local_networks=parse_networks(["10.0.0.0/8"]))

    assert mapped(payload, rules).direction is Direction.OUTBOUND
    assert mapped(payload).direction is Direction.INBOUND  # not a local network by default


def test_a_forged_tenant_sender_from_outside_is_inbound_and_never_qualifies() -> None:
    payload = fixture("inbound-spam-reject") | {"from": "j.doe@acme.example"}

    result = mapped(payload)

    assert result.direction is Direction.INBOUND
    assert result.verdict is VerdictKind.SPAM
    assert not result.qualifies


def test_inbound_mail_belongs_to_the_first_recipient_tenant() -> None:
    payload = fixture("inbound-spam-reject") | {
        "rcpt": ["a@example.net", "b@globex.example", "c@acme.example"],
        "from": "j.doe@acme.example",
    }

    assert mapped(payload).key.tenant_id == "globex"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"user": "j.doe@unknown.example"}, "unknown_tenant"),
        ({"user": "jdoe", "from": "x@unknown.example"}, "unknown_tenant"),
        ({"user": "jdoe", "from": ""}, "unknown_tenant"),
        ({"user": "unknown", "ip": "127.0.0.1", "from": ""}, "no_sender"),
        ({"user": "unknown", "ip": "127.0.0.1", "from": "unknown"}, "no_sender"),
        ({"user": "a" * MAX_ADDRESS + "@acme.example"}, "field_too_long"),
        ({"from": "j doe@acme.example"}, "bad_field"),
        ({"user": "j.doe@acme.example\r\nX: y"}, "bad_field"),
        ({"rcpt": ["ok@example.net", 7]}, "bad_field"),
        ({"rcpt": "someone@example.net"}, "bad_field"),
        ({"ip": "999.1.1.1"}, "bad_field"),
        ({"ip": ["127.0.0.1"]}, "bad_field"),
        ({"action": None}, "bad_field"),
        ({"action": "x" * 65}, "field_too_long"),
        ({"symbols": {"GTUBE": {}}}, "bad_field"),
        ({"symbols": [{"score": 1}]}, "bad_field"),
        ({"symbols": [{"name": "S" * 129}]}, "field_too_long"),
    ],
)
def test_results_that_cannot_be_a_verdict_raise_the_mapping_error(
    change: dict[str, Any], reason: str
) -> None:
    payload = fixture("outbound-clean") | change

    with pytest.raises(RspamdMappingError) as raised:
        mapped(payload)

    assert raised.value.reason == reason
    assert len(raised.value.detail) < 300


def test_inbound_mail_for_no_known_tenant_is_unknown_tenant() -> None:
    payload = fixture("inbound-clean") | {"rcpt": ["x@example.org"], "from": "y@example.net"}

    with pytest.raises(RspamdMappingError, match="unknown_tenant"):
        mapped(payload)


@pytest.mark.parametrize(
    "body", [b"", b"not json", b"[1, 2]", b'"text"', b"[" * 100_000, b"\xff\xfe{}"]
)
def test_bodies_that_are_not_a_json_object_are_not_json(body: bytes) -> None:
    with pytest.raises(RspamdMappingError) as raised:
        map_rspamd(body, RULES, AT)

    assert raised.value.reason == "not_json"


# -- verdict kind --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("action", "verdict"),
    [
        ("reject", "SPAM"),
        ("add header", "SPAM"),
        ("rewrite subject", "SPAM"),
        ("discard", "SPAM"),
        ("quarantine", "SPAM"),
        ("soft reject", "CLEAN"),
        ("greylist", "CLEAN"),
        ("no action", "CLEAN"),
    ],
)
def test_the_action_decides_spam(action: str, verdict: str) -> None:
    assert mapped(fixture("outbound-clean") | {"action": action}).verdict.value == verdict


@pytest.mark.parametrize(
    ("symbols", "verdict"),
    [
        ([{"name": "CLAM_VIRUS", "group": "antivirus", "groups": ["antivirus"]}], "VIRUS"),
        ([{"name": "SOPHOS", "groups": ["antivirus"]}], "VIRUS"),  # any name in the group
        ([{"name": "JUST_EICAR", "group": "antivirus"}], "VIRUS"),
        ([{"name": "CLAM_VIRUS"}], "VIRUS"),  # the configured name, whatever its group
        ([{"name": "CLAM_VIRUS_FAIL", "groups": ["antivirus"]}], "CLEAN"),
        ([{"name": "CLAM_VIRUS_ENCRYPTED", "groups": ["antivirus"]}], "CLEAN"),
        ([{"name": "CLAM_VIRUS_MACRO", "groups": ["antivirus"]}], "CLEAN"),
        ([{"name": "GTUBE", "group": "ungrouped"}], "SPAM"),
        ([{"name": "BAYES_SPAM", "groups": ["statistics"]}], "CLEAN"),
        ([{"name": "X", "groups": [["nested"], 3, None]}], "CLEAN"),
    ],
)
def test_symbols_decide_virus_before_spam(symbols: list[dict[str, Any]], verdict: str) -> None:
    payload = fixture("outbound-clean") | {"symbols": symbols, "action": "no action"}

    assert mapped(payload).verdict.value == verdict


def test_a_virus_outranks_a_spam_action() -> None:
    payload = fixture("outbound-spam-reject")
    payload["symbols"].append({"name": "CLAM_VIRUS", "groups": ["antivirus"]})

    assert mapped(payload).verdict is VerdictKind.VIRUS


def test_operators_can_name_their_own_virus_symbols() -> None:
    payload = fixture("outbound-clean") | {"symbols": [{"name": "MY_AV"}]}

    assert mapped(payload).verdict is VerdictKind.CLEAN
    rules = MappingRules(TENANTS, virus_symbols=frozenset({"MY_AV"}))
    assert mapped(payload, rules).verdict is VerdictKind.VIRUS


def test_parse_networks_names_a_bad_network() -> None:
    with pytest.raises(ValueError, match="'nope' is not an IP network"):
        parse_networks(["10.0.0.0/8", "nope"])


def test_the_scan_time_must_be_a_time() -> None:
    with pytest.raises(ValueError, match="not a time"):
        verdict_of(fixture("outbound-clean"), RULES, -1)


# -- fuzzing -------------------------------------------------------------------------

CODEC = Codec.from_config()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
addresses = st.one_of(
    st.just("unknown"),
    st.just(""),
    st.sampled_from(["j.doe@acme.example", "x@globex.example", "a@evil.example", "jdoe"]),
    st.text(max_size=300),
    json_values,
)
# Payloads shaped like rspamd's, with any value in any field, or missing fields.
rspamd_like = st.fixed_dictionaries(
    {},
    optional={
        "user": addresses,
        "from": addresses,
        "ip": st.one_of(
            st.sampled_from(["127.0.0.1", "203.0.113.7", "::1", "unknown"]), json_values
        ),
        "rcpt": st.one_of(st.lists(addresses, max_size=3), json_values),
        "action": st.one_of(st.sampled_from(["reject", "no action", "add header"]), json_values),
        "message_id": st.one_of(st.text(), json_values),
        "symbols": st.one_of(
            st.lists(
                st.fixed_dictionaries(
                    {"name": st.one_of(st.sampled_from(["CLAM_VIRUS", "GTUBE", "X"]), st.text())},
                    optional={"group": json_values, "groups": json_values},
                ),
                max_size=3,
            ),
            json_values,
        ),
        "header_subject": json_values,
        "header_date": json_values,
    },
)


def _maps_or_raises_its_own_error(body: bytes) -> None:
    try:
        verdict = map_rspamd(body, RULES, AT)
    except RspamdMappingError as error:
        assert error.reason in MAPPING_REASONS
        return
    # Whatever maps is a record the codec can write (no lone surrogates, no empty ids).
    name, record = records.record_of(verdict)
    assert records.verdict_from_record(CODEC.decode_as(name, CODEC.encode(name, record)))
    assert verdict.key.tenant_id in {"acme", "globex"}


@settings(max_examples=300, deadline=None)
@given(rspamd_like)
def test_any_rspamd_shaped_payload_maps_or_raises_the_mapping_error(payload: Any) -> None:
    _maps_or_raises_its_own_error(json.dumps(payload).encode())


@settings(max_examples=200, deadline=None)
@given(json_values)
def test_any_json_maps_or_raises_the_mapping_error(value: Any) -> None:
    _maps_or_raises_its_own_error(json.dumps(value).encode())


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_map_or_raise_the_mapping_error(body: bytes) -> None:
    _maps_or_raises_its_own_error(body)
