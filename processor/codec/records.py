"""Avro records <-> policy types: validation on the way in, conversion on the way out.

Inbound (`*_from_record`): a decoded record (a dict) becomes a policy event, or
DecodeError `invalid_record` names the field that is missing, ill-typed, empty or
absurd. Mailboxes are normalised here (`MailboxKey.of`), once, at the edge.

Outbound (`record_of`, `key_of`, `topic_of`): a decision (or an input event, for
producers and tests) becomes the record name and dict to hand to `Codec.encode`,
and the topic and key it goes to. Timestamps are `int` epoch milliseconds.

`verdict_from_record` runs for every verdict on the hot path, so it is written
out flat rather than through generic helpers.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, NoReturn

from processor import topics
from processor.codec.errors import DecodeError
from processor.policy.decisions import (
    Alert,
    Block,
    Decision,
    Report,
    ScanRequest,
    Unblock,
    visit,
)
from processor.policy.events import (
    MAX_TIMESTAMP_MS,
    Direction,
    DirectoryEntry,
    MailboxKey,
    Release,
    TenantSettings,
    Verdict,
    VerdictKind,
    normalise_mailbox,
)

_DIRECTIONS = {d.value: d for d in Direction}
_VERDICTS = {v.value: v for v in VerdictKind}
# Fixed namespace for ids of support actions built from a Release (see release_action_id).
_RELEASE_NAMESPACE = uuid.UUID("0b8f4d8e-3a51-4c52-9d0e-7f2a6c1b5e93")

Record = dict[str, Any]


def _invalid(record: str, field: str, problem: str) -> DecodeError:
    return DecodeError("invalid_record", f"{record}.{field}: {problem}")


def _get(rec: Mapping[str, Any], record: str, field: str) -> Any:
    try:
        return rec[field]
    except KeyError:
        raise _invalid(record, field, "missing") from None
    except TypeError:  # not a mapping at all
        raise DecodeError(
            "invalid_record", f"{record}: expected a record, got {type(rec).__name__}"
        ) from None


def _str(rec: Mapping[str, Any], record: str, field: str) -> str:
    value = _get(rec, record, field)
    if type(value) is not str:
        raise _invalid(record, field, f"expected a string, got {type(value).__name__}")
    if not value.strip():
        raise _invalid(record, field, "empty")
    return value


def _opt_str(rec: Mapping[str, Any], record: str, field: str) -> str | None:
    value = rec.get(field)
    if value is None:
        return None
    if type(value) is not str:
        raise _invalid(record, field, f"expected a string or null, got {type(value).__name__}")
    return value


def _timestamp(rec: Mapping[str, Any], record: str, field: str) -> int:
    value = _get(rec, record, field)
    if type(value) is not int:
        raise _invalid(record, field, f"expected epoch milliseconds, got {type(value).__name__}")
    if not 0 <= value <= MAX_TIMESTAMP_MS:
        raise _invalid(record, field, f"timestamp {value} is before 1970 or after year 9999")
    return value


def _bool(rec: Mapping[str, Any], record: str, field: str) -> bool:
    value = _get(rec, record, field)
    if type(value) is not bool:
        raise _invalid(record, field, f"expected a boolean, got {type(value).__name__}")
    return value


def _mailbox(rec: Mapping[str, Any], record: str) -> MailboxKey:
    tenant_id = _str(rec, record, "tenant_id")
    mailbox = normalise_mailbox(_str(rec, record, "mailbox"))
    return MailboxKey(tenant_id, mailbox)


def _devices(rec: Mapping[str, Any], record: str) -> tuple[str, ...]:
    value = _get(rec, record, "devices")
    if not isinstance(value, list | tuple):
        raise _invalid(record, "devices", f"expected a list, got {type(value).__name__}")
    for i, device in enumerate(value):
        if type(device) is not str or not device.strip():
            raise _invalid(record, f"devices[{i}]", "expected a non-empty string")
    return tuple(value)


# -- inbound ------------------------------------------------------------------


def verdict_from_record(rec: Mapping[str, Any]) -> Verdict:
    """A validated Verdict; DecodeError `invalid_record` naming the field otherwise."""
    try:
        tenant_id = rec["tenant_id"]
        message_id = rec["message_id"]
        mailbox = rec["mailbox"]
        direction = _DIRECTIONS.get(rec["direction"])
        kind = _VERDICTS.get(rec["verdict"])
        scanned_at = rec["scanned_at"]
    except (KeyError, TypeError):  # missing field, not a mapping, unhashable enum value
        _verdict_problem(rec)
    if (
        type(tenant_id) is str
        and tenant_id.strip()
        and type(message_id) is str
        and message_id.strip()
        and type(mailbox) is str
        and (mailbox := mailbox.strip().lower())  # normalise_mailbox, inlined
        and direction is not None
        and kind is not None
        and type(scanned_at) is int
        and 0 <= scanned_at <= MAX_TIMESTAMP_MS
    ):
        return Verdict(MailboxKey(tenant_id, mailbox), message_id, direction, kind, scanned_at)
    _verdict_problem(rec)


def _verdict_problem(rec: Mapping[str, Any]) -> NoReturn:
    """The slow path: find and raise the first thing wrong with a verdict record."""
    _mailbox(rec, "Verdict")
    _str(rec, "Verdict", "message_id")
    for field, allowed in (("direction", _DIRECTIONS), ("verdict", _VERDICTS)):
        value = _get(rec, "Verdict", field)
        if not isinstance(value, str) or value not in allowed:
            raise _invalid("Verdict", field, f"{value!r} is not one of {', '.join(allowed)}")
    _timestamp(rec, "Verdict", "scanned_at")
    raise AssertionError(f"verdict record rejected but no problem found: {rec!r}")


def directory_entry_from_record(rec: Mapping[str, Any]) -> DirectoryEntry:
    """A validated DirectoryEntry; DecodeError `invalid_record` naming the field otherwise."""
    key = _mailbox(rec, "DirectoryEntry")
    return DirectoryEntry(
        key=key,
        owner_id=_str(rec, "DirectoryEntry", "owner_id"),
        devices=_devices(rec, "DirectoryEntry"),
        at_ms=_timestamp(rec, "DirectoryEntry", "at"),
    )


def tenant_settings_from_record(rec: Mapping[str, Any]) -> TenantSettings:
    """Validated TenantSettings; DecodeError `invalid_record` naming the field otherwise."""
    return TenantSettings(
        tenant_id=_str(rec, "TenantSettings", "tenant_id"),
        synchronized_security=_bool(rec, "TenantSettings", "synchronized_security"),
        at_ms=_timestamp(rec, "TenantSettings", "at"),
    )


def release_from_record(rec: Mapping[str, Any]) -> Release:
    """A Release from a SupportAction record; DecodeError `invalid_record` naming the field.

    `action_id` must be present (it is the audit id, and part of a refusal's id). The
    signature is not checked here: `processor.codec.action_signing` does that first.
    """
    action_id = _str(rec, "SupportAction", "action_id")
    action = _get(rec, "SupportAction", "action")
    if action != "RELEASE":
        raise _invalid("SupportAction", "action", f"{action!r} is not RELEASE")
    return Release(
        key=_mailbox(rec, "SupportAction"),
        actor=_str(rec, "SupportAction", "actor"),
        reason=_str(rec, "SupportAction", "reason"),
        at_ms=_timestamp(rec, "SupportAction", "at"),
        action_id=action_id,
    )


def mailbox_key_from_record(rec: Mapping[str, Any]) -> MailboxKey:
    """A MailboxKey record as the policy type (mailbox normalised)."""
    return _mailbox(rec, "MailboxKey")


# -- outbound -----------------------------------------------------------------


def release_action_id(release: Release) -> str:
    """A stable id for a release built in code without one (scenario files, tests): same
    release, same id. The API gives every attempt a fresh id instead."""
    name = f"{release.key.tenant_id}\x1f{release.key.mailbox}\x1f{release.actor}\x1f{release.at_ms}"
    return str(uuid.uuid5(_RELEASE_NAMESPACE, name))


def _evidence(evidence: tuple[Any, ...]) -> list[Record]:
    return [{"message_id": e.message_id, "scanned_at": e.scanned_at_ms} for e in evidence]


class _DecisionRecords:
    """Decisions as the Avro records of their topics (a `DecisionVisitor`)."""

    def block(self, d: Block) -> tuple[str, Record]:
        return "MailboxCommand", {
            "command_id": d.command_id,
            "action": "BLOCK",
            "tenant_id": d.key.tenant_id,
            "mailbox": d.key.mailbox,
            "at": d.at_ms,
            "offense": d.offense,
            "permanent": d.permanent,
            "until": d.until_ms,
            "reason": None,
            "actor": None,
            "note": None,
            "block_sequence": d.sequence,
        }

    def unblock(self, d: Unblock) -> tuple[str, Record]:
        return "MailboxCommand", {
            "command_id": d.command_id,
            "action": "UNBLOCK",
            "tenant_id": d.key.tenant_id,
            "mailbox": d.key.mailbox,
            "at": d.at_ms,
            "offense": d.offense,
            "permanent": False,
            "until": None,
            "reason": d.reason,
            "actor": d.actor,
            "note": d.note,
            "block_sequence": d.sequence,
        }

    def scan_request(self, d: ScanRequest) -> tuple[str, Record]:
        return "ScanRequest", {
            "request_id": d.request_id,
            "tenant_id": d.key.tenant_id,
            "mailbox": d.key.mailbox,
            "owner_id": d.owner_id,
            "device_id": d.device_id,
            "at": d.at_ms,
            "block_sequence": d.sequence,
            "reason": f"{d.key.mailbox} was blocked for sending spam or viruses; "
            "scan this device for malware.",
        }

    def alert(self, d: Alert) -> tuple[str, Record]:
        return "Alert", {
            "alert_id": d.alert_id,
            "tenant_id": d.key.tenant_id,
            "mailbox": d.key.mailbox,
            "at": d.at_ms,
            "kind": d.kind,
            "offense": d.offense,
            "permanent": d.permanent,
            "until": d.until_ms,
            "owner_id": d.owner_id,
            "devices": list(d.devices),
            "scans_requested": d.scans_requested,
            "evidence": _evidence(d.evidence),
        }

    def report(self, d: Report) -> tuple[str, Record]:
        return "Report", {
            "report_id": d.report_id,
            "tenant_id": d.key.tenant_id,
            "mailbox": d.key.mailbox,
            "at": d.at_ms,
            "event": d.event,
            "offense": d.offense,
            "until": d.until_ms,
            "actor": d.actor,
            "reason": d.reason,
            "source": None,
            "action_id": None,
            "outcome": None,
            "status": None,
        }


_DECISION_RECORDS = _DecisionRecords()


def record_of(
    obj: Decision | Verdict | DirectoryEntry | TenantSettings | Release,
) -> tuple[str, Record]:
    """(record name, value record) of a decision, or of an input event for producers."""
    match obj:
        case Verdict():
            return "Verdict", {
                "tenant_id": obj.key.tenant_id,
                "message_id": obj.message_id,
                "mailbox": obj.key.mailbox,
                "direction": obj.direction.value,
                "verdict": obj.verdict.value,
                "scanned_at": obj.scanned_at_ms,
            }
        case DirectoryEntry():
            return "DirectoryEntry", {
                "tenant_id": obj.key.tenant_id,
                "mailbox": obj.key.mailbox,
                "owner_id": obj.owner_id,
                "devices": list(obj.devices),
                "at": obj.at_ms,
            }
        case TenantSettings():
            return "TenantSettings", {
                "tenant_id": obj.tenant_id,
                "synchronized_security": obj.synchronized_security,
                "at": obj.at_ms,
            }
        case Release():
            # Unsigned: `ActionKeys.sign` adds key_id and signature.
            return "SupportAction", {
                "action_id": obj.action_id or release_action_id(obj),
                "action": "RELEASE",
                "tenant_id": obj.key.tenant_id,
                "mailbox": obj.key.mailbox,
                "actor": obj.actor,
                "reason": obj.reason,
                "at": obj.at_ms,
                "source": None,
                "key_id": None,
                "signature": None,
            }
    return visit(obj, _DECISION_RECORDS)


def key_of(
    obj: Decision | Verdict | DirectoryEntry | TenantSettings | Release,
) -> tuple[str, Record]:
    """(record name, key record) under which `obj` is produced.

    Scan requests are keyed by device, tenant settings by tenant, everything else
    by mailbox (verdicts too, when sendguard's own tools produce them).
    """
    if isinstance(obj, ScanRequest):
        return "DeviceKey", {"tenant_id": obj.key.tenant_id, "device_id": obj.device_id}
    if isinstance(obj, TenantSettings):
        return "TenantKey", {"tenant_id": obj.tenant_id}
    return "MailboxKey", {"tenant_id": obj.key.tenant_id, "mailbox": obj.key.mailbox}


_TOPIC_OF: dict[type, str] = {
    Block: topics.MAILBOX_CONTROL,
    Unblock: topics.MAILBOX_CONTROL,
    ScanRequest: topics.SCAN_REQUESTS,
    Alert: topics.SECURITY_ALERTS,
    Report: topics.MAIL_REPORTS,
    Verdict: topics.MAIL_VERDICTS,
    DirectoryEntry: topics.DIRECTORY_MAILBOXES,
    TenantSettings: topics.TENANT_SETTINGS,
    Release: topics.SUPPORT_ACTIONS,
}


def topic_of(obj: Decision | Verdict | DirectoryEntry | TenantSettings | Release) -> str:
    """The topic `obj` is produced to."""
    return _TOPIC_OF[type(obj)]


def release_attempt_record(
    *,
    attempt_id: str,
    tenant_id: str,
    mailbox: str,
    at_ms: int,
    actor: str | None,
    reason: str | None,
    source: str | None,
    outcome: str,
    status: int,
) -> Record:
    """The `release_attempt` Report of one request to the release API (any outcome).

    Its id derives from the attempt's id, so writing it twice is one record to consumers.
    """
    return {
        "report_id": str(uuid.uuid5(_RELEASE_NAMESPACE, f"attempt\x1f{attempt_id}")),
        "tenant_id": tenant_id,
        "mailbox": mailbox,
        "at": at_ms,
        "event": "release_attempt",
        "offense": None,
        "until": None,
        "actor": actor,
        "reason": reason,
        "source": source,
        "action_id": attempt_id,
        "outcome": outcome,
        "status": status,
    }


def dead_letter_record(
    reason: str,
    detail: str,
    *,
    source_topic: str,
    source_partition: int,
    source_offset: int,
    key: bytes | None,
    value: bytes | None,
    at_ms: int,
) -> Record:
    """The DeadLetter value for an input record that could not be used."""
    return {
        "reason": reason,
        "detail": detail,
        "source_topic": source_topic,
        "source_partition": source_partition,
        "source_offset": source_offset,
        "key": key,
        "value": value,
        "at": at_ms,
    }
