"""Running `sendguard gateway` as a subprocess and talking to it as Postfix does.

Commands are put on the (prefixed) control topic encoded exactly as the worker
encodes its decisions (`processor.codec.records`), so these tests also pin the wire
contract between the worker and the gateway.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from worker_support import SENDGUARD

from processor.codec import records
from processor.codec.wire import Codec
from processor.local.process_group import stop_process_group
from processor.mail.policy_protocol import format_request, parse_reply
from processor.policy.decisions import Block, Unblock, decision_id
from processor.policy.events import DirectoryEntry, MailboxKey

HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


class ControlProducer:
    """Puts BLOCK/UNBLOCK commands (and other records) on a deployment's topics."""

    def __init__(self, bootstrap: str, control_topic: str) -> None:
        from confluent_kafka import Producer

        self.topic = control_topic
        self.codec = Codec.from_config()
        self.producer = Producer(
            {"bootstrap.servers": bootstrap, "partitioner": "murmur2_random", "linger.ms": 0}
        )

    def block(
        self,
        tenant: str,
        mailbox: str,
        *,
        sequence: int = 1,
        until_ms: int | None = None,
        permanent: bool = False,
    ) -> None:
        key = MailboxKey.of(tenant, mailbox)
        self._send(
            Block(
                key=key,
                at_ms=now_ms(),
                offense=sequence,
                permanent=permanent,
                until_ms=None if permanent else (until_ms or now_ms() + HOUR_MS),
                sequence=sequence,
                command_id=decision_id(key, sequence, "BLOCK"),
                evidence=(),
            )
        )

    def unblock(self, tenant: str, mailbox: str, *, sequence: int = 1) -> None:
        key = MailboxKey.of(tenant, mailbox)
        self._send(
            Unblock(
                key=key,
                at_ms=now_ms(),
                offense=sequence,
                reason="released",
                sequence=sequence,
                command_id=decision_id(key, sequence, "UNBLOCK"),
                actor="support@example",
                note="test",
            )
        )

    def directory(self, topic: str, tenant: str, mailbox: str) -> None:
        entry = DirectoryEntry(MailboxKey.of(tenant, mailbox), "owner", (), now_ms())
        key = self.codec.encode(*records.key_of(entry))
        self.producer.produce(topic, self.codec.encode(*records.record_of(entry)), key)
        self.flush()

    def raw(self, key: bytes | None, value: bytes | None) -> None:
        self.producer.produce(self.topic, value, key)
        self.flush()

    def _send(self, decision: Block | Unblock) -> None:
        key = self.codec.encode(*records.key_of(decision))
        self.producer.produce(self.topic, self.codec.encode(*records.record_of(decision)), key)
        self.flush()

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "records not delivered"


class GatewayProcess:
    """`sendguard gateway` in a subprocess; `start` waits for its serving line."""

    def __init__(
        self, bootstrap: str, prefix: str, tmp: Path, *extra: str, name: str = "gateway"
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.extra = extra
        self.log = tmp / f"{name}.log"
        self.tenants = tmp / "tenants.yaml"
        if not self.tenants.exists():
            self.tenants.write_text("acme.example: acme\nglobex.example: globex\n")
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.web_port = 0

    def start(self, timeout_s: float = 60) -> GatewayProcess:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [
                    SENDGUARD,
                    "gateway",
                    "--listen",
                    "127.0.0.1:0",
                    "--web-port",
                    "0",
                    "--tenants",
                    str(self.tenants),
                    "--bootstrap",
                    self.bootstrap,
                    "--topic-prefix",
                    self.prefix,
                    *self.extra,
                ],
                stdout=subprocess.PIPE,
                stderr=log,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        assert self.process.stdout is not None
        stdout = self.process.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        buffered = b""
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"gateway exited: {self.log_tail()}")
            if select.select([stdout], [], [], 0.1)[0]:
                buffered += os.read(stdout, 4096)
            if b"\n" in buffered:
                line = buffered.split(b"\n", 1)[0].decode()
                assert "serving policy requests on 127.0.0.1:" in line, line
                self.port = int(line.split("127.0.0.1:", 1)[1].split(" ", 1)[0])
                self.web_port = int(line.rsplit(":", 1)[1].rstrip(")"))
                return self
        raise AssertionError(f"gateway not serving in {timeout_s}s: {self.log_tail()}")

    def connect(self) -> PolicyClient:
        return PolicyClient(self.port)

    def ask(self, **attributes: str) -> str:
        with self.connect() as client:
            return client.ask(**attributes)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.web_port}{path}", timeout=5
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def ready(self) -> tuple[int, dict[str, Any]]:
        status, body = self.get("/ready")
        return status, json.loads(body)

    def metric(self, name: str, **labels: str) -> float:
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.get("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        raise AssertionError(f"no sample {name}{labels}")

    def log_tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)


class PolicyClient:
    """One Postfix-like connection: a request, its answer, the next request..."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.buffer = b""

    def __enter__(self) -> PolicyClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def ask(self, **attributes: str) -> str:
        """The action answered to a request with these attributes."""
        self.sock.sendall(format_request({"request": "smtpd_access_policy", **attributes}))
        return self.answer()

    def answer(self) -> str:
        while b"\n\n" not in self.buffer:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError(f"closed by the gateway; had {self.buffer!r}")
            self.buffer += data
        reply, self.buffer = self.buffer.split(b"\n\n", 1)
        return parse_reply(reply + b"\n\n")


def wait_until(predicate: Any, timeout_s: float, what: str, every_s: float = 0.1) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
