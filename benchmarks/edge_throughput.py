"""Edge-stage throughput on a real broker: verdicts/s of one `EdgeStage` loop.

    .venv/bin/python -m benchmarks.edge_throughput --bootstrap 127.0.0.1:9092 [--count 300000]

Produces COUNT verdicts (2 % qualifying, the rest clean or inbound) to a fresh
prefixed mail.verdicts, then times one edge stage (the code the worker runs in
its edge process: decode, validate, count, forward qualifying, flush, commit)
from its first record to the last. Prints the number; asserts nothing.
"""

from __future__ import annotations

import argparse
import random
import time

from benchmarks.kafka_support import bulk_producer, create_topics, fresh_names, produce_all
from processor.codec.wire import Codec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--count", type=int, default=300_000)
    parser.add_argument("--batch-size", type=int, default=5000)
    args = parser.parse_args()

    from processor.stream.edge import EdgeConfig, EdgeStage

    names = fresh_names("bench")
    client = {"bootstrap.servers": args.bootstrap}
    create_topics(args.bootstrap, names, internal_partitions=6)

    codec = Codec.from_config()
    rng = random.Random(7)
    base = int(time.time() * 1000)
    started = time.monotonic()
    values: list[tuple[bytes | None, bytes]] = []
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
        values.append((None, codec.encode("Verdict", record)))
    produce_all(
        bulk_producer(args.bootstrap, partitioner="consistent_random"), names.verdicts, values
    )
    print(f"produced {args.count} verdicts in {time.monotonic() - started:.1f}s")

    stage = EdgeStage.connect(
        EdgeConfig(
            client_config=client,
            group_id=names.edge_group,
            verdicts_topic=names.verdicts,
            support_topic=names.support_actions,
            internal_topic=names.mailbox_events,
            internal_partitions=6,
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
