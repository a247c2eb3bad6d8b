"""Everything one worker is configured with, resolved from flags and environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from processor.codec.action_signing import ActionKeys
from processor.codec.command_signing import CommandKeys
from processor.codec.wire import CodecConfig
from processor.policy import PolicyConfig
from processor.stream.connection import KafkaConnection
from processor.stream.topics import TopicNames

# faust.stores.rocksdb uses the rocksdict driver when rocksdict is installed.
STORES = {"rocksdb": "rocksdb://", "memory": "memory://"}


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    connection: KafkaConnection = field(default_factory=KafkaConnection)
    names: TopicNames = field(default_factory=TopicNames)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    codec: CodecConfig = field(default_factory=CodecConfig)
    store: str = "rocksdb"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    #: How other workers reach this one (Faust's canonical_url); the default is
    #: http://web_host:web_port.
    advertised_url: str | None = None
    data_dir: Path = Path("sendguard-data")
    #: Partitions of the internal topic and the table changelog (fixed once created).
    partitions: int = 6
    replication_factor: int = 1
    #: Faust standby replicas of the table: a second worker takes over without replay.
    standby_replicas: int = 1
    edge_batch_size: int = 5000
    #: How often the expiry timer looks for due blocks.
    expiry_interval_s: float = 1.0
    #: Consumer group session timeout of both stages: how long the partitions of a
    #: crashed worker stay unserved. Kafka's 45 s is long for a security control.
    session_timeout_s: float = 10.0
    #: How often the agent's consumed offsets are committed (Faust's default: 2.8 s).
    #: A commit costs a changelog flush and one request; committing often bounds
    #: what a crash replays, and lets a drained backlog show as drained sooner.
    commit_interval_s: float = 0.5
    #: Static group membership: a worker restarted under the same id gets its
    #: partitions back at once, without a rebalance of the whole group.
    instance_id: str | None = None
    #: Sign the API's support actions (the first key) and verify them at the edge
    #: (every key). None configured: releases are disabled.
    action_keys: ActionKeys = field(default_factory=ActionKeys)
    #: Sign the BLOCK/UNBLOCK commands on mailbox.control (the first key), so gateways
    #: holding the keys enforce no forged command. None configured: unsigned.
    control_keys: CommandKeys = field(default_factory=CommandKeys)

    @property
    def store_url(self) -> str:
        return STORES[self.store]
