"""`sendguard produce`: publish a scenario file as an upstream scanner would.

Verdicts go to mail.verdicts, directory lines to directory.mailboxes, settings to
tenant.settings and releases to mailbox.support-actions, Avro-encoded with the
codec and keyed as `processor.codec.records.key_of` says. Ticks only pace time.
`--rebase-to` shifts every timestamp so the first line happens at the given time;
`--pace realtime` sends each line when its (rebased) time comes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

import click

from processor.codec.action_signing import KEYS_ENV, ActionKeys
from processor.policy import Release
from processor.scenario import Event, ScenarioError, event_time, parse_line, parse_timestamp
from processor.stream.connection import (
    connection_from_options,
    connection_options,
    schema_registry_option,
    topic_prefix_option,
)
from processor.stream.secret_options import action_keys_from, action_keys_options

# The field holding each line type's time (scenario format, docs/policy.md "sendguard simulate").
_TIME_FIELD = {"verdict": "scanned_at"}


def parse_target(text: str) -> int:
    """`NOW` (the wall clock) or an ISO-8601 / epoch-ms timestamp -> epoch ms."""
    if text.strip().upper() == "NOW":
        return int(time.time() * 1000)
    value: object = int(text) if text.strip().isdigit() else text
    try:
        return parse_timestamp(value, "--rebase-to")
    except ScenarioError as error:
        raise click.BadParameter(str(error), param_hint="--rebase-to") from None


def rebase_lines(lines: Iterable[str], target_ms: int) -> list[str]:
    """The scenario with every timestamp shifted so its earliest line is at `target_ms`.

    Lines that are not usable JSON objects with a valid time are kept unchanged
    (they are rejected later, with their line number, like `simulate` does).
    Shifted times are written as epoch milliseconds.
    """
    parsed: list[tuple[str, dict[str, Any] | None, str | None, int | None]] = []
    for text in lines:
        raw, field, at = None, None, None
        try:
            candidate = json.loads(text)
            if isinstance(candidate, dict):
                field = _TIME_FIELD.get(str(candidate.get("type", "")).strip().lower(), "at")
                at = parse_timestamp(candidate.get(field), field)
                raw = candidate
        except (ValueError, ScenarioError):
            raw = None
        parsed.append((text, raw, field, at))
    times = [at for _, _, _, at in parsed if at is not None]
    if not times:
        return [text for text, *_ in parsed]
    offset = target_ms - min(times)
    out = []
    for text, raw, field, at in parsed:
        if raw is None or field is None or at is None:
            out.append(text.rstrip("\n"))
        else:
            out.append(json.dumps({**raw, field: at + offset}, ensure_ascii=False))
    return out


def scenario_events(lines: Iterable[str]) -> Iterator[tuple[int, Event | None, str | None]]:
    """(line number, event or None, rejection reason or None) for every non-blank line."""
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            yield number, parse_line(text), None
        except ScenarioError as error:
            yield number, None, str(error)


class ScenarioProducer:
    """Encodes scenario events and produces them to their topics."""

    def __init__(
        self,
        client_config: dict[str, Any],
        codec: Any,
        prefix: str = "",
        action_keys: ActionKeys | None = None,
    ) -> None:
        """`action_keys` sign the releases (without keys they are sent unsigned, and
        the worker dead-letters them)."""
        from confluent_kafka import Producer

        self._codec = codec
        self._prefix = prefix
        self._keys = action_keys
        self._failed: list[str] = []
        self.sent = 0
        self.producer = Producer(
            {
                **client_config,
                # Java/aiokafka placement: the same key lands where sendguard expects it.
                "partitioner": "murmur2_random",
                "enable.idempotence": True,
                "linger.ms": 5,
            }
        )

    def send(self, event: Event) -> bool:
        """Produce one event (False for a tick, which is not sent anywhere)."""
        from processor.codec import records
        from processor.policy import Tick

        if isinstance(event, Tick):
            return False
        key_name, key = records.key_of(event)
        value_name, value = records.record_of(event)
        if self._keys and value_name == "SupportAction":
            value = self._keys.sign(value)
        topic = self._prefix + records.topic_of(event)
        self.producer.produce(
            topic,
            self._codec.encode(value_name, value),
            self._codec.encode(key_name, key),
            on_delivery=self._delivered,
        )
        self.producer.poll(0)
        self.sent += 1
        return True

    def _delivered(self, error: Any, message: Any) -> None:
        if error is not None:
            self._failed.append(f"{message.topic()}: {error}")

    def flush(self, timeout_s: float = 30) -> list[str]:
        """Wait for every delivery; returns the failures (empty when all arrived)."""
        remaining = self.producer.flush(timeout_s)
        failed = list(self._failed)
        if remaining:
            failed.append(f"{remaining} record(s) not delivered within {timeout_s}s")
        return failed


@click.command()
@click.argument("scenario", type=click.File("r", encoding="utf-8"))
@connection_options
@schema_registry_option
@topic_prefix_option
@action_keys_options
@click.option(
    "--rebase-to",
    help="Shift all timestamps so the first line happens at this time: NOW or ISO-8601.",
)
@click.option(
    "--pace",
    type=click.Choice(["none", "realtime"]),
    default="none",
    show_default=True,
    help="realtime: send each line when its time comes (relative to the first line).",
)
def produce(scenario: TextIO, rebase_to: str | None, pace: str, **options: Any) -> None:
    """Publish SCENARIO (simulate's JSON-lines format, `-` for stdin) to Kafka as Avro.

    Unusable lines are reported on stderr with their line number and skipped; the
    exit status is 1 when any line was rejected or not delivered. Releases are signed
    with the first action key; without keys they are sent unsigned (and dead-lettered).
    """
    from processor.codec.wire import Codec, CodecConfig

    connection = connection_from_options(options)
    keys = action_keys_from(options)
    lines = scenario.read().splitlines()
    if rebase_to is not None:
        lines = rebase_lines(lines, parse_target(rebase_to))
    codec = Codec.from_config(CodecConfig(schema_registry_url=options["schema_registry"] or None))
    sender = ScenarioProducer(connection.confluent(), codec, options["topic_prefix"], keys)
    rejected = 0
    warned = bool(keys)
    start_wall, first_ms = time.monotonic(), None
    for number, event, reason in scenario_events(lines):
        if event is None:
            click.echo(f"line {number}: {reason}", err=True)
            rejected += 1
            continue
        if pace == "realtime":
            at = event_time(event)
            first_ms = at if first_ms is None else first_ms
            delay = (at - first_ms) / 1000 - (time.monotonic() - start_wall)
            if delay > 0:
                sender.producer.flush(delay)  # deliver what is queued while waiting
                remaining = (at - first_ms) / 1000 - (time.monotonic() - start_wall)
                if remaining > 0:
                    time.sleep(remaining)
        if not warned and isinstance(event, Release):
            warned = True
            click.echo(
                f"warning: no action keys ({KEYS_ENV}): releases are sent unsigned, "
                "and the worker dead-letters them",
                err=True,
            )
        sender.send(event)
    failed = sender.flush()
    for failure in failed[:10]:
        click.echo(f"not delivered: {failure}", err=True)
    click.echo(
        f"produced {sender.sent} record(s) at {datetime.now(UTC).isoformat(timespec='seconds')}"
        f"{f', {rejected} line(s) rejected' if rejected else ''}",
        err=True,
    )
    if rejected or failed:
        sys.exit(1)
