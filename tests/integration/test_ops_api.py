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
import socket
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

from processor.codec.action_signing import ActionKeys
from processor.codec.records import key_of, record_of
from processor.codec.wire import Codec
from processor.ops.peer_auth import PEER_HEADER, PeerAuth
from processor.ops.support_tokens import token_line
from processor.policy import MailboxKey, Release

ADMIN = secrets.token_urlsafe(32)
#: Personal support tokens (the worker's token file holds their hashes).
SAM, MARIA = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
POLICY_YAML = "window: 20s\nfirst_block: 10s\npermanent_on_offense: 2\n"


@dataclass
class Live:
    deployment: Deployment
    worker: WorkerProcess
    #: The worker's support token file (read again when it changes).
    token_file: Path | None = None

    @property
    def url(self) -> str:
        return self.worker.url

    def call(
        self,
        path: str,
        token: str | None = None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, headers=headers or {})
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
    tmp = tmp_path_factory.mktemp("api")
    token_file = tmp / "support-tokens"
    token_file.write_text(
        f"{token_line(SAM, 'helpdesk:sam')}\n{token_line(MARIA, 'helpdesk:maria')}\n"
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SENDGUARD_ADMIN_TOKEN", ADMIN)  # inherited by the worker process
        env.setenv("SENDGUARD_SUPPORT_TOKENS_FILE", str(token_file))
        deployment = Deployment.create(bootstrap, tmp)
        worker = _start(deployment)
    live = Live(deployment, worker, token_file)
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


def forge_support_actions(live: Live, tenant: str, mailbox: str) -> None:
    """Release the mailbox by writing to mailbox.support-actions directly, around the
    API: once unsigned, once signed with a secret the workers do not have."""
    release = Release(
        MailboxKey.of(tenant, mailbox), "mallory", "around the API", int(time.time() * 1000)
    )
    name, value = record_of(release)
    key_name, key = key_of(release)
    key_id = live.deployment.action_keys.partition(":")[0]
    stranger = ActionKeys.parse(f"{key_id}:{secrets.token_urlsafe(32)}")  # right id, wrong secret
    codec = Codec.from_config()
    producer = Producer(live.deployment.client)
    for record in (value, stranger.sign({**value, "action_id": "forged-2"})):
        producer.produce(
            live.deployment.names.support_actions,
            codec.encode(name, record),
            codec.encode(key_name, key),
        )
    assert producer.flush(10) == 0


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
    # The body's actor is not who released: the token's person is.
    code, refusal, _ = live.call(
        "/api/mailboxes/t1/b@y.com/release", SAM, {"actor": "someone else", "reason": "early"}
    )
    assert code == 409, refusal
    assert "timed block" in refusal["reason"] and "cannot be shortened" in refusal["reason"]
    assert refusal["actor"] == "helpdesk:sam"
    code, problem, _ = live.call("/api/mailboxes/t1/b@y.com/release", SAM, {"actor": "sam"})
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

    # -- writing to mailbox.support-actions is not enough: unsigned and forged are dead ---
    forge_support_actions(live, "t1", "b@y.com")
    wait_for(
        lambda: (
            live.metrics()["sendguard_dead_letters_total", (("reason", "unauthenticated_action"),)]
            == 2
        ),
        15,
        "two unauthenticated support actions dead-lettered",
        every_s=0.5,
    )
    assert _blocked(live, "t1", "b@y.com", permanent=True)

    # -- the CLI on top of the API: status, then the release --------------------------
    env = {**os.environ, "SENDGUARD_URL": live.url, "SENDGUARD_ADMIN_TOKEN": ADMIN}
    shown = subprocess.run(
        [SENDGUARD, "status", "t1", "b@y.com"], env=env, capture_output=True, text=True, timeout=30
    )
    assert shown.returncode == 0, shown.stderr
    assert "PERMANENT (offense 2" in shown.stdout
    env["SENDGUARD_SUPPORT_TOKEN"] = MARIA
    released = subprocess.run(
        [SENDGUARD, "release", "t1", "b@y.com", "--reason", "reimaged"],
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
        if r["mailbox"] == "b@y.com" and r["actor"] is not None and r["event"] != "release_attempt"
    ]
    assert audit == [
        ("release_refused", "helpdesk:sam", None),
        ("released", "helpdesk:maria", "reimaged"),
    ]
    # ... and each request, whatever its outcome, once: who, from where, what came of it.
    attempts = [r for r in reports if r["event"] == "release_attempt"]
    assert [(r["outcome"], r["status"], r["actor"], r["source"]) for r in attempts] == [
        ("refused", 409, "helpdesk:sam", "127.0.0.1"),
        ("invalid_request", 400, "helpdesk:sam", "127.0.0.1"),
        ("released", 200, "helpdesk:maria", "127.0.0.1"),
    ]
    assert attempts[0]["action_id"] == refusal["action_id"]
    assert attempts[2]["reason"] == "reimaged"
    # The SupportAction the API sent: signed, with the person and the client's address.
    (sent,) = [
        r
        for r in live.deployment.read(names.support_actions, idle_s=1.0)
        if r["actor"] != "mallory"
    ]
    assert (sent["actor"], sent["source"], sent["action_id"]) == (
        "helpdesk:maria",
        "127.0.0.1",
        attempts[2]["action_id"],
    )
    assert len(sent["signature"]) == 32

    # -- metrics after the scenario: 3 bursts of 5 qualifying, 5 clean, 1 inbound ------
    def settled() -> bool:
        m = live.metrics()
        return (
            m["sendguard_verdicts_total", (("direction", "OUTBOUND"), ("verdict", "CLEAN"))] == 15
            and m["sendguard_permanent_blocks", ()] == 0
            and sum(v for (n, _), v in m.items() if n == "sendguard_dead_letters_total") == 3
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
    assert m["sendguard_dead_letters_total", (("reason", "unauthenticated_action"),)] == 2

    def attempts(outcome: str) -> float:
        return m["sendguard_release_attempts_total", (("outcome", outcome),)]

    assert (attempts("refused"), attempts("invalid_request"), attempts("released")) == (1, 1, 1)
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
    assert live.call("/api/blocks", MARIA)[0] == 401  # a support token reads nothing
    assert live.call("/api/mailboxes/t1/b@y.com", None)[0] == 401
    body = {"reason": "y"}
    assert live.call("/api/mailboxes/t1/b@y.com/release", ADMIN, body)[0] == 401
    assert live.call("/api/mailboxes/t1/b@y.com/release", None, body)[0] == 401
    code, document, _ = live.call("/status")
    assert code == 401 and "b@y.com" not in json.dumps(document)
    assert live.call(f"/status?token=nope{ADMIN}")[0] == 401
    for faust_page in ("/router/", "/table/mailbox-state/", "/stats/"):
        assert live.call(faust_page, ADMIN)[0] == 404  # Faust's data pages are off

    # Bytes that are not UTF-8 in the header or the cookie: 401, never a 500.
    for header in (b"Authorization: Bearer ab\xff\xfecd", b"Cookie: sendguard_status=\xe9\xff"):
        assert raw_status(live, b"GET /status HTTP/1.1", header) == 401
        assert raw_status(live, b"GET /api/blocks HTTP/1.1", header) == 401

    # The status cookie expires: its Max-Age, and the expiry signed into its value.
    cookie = _status_cookie(live)
    expires, _, mac = cookie["value"].partition(".")
    assert cookie["max-age"] == str(8 * 3600) and len(mac) == 64
    assert 0 < int(expires) - time.time() * 1000 <= 8 * 3600 * 1000
    assert live.call("/status", headers={"Cookie": f"sendguard_status={cookie['value']}"})[0] == 200
    stale = f"{int(time.time() * 1000) - 1}.{mac}"
    assert live.call("/status", headers={"Cookie": f"sendguard_status={stale}"})[0] == 401

    # A client cannot pass as another worker: a marker it made up is refused.
    forged = PeerAuth(secrets.token_urlsafe(32)).marker("GET", "/api/blocks", b"", role="admin")
    for marker in ("1", forged):
        code, document, _ = live.call("/api/blocks", headers={PEER_HEADER: marker})
        assert code == 401, document
        code, _, _ = live.call("/api/blocks", ADMIN, headers={PEER_HEADER: marker})
        assert code == 401  # a good token does not make a bad marker good

    # Unauthenticated release attempts are audited too (actor unknown).
    reports = live.deployment.read(live.deployment.names.external("mail.reports"), idle_s=1.0)
    denied = [
        (r["outcome"], r["status"], r["actor"])
        for r in reports
        if r["event"] == "release_attempt" and r["status"] == 401
    ]
    assert denied == [("unauthenticated", 401, None), ("unauthenticated", 401, None)]

    # A person added to the token file can release without a restart; one removed cannot.
    assert live.token_file is not None
    token_file = live.token_file
    newcomer = secrets.token_urlsafe(32)
    before = token_file.read_text()
    token_file.write_text(token_line(newcomer, "helpdesk:new") + "\n")
    try:

        def newcomer_known() -> bool:
            code, answer, _ = live.call("/api/mailboxes/t9/nobody@x.com/release", newcomer, body)
            return code == 409 and answer["actor"] == "helpdesk:new"

        wait_for(newcomer_known, 10, "the new token file read", every_s=0.5)
        assert live.call("/api/mailboxes/t9/nobody@x.com/release", SAM, body)[0] == 401
    finally:
        token_file.write_text(before)

    # A worker with no tokens configured: those endpoints are disabled, not open.
    with pytest.MonkeyPatch.context() as env:
        env.delenv("SENDGUARD_ADMIN_TOKEN", raising=False)
        env.delenv("SENDGUARD_SUPPORT_TOKENS_FILE", raising=False)
        closed = _start(Deployment.create(live.deployment.bootstrap, tmp_path))
    try:
        other = Live(closed.deployment, closed)
        code, document, _ = other.call("/api/blocks", "anything")
        assert code == 403 and "SENDGUARD_ADMIN_TOKEN" in document["error"]
        code, document, _ = other.call("/api/mailboxes/t/m@x/release", "x", body)
        assert code == 403 and "SENDGUARD_SUPPORT_TOKENS_FILE" in document["error"]
        assert other.call("/status?token=")[0] == 403
        assert other.call("/health")[0] == 200
    finally:
        closed.stop()


def test_a_weak_token_stops_the_start_up(live: Live, tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as env:
        env.setenv("SENDGUARD_ADMIN_TOKEN", "admin-2026")
        deployment = Deployment.create(live.deployment.bootstrap, tmp_path)
        worker = deployment.worker(store="memory").start()
    assert worker.process is not None
    assert worker.process.wait(60) == 2  # click's usage error
    log = worker.log.read_text()
    assert "SENDGUARD_ADMIN_TOKEN is 10 characters" in log and "at least 22" in log


def raw_status(live: Live, request_line: bytes, header: bytes) -> int:
    """The status of a request sent byte for byte (urllib would refuse these bytes)."""
    with socket.create_connection((live.worker.host, live.worker.port), timeout=10) as s:
        s.sendall(request_line + b"\r\nHost: x\r\n" + header + b"\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return int(answer.split(b" ", 2)[1])


def _status_cookie(live: Live) -> dict[str, str]:
    """The Set-Cookie of `/status?token=` (not followed), as attribute -> value."""
    with socket.create_connection((live.worker.host, live.worker.port), timeout=10) as s:
        s.sendall(
            f"GET /status?token={ADMIN} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    head = answer.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 303")
    (line,) = [h for h in head.split("\r\n") if h.lower().startswith("set-cookie:")]
    name_value, *attributes = [part.strip() for part in line.split(":", 1)[1].split(";")]
    cookie = {"value": name_value.split("=", 1)[1]}
    for attribute in attributes:
        key, _, value = attribute.partition("=")
        cookie[key.lower()] = value
    return cookie


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
