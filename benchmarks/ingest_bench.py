"""`sendguard ingest` throughput on a real broker: rspamd-like POSTs per second.

    .venv/bin/python -m benchmarks.ingest_bench --bootstrap 127.0.0.1:9092 [--count 20000]

Starts `sendguard ingest` on fresh prefixed topics, then POSTs COUNT copies of a real
captured rspamd body (each with its own Message-ID) from CONCURRENCY clients, one
connection per POST as rspamd 3.4 does (`Connection: close`). Each answer is 200
only once its verdict is acknowledged by the broker, so the rate is of delivered
verdicts. Prints the rate, latency percentiles and the records found on the topic;
asserts nothing. Deletes its topics afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from pathlib import Path

from benchmarks.kafka_support import create_topics, delete_topics, fresh_names

FIXTURE = Path(__file__).parents[1] / "tests" / "fixtures" / "rspamd" / "outbound-clean.json"


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(port: int, process: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("sendguard ingest exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("sendguard ingest not ready")


async def _post_all(url: str, bodies: list[bytes], concurrency: int) -> tuple[list[float], Counter]:
    import aiohttp

    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=True)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def client() -> None:
            while not queue.empty():
                body = queue.get_nowait()
                started = time.perf_counter()
                async with session.post(url, data=body) as response:
                    await response.read()
                    statuses[response.status] += 1
                latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(client() for _ in range(concurrency)))
    return latencies, statuses


def _topic_total(bootstrap: str, topic: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ingest-bench-count"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(
            consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in partitions
        )
    finally:
        consumer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()

    names = fresh_names("ingb")
    create_topics(args.bootstrap, names)
    template = json.loads(FIXTURE.read_bytes())
    bodies = [
        json.dumps(template | {"message_id": f"bench-{i}@acme.example"}).encode()
        for i in range(args.count)
    ]
    port, web_port = _free_port(), _free_port()
    with tempfile.TemporaryDirectory() as tmp:
        tenants = Path(tmp) / "tenants.yaml"
        tenants.write_text("acme.example: acme\n")
        process = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "sendguard"),
                "ingest",
                "--bootstrap",
                args.bootstrap,
                "--topic-prefix",
                names.prefix,
                "--tenants",
                str(tenants),
                "--listen",
                f"127.0.0.1:{port}",
                "--web-port",
                str(web_port),
                "--loglevel",
                "warning",
            ],
            start_new_session=True,
        )
        try:
            _wait_ready(web_port, process)
            load_before = os.getloadavg()[0]
            started = time.perf_counter()
            latencies, statuses = asyncio.run(
                _post_all(f"http://127.0.0.1:{port}/rspamd", bodies, args.concurrency)
            )
            elapsed = time.perf_counter() - started
            load_after = os.getloadavg()[0]
        finally:
            process.terminate()
            process.wait(30)
    on_topic = _topic_total(args.bootstrap, names.verdicts)
    delete_topics(args.bootstrap, names)

    latencies.sort()
    print(f"posts:        {args.count} from {args.concurrency} clients in {elapsed:.2f} s")
    print(f"rate:         {args.count / elapsed:,.0f} delivered verdicts/s")
    print(f"statuses:     {dict(statuses)}")
    print(
        f"latency:      p50 {statistics.median(latencies) * 1000:.1f} ms, "
        f"p99 {latencies[int(len(latencies) * 0.99) - 1] * 1000:.1f} ms, "
        f"max {latencies[-1] * 1000:.1f} ms"
    )
    print(f"on topic:     {on_topic} records in {names.verdicts}")
    print(f"load average: {load_before:.2f} before, {load_after:.2f} after (2 cores)")


if __name__ == "__main__":
    main()
