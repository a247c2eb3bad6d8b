"""`sendguard demo`'s core, against the test broker: what a newcomer is shown is right."""

from __future__ import annotations

import io
import urllib.request

from worker_support import free_port

from processor.demo.run import DemoOptions, run_demo
from processor.demo.scenario import EXPECTED


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
