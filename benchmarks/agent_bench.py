"""The lockout agent's own code without Kafka or Faust. Not a test.

    python -m benchmarks.agent_bench [--verdicts 600000] [--share 0.2] [--records 64]

The workload of `benchmarks.workload` (as in the e2e bench) is packed the way the
edge stage packs it (per 5,000 consumed verdicts, one pack per internal partition
of the qualifying ones, stamped with the batch's latest scan time), encoded, and
then handed to `Runtime.apply` in batches of `--records` records, as the agent's
`take_events` would: packs decoded, mailboxes stepped, decisions encoded as Avro
and handed to a delivery that accepts everything at once, the BLOCK log lines
formatted (into memory), states written to a dict instead of Faust's table. The
worker's start-up heap settings (`processor.stream.heap.settle_heap`) apply.
Prints the process CPU time per qualifying verdict; what this leaves out (Faust,
aiokafka, librdkafka, RocksDB) is what the e2e bench adds.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry

from benchmarks.workload import generate, load_average
from processor.codec.wire import Codec
from processor.ops.logging import configure_logging, log_decisions
from processor.ops.metrics import Metrics
from processor.policy import PolicyConfig
from processor.stream.agents import _decoded
from processor.stream.events import encode_entry, encode_key, pack_value, partition_for
from processor.stream.heap import settle_heap
from processor.stream.lookups import Lookups
from processor.stream.outputs import OutputRecord, Outputs
from processor.stream.runtime import Record, Runtime
from processor.stream.topics import TopicNames

EDGE_BATCH = 5_000
PARTITIONS = 6


class AcceptingDelivery:
    """Every record delivered at once (counted)."""

    def __init__(self) -> None:
        self.records = 0

    async def deliver(self, records: Sequence[OutputRecord]) -> list[Any]:
        self.records += len(records)
        return []


class _Message:
    __slots__ = ("offset", "partition", "timestamp", "topic")

    def __init__(self, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset, self.timestamp = "bench", partition, offset, 0.0


class _Event:
    """What `agents._decoded` reads of a Faust event."""

    __slots__ = ("key", "message", "value")

    def __init__(self, partition: int, offset: int, value: bytes) -> None:
        self.key, self.value, self.message = b"", value, _Message(partition, offset)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.agent_bench", description=__doc__)
    parser.add_argument("--verdicts", type=int, default=600_000)
    parser.add_argument("--mailboxes", type=int, default=100_000)
    parser.add_argument("--share", type=float, default=0.2, help="qualifying share")
    parser.add_argument("--records", type=int, default=64, help="records per agent batch")
    parser.add_argument("--seed", type=int, default=20260105)
    args = parser.parse_args(argv)

    configure_logging("info", stream=io.StringIO(), json_lines=True)
    workload = generate(args.verdicts, args.mailboxes, args.seed, 50 / 60, qualifying=args.share)
    lookups = Lookups()
    for entry in workload.directory:
        lookups.put_directory(entry)
    for settings in workload.settings:
        lookups.put_settings(settings)

    events: list[_Event] = []
    offsets = [0] * PARTITIONS
    for start in range(0, len(workload.stream), EDGE_BATCH):
        batch = workload.stream[start : start + EDGE_BATCH]
        at = max(verdict.scanned_at_ms for verdict in batch)
        packs: list[list[bytes]] = [[] for _ in range(PARTITIONS)]
        for verdict in batch:
            if verdict.qualifies:
                packs[partition_for(encode_key(verdict.key), PARTITIONS)].append(
                    encode_entry(verdict)
                )
        for partition, entries in enumerate(packs):
            if entries:
                events.append(_Event(partition, offsets[partition], pack_value(at, entries)))
                offsets[partition] += 1
    qualifying = sum(1 for verdict in workload.stream if verdict.qualifies)
    del workload

    names = TopicNames()
    delivery = AcceptingDelivery()
    table: dict[bytes, bytes] = {}
    rt = Runtime(
        app=None,
        table=table,
        policy=PolicyConfig(),
        names=names,
        partitions=PARTITIONS,
        outputs=Outputs(Codec.from_config(), names),
        lookups=lookups,
        metrics=Metrics(CollectorRegistry()),
        delivery=delivery,  # type: ignore[arg-type]
    )
    rt.on_decisions.append(log_decisions)

    async def run() -> None:
        for i in range(0, len(events), args.records):
            decoded = [r for r in map(_decoded, events[i : i + args.records]) if r is not None]
            # No Faust event behind them: the table is a plain dict.
            await rt.apply([Record(None, r.partition, r.offset, r.pack) for r in decoded])

    settle_heap()
    cpu = time.process_time()
    asyncio.run(run())
    cpu = time.process_time() - cpu
    print(
        f"{args.verdicts:,} verdicts, {qualifying:,} qualifying ({qualifying / args.verdicts:.1%}) "
        f"in {len(events):,} packs, batches of {args.records} records: "
        f"{delivery.records:,} decision records, {len(table):,} mailboxes stored; "
        f"CPU {cpu:.2f} s = {1e6 * cpu / qualifying:.1f} us per qualifying verdict "
        f"(load {load_average()})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
