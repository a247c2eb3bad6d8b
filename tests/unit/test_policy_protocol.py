"""Postfix policy protocol: framing, parsing, limits, replies (pure; plus fuzzing)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.mail.policy_protocol import (
    FATAL_REASONS,
    MALFORMED_REASONS,
    MAX_ACTION_BYTES,
    MAX_ATTRIBUTES,
    MAX_LINE_BYTES,
    MAX_REQUEST_BYTES,
    PolicyProtocolError,
    PolicyRequest,
    RequestReader,
    format_reply,
    format_request,
    parse_reply,
    parse_request,
)

POSTFIX_REQUEST = (
    b"request=smtpd_access_policy\n"
    b"protocol_state=RCPT\n"
    b"protocol_name=ESMTP\n"
    b"client_address=192.0.2.10\n"
    b"client_name=mail.example\n"
    b"helo_name=mail.example\n"
    b"sender=Alice@Acme.example\n"
    b"recipient=bob@elsewhere.example\n"
    b"recipient_count=0\n"
    b"queue_id=\n"
    b"instance=123.456.7\n"
    b"size=12345\n"
    b"sasl_method=plain\n"
    b"sasl_username=alice@acme.example\n"
    b"sasl_sender=\n"
    b"ccert_subject=\n"
    b"\n"
)


def feed_all(
    reader: RequestReader, chunks: list[bytes]
) -> list[PolicyRequest | PolicyProtocolError]:
    out: list[PolicyRequest | PolicyProtocolError] = []
    for chunk in chunks:
        out.extend(reader.feed(chunk))
    return out


def test_a_postfix_request_is_parsed_with_every_attribute() -> None:
    (request,) = RequestReader().feed(POSTFIX_REQUEST)

    assert isinstance(request, PolicyRequest)
    assert request.get("sender") == "Alice@Acme.example"
    assert request.get("sasl_username") == "alice@acme.example"
    assert request.get("queue_id") == ""  # sent empty
    assert request.get("not_sent") == ""
    assert len(request.attributes) == 16


def test_several_requests_in_one_chunk_and_one_request_byte_by_byte() -> None:
    reader = RequestReader()
    two = reader.feed(POSTFIX_REQUEST + POSTFIX_REQUEST)
    assert [type(r) for r in two] == [PolicyRequest, PolicyRequest]

    trickled = feed_all(reader, [bytes([b]) for b in POSTFIX_REQUEST])
    assert len(trickled) == 1 and isinstance(trickled[0], PolicyRequest)
    assert not reader.pending


def test_an_unfinished_request_waits_for_its_empty_line() -> None:
    reader = RequestReader()
    assert reader.feed(b"request=smtpd_access_policy\nsender=a@b\n") == []
    assert reader.pending
    (request,) = reader.feed(b"\n")
    assert isinstance(request, PolicyRequest) and request.get("sender") == "a@b"


def test_crlf_line_ends_are_tolerated() -> None:
    (request,) = RequestReader().feed(b"request=smtpd_access_policy\r\nsender=a@b\r\n\r\n")
    assert isinstance(request, PolicyRequest)
    assert request.get("sender") == "a@b"


def test_a_crlf_terminator_split_across_chunks() -> None:
    reader = RequestReader()
    out = feed_all(reader, [b"request=smtpd_access_policy\r\n\r", b"\n"])
    assert len(out) == 1 and isinstance(out[0], PolicyRequest)


def test_values_may_hold_equals_signs_and_be_empty() -> None:
    request = parse_request(b"request=smtpd_access_policy\npolicy_context=a=b\nsender=\n")
    assert request.get("policy_context") == "a=b"
    assert request.attributes["sender"] == ""


@pytest.mark.parametrize(
    ("block", "reason"),
    [
        (b"request=smtpd_access_policy\nsender=\xff\xfe\n", "not_utf8"),
        (b"request=smtpd_access_policy\njust text\n", "bad_line"),
        (b"request=smtpd_access_policy\n=value\n", "bad_line"),
        (b"request=smtpd_access_policy\nsender=a\nsender=b\n", "duplicate_attribute"),
        (b"sender=a@b\n", "missing_request"),
        (b"", "missing_request"),
        (b"request=junk\n", "unknown_request"),
    ],
)
def test_malformed_requests_name_their_reason_and_are_not_fatal(block: bytes, reason: str) -> None:
    with pytest.raises(PolicyProtocolError) as raised:
        parse_request(block)
    assert raised.value.reason == reason
    assert not raised.value.fatal

    # The reader answers it and goes on with the next request on the connection.
    reader = RequestReader()
    error, request = reader.feed(block + b"\n" + POSTFIX_REQUEST)
    assert isinstance(error, PolicyProtocolError) and error.reason == reason
    assert isinstance(request, PolicyRequest)
    assert not reader.closed


def test_a_line_at_the_limit_is_fine_and_one_byte_more_is_not() -> None:
    prefix = b"request=smtpd_access_policy\n"
    value = b"x" * (MAX_LINE_BYTES - len(b"sender="))
    assert parse_request(prefix + b"sender=" + value + b"\n").get("sender") == value.decode()

    with pytest.raises(PolicyProtocolError) as raised:
        parse_request(prefix + b"sender=" + value + b"x\n")
    assert raised.value.reason == "line_too_long" and raised.value.fatal


def test_an_over_long_line_closes_the_reader_before_its_newline_arrives() -> None:
    reader = RequestReader()
    assert reader.feed(b"request=smtpd_access_policy\nsender=") == []
    out = reader.feed(b"y" * (MAX_LINE_BYTES + 10))

    assert len(out) == 1 and isinstance(out[0], PolicyProtocolError)
    assert out[0].reason == "line_too_long"
    assert reader.closed and not reader.pending
    assert reader.feed(POSTFIX_REQUEST) == []  # nothing more is read from it


def test_too_many_attributes_are_caught_complete_or_not() -> None:
    lines = b"request=smtpd_access_policy\n" + b"".join(
        b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES)
    )
    with pytest.raises(PolicyProtocolError) as raised:
        parse_request(lines)
    assert raised.value.reason == "too_many_attributes"

    reader = RequestReader()
    (error,) = reader.feed(lines)  # no empty line yet: caught while still arriving
    assert isinstance(error, PolicyProtocolError) and error.reason == "too_many_attributes"
    assert reader.closed


def test_exactly_the_attribute_limit_is_fine() -> None:
    lines = b"request=smtpd_access_policy\n" + b"".join(
        b"a%d=1\n" % i for i in range(MAX_ATTRIBUTES - 1)
    )
    assert len(parse_request(lines).attributes) == MAX_ATTRIBUTES


def test_a_request_over_the_size_limit_is_fatal() -> None:
    line = b"v" * 1000
    lines = b"request=smtpd_access_policy\n" + b"".join(
        b"a%d=%s\n" % (i, line) for i in range(MAX_REQUEST_BYTES // 1000 + 1)
    )
    reader = RequestReader()
    (error,) = reader.feed(lines)
    assert isinstance(error, PolicyProtocolError) and error.reason == "request_too_large"
    assert error.fatal and reader.closed


def test_requests_before_a_fatal_error_are_still_returned() -> None:
    reader = RequestReader()
    out = reader.feed(POSTFIX_REQUEST + b"sender=" + b"z" * (MAX_LINE_BYTES + 5))
    assert isinstance(out[0], PolicyRequest)
    assert isinstance(out[1], PolicyProtocolError) and out[1].fatal


def test_every_fatal_reason_is_a_known_reason() -> None:
    assert set(MALFORMED_REASONS) >= FATAL_REASONS


def test_reply_format_and_its_checks() -> None:
    assert format_reply("DUNNO") == b"action=DUNNO\n\n"
    assert parse_reply(format_reply("REJECT 5.7.1 blocked")) == "REJECT 5.7.1 blocked"
    for bad in ("", "REJECT\nDUNNO", "REJECT \x00", "REJECT é", "R" * (MAX_ACTION_BYTES + 1)):
        with pytest.raises(ValueError):
            format_reply(bad)
    with pytest.raises(PolicyProtocolError):
        parse_reply(b"action=DUNNO\n")


def test_format_request_round_trips_and_refuses_what_would_break_framing() -> None:
    attributes = {"request": "smtpd_access_policy", "sender": "a@b", "size": "0"}
    assert parse_request(format_request(attributes)[:-1]).attributes == attributes
    with pytest.raises(ValueError):
        format_request({"sender": "a@b\nrequest=x"})


# -- fuzzing -------------------------------------------------------------------------

ATTRIBUTE_BYTES = st.binary(max_size=40).filter(lambda b: b"\n" not in b)
REQUESTISH = st.lists(
    st.one_of(
        st.just(b"request=smtpd_access_policy\n"),
        st.builds(lambda n, v: n + b"=" + v + b"\n", ATTRIBUTE_BYTES, ATTRIBUTE_BYTES),
        st.just(b"\n"),
        st.just(b"\r\n"),
        st.binary(max_size=60),
        st.just(b"x" * (MAX_LINE_BYTES + 1)),
        st.just(b"a=1\n" * MAX_ATTRIBUTES),
    ),
    max_size=30,
).map(b"".join)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=3000))
def test_parse_request_takes_any_bytes_and_raises_only_its_own_error(block: bytes) -> None:
    try:
        request = parse_request(block)
    except PolicyProtocolError as error:
        assert error.reason in MALFORMED_REASONS
    else:
        assert request.get("request") == "smtpd_access_policy"


@settings(max_examples=400, deadline=None)
@given(REQUESTISH, st.lists(st.integers(min_value=1, max_value=50), max_size=20))
def test_the_reader_takes_any_bytes_in_any_chunks(data: bytes, cuts: list[int]) -> None:
    chunks, rest = [], data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    reader = RequestReader()
    out = feed_all(reader, chunks)

    for item in out:
        assert isinstance(item, PolicyRequest | PolicyProtocolError)
    # Chunking never changes the outcome: the same bytes in one piece frame the same
    # (up to which limit a request over several is reported as breaking first).
    whole = RequestReader().feed(data)
    assert [_summary(i) for i in out] == [_summary(i) for i in whole]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(min_size=1, max_size=5000), max_size=20))
def test_the_reader_buffers_no_more_than_one_request(chunks: list[bytes]) -> None:
    reader = RequestReader()
    for chunk in chunks:
        reader.feed(chunk)
        assert len(reader._buffer) <= MAX_REQUEST_BYTES


def _summary(item: PolicyRequest | PolicyProtocolError) -> object:
    if isinstance(item, PolicyRequest):
        return dict(item.attributes)
    return "fatal" if item.fatal else item.reason
