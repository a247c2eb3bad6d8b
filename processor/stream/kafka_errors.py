"""Whose fault is a failed produce: the record's, or not (the broker, the network, the
deployment)? The edge stage dead-letters a record whose produce failed for reasons of
its own and moves on; for anything else it retries the batch with backoff.

Only failures known *not* to be about one record are retried: librdkafka's transport,
timeout and purge codes, the broker's leadership, availability, authorization and
quota codes, and the fatal errors that make the producer unusable. Everything else -
too large, invalid or corrupt record, and any code not listed - is the record's, so an
unexpected error can at worst dead-letter records, never hold the stream on one.
"""

from __future__ import annotations

from typing import Any, Literal

from confluent_kafka import KafkaError

ErrorKind = Literal["record", "retry", "fatal"]

_FATAL = frozenset({KafkaError._FATAL, KafkaError._FENCED, KafkaError.PRODUCER_FENCED})

_NOT_THE_RECORDS = frozenset(
    {
        # librdkafka, local: the broker could not be reached or answered too late, the
        # queue was purged or destroyed, or the topic/partition is not (yet) known.
        KafkaError._MSG_TIMED_OUT,
        KafkaError._TIMED_OUT,
        KafkaError._TIMED_OUT_QUEUE,
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._SSL,
        KafkaError._AUTHENTICATION,
        KafkaError._DESTROY,
        KafkaError._DESTROY_BROKER,
        KafkaError._PURGE_QUEUE,
        KafkaError._PURGE_INFLIGHT,
        KafkaError._QUEUE_FULL,
        KafkaError._STATE,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNKNOWN_BROKER,
        KafkaError._WAIT_COORD,
        KafkaError._WAIT_CACHE,
        KafkaError._RETRY,
        KafkaError._NODE_UPDATE,
        KafkaError._ISR_INSUFF,
        KafkaError._CRIT_SYS_RESOURCE,
        KafkaError._FS,
        KafkaError._INTR,
        KafkaError._NOT_CONFIGURED,
        KafkaError._UNSUPPORTED_FEATURE,
        # The broker: leadership, availability, storage, quotas, authorization.
        KafkaError.REQUEST_TIMED_OUT,
        KafkaError.NETWORK_EXCEPTION,
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.BROKER_NOT_AVAILABLE,
        KafkaError.REPLICA_NOT_AVAILABLE,
        KafkaError.NOT_ENOUGH_REPLICAS,
        KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError.UNKNOWN_TOPIC_ID,
        KafkaError.FENCED_LEADER_EPOCH,
        KafkaError.UNKNOWN_LEADER_EPOCH,
        KafkaError.KAFKA_STORAGE_ERROR,
        KafkaError.THROTTLING_QUOTA_EXCEEDED,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError.ILLEGAL_SASL_STATE,
        KafkaError.UNSUPPORTED_SASL_MECHANISM,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError.NOT_COORDINATOR,
        KafkaError.INVALID_REQUIRED_ACKS,
        KafkaError.OUT_OF_ORDER_SEQUENCE_NUMBER,
        KafkaError.UNKNOWN_PRODUCER_ID,
        KafkaError.INVALID_PRODUCER_EPOCH,
    }
)


def classify(error: Any) -> ErrorKind:
    """`fatal`: the producer cannot be used again (the process must start over);
    `retry`: not about the record, produce the batch again later; `record`: about this
    record (too large, invalid, or an error not known to be anything else)."""
    code = error.code()
    if error.fatal() or code in _FATAL:
        return "fatal"
    if code in _NOT_THE_RECORDS:
        return "retry"
    return "record"
