"""What the gateway answers: the mailbox a request is judged by, texts, stale policy (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from processor.mail.blocklist import Blocklist, command_from_record
from processor.mail.policy_answers import (
    DUNNO_REPLY,
    AnswerConfig,
    Answerer,
    format_until,
    malformed_reply,
    request_mailbox,
)
from processor.mail.policy_protocol import (
    PolicyProtocolError,
    PolicyRequest,
    parse_reply,
)
from processor.mail.tenant_resolution import DirectoryIndex, TenantResolver
from processor.mail.tenants import TenantMap

HOUR = 3_600_000
T0 = 1_767_607_200_000  # 2026-01-05T10:00:00Z


def block(mailbox: str, tenant: str = "acme", **overrides: Any) -> Any:
    rec: dict[str, Any] = {
        "command_id": f"{mailbox}-1",
        "action": "BLOCK",
        "tenant_id": tenant,
        "mailbox": mailbox,
        "at": T0,
        "offense": 1,
        "permanent": False,
        "until": T0 + HOUR,
        "block_sequence": 1,
    }
    rec.update(overrides)
    return command_from_record(rec)


def request(**attributes: str) -> PolicyRequest:
    return PolicyRequest({"request": "smtpd_access_policy", **attributes})


def answerer(config: AnswerConfig | None = None) -> Answerer:
    blocks = Blocklist()
    blocks.apply(block("alice@acme.example"))
    blocks.apply(block("perm@acme.example", permanent=True, until=None))
    blocks.apply(block("carol@initech.example", tenant="umbrella"))
    directory = DirectoryIndex()
    directory.put("initech", "carol@initech.example")
    directory.put("umbrella", "carol@initech.example")
    resolver = TenantResolver(TenantMap.from_mapping({"acme.example": "acme"}), directory)
    return Answerer(config or AnswerConfig(), blocks, resolver)


def test_a_blocked_sender_is_rejected_saying_until_when() -> None:
    answer = answerer().answer(request(sender="Alice@ACME.example"), T0 + 5, 0.0)

    assert answer.action == "reject" and answer.outcome == "blocked"
    assert parse_reply(answer.reply) == (
        "REJECT 5.7.1 This mailbox is blocked from sending until 2026-01-05T11:00:00Z "
        "because it sent spam or viruses"
    )
    assert answer.source == "map" and answer.block is not None


def test_a_permanent_block_says_so_and_to_contact_support() -> None:
    answer = answerer().answer(request(sender="perm@acme.example"), T0 + 10 * HOUR, 0.0)
    text = parse_reply(answer.reply)
    assert text.startswith("REJECT 5.7.1 ") and "permanently" in text and "contact support" in text


def test_others_and_ended_blocks_get_dunno() -> None:
    gateway = answerer()
    assert gateway.answer(request(sender="bob@acme.example"), T0, 0.0).reply == DUNNO_REPLY
    ended = gateway.answer(request(sender="alice@acme.example"), T0 + HOUR, 0.0)
    assert ended.action == "dunno" and ended.outcome == "not_blocked"


def test_the_login_is_judged_rather_than_the_envelope_sender() -> None:
    gateway = answerer()
    as_login = gateway.answer(
        request(sender="someone@else.example", sasl_username=" Alice@acme.example"), T0, 0.0
    )
    assert as_login.action == "reject"

    innocent = gateway.answer(
        request(sender="alice@acme.example", sasl_username="bob@acme.example"), T0, 0.0
    )
    assert innocent.action == "dunno"


@pytest.mark.parametrize("sender", ["", "<>", " < > "])
def test_the_null_sender_is_never_blocked(sender: str) -> None:
    answer = answerer().answer(request(sender=sender), T0, 0.0)
    assert answer.outcome == "no_sender" and answer.reply == DUNNO_REPLY


def test_request_mailbox_normalises() -> None:
    assert request_mailbox(request(sender=" <Bob@X.example> ")) == "bob@x.example"
    assert request_mailbox(request(sasl_username=" ", sender="a@b")) == "a@b"
    assert request_mailbox(request()) == ""


def test_a_mailbox_listed_by_several_tenants_is_blocked_under_any() -> None:
    answer = answerer().answer(request(sender="carol@initech.example"), T0, 0.0)
    assert answer.action == "reject" and answer.source == "directory"


def test_an_unknown_domain_is_not_ours_to_enforce() -> None:
    answer = answerer().answer(request(sender="dave@nowhere.example"), T0, 0.0)
    assert answer.outcome == "unknown_tenant" and answer.source == "none"


def test_defer_and_a_custom_code_and_text() -> None:
    config = AnswerConfig(
        block_action="defer", status="4.7.0", timed_text="held until {until}", permanent_text="no"
    )
    gateway = answerer(config)
    timed = gateway.answer(request(sender="alice@acme.example"), T0, 0.0)
    assert timed.action == "defer"
    assert parse_reply(timed.reply) == "DEFER 4.7.0 held until 2026-01-05T11:00:00Z"
    assert parse_reply(gateway.answer(request(sender="perm@acme.example"), T0, 0.0).reply) == (
        "DEFER 4.7.0 no"
    )
    assert AnswerConfig(block_action="defer").status_code == "4.7.1"


@pytest.mark.parametrize(
    "overrides",
    [
        {"status": "4.7.1"},  # a reject needs 5.x.x
        {"block_action": "defer", "status": "5.7.1"},
        {"status": "571"},
        {"timed_text": "until {end}"},
        {"timed_text": "until {0}"},
        {"permanent_text": "line\nbreak"},
        {"permanent_text": "blocked ✋"},
        {"timed_text": "x" * 400},
        {"stale_after_s": 0},
        {"when_stale": "panic"},
        {"block_action": "discard"},
    ],
)
def test_bad_configuration_is_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        AnswerConfig(**overrides)


def test_stale_state_keeps_enforcing_by_default() -> None:
    answer = answerer().answer(request(sender="alice@acme.example"), T0, state_age_s=10_000)
    assert answer.action == "reject"


def test_stale_state_fails_open_when_configured() -> None:
    gateway = answerer(AnswerConfig(when_stale="fail-open", stale_after_s=60))
    fresh = gateway.answer(request(sender="alice@acme.example"), T0, state_age_s=60)
    stale = gateway.answer(request(sender="alice@acme.example"), T0, state_age_s=60.5)
    assert fresh.action == "reject"
    assert stale.action == "dunno" and stale.outcome == "stale_open"


def test_malformed_requests_get_a_temporary_failure_naming_the_reason() -> None:
    reply = malformed_reply(PolicyProtocolError("not_utf8", "byte 3 is not UTF-8 (b'\\xff')"))
    assert parse_reply(reply) == "DEFER 4.5.2 Malformed policy request (not_utf8)"


def test_format_until() -> None:
    assert format_until(T0) == "2026-01-05T10:00:00Z"
    assert format_until(T0 + 7) == "2026-01-05T10:00:00.007Z"
