"""What the API says about mailboxes: JSON documents built from stored state.

Pure (no Faust, no clock): the caller passes the stored `MailboxState.to_record()`
and `now_ms`. Due timed blocks are shown as ended, exactly as the policy would end
them at `now_ms` (`processor.policy.expire` on a copy), so the API never shows a
block the timer is about to lift as still "in force". The release check runs the
policy's own `release` on a copy for the same reason: the API refuses with the
policy's words, and only what the policy would accept is published.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from processor.policy import (
    MailboxKey,
    MailboxState,
    PolicyConfig,
    Release,
    ReleaseRefused,
    Report,
    expire,
    refusal_report_id,
    release,
)
from processor.policy.config import format_duration


def iso(ms: int | None) -> str | None:
    if ms is None:
        return None
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def effective_state(record: dict[str, Any] | None, key: MailboxKey, now_ms: int) -> MailboxState:
    """The mailbox's state as the policy sees it at `now_ms` (due blocks ended)."""
    state = MailboxState.from_record(record) if record is not None else MailboxState()
    expire(state, key, now_ms)
    return state


def block_of(state: MailboxState) -> dict[str, Any] | None:
    if not state.blocked:
        return None
    return {
        "offense": state.offenses,
        "permanent": state.permanent,
        "since": iso(state.blocked_at_ms),
        "until": iso(state.blocked_until_ms),
    }


def next_penalty(policy: PolicyConfig, offenses: int) -> dict[str, Any]:
    """What the next block of a mailbox with `offenses` past offenses would be."""
    offense = offenses + 1
    duration = policy.block_duration_ms(offense)
    return {
        "offense": offense,
        "permanent": duration is None,
        "duration": None if duration is None else format_duration(duration),
        "duration_ms": duration,
    }


def mailbox_document(
    key: MailboxKey,
    record: dict[str, Any] | None,
    policy: PolicyConfig,
    now_ms: int,
    recent: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """`GET /api/mailboxes/{tenant}/{mailbox}`: state, block, next penalty, evidence.

    `window.entries` are the counted qualifying verdicts (message ids, never
    content); `window.in_window` counts those in `(H - window, H]`, the interval
    that ends at the newest one, which is what the next verdict adds to.
    """
    state = effective_state(record, key, now_ms)
    entries = state.window.entries
    high_water = state.high_water_ms
    in_window = (
        0
        if high_water is None
        else sum(1 for at, _ in entries if high_water - policy.window_ms < at <= high_water)
    )
    return {
        "tenant_id": key.tenant_id,
        "mailbox": key.mailbox,
        "known": record is not None,
        "offenses": state.offenses,
        "blocked": state.blocked,
        "block": block_of(state),
        "next_penalty": next_penalty(policy, state.offenses),
        "window": {
            "threshold": policy.threshold,
            "length": format_duration(policy.window_ms),
            "in_window": in_window,
            "entries": [{"message_id": mid, "scanned_at": iso(at)} for at, mid in entries],
        },
        "high_water": iso(high_water),
        "counts_from": iso(state.counts_from_ms),
        "recent_events": recent or [],
    }


def block_row(key: MailboxKey, state: MailboxState) -> dict[str, Any]:
    return {"tenant_id": key.tenant_id, "mailbox": key.mailbox, **(block_of(state) or {})}


@dataclass(frozen=True, slots=True)
class ReleasePlan:
    """What publishing a release will cause: the report ids to wait for."""

    released_report_id: str
    refused_report_id: str
    offense: int


def plan_release(
    record: dict[str, Any] | None, request: Release, now_ms: int
) -> ReleaseRefused | ReleasePlan:
    """The policy's verdict on `request` now, without touching the stored state.

    A refusal carries the policy's reason and its `release_refused` report (for the
    audit trail). Otherwise the plan names the report ids the agent will emit: the
    `released` one, and the `release_refused` one in case the state changes before
    the agent handles the request.
    """
    state = MailboxState.from_record(record) if record is not None else MailboxState()
    offense = state.offenses
    refused_later = refusal_report_id(state, request)
    decisions, refused = release(state, request, now_ms)
    if refused is not None:
        return refused
    released = next(d for d in decisions if isinstance(d, Report) and d.event == "released")
    return ReleasePlan(released.report_id, refused_later, offense)
