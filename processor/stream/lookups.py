"""Directory and tenant settings as every worker sees them: the PolicyContext adapter.

Both topics are compacted and small, and every worker needs all of them (any
mailbox may be blocked here), so each worker reads them whole with its own
confluent-kafka consumer: every partition assigned, from the beginning, no group
commits. This is the "global table" of the architecture without Faust's
GlobalTable, whose recovery has known upstream problems. `catch_up` reads up to
the end before the worker starts, so a block never consults a half-read
directory; afterwards a thread follows new records.

Reads (`owner_of`, `synchronized_security`) come from the agent's event loop while
the thread writes; single dict gets and sets are atomic in CPython, so no lock.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from processor.codec import records
from processor.codec.errors import DecodeError
from processor.codec.wire import Codec
from processor.policy import Directory

log = logging.getLogger(__name__)


class Lookups(Directory):
    """Directory entries and tenant settings, newest `at` wins (`processor.policy.Directory`,
    the same rule as in `simulate`), filled by a `LookupReader`.

    A tombstone deletes the key from the compacted topic: forgetting it here keeps a
    long-running worker in agreement with one started after compaction, which never
    sees the deleted entry at all.
    """


class LookupReader:
    """Follows the directory and settings topics into a `Lookups`."""

    def __init__(
        self,
        client_config: dict[str, Any],
        codec: Codec,
        directory_topic: str,
        settings_topic: str,
        lookups: Lookups,
    ) -> None:
        from confluent_kafka import Consumer

        self._codec = codec
        self._directory_topic = directory_topic
        self._settings_topic = settings_topic
        self.lookups = lookups
        self._consumer = Consumer(
            {
                **client_config,
                # Required by the client even with manual assignment; never committed.
                "group.id": f"sendguard-lookups-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.skipped = 0

    def catch_up(self, timeout_s: float = 60.0) -> None:
        """Assign every partition from the start and read to the current end.

        Raises TimeoutError if the end is not reached in time (broker down), and
        RuntimeError if a topic is missing or its end cannot be read.
        """
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        deadline = time.monotonic() + timeout_s
        metadata = self._consumer.list_topics(timeout=timeout_s)
        assignment, ends = [], {}
        for topic in (self._directory_topic, self._settings_topic):
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                raise RuntimeError(f"topic {topic} does not exist; run `sendguard topics apply`")
            for partition in found.partitions:
                tp = TopicPartition(topic, partition, OFFSET_BEGINNING)
                assignment.append(tp)
                low, high = watermarks(self._consumer, tp, deadline)
                if high > low:
                    ends[(topic, partition)] = high
        self._consumer.assign(assignment)
        while ends:
            if time.monotonic() > deadline:
                raise TimeoutError(f"directory/settings not read to the end in {timeout_s}s")
            for message in self._consumer.consume(500, 0.5):
                self._apply(message)
                where, offset = (message.topic(), message.partition()), message.offset()
                if where in ends and offset is not None and offset + 1 >= ends[where]:
                    del ends[where]

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sendguard-lookups", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for message in self._consumer.consume(500, 0.5):
                    self._apply(message)
            except Exception:  # keep following; a broker outage resolves itself
                log.exception("directory/settings reader")
                time.sleep(1)

    def _apply(self, message: Any) -> None:
        if message.error() is not None:
            return  # transient broker errors; librdkafka retries by itself
        try:
            apply_record(
                self.lookups,
                self._codec,
                message.topic() == self._directory_topic,
                message.key(),
                message.value(),
            )
        except DecodeError as error:
            # Not dead-lettered: these topics are owned by the directory service,
            # and one bad entry must not stop the others from loading.
            self.skipped += 1
            log.warning(
                "skipping %s[%d]@%d: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                error,
            )


def watermarks(consumer: Any, tp: Any, deadline: float) -> tuple[int, int]:
    """(low, high) of a partition, asked again while its leader is still moving
    (a worker started right after `topics apply` can ask before the broker knows
    it leads the new partition). RuntimeError once the deadline has passed or for
    any other error."""
    from confluent_kafka import KafkaError, KafkaException

    transient = {
        KafkaError.NOT_LEADER_FOR_PARTITION,
        KafkaError.LEADER_NOT_AVAILABLE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
    }
    while True:
        remaining = max(0.1, deadline - time.monotonic())
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=remaining)
            return int(low), int(high)
        except KafkaException as error:
            if error.args[0].code() not in transient or time.monotonic() > deadline:
                where = f"{tp.topic}[{tp.partition}]"
                raise RuntimeError(f"cannot read the end of {where}: {error}") from error
            time.sleep(0.2)


def apply_record(
    lookups: Lookups, codec: Codec, directory: bool, key: bytes | None, value: bytes | None
) -> None:
    """One record of the directory (`directory`) or settings topic into `lookups`.

    A record without a value (a tombstone) deletes its key: the directory service
    removed the mailbox, or the tenant's settings, which then fall back to the
    default. Raises DecodeError for bytes that are not the topic's records.
    """
    if value is None:
        if key is None:
            return  # a keyless tombstone deletes nothing
        if directory:
            lookups.forget_directory(
                records.mailbox_key_from_record(codec.decode_as("MailboxKey", key))
            )
        else:
            lookups.forget_settings(str(codec.decode_as("TenantKey", key)["tenant_id"]))
    elif directory:
        lookups.put_directory(
            records.directory_entry_from_record(codec.decode_as("DirectoryEntry", value))
        )
    else:
        lookups.put_settings(
            records.tenant_settings_from_record(codec.decode_as("TenantSettings", value))
        )
