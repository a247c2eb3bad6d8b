"""Kafka plumbing the broker benchmarks share: isolated topics, bulk produce, offsets.

Every benchmark run gets its own topic prefix and app id (`fresh_names`), so it never
reads or disturbs anyone else's data on a shared broker, and deletes what it created
(`delete_topics`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import uuid
from collections.abc import Iterable
from typing import Any

from processor.stream.connection import KafkaConnection
from processor.stream.topic_admin import apply_topics
from processor.stream.topics import TopicNames, ensure_internal_topic
from processor.topics import load_topics


def fresh_names(tag: str) -> TopicNames:
    """A new topic prefix `<tag><run>.` and app id `<tag><run>` (groups, internal topics)."""
    run = uuid.uuid4().hex[:8]
    return TopicNames(prefix=f"{tag}{run}.", app_id=f"{tag}{run}")


def create_topics(
    bootstrap: str, names: TopicNames, internal_partitions: int | None = None
) -> None:
    """The contract topics of `topics.yaml` under the prefix; the internal topic too if asked."""
    specs = [dataclasses.replace(s, name=names.external(s.name)) for s in load_topics()]
    apply_topics(KafkaConnection(bootstrap), specs)
    if internal_partitions is not None:
        ensure_internal_topic(
            {"bootstrap.servers": bootstrap}, names.mailbox_events, internal_partitions, 1
        )


def delete_topics(bootstrap: str, names: TopicNames, groups: Iterable[str] = ()) -> list[str]:
    """Delete every topic of the prefix or the app id (Faust's too), and the given groups."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    topics = [
        t
        for t in admin.list_topics(timeout=15).topics
        if t.startswith(names.prefix) or t.startswith(f"{names.app_id}-")
    ]
    if topics:
        for future in admin.delete_topics(topics, operation_timeout=30).values():
            with contextlib.suppress(Exception):
                future.result(timeout=35)
    group_list = list(groups)
    if group_list:
        for future in admin.delete_consumer_groups(group_list, request_timeout=15).values():
            with contextlib.suppress(Exception):  # a group that never committed does not exist
                future.result(timeout=20)
    return topics


def bulk_producer(bootstrap: str, **overrides: Any) -> Any:
    """A confluent-kafka producer batching like a busy scanner fleet's.

    murmur2 placement (the Java client's) so keys land where the worker expects them.
    """
    from confluent_kafka import Producer

    return Producer(
        {
            "bootstrap.servers": bootstrap,
            "partitioner": "murmur2_random",
            "linger.ms": 20,
            "batch.num.messages": 10000,
            "queue.buffering.max.messages": 500_000,
            **overrides,
        }
    )


def produce_all(producer: Any, topic: str, items: Iterable[tuple[bytes | None, bytes]]) -> int:
    """Produce (key, value) pairs, waiting whenever the local queue is full; then flush."""
    failed: list[str] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            failed.append(str(error))

    sent = 0
    for key, value in items:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        sent += 1
    remaining = producer.flush(120)
    if remaining or failed:
        raise RuntimeError(f"{topic}: {remaining} undelivered, failures {failed[:3]}")
    return sent


def partitions_of(bootstrap: str, topic: str, timeout_s: float = 30) -> list[int]:
    """The partition ids of `topic`, waiting (up to `timeout_s`) for it to exist."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    deadline = time.monotonic() + timeout_s
    while True:
        # All topics' metadata: asking for one topic by name would make a broker with
        # auto.create.topics.enable create it (with 1 partition) before its owner does.
        metadata = admin.list_topics(timeout=10).topics.get(topic)
        if metadata is not None and metadata.error is None and metadata.partitions:
            return sorted(metadata.partitions)
        if time.monotonic() > deadline:
            raise TimeoutError(f"topic {topic} does not exist after {timeout_s}s")
        time.sleep(0.2)


class Offsets:
    """Watermarks and a group's committed offsets, via one AdminClient."""

    def __init__(self, bootstrap: str) -> None:
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient({"bootstrap.servers": bootstrap})

    def ends(self, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """Each partition's high watermark (the offset the next record will get)."""
        from confluent_kafka import TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        latest = OffsetSpec.latest()  # type: ignore[no-untyped-call]
        futures = self.admin.list_offsets({TopicPartition(topic, p): latest for p in partitions})
        return {tp.partition: f.result(timeout=10).offset for tp, f in futures.items()}

    def committed(self, group: str, topic: str, partitions: Iterable[int]) -> dict[int, int]:
        """The group's committed offset per partition (0 where it has none)."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        wanted = [TopicPartition(topic, p) for p in partitions]
        request = ConsumerGroupTopicPartitions(group, wanted)
        result = self.admin.list_consumer_group_offsets([request])[group].result(timeout=10)
        return {tp.partition: max(0, tp.offset) for tp in result.topic_partitions}

    def lag(self, group: str, topic: str, partitions: Iterable[int]) -> int:
        parts = list(partitions)
        ends = self.ends(topic, parts)
        committed = self.committed(group, topic, parts)
        return sum(max(0, ends[p] - committed.get(p, 0)) for p in parts)
