"""Edge-stage throughput on a real broker: verdicts/s of one `EdgeStage` loop.

    .venv/bin/python benchmarks/edge_throughput.py --bootstrap 127.0.0.1:9092 [--count 300000]

Produces COUNT verdicts (2 % qualifying, the rest clean or inbound) to a fresh
prefixed mail.verdicts, then times one edge stage (the code the worker runs in
its edge process: decode, validate, count, forward qualifying, flush, commit)
from its first record to the last. Prints the number; asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import time
import uuid

from processor.codec.wire import Codec
from processor.topics import load_topics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()

    from confluent_kafka import Producer

    from processor.stream.edge import EdgeConfig, EdgeStage
    from processor.stream.topic_admin import apply_topics
    from processor.stream.topics import TopicNames, ensure_internal_topic

    run = uuid.uuid4().hex[:8]
    names = TopicNames(prefix=f"bench{run}.", app_id=f"bench{run}")
    client = {"bootstrap.servers": args.bootstrap}
    apply_topics(
        args.bootstrap, [dataclasses.replace(s, name=names.external(s.name)) for s in load_topics()]
    )
    ensure_internal_topic(client, names.mailbox_events, 6, 1)

    codec = Codec.from_config()
    producer = Producer({**client, "linger.ms": 20, "batch.num.messages": 10000})
    rng = random.Random(7)
    base = int(time.time() * 1000)
    started = time.monotonic()
    for i in range(args.count):
        qualifying = rng.random() < 0.02
        record = {
            "tenant_id": f"t{i % 50}",
            "message_id": f"m{i}",
            "mailbox": f"user{rng.randrange(20_000)}@example.com",
            "direction": "OUTBOUND" if qualifying or rng.random() < 0.5 else "INBOUND",
            "verdict": rng.choice(["SPAM", "VIRUS"]) if qualifying else "CLEAN",
            "scanned_at": base + i,
        }
        while True:
            try:
                producer.produce(names.verdicts, codec.encode("Verdict", record))
                break
            except BufferError:
                producer.poll(0.05)
    producer.flush(60)
    print(f"produced {args.count} verdicts in {time.monotonic() - started:.1f}s")

    stage = EdgeStage(
        EdgeConfig(
            client_config=client,
            group_id=names.edge_group,
            verdicts_topic=names.verdicts,
            support_topic=names.support_actions,
            internal_topic=names.mailbox_events,
            dead_letter_topic=names.dead_letter,
            batch_size=args.batch_size,
        ),
        codec,
    )
    stage.subscribe()
    seen = 0
    first = None
    while seen < args.count:
        messages = stage.consumer.consume(args.batch_size, 1.0)
        if not messages:
            continue
        if first is None:
            first = time.monotonic()
        stage.handle_batch(messages)  # the worker's path: process, flush, commit
        seen += len(messages)
    assert first is not None
    elapsed = time.monotonic() - first
    counts = stage.take_counts()
    stage.consumer.close()
    print(
        f"edge stage: {seen} verdicts in {elapsed:.2f}s = {seen / elapsed:,.0f} verdicts/s "
        f"({counts.qualifying} qualifying forwarded, batch {args.batch_size})"
    )


if __name__ == "__main__":
    main()
