"""A local single-node Apache Kafka (KRaft) broker: resolve its jars, run it, stop it.

Used by `sendguard kafka up|down|status`, `scripts/test.sh` and the integration tests::

    broker = LocalBroker(BrokerConfig.from_env())
    started = broker.up()      # False if it was already running
    broker.status().bootstrap  # "127.0.0.1:9092"
    broker.down()

Nothing here imports a Kafka client at module level; the readiness check imports
confluent_kafka only when a broker is started.
"""

from processor.local.artifacts import KAFKA_VERSION, default_cache_dir, ensure_libs
from processor.local.broker import (
    BrokerConfig,
    BrokerStatus,
    LocalBroker,
    default_data_dir,
    find_java,
    port_is_free,
)
from processor.local.errors import (
    BrokerStartError,
    LocalBrokerError,
    MissingToolError,
    PortInUseError,
)

__all__ = [
    "KAFKA_VERSION",
    "BrokerConfig",
    "BrokerStartError",
    "BrokerStatus",
    "LocalBroker",
    "LocalBrokerError",
    "MissingToolError",
    "PortInUseError",
    "default_cache_dir",
    "default_data_dir",
    "ensure_libs",
    "find_java",
    "port_is_free",
]
