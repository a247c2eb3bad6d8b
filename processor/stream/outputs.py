"""Decisions as Kafka records: (topic, key bytes, value bytes), Avro via the codec.

Kept apart from the agent so the mapping is tested without a broker. Commands go
first and on their own (see `split_commands`): docs/policy.md rule 11 orders the BLOCK
before the scans, alert and report, and a gateway must never see a report of a
block whose command was lost. With control keys, every command carries its signature
header (`processor.codec.command_signing`), so gateways can tell it from a forgery.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from processor.codec import records
from processor.codec.command_signing import CommandKeys
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
    headers: tuple[tuple[str, bytes], ...] = ()

    @property
    def size(self) -> int:
        """Bytes of key, value and headers: what counts against a record's limit."""
        return len(self.key) + len(self.value) + sum(len(n) + len(v) for n, v in self.headers)


class Outputs:
    """Encodes decisions for the topics of one deployment (prefix applied)."""

    def __init__(
        self, codec: Codec, names: TopicNames, control_keys: CommandKeys | None = None
    ) -> None:
        """`control_keys` sign the BLOCK/UNBLOCK commands (none: they go unsigned)."""
        self._codec = codec
        self._names = names
        self._control_keys = control_keys or CommandKeys()
        # A block's command, alert and reports share their key: encoded once.
        self._keys: dict[tuple[str, object], bytes] = {}

    def encode(self, decision: Decision) -> OutputRecord:
        key_name, key = records.key_of(decision)
        value_name, value = records.record_of(decision)
        key_bytes = self._key(key_name, key)
        value_bytes = self._codec.encode(value_name, value)
        headers: tuple[tuple[str, bytes], ...] = ()
        if self._control_keys and isinstance(decision, Block | Unblock):
            headers = (self._control_keys.header(key_bytes, value_bytes),)
        return OutputRecord(
            topic=self._names.external(records.topic_of(decision)),
            key=key_bytes,
            value=value_bytes,
            headers=headers,
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
