"""The edge stage forwards signed support actions and dead-letters the rest."""

from __future__ import annotations

import secrets
import time
from typing import Any

from processor.codec.action_signing import ActionKeys
from processor.codec.records import record_of
from processor.codec.wire import Codec
from processor.policy import MailboxKey, Release
from processor.stream import events
from processor.stream.edge import EdgeConfig, EdgeStage

CODEC = Codec.from_config()
KEYS = ActionKeys.parse(f"k1:{secrets.token_urlsafe(32)}")
KEY = MailboxKey.of("t1", "alice@example.com")


class _Message:
    def __init__(self, value: bytes, offset: int) -> None:
        self._value, self._offset = value, offset

    def error(self) -> None:
        return None

    def value(self) -> bytes:
        return self._value

    def key(self) -> bytes:
        return b"k"

    def topic(self) -> str:
        return "support"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


class _Producer:
    """Delivers every record at flush (the stage counts dead letters on delivery)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []
        self.pending: list[Any] = []

    def produce(
        self,
        topic: str,
        value: bytes,
        key: bytes | None,
        on_delivery: Any,
        partition: int | None = None,
    ) -> None:
        self.sent.append((topic, key, value))
        self.pending.append(on_delivery)

    def flush(self, timeout: float) -> int:
        pending, self.pending = self.pending, []
        for on_delivery in pending:
            on_delivery(None, None)
        return 0


class _Consumer:
    def commit(self, **_: Any) -> None:
        pass


def _action(keys: ActionKeys | None, at_ms: int, **change: Any) -> bytes:
    _, record = record_of(Release(KEY, "maria", "reimaged", at_ms, f"act-{at_ms}"))
    if keys is not None:
        record = keys.sign(record)
    return CODEC.encode("SupportAction", {**record, **change})


def test_only_signed_fresh_actions_reach_the_internal_topic() -> None:
    now = int(time.time() * 1000)
    producer = _Producer()
    config = EdgeConfig({}, "g", "verdicts", "support", "internal", "dead", action_keys=KEYS)
    stage = EdgeStage(config, _Consumer(), producer, CODEC)
    signed = _action(KEYS, now)
    stage.handle_batch(
        [
            _Message(signed, 0),
            _Message(_action(None, now), 1),  # unsigned
            _Message(_action(KEYS, now + 1, actor="mallory"), 2),  # changed after signing
            _Message(_action(ActionKeys.parse(f"k1:{secrets.token_urlsafe(32)}"), now), 3),
            _Message(_action(KEYS, now - 16 * 60 * 1000), 4),  # a replay of an old one
        ]
    )
    forwarded = [
        events.decode_record(key, value, 0).events
        for topic, key, value in producer.sent
        if topic == "internal"
    ]
    assert forwarded == [[Release(KEY, "maria", "reimaged", now, f"act-{now}")]]
    dead = [CODEC.decode(value)[1] for topic, _, value in producer.sent if topic == "dead"]
    assert [(d["reason"], d["source_offset"]) for d in dead] == [
        ("unauthenticated_action", 1),
        ("unauthenticated_action", 2),
        ("unauthenticated_action", 3),
        ("unauthenticated_action", 4),
    ]
    assert "not signed" in dead[0]["detail"] and "minutes before now" in dead[3]["detail"]
    assert stage.counts.dead_letters == {"unauthenticated_action": 4}
    assert stage.counts.releases == 1


def test_without_keys_every_action_is_dead_lettered() -> None:
    producer = _Producer()
    stage = EdgeStage(
        EdgeConfig({}, "g", "v", "support", "i", "dead"), _Consumer(), producer, CODEC
    )
    stage.handle_batch([_Message(_action(KEYS, int(time.time() * 1000)), 0)])
    assert [topic for topic, _, _ in producer.sent] == ["dead"]
