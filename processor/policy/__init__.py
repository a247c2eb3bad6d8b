"""The lockout policy: a pure state machine (standard library only).

Inputs are events (`processor.policy.events`), outputs are decisions
(`processor.policy.decisions`). Nothing here reads a clock, sleeps, or does I/O:
time is passed in as epoch milliseconds and decisions are returned to the caller,
who sends them. `docs/policy.md` is the specification this package implements.
"""

from processor.policy.config import PolicyConfig, PolicyConfigError, parse_duration
from processor.policy.decisions import (
    Alert,
    Block,
    Decision,
    Evidence,
    Report,
    ScanRequest,
    Unblock,
)
from processor.policy.directory import Directory
from processor.policy.engine import Engine
from processor.policy.events import (
    Direction,
    DirectoryEntry,
    MailboxKey,
    Release,
    TenantSettings,
    Tick,
    Verdict,
    VerdictKind,
    normalise_mailbox,
)
from processor.policy.machine import (
    Outcome,
    PolicyContext,
    ReleaseRefused,
    expire,
    forgettable,
    refusal_report_id,
    release,
    step_verdict,
)
from processor.policy.state import MailboxState

__all__ = [
    "Alert",
    "Block",
    "Decision",
    "Direction",
    "Directory",
    "DirectoryEntry",
    "Engine",
    "Evidence",
    "MailboxKey",
    "MailboxState",
    "Outcome",
    "PolicyConfig",
    "PolicyConfigError",
    "PolicyContext",
    "Release",
    "ReleaseRefused",
    "Report",
    "ScanRequest",
    "TenantSettings",
    "Tick",
    "Unblock",
    "Verdict",
    "VerdictKind",
    "expire",
    "forgettable",
    "normalise_mailbox",
    "parse_duration",
    "refusal_report_id",
    "release",
    "step_verdict",
]
