"""Decisions as Kafka records: (topic, key bytes, value bytes), Avro via the codec.

Kept apart from the agent so the mapping is tested without a broker. Commands go
first and on their own (see `split_commands`): docs/policy.md rule 11 orders the BLOCK
before the scans, alert and report, and a gateway must never see a report of a
block whose command was lost.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from processor.codec import records
from processor.codec.wire import Codec
from processor.policy import Block, Decision, Unblock
from processor.stream.topics import TopicNames

#: Encoded keys remembered (cleared when full).
_KEY_CACHE = 10_000


@dataclass(frozen=True, slots=True)
class OutputRecord:
    topic: str
    key: bytes
    value: bytes


class Outputs:
    """Encodes decisions for the topics of one deployment (prefix applied)."""

    def __init__(self, codec: Codec, names: TopicNames) -> None:
        self._codec = codec
        self._names = names
        # A block's command, alert and reports share their key: encoded once.
        self._keys: dict[tuple[str, object], bytes] = {}

    def encode(self, decision: Decision) -> OutputRecord:
        key_name, key = records.key_of(decision)
        value_name, value = records.record_of(decision)
        return OutputRecord(
            topic=self._names.external(records.topic_of(decision)),
            key=self._key(key_name, key),
            value=self._codec.encode(value_name, value),
        )

    def _key(self, name: str, key: dict[str, object]) -> bytes:
        cache_key = (name, tuple(key.values()))
        data = self._keys.get(cache_key)
        if data is None:
            if len(self._keys) >= _KEY_CACHE:
                self._keys.clear()
            data = self._keys[cache_key] = self._codec.encode(name, key)
        return data

    def split_commands(
        self, decisions: Iterable[Decision]
    ) -> tuple[list[OutputRecord], list[OutputRecord]]:
        """(BLOCK/UNBLOCK commands, everything else), each in decision order."""
        commands: list[OutputRecord] = []
        rest: list[OutputRecord] = []
        for decision in decisions:
            target = commands if isinstance(decision, Block | Unblock) else rest
            target.append(self.encode(decision))
        return commands, rest
