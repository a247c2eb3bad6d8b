"""The live worker yields what `simulate` yields for the same (paced, rebased) input.

Timeline (policy: window 20 s, first block 3 s, growth 2, permanent on offense 3):

    t0  directory a@x (2 devices) and b@y; tenant t2 has Synchronized Security off
    +1  burst a ─► BLOCK 1 (3 s)       +2.5 release a ─► refused (timed block)
    +7  burst a ─► BLOCK 2 (6 s)       ~+4, ~+13: UNBLOCKs (expired), from the timer
    +16 burst a ─► BLOCK 3 permanent   +19 release a ─► UNBLOCK (released)
    +20 burst b ─► BLOCK 1, no scans   ~+23: UNBLOCK b
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from worker_support import (
    Deployment,
    burst,
    control_summary,
    expected,
    expected_control,
    wait_for,
)

from processor.policy import Alert, Block, Report, ScanRequest, Unblock
from processor.scenario import format_timestamp

TOLERANCE_MS = 2500


def scenario(t0: int) -> list[str]:
    def at(seconds: float) -> str:
        return format_timestamp(t0 + int(seconds * 1000))

    lines = [
        json.dumps(
            {
                "type": "directory",
                "tenant_id": "t1",
                "mailbox": "a@x.com",
                "owner_id": "u1",
                "devices": ["d1", "d2"],
                "at": at(0),
            }
        ),
        json.dumps(
            {
                "type": "directory",
                "tenant_id": "t2",
                "mailbox": "b@y.com",
                "owner_id": "u2",
                "devices": ["d3"],
                "at": at(0),
            }
        ),
        json.dumps(
            {"type": "settings", "tenant_id": "t2", "synchronized_security": False, "at": at(0)}
        ),
    ]
    lines += burst("t1", "A@x.com ", t0 + 1000, "a1")
    lines.append(
        json.dumps(
            {
                "type": "release",
                "tenant_id": "t1",
                "mailbox": "a@x.com",
                "actor": "support-1",
                "reason": "too early",
                "at": at(2.5),
            }
        )
    )
    lines += burst("t1", "a@x.com", t0 + 7000, "a2")
    lines += burst("t1", "a@x.com", t0 + 16000, "a3")
    lines.append(
        json.dumps(
            {
                "type": "release",
                "tenant_id": "t1",
                "mailbox": "a@x.com",
                "actor": "support-2",
                "reason": "owner cleaned the laptop",
                "at": at(19),
            }
        )
    )
    lines += burst("t2", "b@y.com", t0 + 20000, "b1")
    lines.append(json.dumps({"type": "tick", "at": at(26)}))
    return lines


def test_live_worker_matches_simulate(bootstrap: str, tmp_path: Path) -> None:
    deployment = Deployment.create(bootstrap, tmp_path)
    worker = deployment.worker().start()
    try:
        worker.wait_ready()
        # Not ahead of the producer's clock: it sends the first line (at t0) at once.
        t0 = int(time.time() * 1000)
        lines = scenario(t0)
        want = expected(lines)
        producer = deployment.produce(lines)
        assert producer.wait(60) == 0
        names = deployment.names
        control_want = expected_control(want.decisions)
        wait_for(
            lambda: control_summary(deployment.read(names.control, 1.0)) >= control_want,
            30,
            "every BLOCK and UNBLOCK",
        )

        control = deployment.read(names.control)
        assert control_summary(control) == control_want
        # Same order per mailbox, and times within the tolerance of simulate's.
        want_commands = [d for d in want.decisions if isinstance(d, Block | Unblock)]
        for mailbox in ("a@x.com", "b@y.com"):
            got = [r for r in control if r["mailbox"] == mailbox]
            exp = [d for d in want_commands if d.key.mailbox == mailbox]
            assert [r["command_id"] for r in got] == [d.command_id for d in exp]
            for record, decision in zip(got, exp, strict=True):
                assert abs(record["at"] - decision.at_ms) <= TOLERANCE_MS
                if isinstance(decision, Block):
                    assert record["permanent"] == decision.permanent
                    if decision.until_ms is None:
                        assert record["until"] is None
                    else:
                        assert abs(record["until"] - decision.until_ms) <= TOLERANCE_MS
                else:
                    assert record["reason"] == decision.reason
        # Escalation, then the release resets nothing else: a's blocks are 1, 2, permanent 3.
        blocks_a = [r for r in control if r["action"] == "BLOCK" and r["mailbox"] == "a@x.com"]
        assert [(r["offense"], r["permanent"]) for r in blocks_a] == [
            (1, False),
            (2, False),
            (3, True),
        ]
        unblocks_a = [
            r["reason"] for r in control if r["action"] == "UNBLOCK" and r["mailbox"] == "a@x.com"
        ]
        assert unblocks_a == ["expired", "expired", "released"]

        scans = deployment.read(names.external("endpoint.scan-requests"))
        assert sorted(r["request_id"] for r in scans) == sorted(
            d.request_id for d in want.decisions if isinstance(d, ScanRequest)
        )
        assert {r["mailbox"] for r in scans} == {"a@x.com"}  # t2 has scans off

        alerts = deployment.read(names.external("security.alerts"))
        exp_alerts = [d for d in want.decisions if isinstance(d, Alert)]
        assert sorted(r["alert_id"] for r in alerts) == sorted(d.alert_id for d in exp_alerts)
        for record in alerts:
            match = next(d for d in exp_alerts if d.alert_id == record["alert_id"])
            assert [e["message_id"] for e in record["evidence"]] == list(match.message_ids)
            assert record["scans_requested"] == match.scans_requested

        reports = deployment.read(names.external("mail.reports"))
        exp_reports = [d for d in want.decisions if isinstance(d, Report)] + want.refused_reports
        assert sorted((r["report_id"], r["event"]) for r in reports) == sorted(
            (d.report_id, d.event)
            for d in exp_reports  # type: ignore[union-attr]
        )
        refused = [r for r in reports if r["event"] == "release_refused"]
        assert len(refused) == 1 and refused[0]["actor"] == "support-1"
        assert "timed block" in refused[0]["reason"]
    finally:
        worker.stop()
