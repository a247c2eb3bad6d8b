"""Scenario files: the JSON-lines format of `sendguard simulate` and `sendguard produce`.

One JSON object per line; `type` is verdict, directory, settings, release or tick.
Timestamps are ISO-8601 UTC strings (fractions allowed) or integer epoch
milliseconds; enum values are case-insensitive (docs/policy.md, "sendguard
simulate"). `parse_line` turns one line into a policy event or raises
`ScenarioError` with the reason, whatever the line holds: every field has a length
limit (`processor.limits`), strings must be text (no lone surrogates), times must
lie in 1970-01-01 .. MAX_INPUT_TIMESTAMP_MS, and refused values are quoted cut short.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from processor import limits
from processor.codec.records import release_action_id
from processor.policy.config import shown
from processor.policy.decisions import (
    Alert,
    Block,
    Decision,
    Evidence,
    Report,
    ScanRequest,
    Unblock,
    visit,
)
from processor.policy.events import (
    MAX_INPUT_TIMESTAMP_MS,
    Direction,
    DirectoryEntry,
    MailboxKey,
    Release,
    TenantSettings,
    Tick,
    Verdict,
    VerdictKind,
)

E = TypeVar("E", Direction, VerdictKind)

Event = Verdict | DirectoryEntry | TenantSettings | Release | Tick


class ScenarioError(ValueError):
    """A line that cannot be used, and why."""


def parse_timestamp(value: object, field: str) -> int:
    """ISO-8601 (UTC unless it says otherwise) or integer epoch ms -> epoch ms, within
    1970-01-01 .. MAX_INPUT_TIMESTAMP_MS (9899-12-30T23:59:59.999Z). Raises ScenarioError.
    """
    if isinstance(value, bool):
        raise ScenarioError(f"{field}: {shown(value)} is not a timestamp")
    if isinstance(value, int):
        ms = value
    elif isinstance(value, float) and value.is_integer():
        ms = int(value)
    elif isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise ScenarioError(
                f"{field}: {shown(value)} is not an ISO-8601 timestamp or epoch milliseconds"
            ) from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        delta = parsed - datetime(1970, 1, 1, tzinfo=UTC)
        ms = (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000
    else:
        raise ScenarioError(f"{field}: {shown(value)} is not a timestamp")
    if not 0 <= ms <= MAX_INPUT_TIMESTAMP_MS:
        raise ScenarioError(
            f"{field}: {shown(value)} is outside 1970-01-01 .. "
            f"{format_timestamp(MAX_INPUT_TIMESTAMP_MS)} (a block starting later could "
            "end after year 9999)"
        )
    return ms


def format_timestamp(ms: int) -> str:
    """Epoch ms -> `2026-01-05T10:00:00Z`, with `.123` only when there are milliseconds."""
    seconds, millis = divmod(ms, 1000)
    text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"


def parse_line(text: str | bytes) -> Event:
    """One scenario line (text, or bytes that must be UTF-8) -> a policy event.

    Raises ScenarioError, and nothing else, for any line that is not a usable event.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as error:
            byte = text[error.start]
            raise ScenarioError(
                f"not UTF-8: byte 0x{byte:02x} at byte offset {error.start}"
            ) from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as error:
        raise ScenarioError(f"not JSON: {error.msg} (column {error.colno})") from None
    except RecursionError:
        raise ScenarioError("not JSON we read: nested too deeply") from None
    except ValueError:  # Python reads integers of at most 4300 digits
        raise ScenarioError("not JSON we read: a number with too many digits") from None
    if not isinstance(raw, dict):
        raise ScenarioError("not a JSON object")
    return parse_record(raw)


def parse_record(raw: Mapping[str, Any]) -> Event:
    """A decoded scenario object -> a policy event. Raises ScenarioError."""
    kind = _string(raw, "type", 20).strip().lower()
    if kind == "verdict":
        return Verdict(
            key=_key(raw),
            message_id=_string(raw, "message_id", limits.MAX_MESSAGE_ID),
            direction=_enum(raw, "direction", Direction),
            verdict=_enum(raw, "verdict", VerdictKind),
            scanned_at_ms=parse_timestamp(_field(raw, "scanned_at"), "scanned_at"),
        )
    if kind == "directory":
        devices = _field(raw, "devices")
        if not isinstance(devices, list) or not all(
            isinstance(d, str) and d.strip() for d in devices
        ):
            raise ScenarioError("devices: must be a list of device ids (non-empty strings)")
        if len(devices) > limits.MAX_DEVICES:
            raise ScenarioError(
                f"field_too_long: devices lists {len(devices)} device ids, "
                f"at most {limits.MAX_DEVICES} are allowed"
            )
        for device in devices:
            _text(device, "devices[]", limits.MAX_DEVICE_ID)
        # A device listed twice still gets one scan request.
        return DirectoryEntry(
            key=_key(raw),
            owner_id=_string(raw, "owner_id", limits.MAX_OWNER_ID),
            devices=tuple(dict.fromkeys(devices)),
            at_ms=parse_timestamp(_field(raw, "at"), "at"),
        )
    if kind == "settings":
        enabled = _field(raw, "synchronized_security")
        if not isinstance(enabled, bool):
            raise ScenarioError(f"synchronized_security: {shown(enabled)} must be true or false")
        return TenantSettings(
            tenant_id=_string(raw, "tenant_id", limits.MAX_TENANT_ID),
            synchronized_security=enabled,
            at_ms=parse_timestamp(_field(raw, "at"), "at"),
        )
    if kind == "release":
        release = Release(
            key=_key(raw),
            actor=_string(raw, "actor", limits.MAX_ACTOR),
            reason=_string(raw, "reason", limits.MAX_REASON),
            at_ms=parse_timestamp(_field(raw, "at"), "at"),
        )
        # Optional: the line's own action id; else a stable one made from the line, so
        # `simulate` and a worker fed by `produce` give a refusal the same report id.
        given = raw.get("action_id")
        if given is not None and (not isinstance(given, str) or not given.strip()):
            raise ScenarioError("action_id: must be a non-empty string when given")
        return replace(release, action_id=given or release_action_id(release))
    if kind == "tick":
        return Tick(at_ms=parse_timestamp(_field(raw, "at"), "at"))
    raise ScenarioError(
        f"type: unknown type {shown(raw['type'])} (verdict, directory, settings, release, tick)"
    )


def event_time(event: Event) -> int:
    return event.scanned_at_ms if isinstance(event, Verdict) else event.at_ms


def _field(raw: Mapping[str, Any], name: str) -> Any:
    if name not in raw or raw[name] is None:
        raise ScenarioError(f"{name}: missing")
    return raw[name]


def _string(raw: Mapping[str, Any], name: str, limit: int) -> str:
    return _text(_field(raw, name), name, limit)


def _text(value: object, name: str, limit: int) -> str:
    """`value` if it is a non-blank string of text of at most `limit` characters."""
    if not isinstance(value, str):
        raise ScenarioError(f"{name}: {shown(value)} must be a string")
    if len(value) > limit:
        raise ScenarioError(
            f"field_too_long: {name} is {len(value)} characters long, at most {limit} are allowed"
        )
    if not value.strip():
        raise ScenarioError(f"{name}: must not be empty")
    if _SURROGATE.search(value):
        # JSON's \ud800 escapes can name half of a UTF-16 pair alone: not text, and it
        # could not be written out again as UTF-8.
        raise ScenarioError(f"{name}: {shown(value)} holds a lone surrogate, not text")
    return value


_SURROGATE = re.compile("[\ud800-\udfff]")


def _key(raw: Mapping[str, Any]) -> MailboxKey:
    return MailboxKey.of(
        _string(raw, "tenant_id", limits.MAX_TENANT_ID),
        _string(raw, "mailbox", limits.MAX_MAILBOX),
    )


def _enum(raw: Mapping[str, Any], name: str, enum: type[E]) -> E:
    value = _string(raw, name, 20)
    try:
        return enum[value.strip().upper()]
    except KeyError:
        allowed = ", ".join(member.name for member in enum)
        raise ScenarioError(f"{name}: {shown(value)} is not one of {allowed}") from None


class _SimulateLines:
    """Decisions as `simulate` prints them (a `DecisionVisitor`; docs/policy.md, "Output")."""

    def __init__(self, explain: bool) -> None:
        self.explain = explain

    @staticmethod
    def _head(kind: str, decision: Decision) -> dict[str, Any]:
        key = decision.key
        return {"type": kind, "tenant_id": key.tenant_id, "mailbox": key.mailbox}

    def block(self, d: Block) -> dict[str, Any]:
        line = {
            **self._head("block", d),
            "at": format_timestamp(d.at_ms),
            "offense": d.offense,
            "permanent": d.permanent,
            "until": _time_or_none(d.until_ms),
            "command_id": d.command_id,
        }
        if self.explain:
            line["evidence"] = _evidence(d.evidence)
        return line

    def unblock(self, d: Unblock) -> dict[str, Any]:
        line = {
            **self._head("unblock", d),
            "at": format_timestamp(d.at_ms),
            "offense": d.offense,
            "reason": d.reason,
            "command_id": d.command_id,
        }
        if d.actor is not None:
            line["actor"] = d.actor
        return line

    def scan_request(self, d: ScanRequest) -> dict[str, Any]:
        return {
            **self._head("scan_request", d),
            "owner_id": d.owner_id,
            "device_id": d.device_id,
            "at": format_timestamp(d.at_ms),
            "request_id": d.request_id,
        }

    def alert(self, d: Alert) -> dict[str, Any]:
        return {
            **self._head("alert", d),
            "at": format_timestamp(d.at_ms),
            "kind": d.kind,
            "offense": d.offense,
            "permanent": d.permanent,
            "until": _time_or_none(d.until_ms),
            "owner_id": d.owner_id,
            "devices": list(d.devices),
            "scans_requested": d.scans_requested,
            "message_ids": list(d.message_ids),
            "evidence": _evidence(d.evidence),
            "alert_id": d.alert_id,
        }

    def report(self, d: Report) -> dict[str, Any]:
        line = {
            **self._head("report", d),
            "at": format_timestamp(d.at_ms),
            "event": d.event,
            "offense": d.offense,
            "until": _time_or_none(d.until_ms),
            "report_id": d.report_id,
        }
        if d.actor is not None:
            line["actor"] = d.actor
        if d.reason is not None:
            line["reason"] = d.reason
        return line


_LINES, _EXPLAINED_LINES = _SimulateLines(explain=False), _SimulateLines(explain=True)


def decision_line(decision: Decision, explain: bool = False) -> dict[str, Any]:
    """A decision as one line of `simulate` output (docs/policy.md, "Output")."""
    return visit(decision, _EXPLAINED_LINES if explain else _LINES)


def _time_or_none(ms: int | None) -> str | None:
    return None if ms is None else format_timestamp(ms)


def _evidence(evidence: tuple[Evidence, ...]) -> list[dict[str, str]]:
    return [
        {"message_id": e.message_id, "scanned_at": format_timestamp(e.scanned_at_ms)}
        for e in evidence
    ]
