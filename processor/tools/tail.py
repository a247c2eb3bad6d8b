"""`sendguard tail`: print a topic's records as JSON lines, decoded.

Avro records (either wire format) are decoded with the codec; the worker's
internal topic (JSON) is shown as its JSON; anything else is shown with the
decoding error and its bytes (base64). Bytes inside records (a dead letter's
original key and value) are base64 too.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import click

from processor.stream.connection import (
    connection_from_options,
    connection_options,
    schema_registry_option,
)


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def decode_part(codec: Any, data: bytes | None) -> dict[str, Any]:
    """{"schema", "record"} or {"json"} or {"error", "base64"} for a key or value."""
    from processor.codec.errors import DecodeError

    if data is None:
        return {"record": None}
    try:
        name, record = codec.decode(data)
        return {"schema": name, "record": record}
    except DecodeError as error:
        try:
            return {"json": json.loads(data)}
        except ValueError:
            return {"error": str(error), "base64": base64.b64encode(data).decode("ascii")}


def read_topic(
    client_config: dict[str, Any],
    topic: str,
    codec: Any,
    *,
    from_beginning: bool = False,
    max_records: int | None = None,
    idle_timeout_s: float | None = None,
) -> Iterator[dict[str, Any]]:
    """Yield the topic's records as dicts, every partition, in arrival order.

    Stops after `max_records`, or after `idle_timeout_s` without a new record.
    Commits nothing: tailing never moves anyone's offsets.
    """
    from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, TopicPartition

    consumer = Consumer(
        {
            **client_config,
            "group.id": f"sendguard-tail-{uuid.uuid4()}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=15)
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise click.ClickException(f"topic {topic} does not exist")
        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        consumer.assign([TopicPartition(topic, p, start) for p in found.partitions])
        count, last = 0, time.monotonic()
        while max_records is None or count < max_records:
            message = consumer.poll(0.2)
            if message is None or message.error() is not None:
                if idle_timeout_s is not None and time.monotonic() - last > idle_timeout_s:
                    return
                continue
            last = time.monotonic()
            count += 1
            _, timestamp = message.timestamp()
            yield {
                "topic": message.topic(),
                "partition": message.partition(),
                "offset": message.offset(),
                "timestamp": timestamp,
                "key": decode_part(codec, message.key()),
                "value": decode_part(codec, message.value()),
            }
    finally:
        consumer.close()


@click.command()
@click.argument("topic")
@connection_options
@schema_registry_option
@click.option("--from-beginning", is_flag=True, help="Start at the oldest record, not the newest.")
@click.option("--max", "max_records", type=click.IntRange(1), help="Stop after N records.")
@click.option("--timeout", "timeout_s", type=float, help="Stop after S seconds without a record.")
def tail(
    topic: str,
    from_beginning: bool,
    max_records: int | None,
    timeout_s: float | None,
    **options: Any,
) -> None:
    """Print TOPIC's records as JSON lines (one per record) until interrupted."""
    from processor.codec.wire import Codec, CodecConfig

    connection = connection_from_options(options)
    codec = Codec.from_config(CodecConfig(schema_registry_url=options["schema_registry"] or None))
    for line in read_topic(
        connection.confluent(),
        topic,
        codec,
        from_beginning=from_beginning,
        max_records=max_records,
        idle_timeout_s=timeout_s,
    ):
        click.echo(json.dumps(line, default=_jsonable, ensure_ascii=False))
