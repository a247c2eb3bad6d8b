"""Follows `mailbox.control` (and `directory.mailboxes`) into the gateway's state.

A read-only follower, like the worker's directory reader (`processor.stream.lookups`):
one confluent-kafka consumer, every partition of both topics assigned by hand from
the beginning, no consumer group commits (the compacted topics *are* the state, so
each start reads them whole). It runs in a thread, because confluent-kafka's
consumer blocks; decoded records go to the event loop in batches through `deliver`,
which must be thread-safe (the gateway passes `loop.call_soon_threadsafe`).

Caught up: every `CHECK_INTERVAL_S` the thread asks the broker for each partition's
start and end offsets (an admin client's ListOffsets), noting the time `t` before
asking. If the consumer's position is at or
past every end, everything written before `t` has been delivered, and a `caught up
at t` mark follows those records to the loop. While the broker is down the question
fails, no mark is sent, and the state's age grows; librdkafka reconnects by itself
and the next successful check catches up again. Nothing is ever dropped from the
state for want of a broker: the gateway answers from the last known state.

Undecodable records are counted (`undecodable`) and logged and skipped, never
fatal, except `registry_unavailable` (the schema registry did not answer): the same
bytes may decode a moment later, so the thread retries them and the state ages
meanwhile, rather than losing a BLOCK to a registry hiccup. With control keys, a
command the worker did not sign (`processor.codec.command_signing`) is one of those
skipped records (`unauthenticated_command`): a forged UNBLOCK or tombstone changes
nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Final, Literal

from processor.codec.command_signing import CommandKeys, Headers
from processor.codec.errors import DecodeError
from processor.codec.wire import Codec
from processor.mail.blocklist import command_from_record
from processor.mail.gateway_state import Update

log = logging.getLogger(__name__)
#: librdkafka's log lines (connection failures while the broker is down...).
KAFKA_LOG = logging.getLogger("sendguard.gateway.kafka")

#: How often the follower asks for the topics' end offsets (the resolution of the
#: state age while everything is well).
CHECK_INTERVAL_S: Final = 1.0
#: The same until the first catch-up, so start-up is not held up by the interval.
FIRST_CHECK_INTERVAL_S: Final = 0.1
#: How long one poll waits for a first record: bounds how late a check can be.
POLL_TIMEOUT_S: Final = 0.2
#: Records decoded per batch handed to the event loop.
BATCH_SIZE: Final = 1000
#: How long one end-offset question may take before it counts as failed.
WATERMARK_TIMEOUT_S: Final = 2.0
#: How often the topics' partition lists are read again (new partitions are assigned).
METADATA_INTERVAL_S: Final = 30.0
#: Pause between attempts to decode a record while the schema registry is unavailable.
REGISTRY_RETRY_S: Final = 1.0
#: At most one log line per this many seconds for a repeated broker problem.
LOG_EVERY_S: Final = 10.0

TopicKind = Literal["control", "directory"]
#: Metric label of each topic kind (the topic's name without a prefix).
TOPIC_LABELS: Final[dict[TopicKind, str]] = {
    "control": "mailbox.control",
    "directory": "directory.mailboxes",
}

Deliver = Callable[[list[Update], float | None], None]


def decode_update(
    codec: Codec,
    kind: TopicKind,
    key: bytes | None,
    value: bytes | None,
    headers: Headers = None,
    control_keys: CommandKeys | None = None,
) -> Update | None:
    """The state change one record of the topic `kind` means, or None for a keyless
    tombstone (it deletes nothing). Raises DecodeError for bytes that are not the
    topic's records, and (`unauthenticated_command`) for a record of mailbox.control,
    tombstones included, that `control_keys` did not sign (when there are keys)."""
    if kind == "control" and control_keys:
        control_keys.verify(key, value, headers)  # before a byte of it is parsed
    if value is None:
        if key is None:
            return None
        mailbox_key = codec.decode_as("MailboxKey", key)
        tenant, mailbox = mailbox_key.get("tenant_id"), mailbox_key.get("mailbox")
        if not isinstance(tenant, str) or not isinstance(mailbox, str):
            raise DecodeError("invalid_record", "MailboxKey without tenant_id or mailbox")
        return Update(
            "forget_mailbox" if kind == "control" else "forget_directory", tenant, mailbox
        )
    if kind == "control":
        command = command_from_record(codec.decode_as("MailboxCommand", value))
        return Update("command", command.tenant_id, command.mailbox, command)
    entry = codec.decode_as("DirectoryEntry", value)
    tenant, mailbox = entry.get("tenant_id"), entry.get("mailbox")
    if not isinstance(tenant, str) or not tenant.strip():
        raise DecodeError("invalid_record", "DirectoryEntry.tenant_id: missing or empty")
    if not isinstance(mailbox, str) or not mailbox.strip():
        raise DecodeError("invalid_record", "DirectoryEntry.mailbox: missing or empty")
    return Update("directory", tenant, mailbox)


class StateFollower:
    """The follower thread. `start` it once; `stop` ends it and closes the consumer."""

    def __init__(
        self,
        client_config: dict[str, Any],
        codec: Codec,
        topics: dict[str, TopicKind],
        deliver: Deliver,
        undecodable: Callable[[str, str], None],
        control_keys: CommandKeys | None = None,
    ) -> None:
        """`topics`: topic name -> what it holds. `undecodable(label, reason)` counts a
        skipped record (called from the follower thread). With `control_keys`, a
        command they did not sign is skipped as `unauthenticated_command`."""
        from confluent_kafka import Consumer

        self._control_keys = control_keys
        self._codec = codec
        self._topics = topics
        self._deliver = deliver
        self._undecodable = undecodable
        self._consumer = Consumer(
            {
                **client_config,
                # Required by the client even with manual assignment; never committed.
                "group.id": f"sendguard-gateway-{uuid.uuid4()}",
                "enable.auto.commit": False,
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                # A new record is fetched at once; an idle fetch waits at most this long.
                "fetch.wait.max.ms": 100,
                "error_cb": self._on_error,
                # librdkafka's own lines through logging (JSON), not raw to stderr.
                "logger": KAFKA_LOG,
            }
        )
        # Asks the topics' start and end offsets (read-only: it changes nothing).
        self._admin_config: dict[str, Any] = {
            **client_config,
            "error_cb": self._on_error,
            "logger": KAFKA_LOG,
        }
        self._admin: Any = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._assigned: set[tuple[str, int]] = set()
        self._caught_up_once = False
        self._last_log: dict[str, float] = {}
        #: Records read (decoded or not); for progress lines.
        self.records = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sendguard-gateway-follower")
        self._thread.daemon = True
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._consumer.close()

    # -- the thread ----------------------------------------------------------------
    def _run(self) -> None:
        next_check = next_metadata = 0.0
        while not self._stop.is_set():
            try:
                now = time.monotonic()
                if now >= next_metadata:
                    self._assign_new_partitions()
                    next_metadata = now + METADATA_INTERVAL_S
                if not self._assigned:
                    self._stop.wait(1.0)
                    next_metadata = 0.0
                    continue
                self._consume_once()
                if time.monotonic() >= next_check:
                    if self._check_caught_up():
                        self._caught_up_once = True
                    interval = CHECK_INTERVAL_S if self._caught_up_once else FIRST_CHECK_INTERVAL_S
                    next_check = time.monotonic() + interval
            except Exception:  # keep following: the state is kept and ages meanwhile
                log.exception("gateway follower")
                self._stop.wait(1.0)

    def _assign_new_partitions(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, KafkaException, TopicPartition

        try:
            metadata = self._consumer.list_topics(timeout=WATERMARK_TIMEOUT_S * 2)
        except KafkaException as error:
            self._rate_limited("metadata", "cannot read topic metadata: %s", error)
            return
        new = []
        for topic in self._topics:
            found = metadata.topics.get(topic)
            if found is None or found.error is not None:
                self._rate_limited(
                    f"missing {topic}",
                    "topic %s does not exist (yet); run `sendguard topics apply`",
                    topic,
                )
                continue
            for partition in found.partitions:
                if (topic, partition) not in self._assigned:
                    new.append(TopicPartition(topic, partition, OFFSET_BEGINNING))
        if new:
            self._consumer.incremental_assign(new)
            self._assigned.update((tp.topic, tp.partition) for tp in new)
            log.info("following %d more partition(s), from the beginning", len(new))

    def _consume_once(self) -> None:
        # consume(n, timeout) waits for n records or the whole timeout: a lone new
        # BLOCK would wait out the timeout. poll returns with the first record; then
        # whatever else has arrived is taken without waiting.
        first = self._consumer.poll(POLL_TIMEOUT_S)
        if first is None:
            return
        messages = [first, *self._consumer.consume(BATCH_SIZE - 1, 0)]
        batch: list[Update] = []
        for message in messages:
            if message.error() is not None:
                self._rate_limited("consume", "consume: %s", message.error())
                continue
            self.records += 1
            update = self._decode(message)
            if update is not None:
                batch.append(update)
        if batch:
            self._deliver(batch, None)

    def _decode(self, message: Any) -> Update | None:
        kind = self._topics[message.topic()]
        while True:
            try:
                return decode_update(
                    self._codec,
                    kind,
                    message.key(),
                    message.value(),
                    message.headers(),
                    self._control_keys,
                )
            except DecodeError as error:
                if error.reason == "registry_unavailable" and not self._stop.is_set():
                    self._rate_limited("registry", "schema registry unavailable: %s", error)
                    self._stop.wait(REGISTRY_RETRY_S)
                    continue
                self._undecodable(TOPIC_LABELS[kind], error.reason)
                log.warning(
                    "skipping %s[%d]@%d: %s",
                    message.topic(),
                    message.partition(),
                    message.offset(),
                    error,
                    extra={"event": "undecodable_record", "reason": error.reason},
                )
                return None

    def _check_caught_up(self) -> bool:
        """Send a `caught up` mark if the consumer is at every partition's end."""
        from confluent_kafka import KafkaException, TopicPartition
        from confluent_kafka.admin import OffsetSpec  # type: ignore[attr-defined]

        spec: Any = OffsetSpec
        asked_at = time.monotonic()
        partitions = [TopicPartition(t, p) for t, p in sorted(self._assigned)]
        try:
            positions = {
                (tp.topic, tp.partition): tp.offset for tp in self._consumer.position(partitions)
            }
            # One batched ListOffsets request each (a consumer's get_watermark_offsets
            # asks partition by partition, ~0.1 s apiece behind its fetches).
            starts = self._offsets(partitions, spec.earliest())
            ends = self._offsets(partitions, spec.latest())
        except (KafkaException, TimeoutError) as error:
            self._rate_limited(
                "watermarks", "cannot read the topics' ends: %s %s", type(error).__name__, error
            )
            # After a broker restart librdkafka's admin client can keep sending a stale
            # leader epoch (FENCED_LEADER_EPOCH, again and again): a new client starts
            # from fresh metadata.
            self._admin = None
            return False
        for where, end in ends.items():
            position = positions.get(where, -1)
            # A negative position: nothing read yet, which is the end only when the
            # partition holds nothing (any more: compaction may have emptied it).
            if (position if position >= 0 else starts[where]) < end:
                return False
        self._deliver([], asked_at)
        return True

    def _offsets(self, partitions: list[Any], spec: Any) -> dict[tuple[str, int], int]:
        if self._admin is None:
            from confluent_kafka.admin import AdminClient

            self._admin = AdminClient(self._admin_config)
        futures = self._admin.list_offsets(
            {tp: spec for tp in partitions}, request_timeout=WATERMARK_TIMEOUT_S
        )
        offsets = {
            (tp.topic, tp.partition): int(future.result(timeout=WATERMARK_TIMEOUT_S).offset)
            for tp, future in futures.items()
        }
        self._admin.poll(0)  # serves its log lines (queued for the logger)
        return offsets

    def _on_error(self, error: Any) -> None:
        self._rate_limited("client", "kafka: %s", error)

    def _rate_limited(self, what: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last_log.get(what)
        if last is None or now - last >= LOG_EVERY_S:
            self._last_log[what] = now
            log.warning(message, *args)
