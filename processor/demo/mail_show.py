"""What the mail demo shows: one message's way through the loop, and the summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processor.local.smtp_client import Sent


@dataclass(frozen=True)
class MailSent:
    """One message of the demo and what became of it at each part of the loop."""

    at_s: float  # seconds since the demo started, when Postfix answered
    sender: str
    recipient: str
    subject: str
    via: str  # "logged in" or the outside client's address
    answer: Sent
    scan: dict[str, Any] | None  # rspamd's /history row (None: not scanned or not found)
    verdict: dict[str, Any] | None  # the Verdict sendguard ingest wrote (None: none)


def describe_scan(scan: dict[str, Any] | None) -> str:
    if scan is None:
        return "-"
    return (
        f"{scan.get('action', '?')} "
        f"({float(scan.get('score', 0)):.1f} of {float(scan.get('required_score', 0)):g})"
    )


def describe_verdict(verdict: dict[str, Any] | None) -> str:
    if verdict is None:
        return "-"
    return f"{verdict['direction']} {verdict['verdict']}"


def describe_answer(answer: Sent) -> str:
    if answer.accepted:
        return "250 accepted"
    return f"{answer.code} {answer.text}"


def mail_headline(mail_from: str, recipient: str, subject: str, via: str) -> str:
    return f"SMTP  {mail_from} → {recipient}  {subject!r}  ({via})"


def mail_outcome(mail: MailSent) -> tuple[str, str]:
    """(the line under a message's headline, its colour): rspamd's verdict, the one
    sendguard ingest wrote, and Postfix's answer; for a refusal before DATA, who refused."""
    answer = f"Postfix: {describe_answer(mail.answer)}"
    if mail.answer.step in ("rcpt", "mail"):
        answer += f"  (at {mail.answer.step.upper()}: never scanned, no verdict)"
        return "      " + answer, "red"
    parts = [
        f"rspamd: {describe_scan(mail.scan)}",
        f"mail.verdicts: {describe_verdict(mail.verdict)}",
        answer,
    ]
    colour = "green" if mail.answer.accepted else "magenta"
    return "      " + "  ▸  ".join(parts), colour


@dataclass(frozen=True)
class MailRow:
    """Consecutive messages alike (sender, way in, answer, rspamd, verdict)."""

    sender: str
    via: str
    count: int
    answer: str
    rspamd: str
    verdict: str


def group_mails(mails: list[MailSent]) -> list[MailRow]:
    rows: list[MailRow] = []
    for mail in mails:
        answer = describe_answer(mail.answer)
        if len(answer) > 60:
            answer = answer[:57] + "..."
        scan = mail.scan.get("action", "?") if mail.scan is not None else "-"
        row = MailRow(mail.sender, mail.via, 1, answer, str(scan), describe_verdict(mail.verdict))
        last = rows[-1] if rows else None
        if last is not None and (last.sender, last.via, last.answer, last.rspamd, last.verdict) == (
            row.sender,
            row.via,
            row.answer,
            row.rspamd,
            row.verdict,
        ):
            rows[-1] = MailRow(
                last.sender, last.via, last.count + 1, last.answer, last.rspamd, last.verdict
            )
        else:
            rows.append(row)
    return rows


def format_mail_table(rows: list[MailRow]) -> str:
    header = ("sender", "from", "n", "rspamd", "mail.verdicts", "Postfix answered")
    cells = [header] + [
        (r.sender, r.via, str(r.count), r.rspamd, r.verdict, r.answer) for r in rows
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def format_timeline(timeline: list[tuple[float, str]]) -> str:
    return "\n".join(f"  {at:6.2f} s  {what}" for at, what in timeline)


def counts(values: dict[str, float]) -> str:
    """ "a 3, b 1" for the non-zero values, largest first."""
    shown = sorted(((k, v) for k, v in values.items() if v), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{k} {v:.0f}" for k, v in shown) or "none"
