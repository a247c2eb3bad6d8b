"""Names of the topics one worker uses, and creation of its internal topic.

External topic names (the contract of `processor.topics`) may carry a prefix, so
tests and shared clusters can run several independent sendguards side by side.
The internal topic belongs to one app id, like Faust's changelogs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from processor import topics as contract

#: Suffix of the internal topic: `<app id>-mailbox-events`.
MAILBOX_EVENTS_SUFFIX = "mailbox-events"
#: Name of the Faust table (its changelog is `<app id>-mailbox-state-changelog`).
STATE_TABLE = "mailbox-state"


@dataclass(frozen=True, slots=True)
class TopicNames:
    """Every topic name one worker reads or writes."""

    prefix: str = ""
    app_id: str = "sendguard"

    def external(self, name: str) -> str:
        """A contract topic name (`processor.topics.*`) with this deployment's prefix."""
        return f"{self.prefix}{name}"

    @property
    def verdicts(self) -> str:
        return self.external(contract.MAIL_VERDICTS)

    @property
    def support_actions(self) -> str:
        return self.external(contract.SUPPORT_ACTIONS)

    @property
    def directory(self) -> str:
        return self.external(contract.DIRECTORY_MAILBOXES)

    @property
    def settings(self) -> str:
        return self.external(contract.TENANT_SETTINGS)

    @property
    def dead_letter(self) -> str:
        return self.external(contract.DEAD_LETTER)

    @property
    def control(self) -> str:
        return self.external(contract.MAILBOX_CONTROL)

    @property
    def mailbox_events(self) -> str:
        """The internal topic between the edge stage and the lockout agent."""
        return f"{self.app_id}-{MAILBOX_EVENTS_SUFFIX}"

    @property
    def state_changelog(self) -> str:
        """The changelog Faust keeps of the state table."""
        return f"{self.app_id}-{STATE_TABLE}-changelog"

    @property
    def internal_topics(self) -> list[str]:
        """Every topic the worker creates for itself: the internal topic, the table's
        changelog, and the leader topic of Faust's partition assignor."""
        return [self.mailbox_events, self.state_changelog, f"{self.app_id}-__assignor-__leader"]

    @property
    def edge_group(self) -> str:
        return f"{self.app_id}-edge"


def ensure_internal_topic(
    client_config: dict[str, Any], name: str, partitions: int, replication_factor: int
) -> int:
    """Create the internal topic if missing; returns its partition count.

    Raises RuntimeError if the broker is unreachable or refuses. An existing topic
    is used as it is: its partition count decides where every mailbox lives, so
    it is never changed here (the caller compares it with the table's).
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    admin = AdminClient(client_config)
    try:
        metadata = admin.list_topics(timeout=15)
    except KafkaException as exc:
        raise RuntimeError(
            f"cannot reach Kafka at {client_config['bootstrap.servers']}: {exc}"
        ) from exc
    existing = metadata.topics.get(name)
    if existing is not None and existing.error is None:
        return len(existing.partitions)
    futures = admin.create_topics(
        [
            NewTopic(
                name,
                num_partitions=partitions,
                replication_factor=replication_factor,
                # Events are consumed within seconds; a day covers a long outage.
                config={"cleanup.policy": "delete", "retention.ms": str(24 * 3_600_000)},
            )
        ],
        request_timeout=30,
        operation_timeout=30,
    )
    try:
        futures[name].result(timeout=35)
    except KafkaException as exc:
        error = exc.args[0] if exc.args else None
        if getattr(error, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise RuntimeError(f"cannot create {name}: {error or exc}") from exc
    return partitions
