"""rspamd's per-message result (metadata_exporter, `formatter = "json"`) -> a sendguard Verdict.

Pure: bytes and the scan time in, a `Verdict` out, or `RspamdMappingError` with a
stable `reason` (a dead-letter reason and metrics label) and a `detail` that names
the field. No I/O, no clock.

What rspamd 3.4 sends (src/plugins/lua/metadata_exporter.lua, `get_general_metadata`;
captured examples in tests/fixtures/rspamd/): one JSON object per scanned message with

    user        the authenticated (SASL) login, or "unknown"
    ip          the client address, or "unknown"
    from        the envelope sender; "" for the null sender <>, "unknown" when absent
    rcpt        the envelope recipients (a list), or "unknown"
    message_id  the Message-ID without <>, with unprintable characters as "?";
                "undef" when the message has none
    action      "reject", "add header", "rewrite subject", "soft reject", "greylist",
                "no action" (and "discard"/"quarantine" when forced)
    symbols     a list of {"name", "score", "group", "groups", "options"?}
    header_from, header_to, header_subject, header_date   lists of decoded header
                values, or "unknown"
    qid, subject, score, scan_time (a duration in ms), fuzzy, rspamd_server

There is no scan timestamp: the caller passes the time the result arrived, which is
the end of the scan plus one loopback POST.

Decisions (each argued in the README, "rspamd connector"):
- verdict: VIRUS when an antivirus symbol fired (a configured name, or any symbol of
  rspamd's `antivirus` group except the scanner's `_FAIL`, `_ENCRYPTED` and `_MACRO`
  companions); else SPAM when the action is one that marks the message as spam or a
  spam symbol (GTUBE) fired; else CLEAN.
- direction: OUTBOUND when the sender authenticated or the client address is one of
  the operator's own networks; INBOUND otherwise. The envelope sender never decides
  it: anyone outside can forge a tenant's address.
- mailbox: the authenticated login when it is an address, else the envelope sender.
- tenant: outbound, the mailbox's domain; inbound, the first recipient domain in the
  map (the message belongs to the tenant that receives it), else the sender's.
- message id: `<Message-ID>#<16 hex>` where the hex is a digest of the message's
  own identity (Message-ID, envelope sender and recipients, From/To/Subject/Date
  headers). A retry of the same message gets the same id, so sendguard counts it
  once; a sender who reuses one Message-ID for many different messages does not get
  them counted once. Without a Message-ID: `no-message-id#<32 hex>`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from processor.mail.tenants import TenantMap
from processor.policy.events import (
    MAX_TIMESTAMP_MS,
    Direction,
    MailboxKey,
    Verdict,
    VerdictKind,
)

MappingReason = Literal[
    "body_too_large",
    "not_json",
    "bad_field",
    "field_too_long",
    "no_sender",
    "unknown_tenant",
]
#: Every reason, so metrics can pre-create one series per reason at zero.
MAPPING_REASONS: Final[tuple[MappingReason, ...]] = (
    "body_too_large",
    "not_json",
    "bad_field",
    "field_too_long",
    "no_sender",
    "unknown_tenant",
)

#: RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets.
MAX_ADDRESS: Final = 254
#: How much of a Message-ID is kept readable in sendguard's message id (the digest
#: covers all of it); RFC 5322 lines are at most 998 characters.
MAX_MESSAGE_ID_KEPT: Final = 200
MAX_ACTION: Final = 64
MAX_SYMBOL_NAME: Final = 128
MAX_IP: Final = 64

#: rspamd's word for "not there" in user, ip, from, rcpt and the header fields.
UNKNOWN: Final = "unknown"
#: rspamd's message_id when the message has no Message-ID header.
NO_MESSAGE_ID: Final = "undef"
#: The mailbox of an inbound message with the null sender (MAIL FROM:<>).
NULL_SENDER: Final = "<>"

#: Actions with which rspamd marks a message as spam (metadata_exporter's own
#: `is_spam` selector uses the first three; discard and quarantine are forced ones).
SPAM_ACTIONS: Final = frozenset(
    {"reject", "add header", "rewrite subject", "discard", "quarantine"}
)
#: GTUBE forces "reject" anyway; rspamd 3.4 skips GTUBE tasks before the exporter
#: runs (see the README), so this matters only for a version that exports them.
DEFAULT_SPAM_SYMBOLS: Final = frozenset({"GTUBE"})
#: rspamd's antivirus module puts every symbol it registers in this group.
VIRUS_GROUP: Final = "antivirus"
#: The antivirus module's companions of a virus symbol that are not a virus: the
#: scanner failed, or found an encrypted part or an Office macro.
NOT_VIRUS_SUFFIXES: Final = ("_FAIL", "_ENCRYPTED", "_MACRO")
#: The symbol name rspamd's documentation configures for ClamAV; symbols of the
#: `antivirus` group are recognised whatever their name.
DEFAULT_VIRUS_SYMBOLS: Final = frozenset({"CLAM_VIRUS"})
DEFAULT_LOCAL_NETWORKS: Final = ("127.0.0.0/8", "::1/128")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class RspamdMappingError(ValueError):
    """A result that cannot become a verdict: `reason` (one of `MAPPING_REASONS`) and a
    `detail` naming the field. The detail never quotes more than a short, escaped
    piece of a value."""

    def __init__(self, reason: MappingReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: MappingReason = reason
        self.detail = detail


def _snippet(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclass(frozen=True, slots=True)
class MappingRules:
    """The operator's knowledge the mapping needs: tenants, own networks, symbol names."""

    tenants: TenantMap
    local_networks: tuple[Network, ...] = field(
        default_factory=lambda: parse_networks(DEFAULT_LOCAL_NETWORKS)
    )
    virus_symbols: frozenset[str] = DEFAULT_VIRUS_SYMBOLS
    spam_symbols: frozenset[str] = DEFAULT_SPAM_SYMBOLS
    spam_actions: frozenset[str] = SPAM_ACTIONS

    def is_local(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        return any(ip in network for network in self.local_networks)


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """CIDR strings as networks. Raises ValueError naming a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP network (like 10.0.0.0/8)") from None
    return tuple(networks)


def map_rspamd(body: bytes, rules: MappingRules, scanned_at_ms: int) -> Verdict:
    """The verdict of one metadata_exporter POST body. Raises RspamdMappingError."""
    return verdict_of(parse_body(body), rules, scanned_at_ms)


def parse_body(body: bytes) -> Mapping[str, Any]:
    """The JSON object of a POST body. Raises RspamdMappingError `not_json`.

    Bytes that are not UTF-8 are replaced (rspamd already replaces them in header
    values), so one bad byte costs a character, not the verdict.
    """
    try:
        payload = json.loads(body.decode("utf-8", errors="replace"))
    except ValueError as error:  # JSONDecodeError is a ValueError
        raise RspamdMappingError("not_json", f"not JSON: {error}") from None
    except RecursionError:
        raise RspamdMappingError("not_json", "JSON nested too deeply") from None
    if not isinstance(payload, dict):
        raise RspamdMappingError(
            "not_json", f"expected a JSON object, got {type(payload).__name__}"
        )
    return payload


def verdict_of(payload: Mapping[str, Any], rules: MappingRules, scanned_at_ms: int) -> Verdict:
    """The verdict of one parsed result. Raises RspamdMappingError."""
    if type(scanned_at_ms) is not int or not 0 <= scanned_at_ms <= MAX_TIMESTAMP_MS:
        raise ValueError(f"scanned_at_ms {scanned_at_ms!r} is not a time")
    user = _optional_address(payload, "user") or None  # an empty login is no login
    sender = _optional_address(payload, "from")
    recipients = _recipients(payload)
    ip = _ip(payload)

    outbound = user is not None or (ip is not None and rules.is_local(ip))
    if user is not None and "@" in user:
        mailbox = user
    elif sender:
        mailbox = sender
    elif user is not None:
        mailbox = user  # a bare login and the null sender: no tenant below
    elif not outbound:
        mailbox = NULL_SENDER
    else:
        raise RspamdMappingError(
            "no_sender", "outbound message with no authenticated user and no envelope sender"
        )

    if outbound:
        tenant = rules.tenants.tenant_of(mailbox)
        where = f"sender {_snippet(mailbox)}"
    else:
        tenant = next(
            (t for r in recipients if (t := rules.tenants.tenant_of(r)) is not None), None
        )
        if tenant is None and sender:
            tenant = rules.tenants.tenant_of(sender)
        where = f"recipients {_snippet(recipients[:3])} and sender {_snippet(sender)}"
    if tenant is None:
        raise RspamdMappingError("unknown_tenant", f"no tenant in the tenant map for {where}")

    return Verdict(
        key=MailboxKey.of(tenant, mailbox),
        message_id=message_id_of(payload, sender, recipients),
        direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
        verdict=verdict_kind(payload, rules),
        scanned_at_ms=scanned_at_ms,
    )


def verdict_kind(payload: Mapping[str, Any], rules: MappingRules) -> VerdictKind:
    """VIRUS, SPAM or CLEAN from the action and symbols. Raises RspamdMappingError."""
    action = payload.get("action")
    if type(action) is not str:
        raise RspamdMappingError("bad_field", f"action: expected a string, got {_snippet(action)}")
    if len(action) > MAX_ACTION:
        raise RspamdMappingError("field_too_long", f"action: longer than {MAX_ACTION}")
    spam = action in rules.spam_actions
    for name, groups in _symbols(payload):
        if name in rules.virus_symbols or (
            VIRUS_GROUP in groups and not name.endswith(NOT_VIRUS_SUFFIXES)
        ):
            return VerdictKind.VIRUS
        spam = spam or name in rules.spam_symbols
    return VerdictKind.SPAM if spam else VerdictKind.CLEAN


def message_id_of(payload: Mapping[str, Any], sender: str | None, recipients: Sequence[str]) -> str:
    """sendguard's id of the message: the same for every scan of the same message."""
    raw = payload.get("message_id")
    message_id = raw if type(raw) is str and raw.strip() and raw != NO_MESSAGE_ID else None
    # Only what a retry of the same message repeats: not the queue id, client address,
    # login, score or symbols (a rescan may differ in those).
    identity = [
        message_id,
        sender,
        sorted(recipients),
        *(payload.get(name) for name in ("header_from", "header_to", "header_subject")),
        payload.get("header_date"),
    ]
    # ensure_ascii escapes lone surrogates, so any parsed JSON has one canonical text.
    digest = hashlib.sha256(
        json.dumps(identity, ensure_ascii=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()
    if message_id is None:
        return f"no-message-id#{digest[:32]}"
    readable = "".join(
        c if c.isprintable() and not "\ud800" <= c <= "\udfff" else "?"
        for c in message_id.strip()[:MAX_MESSAGE_ID_KEPT]
    )
    return f"{readable}#{digest[:16]}"


# -- fields --------------------------------------------------------------------------


def _optional_address(payload: Mapping[str, Any], name: str) -> str | None:
    """An address field: None when absent or "unknown"; "" stays "" (the null sender)."""
    value = payload.get(name)
    if value is None or value == UNKNOWN:
        return None
    if type(value) is not str:
        raise RspamdMappingError("bad_field", f"{name}: expected a string, got {_snippet(value)}")
    return _checked_address(value.strip(), name)


def _checked_address(value: str, name: str) -> str:
    if len(value) > MAX_ADDRESS:
        raise RspamdMappingError(
            "field_too_long", f"{name}: {len(value)} characters, more than {MAX_ADDRESS}"
        )
    for c in value:
        if c.isspace() or not c.isprintable() or "\ud800" <= c <= "\udfff":
            raise RspamdMappingError(
                "bad_field", f"{name}: {_snippet(value)} has a space or control character"
            )
    return value


def _recipients(payload: Mapping[str, Any]) -> list[str]:
    value = payload.get("rcpt")
    if value is None or value == UNKNOWN:
        return []
    if type(value) is not list:
        raise RspamdMappingError("bad_field", f"rcpt: expected a list, got {_snippet(value)}")
    recipients = []
    for i, item in enumerate(value):
        if type(item) is not str:
            raise RspamdMappingError(
                "bad_field", f"rcpt[{i}]: expected a string, got {_snippet(item)}"
            )
        recipients.append(_checked_address(item.strip(), f"rcpt[{i}]"))
    return recipients


def _ip(payload: Mapping[str, Any]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    value = payload.get("ip")
    if value is None or value == UNKNOWN:
        return None
    if type(value) is not str or len(value) > MAX_IP:
        raise RspamdMappingError("bad_field", f"ip: expected an address, got {_snippet(value)}")
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        raise RspamdMappingError("bad_field", f"ip: {_snippet(value)} is not an address") from None


def _symbols(payload: Mapping[str, Any]) -> Iterable[tuple[str, frozenset[str]]]:
    """(name, groups) of every symbol; the old single `group` and the list `groups`."""
    value = payload.get("symbols")
    if value is None:
        return
    if type(value) is not list:
        raise RspamdMappingError("bad_field", f"symbols: expected a list, got {_snippet(value)}")
    for i, symbol in enumerate(value):
        if type(symbol) is not dict:
            raise RspamdMappingError(
                "bad_field", f"symbols[{i}]: expected an object, got {_snippet(symbol)}"
            )
        name = symbol.get("name")
        if type(name) is not str:
            raise RspamdMappingError("bad_field", f"symbols[{i}].name: expected a string")
        if len(name) > MAX_SYMBOL_NAME:
            raise RspamdMappingError(
                "field_too_long", f"symbols[{i}].name: longer than {MAX_SYMBOL_NAME}"
            )
        groups = symbol.get("groups")
        names = {g for g in groups if type(g) is str} if type(groups) is list else set()
        group = symbol.get("group")
        if type(group) is str:
            names.add(group)
        yield name, frozenset(names)
