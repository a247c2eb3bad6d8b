"""Running `sendguard gateway` as a subprocess and talking to it as Postfix does.

Commands are put on the (prefixed) control topic encoded exactly as the worker
encodes its decisions (`processor.codec.records`), so these tests also pin the wire
contract between the worker and the gateway.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from processor.codec import records
from processor.codec.command_signing import CommandKeys
from processor.codec.wire import Codec
from processor.local import sendguard_services as services
from processor.mail.policy_protocol import format_request, parse_reply
from processor.policy.decisions import Block, Unblock, decision_id
from processor.policy.events import DirectoryEntry, MailboxKey

HOUR_MS = 3_600_000


def now_ms() -> int:
    return int(time.time() * 1000)


def unblock_command(tenant: str, mailbox: str, sequence: int) -> Unblock:
    """The UNBLOCK of a released block `sequence`, as the worker decides it."""
    key = MailboxKey.of(tenant, mailbox)
    return Unblock(
        key=key,
        at_ms=now_ms(),
        offense=sequence,
        reason="released",
        sequence=sequence,
        command_id=decision_id(key, sequence, "UNBLOCK"),
        actor="support@example",
        note="test",
    )


class ControlProducer:
    """Puts BLOCK/UNBLOCK commands (and other records) on a deployment's topics."""

    def __init__(self, bootstrap: str, control_topic: str, keys: CommandKeys | None = None) -> None:
        """`keys` sign the commands as the worker signs them (none: unsigned)."""
        from confluent_kafka import Producer

        self.keys = keys
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
        self._send(unblock_command(tenant, mailbox, sequence))

    def encode(self, decision: Block | Unblock) -> tuple[bytes, bytes]:
        """(key, value) of the command as the worker writes them."""
        key = self.codec.encode(*records.key_of(decision))
        return key, self.codec.encode(*records.record_of(decision))

    def directory(self, topic: str, tenant: str, mailbox: str) -> None:
        entry = DirectoryEntry(MailboxKey.of(tenant, mailbox), "owner", (), now_ms())
        key = self.codec.encode(*records.key_of(entry))
        self.producer.produce(topic, self.codec.encode(*records.record_of(entry)), key)
        self.flush()

    def raw(
        self, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        self.producer.produce(self.topic, value, key, headers=headers or [])
        self.flush()

    def _send(self, decision: Block | Unblock) -> None:
        key, value = self.encode(decision)
        self.raw(key, value, [self.keys.header(key, value)] if self.keys else None)

    def flush(self) -> None:
        assert self.producer.flush(30) == 0, "records not delivered"


class GatewayProcess(services.GatewayProcess):
    """`sendguard gateway` (processor.local.sendguard_services), spoken to as Postfix does."""

    def connect(self) -> PolicyClient:
        return PolicyClient(self.port)

    def ask(self, **attributes: str) -> str:
        with self.connect() as client:
            return client.ask(**attributes)

    def get(self, path: str) -> tuple[int, str]:
        return self.ops(path)


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
