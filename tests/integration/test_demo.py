"""`sendguard demo`'s core, against the test broker: what a newcomer is shown is right.

Both demos: the classic scenario on Kafka, and the mail loop through a real Postfix and
rspamd (skipped, saying why, where those are not installed or it is not root).
"""

from __future__ import annotations

import io
import os
import urllib.request
from pathlib import Path

import pytest
from worker_support import free_port

from processor.demo.mail_run import run_mail_demo
from processor.demo.mail_story import COLLEAGUE, FORGED_COUNT, JDOE, OUTSIDE_IP, PARTNER
from processor.demo.run import DemoOptions, run_demo
from processor.demo.scenario import EXPECTED
from processor.local.mailstack import mail_packages_missing
from processor.local.service_tools import port_answers


def test_demo_shows_blocks_escalation_release_and_no_scans_without_sync_security(
    bootstrap: str,
) -> None:
    out = io.StringIO()
    pages: list[int] = []

    def while_running(url: str, admin_token: str, support_tokens: dict[str, str]) -> None:
        request = urllib.request.Request(f"{url}/api/blocks")
        request.add_header("Authorization", f"Bearer {admin_token}")
        with urllib.request.urlopen(request, timeout=10) as answer:
            pages.append(answer.status)

    result = run_demo(
        DemoOptions(bootstrap=bootstrap, web_port=free_port()), out, on_running=while_running
    )
    text = out.getvalue()
    records = result.records

    blocks = {
        (b["tenant_id"], b["mailbox"], b["offense"], b["permanent"]) for b in records.blocks()
    }
    unblocks = {
        (u["tenant_id"], u["mailbox"], u["offense"], u["reason"]) for u in records.unblocks()
    }
    assert blocks == EXPECTED.blocks
    assert unblocks == EXPECTED.unblocks
    assert not [s for s in records.scans if s["tenant_id"] in EXPECTED.no_scans_for_tenants]
    # The early release of a timed block was refused; the permanent one released.
    assert [(mailbox, status) for mailbox, status, _ in records.releases] == [
        ("j.doe@acme.example", 409),
        ("sales@globex.example", 200),
    ]
    released = [r for r in records.reports if r["event"] == "released"]
    assert [(r["mailbox"], r["actor"]) for r in released] == [
        ("sales@globex.example", "helpdesk:maria")
    ]

    rows = {row.mailbox: row for row in result.summary}
    sales = rows["sales@globex.example"]
    assert (sales.blocks, sales.unblocks, sales.scans, sales.alerts) == (
        "1 2 3P",
        "expired×2 released×1",
        6,
        3,
    )
    assert (rows["ops@initech.example"].scans, rows["ops@initech.example"].alerts) == (0, 1)
    assert rows["j.doe@acme.example"].scans == 2
    assert set(rows) == {"sales@globex.example", "ops@initech.example", "j.doe@acme.example"}

    # What the terminal showed: where to look, each block with its end, the summary.
    assert "/metrics" in text and "/status?token=" in text
    assert "offense 3: PERMANENT" in text and "NO scans (Sync Security off)" in text
    assert "HTTP 409 refused" in text and "HTTP 200 released" in text
    assert "sales@globex.example  1 2 3P" in text
    assert "stopped everything the demo started" in text
    assert pages == [200]
    assert result.metrics["sendguard_blocks_total"] == 5
    assert result.elapsed_s < 90


def _mail_loop_unavailable() -> str | None:
    missing = mail_packages_missing()
    if missing:
        return f"not installed: {' '.join(missing)} (SENDGUARD_SETUP_MAIL=1 bash scripts/setup.sh)"
    if os.geteuid() != 0:
        return "the mail demo's private Postfix starts only as root"
    return None


def _processes_naming(text: str) -> list[str]:
    """Command lines of running processes that contain `text`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


@pytest.mark.skipif(_mail_loop_unavailable() is not None, reason=str(_mail_loop_unavailable()))
def test_mail_demo_blocks_jdoe_refuses_his_next_mail_and_lets_him_send_again(
    bootstrap: str,
) -> None:
    out = io.StringIO()

    result = run_mail_demo(DemoOptions(bootstrap=bootstrap, web_port=free_port()), out)

    text = out.getvalue()
    assert result.failures == [], text
    commands = [
        (c["tenant_id"], c["mailbox"], c["action"], c["offense"], c["permanent"], c["reason"])
        for c in result.records.commands
    ]
    assert commands == [
        ("acme", JDOE, "BLOCK", 1, False, None),
        ("acme", JDOE, "UNBLOCK", 1, False, "expired"),
    ]

    # j.doe@: clean mail, five spam refused by rspamd, then refused by Postfix on the
    # gateway's word before his message was even sent, then accepted again.
    jdoe = [m for m in result.mails if m.sender == JDOE]
    assert [(m.answer.code, m.answer.step) for m in jdoe] == [
        (250, "data"),
        *[(554, "data")] * 5,
        (554, "rcpt"),
        (250, "data"),
    ]
    assert [m.verdict["verdict"] if m.verdict else None for m in jdoe] == [
        "CLEAN",
        *["SPAM"] * 5,
        None,
        "CLEAN",
    ]
    assert all(m.scan is not None and m.scan["action"] == "reject" for m in jdoe[1:6])
    refusal = jdoe[6].answer
    assert refusal.text.startswith(
        "5.7.1 <j.doe@acme.example>: Sender address rejected: This mailbox is blocked from "
        "sending until 20"
    ), refusal
    assert f"Postfix: 554 {refusal.text}" in text  # the SMTP answer, printed as it came

    # The colleague is never blocked, not even by spam forged in her name from outside.
    colleague = [m for m in result.mails if m.sender == COLLEAGUE and m.via == "logged in"]
    assert [m.answer.code for m in colleague] == [250, 250, 250]
    forged = [m for m in result.mails if m.sender == COLLEAGUE and m.via == OUTSIDE_IP]
    assert [(m.answer.code, m.verdict and m.verdict["direction"]) for m in forged] == [
        (554, "INBOUND")
    ] * FORGED_COUNT
    assert [m.answer.code for m in result.mails if m.sender == PARTNER] == [250]  # to j.doe@

    # The order of j.doe@'s day, as the timeline reports it.
    events = [what for _, what in sorted(result.timeline)]
    assert [e.split(" ")[0] for e in events][-3:] == ["block", "UNBLOCK", "his"], events
    assert events[-1] == "his message accepted again: 250"
    refused_at = next(at for at, what in result.timeline if what.startswith("his next"))
    over_at = next(at for at, what in result.timeline if what.startswith("block over"))
    assert over_at - refused_at > 5  # the 10 s block held in between

    assert result.gateway_answers["reject"] == 1
    assert result.ingest_outcomes["verdict"] == len(result.mails) - 1  # all but the refused
    assert len(result.records.verdicts) == len(result.mails) - 1

    assert "BLOCK    acme     j.doe@acme.example  offense 1 until" in text
    assert "UNBLOCK  acme     j.doe@acme.example  offense 1 (expired)" in text
    assert f"no BLOCK for {COLLEAGUE}" in text
    assert "Summary (18 messages over SMTP)" in text
    assert "stopped everything the demo started" in text
    prefix = text.split("topics: 9 topics as ", 1)[1].split("*", 1)[0]
    assert _processes_naming(prefix) == []  # worker, ingest and gateway are gone
    assert not result.workdir.exists()
    assert len(result.ports) == 8
    listening = [name for name, port in result.ports.items() if port_answers(port)]
    assert listening == []  # rspamd and Postfix too (rspamd renames its processes)
    assert result.elapsed_s < 100
