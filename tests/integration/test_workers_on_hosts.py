"""Three workers on three addresses: every API call works from any of them, safely.

The workers bind 127.0.0.1, 127.0.0.2 and 127.0.0.3 (loopback addresses standing
in for three hosts), all on the same port. Each advertises the URL of a small
recording proxy in front of it, so every request one worker forwards to another
passes through a proxy that keeps it: the test reads exactly what crossed
between workers (a marker, never a user's token).

    three mailboxes, one owned by each worker (the group's assignment says which),
    with '/', '?', '#', '%' and a space in their addresses
      ─► burst: permanent BLOCK of each
      ─► status of each from every worker, served by its owner
      ─► the block list from every worker: all three
      ─► forged markers refused; a real one replayed refused
      ─► each released through a worker that does not own it (one by the CLI)
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka.admin import AdminClient
from worker_support import SENDGUARD, Deployment, WorkerProcess, burst, wait_for

from processor.ops.peer_auth import PEER_HEADER, PeerAuth
from processor.ops.support_tokens import token_line
from processor.policy import MailboxKey
from processor.stream.events import encode_key

HOSTS = ("127.0.0.1", "127.0.0.2", "127.0.0.3")
PARTITIONS = 4  # WorkerProcess's --partitions
ADMIN, MARIA = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
PEER_SECRET = secrets.token_urlsafe(32)
POLICY_YAML = "window: 20s\nfirst_block: 10s\npermanent_on_offense: 1\n"


# -- the recording proxy ------------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class RecordingProxy:
    """HTTP on (host, port), passed on to the worker at (host, worker_port), kept."""

    host: str
    worker_port: int
    seen: list[Recorded] = field(default_factory=list)

    def start(self) -> RecordingProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def _pass_on(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k: v for k, v in self.headers.items()}
                proxy.seen.append(Recorded(self.command, self.path, headers, body))
                forward = {
                    k: v for k, v in headers.items() if k.lower() not in ("host", "connection")
                }
                connection = http.client.HTTPConnection(proxy.host, proxy.worker_port, timeout=60)
                connection.request(self.command, self.path, body=body or None, headers=forward)
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status)
                for name, value in answer.getheaders():
                    if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                connection.close()

            do_GET = do_POST = _pass_on

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((self.host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# -- helpers --------------------------------------------------------------------------


def port_free_on_every_host() -> int:
    """One port number free on all three addresses."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((HOSTS[0], 0))
            port = int(probe.getsockname()[1])
        try:
            for host in HOSTS[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
            return port
        except OSError:
            continue
    raise AssertionError("no port free on every loopback address")


def call(
    base: str,
    path: str,
    token: str | None = ADMIN,
    body: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, headers=headers or {})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=40) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def mailbox_path(tenant: str, mailbox: str) -> str:
    quote = urllib.parse.quote
    return f"/api/mailboxes/{quote(tenant, safe='')}/{quote(mailbox, safe='')}"


def assignment(deployment: Deployment) -> dict[str, set[int]]:
    """Worker name -> its partitions of the internal topic, as the group assigned them."""
    admin = AdminClient(deployment.client)
    group = deployment.names.app_id
    (future,) = admin.describe_consumer_groups([group], request_timeout=10).values()
    description = future.result()
    topic = deployment.names.mailbox_events
    owned: dict[str, set[int]] = {}
    for member in description.members:
        partitions = {
            tp.partition for tp in member.assignment.topic_partitions if tp.topic == topic
        }
        owned.setdefault(member.group_instance_id or member.client_id, set()).update(partitions)
    return owned


def partition_of(tenant: str, mailbox: str) -> int:
    """The mailbox's partition, as the edge stage and Faust place it (murmur2)."""
    return int(murmur2(encode_key(MailboxKey.of(tenant, mailbox))) & 0x7FFFFFFF) % PARTITIONS


def mailbox_on(partitions: set[int], tag: str) -> str:
    """A mailbox with reserved characters whose partition is one of `partitions`."""
    for n in range(10_000):
        mailbox = f"ops/{tag}?#%{n} x@r&d.example"
        if partition_of("t1", mailbox) in partitions:
            return mailbox
    raise AssertionError(f"no mailbox found on partitions {partitions}")


@dataclass
class Group:
    deployment: Deployment
    workers: dict[str, WorkerProcess]
    proxies: dict[str, RecordingProxy]

    def url(self, name: str) -> str:
        return self.workers[name].url

    def logs(self) -> str:
        return "\n".join(worker.log_tail(30) for worker in self.workers.values())


@pytest.fixture
def group(bootstrap: str, tmp_path: Path) -> Iterator[Group]:
    deployment = Deployment.create(bootstrap, tmp_path)
    (tmp_path / "policy.yaml").write_text(POLICY_YAML)
    tokens = tmp_path / "support-tokens"
    tokens.write_text(token_line(MARIA, "helpdesk:maria") + "\n")
    port = port_free_on_every_host()
    env = {
        "SENDGUARD_ADMIN_TOKEN": ADMIN,
        "SENDGUARD_SUPPORT_TOKENS_FILE": str(tokens),
        "SENDGUARD_PEER_SECRET": PEER_SECRET,
    }
    workers: dict[str, WorkerProcess] = {}
    proxies: dict[str, RecordingProxy] = {}
    try:
        for n, host in enumerate(HOSTS, start=1):
            name = f"w{n}"
            proxies[name] = RecordingProxy(host, port).start()
            workers[name] = deployment.worker(
                name,
                store="memory",
                host=host,
                port=port,
                args=("--advertised-url", proxies[name].url),
                env=env,
            ).start()
        for worker in workers.values():
            worker.wait_ready(120)
        built = Group(deployment, workers, proxies)

        def settled() -> bool:
            try:
                owned = assignment(deployment)
            except Exception:
                return False
            return set(owned) == set(workers) and all(owned.values())

        wait_for(settled, 120, "every worker owning partitions", every_s=1, diagnose=built.logs)
        for name in workers:
            wait_for(
                lambda n=name: call(built.url(n), "/ready", None)[0] == 200,  # type: ignore[misc]
                60,
                f"{name} ready",
                every_s=0.5,
                diagnose=built.logs,
            )
        yield built
    finally:
        for worker in workers.values():
            worker.stop()
        for proxy in proxies.values():
            proxy.stop()


def test_three_workers_serve_every_mailbox_from_anywhere(group: Group) -> None:
    deployment = group.deployment
    owned = assignment(deployment)
    mailboxes = {name: mailbox_on(partitions, name) for name, partitions in owned.items()}
    owner_of = {mailbox: name for name, mailbox in mailboxes.items()}
    now = int(time.time() * 1000)
    lines = []
    for name, mailbox in mailboxes.items():
        lines += burst("t1", mailbox, now + 200, f"m{name}")
    assert deployment.produce(lines).wait(60) == 0

    def all_blocked() -> bool:
        for mailbox in mailboxes.values():
            code, document = call(group.url("w1"), mailbox_path("t1", mailbox))
            if code != 200 or not document["blocked"]:
                return False
        return True

    wait_for(all_blocked, 60, "three permanent blocks", every_s=0.5, diagnose=group.logs)

    # -- status of every mailbox from every worker, answered by its owner ---------------
    for asked in group.workers:
        for mailbox, owner in owner_of.items():
            code, document = call(group.url(asked), mailbox_path("t1", mailbox))
            assert code == 200, document
            assert document["mailbox"] == mailbox.lower()
            assert document["block"]["permanent"] is True
            assert document["served_by"] == group.proxies[owner].url

    # -- the block list of every worker holds all three ---------------------------------
    for asked in group.workers:
        code, listing = call(group.url(asked), "/api/blocks?tenant=t1")
        assert code == 200
        assert sorted(b["mailbox"] for b in listing["blocks"]) == sorted(
            m.lower() for m in mailboxes.values()
        )
        assert listing["unavailable_workers"] == []

    # -- a client cannot pass as a worker -----------------------------------------------
    target = mailbox_path("t1", mailboxes["w2"])
    release_path = target + "/release"
    stranger = PeerAuth(secrets.token_urlsafe(32))
    body = {"reason": "forged"}
    forged = stranger.marker(
        "POST", release_path, json.dumps(body).encode(), role="support", actor="mallory"
    )
    for marker in ("v1.e30.AAAA", forged):
        code, answer = call(group.url("w2"), release_path, None, body, {PEER_HEADER: marker})
        assert code == 401, answer
    # One made with the real secret (as a worker would) works once, never twice.
    peers = PeerAuth(PEER_SECRET)
    marker = peers.marker("GET", target, b"", role="admin")
    assert call(group.url("w2"), target, None, headers={PEER_HEADER: marker})[0] == 200
    code, answer = call(group.url("w2"), target, None, headers={PEER_HEADER: marker})
    assert (code, answer["error"]) == (401, "peer marker replayed")
    # ... and only for its own request: not for another path, nor as support.
    code, _ = call(group.url("w2"), "/api/blocks", None, headers={PEER_HEADER: marker})
    assert code == 401
    assert (
        call(
            group.url("w2"),
            target,
            None,
            headers={PEER_HEADER: "x", "Authorization": f"Bearer {ADMIN}"},
        )[0]
        == 401
    )

    # -- releases through a worker that does not own the mailbox ------------------------
    names = list(group.workers)
    for i, owner in enumerate(names):
        via = names[(i + 1) % len(names)]
        mailbox = mailboxes[owner]
        if owner == "w3":  # the CLI, which percent-encodes the path itself
            released = subprocess.run(
                [SENDGUARD, "release", "t1", mailbox, "--reason", "reimaged"],
                env={
                    **os.environ,
                    "SENDGUARD_URL": group.url(via),
                    "SENDGUARD_SUPPORT_TOKEN": MARIA,
                },
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert released.returncode == 0, released.stderr
            assert f"released t1 / {mailbox.lower()}" in released.stdout
            assert "by helpdesk:maria" in released.stdout
        else:
            code, answer = call(
                group.url(via),
                mailbox_path("t1", mailbox) + "/release",
                MARIA,
                {"reason": "reimaged"},
            )
            assert code == 200, answer
            assert (answer["actor"], answer["served_by"]) == (
                "helpdesk:maria",
                group.proxies[owner].url,
            )
    for mailbox in mailboxes.values():
        code, document = call(group.url("w1"), mailbox_path("t1", mailbox))
        assert (code, document["block"], document["offenses"]) == (200, None, 0)

    # -- what crossed between workers: markers, never a user's token ---------------------
    crossed = [r for proxy in group.proxies.values() for r in proxy.seen]
    assert {owner for owner, proxy in group.proxies.items() if proxy.seen} == set(group.workers)
    assert any(r.method == "POST" and r.path.endswith("/release") for r in crossed)
    assert any(r.path.startswith("/api/blocks") for r in crossed)
    for request in crossed:
        headers = {k.lower(): v for k, v in request.headers.items()}
        assert "authorization" not in headers, request
        assert PEER_HEADER.lower() in headers, request
        everything = json.dumps(request.headers).encode() + request.path.encode() + request.body
        for token in (ADMIN, MARIA):
            assert token.encode() not in everything, request
    # The mailbox with '/' in it crossed as one path segment.
    assert any(
        urllib.parse.quote(mailboxes["w1"].lower(), safe="") in r.path
        or urllib.parse.quote(mailboxes["w1"], safe="") in r.path
        for r in crossed
    )

    # -- audited once per request, by the worker the client asked ------------------------
    reports = deployment.read(deployment.names.external("mail.reports"), idle_s=1.0)
    attempts = [r for r in reports if r["event"] == "release_attempt"]
    assert sorted(
        (r["mailbox"], r["outcome"], r["actor"]) for r in attempts if r["status"] == 200
    ) == sorted((m.lower(), "released", "helpdesk:maria") for m in mailboxes.values())
    released = [r for r in reports if r["event"] == "released"]
    assert sorted(r["mailbox"] for r in released) == sorted(m.lower() for m in mailboxes.values())
    actions = deployment.read(deployment.names.support_actions, idle_s=1.0)
    assert sorted(a["action_id"] for a in actions) == sorted(
        r["action_id"] for r in attempts if r["status"] == 200
    )
    assert {a["source"] for a in actions} == {"127.0.0.1"}  # the client's, not a worker's
