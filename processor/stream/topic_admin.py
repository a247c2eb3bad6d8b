"""`sendguard topics`: create the topics of topics.yaml and report drift.

`apply_topics` creates missing topics and compares existing ones (partitions,
replication factor, the configs the file sets) without ever changing them:
altering a live topic (partition counts above all, which re-key every mailbox)
is a decision for an operator, not for a deploy script. Running it twice is a
no-op the second time.

confluent-kafka is imported inside the functions so `sendguard --help` stays light.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from processor.stream.connection import (
    KafkaConnection,
    connection_from_options,
    connection_options,
)
from processor.topics import TopicsFileError, TopicSpec, default_topics_file, load_topics

# How long to wait for the broker before calling it unreachable.
CONNECT_TIMEOUT_S = 6.0
# Topic creation waits for the controller; generous but bounded.
REQUEST_TIMEOUT_S = 30.0
# How long a just-created topic may take to appear in the brokers' metadata.
PROPAGATION_TIMEOUT_S = 10.0


# librdkafka would print every failed connection attempt to stderr; we report an
# unreachable broker once, ourselves. Its messages still reach any logging the
# application configures (the NullHandler only silences Python's last-resort handler).
_LIBRDKAFKA_LOG = logging.getLogger("sendguard.kafka.admin")
_LIBRDKAFKA_LOG.addHandler(logging.NullHandler())


class TopicAdminError(Exception):
    """The broker is unreachable or refused a request (the message says which)."""


@dataclass(frozen=True, slots=True)
class Difference:
    """One way an existing topic differs from its spec."""

    topic: str
    setting: str  # "partitions", "replication_factor" or a config name
    expected: str
    actual: str

    def __str__(self) -> str:
        return f"{self.topic}: {self.setting} is {self.actual}, wanted {self.expected}"


@dataclass(slots=True)
class ApplyResult:
    created: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    differences: list[Difference] = field(default_factory=list)

    @property
    def drifted(self) -> list[str]:
        return sorted({d.topic for d in self.differences})


def _admin(connection: KafkaConnection) -> Any:
    from confluent_kafka.admin import AdminClient

    conf: dict[str, Any] = {
        # The same address and security settings as every other sendguard client.
        **connection.confluent(),
        # Fail fast on a wrong address instead of retrying silently for minutes.
        "socket.connection.setup.timeout.ms": int(CONNECT_TIMEOUT_S * 1000),
        "logger": _LIBRDKAFKA_LOG,
    }
    return AdminClient(conf)


def _metadata(admin: Any, bootstrap: str) -> Any:
    from confluent_kafka import KafkaException

    try:
        return admin.list_topics(timeout=CONNECT_TIMEOUT_S)
    except KafkaException as exc:
        raise TopicAdminError(
            f"cannot reach Kafka at {bootstrap} within {CONNECT_TIMEOUT_S:.0f}s "
            f"({exc.args[0].str() if exc.args else exc}); is the broker running "
            "(`sendguard kafka up`) and is --bootstrap / SENDGUARD_BOOTSTRAP right?"
        ) from exc


def existing_topics(connection: KafkaConnection) -> dict[str, tuple[int, int]]:
    """Topic name -> (partitions, replication factor) of every topic on the broker."""
    metadata = _metadata(_admin(connection), connection.bootstrap)
    # Topics still being created (no leader yet) are listed too, with what is known.
    return {
        name: (len(t.partitions), _replication_factor(t)) for name, t in metadata.topics.items()
    }


def _replication_factor(topic_metadata: Any) -> int:
    partitions = list(topic_metadata.partitions.values())
    return len(partitions[0].replicas) if partitions else 0


def apply_topics(connection: KafkaConnection, specs: list[TopicSpec]) -> ApplyResult:
    """Create the missing topics of `specs`, compare the others; raises TopicAdminError.

    Afterwards every spec's topic exists; `differences` lists what an existing
    topic has that the spec does not (nothing was changed).
    """
    from confluent_kafka import KafkaError, KafkaException

    # The documented import path; the package re-exports it without __all__.
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    admin, bootstrap = _admin(connection), connection.bootstrap
    metadata = _metadata(admin, bootstrap)
    result = ApplyResult()

    missing = [s for s in specs if s.name not in metadata.topics]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(
                    s.name,
                    num_partitions=s.partitions,
                    replication_factor=s.replication_factor,
                    config=s.broker_configs(),
                )
                for s in missing
            ],
            request_timeout=REQUEST_TIMEOUT_S,
            operation_timeout=REQUEST_TIMEOUT_S,
        )
        for spec in missing:
            try:
                futures[spec.name].result(timeout=REQUEST_TIMEOUT_S + 5)
                result.created.append(spec.name)
            except KafkaException as exc:
                error = exc.args[0] if exc.args else None
                if getattr(error, "code", lambda: None)() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise TopicAdminError(f"cannot create {spec.name}: {error or exc}") from exc
                # Created concurrently by someone else: compared below like any existing topic.
            except TimeoutError as exc:
                raise TopicAdminError(f"creating {spec.name} timed out") from exc

    if result.created:
        _await_visible(admin, bootstrap, result.created)
    existing = [s for s in specs if s.name not in result.created]
    for spec in existing:
        partitions, replication_factor, configs = _describe(admin, bootstrap, spec.name)
        differences = compare(spec, partitions, replication_factor, configs)
        if differences:
            result.differences.extend(differences)
        else:
            result.unchanged.append(spec.name)
    return result


def _await_visible(admin: Any, bootstrap: str, names: list[str]) -> None:
    """Wait until new topics have leaders: creation returns before metadata catches up."""
    deadline = time.monotonic() + PROPAGATION_TIMEOUT_S
    pending = set(names)
    while pending:
        topics = _metadata(admin, bootstrap).topics
        pending = {n for n in pending if n not in topics or not _led(topics[n])}
        if pending and time.monotonic() > deadline:
            raise TopicAdminError(f"created but not visible yet: {', '.join(sorted(pending))}")
        if pending:
            time.sleep(0.1)


def _ready(topic_metadata: Any) -> bool:
    return topic_metadata.error is None and bool(topic_metadata.partitions)


def _led(topic_metadata: Any) -> bool:
    """Listed, and every partition has a leader: a new topic clients can use."""
    partitions = topic_metadata.partitions.values()
    return _ready(topic_metadata) and all(p.error is None and p.leader >= 0 for p in partitions)


def _describe(admin: Any, bootstrap: str, name: str) -> tuple[int, int, dict[str, str | None]]:
    """(partitions, replication factor, configs) of an existing topic.

    A topic created a moment ago (by us or anyone) can be unknown to the broker that
    answers: retry briefly instead of reporting a phantom error.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import ConfigResource  # type: ignore[attr-defined]

    deadline = time.monotonic() + PROPAGATION_TIMEOUT_S
    while True:
        try:
            topic = _metadata(admin, bootstrap).topics.get(name)
            if topic is None or not _ready(topic):
                raise KafkaException(KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))
            resource = ConfigResource(ConfigResource.Type.TOPIC, name)
            future = admin.describe_configs([resource], request_timeout=REQUEST_TIMEOUT_S)[resource]
            entries = future.result(timeout=REQUEST_TIMEOUT_S + 5)
            configs = {config: entry.value for config, entry in entries.items()}
            return len(topic.partitions), _replication_factor(topic), configs
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            retriable = getattr(error, "code", lambda: None)() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError.LEADER_NOT_AVAILABLE,
            )
            if not retriable or time.monotonic() > deadline:
                raise TopicAdminError(f"cannot describe {name}: {error or exc}") from exc
            time.sleep(0.2)
        except TimeoutError as exc:
            raise TopicAdminError(f"describing {name} timed out") from exc


def compare(
    spec: TopicSpec, partitions: int, replication_factor: int, configs: dict[str, str | None]
) -> list[Difference]:
    """What differs between `spec` and a topic as described by the broker."""
    differences = []
    if partitions != spec.partitions:
        differences.append(
            Difference(spec.name, "partitions", str(spec.partitions), str(partitions))
        )
    if replication_factor != spec.replication_factor:
        differences.append(
            Difference(
                spec.name,
                "replication_factor",
                str(spec.replication_factor),
                str(replication_factor),
            )
        )
    for name, expected in spec.broker_configs().items():
        actual = configs.get(name)
        if actual != expected:
            differences.append(Difference(spec.name, name, expected, str(actual)))
    return differences


def delete_topics(connection: KafkaConnection, names: list[str]) -> None:
    """Delete topics (tests clean up with it; not exposed on the command line)."""
    admin = _admin(connection)
    for future in admin.delete_topics(names, operation_timeout=REQUEST_TIMEOUT_S).values():
        future.result(timeout=REQUEST_TIMEOUT_S + 5)


# -- command line --------------------------------------------------------------

_file_option = click.option(
    "--file",
    "topics_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Topics file [default: the repository's topics.yaml, or $SENDGUARD_TOPICS_FILE].",
)


def _load(topics_file: Path | None, replication_factor: int | None) -> list[TopicSpec]:
    try:
        specs = load_topics(topics_file or default_topics_file())
    except TopicsFileError as exc:
        raise click.ClickException(str(exc)) from exc
    if replication_factor is not None:
        specs = [dataclasses.replace(s, replication_factor=replication_factor) for s in specs]
    return specs


@click.group()
def topics() -> None:
    """Create and check the topics of topics.yaml."""


@topics.command("apply")
@connection_options
@_file_option
@click.option(
    "--replication-factor",
    type=click.IntRange(min=1),
    envvar="SENDGUARD_REPLICATION_FACTOR",
    show_envvar=True,
    default=None,
    help="Override every topic's replication factor (production: 3).",
)
def apply_command(topics_file: Path | None, replication_factor: int | None, **options: Any) -> None:
    """Create missing topics; report, never change, existing topics that differ.

    Exit status: 0 all topics match, 1 error (e.g. broker unreachable), 2 some
    existing topic differs from the file.
    """
    specs = _load(topics_file, replication_factor)
    try:
        result = apply_topics(connection_from_options(options), specs)
    except TopicAdminError as exc:
        raise click.ClickException(str(exc)) from exc
    for name in result.created:
        click.echo(f"created    {name}")
    for name in result.unchanged:
        click.echo(f"unchanged  {name}")
    for difference in result.differences:
        click.echo(f"DIFFERS    {difference}", err=True)
    if result.differences:
        click.echo(
            f"{len(result.drifted)} topic(s) differ from the file; not changed (fix by hand).",
            err=True,
        )
        sys.exit(2)


@topics.command("list")
@connection_options
@_file_option
def list_command(topics_file: Path | None, **options: Any) -> None:
    """Show each topic of the file: partitions, replication, schemas, whether it exists."""
    specs = _load(topics_file, None)
    try:
        existing = existing_topics(connection_from_options(options))
    except TopicAdminError as exc:
        raise click.ClickException(str(exc)) from exc
    for spec in specs:
        actual = existing.get(spec.name)
        state = "missing" if actual is None else f"exists p={actual[0]} rf={actual[1]}"
        click.echo(
            f"{spec.name:<26} p={spec.partitions} rf={spec.replication_factor} "
            f"{spec.cleanup_policy:<7} key={spec.key_schema or '-'} value={spec.value_schema}  "
            f"[{state}]"
        )
        click.echo(f"    {spec.purpose}")
