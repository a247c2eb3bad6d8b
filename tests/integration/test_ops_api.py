"""The status and support API, the status page and the metrics of a real worker.

One worker (policy: window 20 s, first block 10 s, permanent on the 2nd offense)
serves the module; tests run in file order and the first one owns the metric values.

    t≈0   burst b@y ─► BLOCK 1 (10 s): status says so; release ─► 409 (timed)
    t≈10  b@y's block expires
    t≈11  burst b@y ─► BLOCK 2, PERMANENT; burst a@x ─► BLOCK 1 (timed)
          gauges: 1 timed, 1 permanent; `sendguard release` ─► released, audited
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families
from worker_support import SENDGUARD, Deployment, WorkerProcess, burst, wait_for

ADMIN = "admin-" + secrets.token_hex(8)
SUPPORT = "support-" + secrets.token_hex(8)
POLICY_YAML = "window: 20s\nfirst_block: 10s\npermanent_on_offense: 2\n"


@dataclass
class Live:
    deployment: Deployment
    worker: WorkerProcess

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.worker.port}"

    def call(
        self, path: str, token: str | None = None, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, raw, headers = answer.status, answer.read(), answer.headers
        except urllib.error.HTTPError as error:
            status, raw, headers = error.code, error.read(), error.headers
        try:
            document = json.loads(raw)
        except ValueError:
            document = {"text": raw.decode(errors="replace")}
        return status, document, headers

    def mailbox(self, tenant: str, mailbox: str) -> dict[str, Any]:
        status, document, _ = self.call(f"/api/mailboxes/{tenant}/{mailbox}", ADMIN)
        assert status == 200, document
        return document

    def play(self, lines: list[str]) -> None:
        assert self.deployment.produce(lines).wait(60) == 0

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        samples = {}
        for family in text_string_to_metric_families(self.worker.metrics()):
            for s in family.samples:
                samples[s.name, tuple(sorted(s.labels.items()))] = s.value
        return samples


def _directory(tenant: str, mailbox: str, owner: str, devices: list[str]) -> str:
    return json.dumps(
        {
            "type": "directory",
            "tenant_id": tenant,
            "mailbox": mailbox,
            "owner_id": owner,
            "devices": devices,
            "at": int(time.time() * 1000),
        }
    )


def _start(deployment: Deployment) -> WorkerProcess:
    (deployment.tmp / "policy.yaml").write_text(POLICY_YAML)
    worker = deployment.worker(store="memory").start()
    worker.wait_ready()
    return worker


@pytest.fixture(scope="module")
def live(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SENDGUARD_ADMIN_TOKEN", ADMIN)  # inherited by the worker process
        env.setenv("SENDGUARD_SUPPORT_TOKEN", SUPPORT)
        deployment = Deployment.create(bootstrap, tmp_path_factory.mktemp("api"))
        worker = _start(deployment)
    live = Live(deployment, worker)
    try:
        wait_for(lambda: live.call("/ready")[0] == 200, 60, "/ready", every_s=0.3)
        live.play(
            [
                _directory("t1", "a@x.com", "u1", ["d1", "d2"]),
                _directory("t1", "b@y.com", "u2", ["d3"]),
            ]
        )
        yield live
    finally:
        worker.stop()


def _blocked(live: Live, tenant: str, mailbox: str, permanent: bool = False) -> bool:
    block = live.mailbox(tenant, mailbox)["block"]
    return block is not None and block["permanent"] is permanent


def test_status_release_and_metrics(live: Live) -> None:
    names = live.deployment.names
    producer = Producer({"bootstrap.servers": live.deployment.bootstrap})
    producer.produce(names.verdicts, b"not a verdict")
    producer.flush(10)

    now = int(time.time() * 1000)
    live.play(burst("t1", "b@y.com", now + 200, "b1"))
    wait_for(lambda: _blocked(live, "t1", "b@y.com"), 20, "b@y.com blocked", every_s=0.2)

    # -- status of a timed block, and a refused release -----------------------------
    status = live.mailbox("t1", "B@y.com ")  # normalised like the policy does
    assert (status["mailbox"], status["offenses"], status["blocked"]) == ("b@y.com", 1, True)
    assert status["block"]["permanent"] is False and status["block"]["until"] is not None
    assert status["next_penalty"] == {
        "offense": 2,
        "permanent": True,
        "duration": None,
        "duration_ms": None,
    }
    (block_event,) = [e for e in status["recent_events"] if e["kind"] == "block"]
    assert [e["message_id"] for e in block_event["detail"]["evidence"]] == [
        f"b1-{i}" for i in range(5)
    ]
    code, refusal, _ = live.call(
        "/api/mailboxes/t1/b@y.com/release", SUPPORT, {"actor": "sam", "reason": "early"}
    )
    assert code == 409, refusal
    assert "timed block" in refusal["reason"] and "cannot be shortened" in refusal["reason"]
    code, problem, _ = live.call("/api/mailboxes/t1/b@y.com/release", SUPPORT, {"actor": "sam"})
    assert (code, problem["error"]) == (400, "reason is required (a non-empty string)")

    # -- escalate to permanent (after the 10 s block ended), and a timed block of a@x --
    until = status["block"]["until"]
    wait_for(lambda: not _blocked(live, "t1", "b@y.com"), 20, f"b@y.com unblocked ({until})")
    now = int(time.time() * 1000)
    live.play(burst("t1", "b@y.com", now + 200, "b2") + burst("t1", "a@x.com", now + 200, "a1"))
    wait_for(lambda: _blocked(live, "t1", "b@y.com", permanent=True), 20, "permanent block")
    wait_for(lambda: _blocked(live, "t1", "a@x.com"), 20, "a@x.com blocked")
    code, listing, _ = live.call("/api/blocks?tenant=t1", ADMIN)
    assert code == 200
    assert [(b["mailbox"], b["offense"], b["permanent"]) for b in listing["blocks"]] == [
        ("a@x.com", 1, False),
        ("b@y.com", 2, True),
    ]
    assert live.call("/api/blocks?tenant=other", ADMIN)[1]["blocks"] == []

    def gauges() -> tuple[float, float]:
        m = live.metrics()
        return m["sendguard_active_timed_blocks", ()], m["sendguard_permanent_blocks", ()]

    wait_for(lambda: gauges() == (1, 1), 10, "block gauges 1 timed, 1 permanent", every_s=0.5)

    # -- the CLI on top of the API: status, then the release --------------------------
    env = {**os.environ, "SENDGUARD_URL": live.url, "SENDGUARD_ADMIN_TOKEN": ADMIN}
    shown = subprocess.run(
        [SENDGUARD, "status", "t1", "b@y.com"], env=env, capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert "PERMANENT (offense 2" in shown.stdout
    env["SENDGUARD_SUPPORT_TOKEN"] = SUPPORT
    released = subprocess.run(
        [
            SENDGUARD,
            "release",
            "t1",
            "b@y.com",
            "--actor",
            "helpdesk:maria",
            "--reason",
            "reimaged",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert released.returncode == 0, released.stderr
    assert "released t1 / b@y.com (was offense 2) by helpdesk:maria" in released.stdout
    after = live.mailbox("t1", "b@y.com")
    assert (after["offenses"], after["block"]) == (0, None)

    # -- audited on mail.reports: the refusal and the release, with actor and reason ----
    reports = live.deployment.read(names.external("mail.reports"), idle_s=1.0)
    audit = [
        (r["event"], r["actor"], r["reason"] if r["event"] == "released" else None)
        for r in reports
        if r["mailbox"] == "b@y.com" and r["actor"] is not None
    ]
    assert audit == [("release_refused", "sam", None), ("released", "helpdesk:maria", "reimaged")]

    # -- metrics after the scenario: 3 bursts of 5 qualifying, 5 clean, 1 inbound ------
    def settled() -> bool:
        m = live.metrics()
        return (
            m["sendguard_verdicts_total", (("direction", "OUTBOUND"), ("verdict", "CLEAN"))] == 15
            and m["sendguard_permanent_blocks", ()] == 0
            and sum(v for (n, _), v in m.items() if n == "sendguard_dead_letters_total") == 1
        )

    wait_for(settled, 15, "metrics of the scenario", every_s=0.5)
    m = live.metrics()

    def verdicts(direction: str, verdict: str) -> float:
        return m["sendguard_verdicts_total", (("direction", direction), ("verdict", verdict))]

    assert verdicts("OUTBOUND", "SPAM") == 9 and verdicts("OUTBOUND", "VIRUS") == 6
    assert verdicts("INBOUND", "SPAM") == 3 and verdicts("INBOUND", "CLEAN") == 0
    assert m["sendguard_qualifying_verdicts_total", ()] == 15
    assert m["sendguard_blocks_total", (("offense", "1"), ("permanent", "false"))] == 2
    assert m["sendguard_blocks_total", (("offense", "2"), ("permanent", "true"))] == 1
    assert m["sendguard_unblocks_total", (("reason", "expired"),)] == 1
    assert m["sendguard_unblocks_total", (("reason", "released"),)] == 1
    assert m["sendguard_release_refusals_total", ()] == 1
    assert m["sendguard_scan_requests_total", ()] == 4  # b@y: d3 twice; a@x: d1, d2
    assert m["sendguard_alerts_total", (("kind", "blocked"),)] == 3
    assert m["sendguard_dead_letters_total", (("reason", "not_avro"),)] == 1
    assert m["sendguard_decision_latency_seconds_count", ()] == 3
    assert (m["sendguard_active_timed_blocks", ()], m["sendguard_permanent_blocks", ()]) == (1, 0)
    lag_topics = {
        dict(labels)["topic"] for (n, labels) in m if n == "sendguard_consumer_lag" and labels
    }
    assert {names.verdicts, names.mailbox_events} <= lag_topics


def test_tokens(live: Live, tmp_path: Path) -> None:
    for path in ("/health", "/ready", "/metrics"):
        assert live.call(path)[0] == 200
    code, document, headers = live.call("/api/blocks")
    assert code == 401 and "admin token required" in document["error"]
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert live.call("/api/blocks", "wrong")[0] == 401
    assert live.call("/api/blocks", SUPPORT)[0] == 401  # a support token reads nothing
    assert live.call("/api/mailboxes/t1/b@y.com", None)[0] == 401
    body = {"actor": "x", "reason": "y"}
    assert live.call("/api/mailboxes/t1/b@y.com/release", ADMIN, body)[0] == 401
    assert live.call("/api/mailboxes/t1/b@y.com/release", None, body)[0] == 401
    code, document, _ = live.call("/status")
    assert code == 401 and "b@y.com" not in json.dumps(document)
    assert live.call(f"/status?token=nope{ADMIN}")[0] == 401
    for faust_page in ("/router/", "/table/mailbox-state/", "/stats/"):
        assert live.call(faust_page, ADMIN)[0] == 404  # Faust's data pages are off

    # A worker with no tokens configured: those endpoints are disabled, not open.
    with pytest.MonkeyPatch.context() as env:
        env.delenv("SENDGUARD_ADMIN_TOKEN", raising=False)
        env.delenv("SENDGUARD_SUPPORT_TOKEN", raising=False)
        closed = _start(Deployment.create(live.deployment.bootstrap, tmp_path))
    try:
        other = Live(closed.deployment, closed)
        code, document, _ = other.call("/api/blocks", "anything")
        assert code == 403 and "SENDGUARD_ADMIN_TOKEN" in document["error"]
        code, document, _ = other.call("/api/mailboxes/t/m@x/release", "x", body)
        assert code == 403 and "SENDGUARD_SUPPORT_TOKEN" in document["error"]
        assert other.call("/status?token=")[0] == 403
        assert other.call("/health")[0] == 200
    finally:
        closed.stop()


def test_status_page_in_headless_browser(live: Live, tmp_path: Path) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (scripts/setup.sh installs it as root)")
    # A permanent block (the policy's 2nd offense): a 10 s timed block could end while
    # a slow machine is still starting chromium, and leave the page without it.
    live.play(burst("t3", "page@z.com", int(time.time() * 1000) + 200, "p1"))
    wait_for(lambda: _blocked(live, "t3", "page@z.com"), 20, "page@z.com blocked", every_s=0.2)
    wait_for(lambda: live.mailbox("t3", "page@z.com")["block"] is None, 30, "page@z.com unblocked")
    live.play(burst("t3", "page@z.com", int(time.time() * 1000) + 200, "p2"))
    wait_for(
        lambda: _blocked(live, "t3", "page@z.com", permanent=True),
        20,
        "page@z.com blocked permanently",
        every_s=0.2,
    )

    def browse(*mode: str) -> subprocess.CompletedProcess[str]:
        # fmt: off
        return subprocess.run(
            [
                chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,700",
                *mode, f"{live.url}/status?token={ADMIN}",
            ],
            capture_output=True, text=True, timeout=90,
        )
        # fmt: on

    dom = browse("--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The token was swapped for a cookie and the redirect followed: the page rendered.
    assert "<h1>sendguard status</h1>" in dom.stdout
    assert '<td class="mailbox">page@z.com</td>' in dom.stdout
    assert ADMIN not in dom.stdout
    shot = tmp_path / "status.png"
    taken = browse(f"--screenshot={shot}")
    assert taken.returncode == 0 and shot.stat().st_size > 10_000, taken.stderr[-2000:]
    if os.environ.get("SENDGUARD_KEEP_SCREENSHOT"):
        shutil.copy(shot, os.environ["SENDGUARD_KEEP_SCREENSHOT"])
