"""`sendguard gateway` under load: requests/s on one core, latency, BLOCK -> first REJECT.

    .venv/bin/python -m benchmarks.gateway_bench [--bootstrap 127.0.0.1:9092]
        [--connections 50] [--seconds 10] [--rate 20000] [--blocked 10000]

Creates fresh prefixed topics, puts `--blocked` BLOCK commands on mailbox.control
(encoded as the worker encodes them), starts `sendguard gateway` as a subprocess
pinned to one core with `taskset` (`--gateway-cpu`), and runs the load generator in
this process pinned to another (`--client-cpu`). The generator speaks the policy
protocol over many TCP connections, one outstanding request per connection, as
Postfix does; its requests look like Postfix's (16 attributes), and 5 % of them are
from blocked senders. Three measurements, printed; nothing is asserted:

1. saturation: every connection sends its next request as soon as the answer
   arrives, for `--seconds`: the gateway's requests/s and the latency it gives.
2. fixed rate: `--rate` requests/s over twice `--connections` connections (open
   loop: each request's latency counts from when it was due, so a stalled gateway
   cannot hide behind a slow sender; and, separately, from when it was sent, which
   leaves out the load generator's own lateness): latency p50/p99/p99.9 at that rate.
3. BLOCK -> REJECT: `--samples` times, a BLOCK for a new mailbox is produced while a
   probe connection asks about that mailbox back to back; the time from the produce
   call to the first REJECT read.

With each measurement the benchmark prints the gateway's CPU time (so requests per
CPU-second, what one core can do whatever else runs on it) and the time its event
loop waited for its core while other work ran there (/proc schedstat): on a shared
machine that wait, not the gateway, makes the latency tail.

The load generator is a plain epoll loop over non-blocking sockets (a Python asyncio
client would cost more per request than the server it measures). Every latency is
measured on the client, so it includes both kernels' loopback and the client's own
handling; the gateway's own histogram is read from its /metrics at the end.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchmarks.kafka_support import (
    bulk_producer,
    create_topics,
    delete_topics,
    fresh_names,
    produce_all,
)
from processor.codec import records
from processor.codec.wire import Codec
from processor.mail.policy_protocol import format_request
from processor.policy.decisions import Block, decision_id
from processor.policy.events import MailboxKey

SENDGUARD = str(Path(sys.executable).parent / "sendguard")
DOMAINS = 20
HOUR_MS = 3_600_000


def block_message(codec: Codec, tenant: str, mailbox: str, now_ms: int) -> tuple[bytes, bytes]:
    """(key, value) of a one-hour BLOCK, as the worker writes it."""
    key = MailboxKey.of(tenant, mailbox)
    block = Block(
        key=key,
        at_ms=now_ms,
        offense=1,
        permanent=False,
        until_ms=now_ms + HOUR_MS,
        sequence=1,
        command_id=decision_id(key, 1, "BLOCK"),
        evidence=(),
    )
    return codec.encode(*records.key_of(block)), codec.encode(*records.record_of(block))


def postfix_request(sender: str, n: int) -> bytes:
    return format_request(
        {
            "request": "smtpd_access_policy",
            "protocol_state": "RCPT",
            "protocol_name": "ESMTP",
            "client_address": f"198.51.100.{n % 250}",
            "client_name": f"client{n % 250}.example.net",
            "reverse_client_name": f"client{n % 250}.example.net",
            "helo_name": f"client{n % 250}.example.net",
            "sender": sender,
            "recipient": f"rcpt{n}@elsewhere.example",
            "recipient_count": "0",
            "queue_id": "",
            "instance": f"{n:x}.6543a1b2.9c3d.0",
            "size": str(1000 + n % 50_000),
            "sasl_method": "plain",
            "sasl_username": sender,
            "encryption_protocol": "TLSv1.3",
        }
    )


def request_pool(blocked: list[str], count: int = 20_000) -> list[bytes]:
    """Requests to cycle through: 5 % from blocked senders, the rest from others."""
    pool = []
    for n in range(count):
        if n % 20 == 0:
            sender = blocked[n % len(blocked)]
        else:
            sender = f"user{n}@domain{n % DOMAINS}.example"
        pool.append(postfix_request(sender, n))
    return pool


def state_bytes_per_mailbox(count: int) -> float:
    """tracemalloc's bytes per mailbox of a Blocklist holding `count` timed BLOCKs."""
    import tracemalloc

    from processor.mail.blocklist import Blocklist, command_from_record

    now_ms = int(time.time() * 1000)
    records_ = [
        {
            "command_id": decision_id(
                MailboxKey.of("tenant0", f"user{i}@domain0.example"), 1, "BLOCK"
            ),
            "action": "BLOCK",
            "tenant_id": f"tenant{i % DOMAINS}",
            "mailbox": f"user{i}@domain{i % DOMAINS}.example",
            "at": now_ms,
            "offense": 1,
            "permanent": False,
            "until": now_ms + HOUR_MS,
            "block_sequence": 1,
        }
        for i in range(count)
    ]
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    blocks = Blocklist()
    for record in records_:
        blocks.apply(command_from_record(record))
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / count


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def connect_all(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.setblocking(False)
        socks.append(s)
    return socks


def closed_loop(port: int, connections: int, seconds: float, pool: list[bytes]) -> dict[str, Any]:
    """Each connection sends its next request when its answer arrives."""
    socks = connect_all(port, connections)
    by_fd = {s.fileno(): s for s in socks}
    poller = select.epoll()
    sent_at: dict[int, float] = {}
    buffers: dict[int, bytes] = dict.fromkeys(by_fd, b"")
    latencies: list[float] = []
    actions: collections.Counter[bytes] = collections.Counter()
    n = 0
    for fd, s in by_fd.items():
        poller.register(fd, select.EPOLLIN)
        sent_at[fd] = time.perf_counter()
        s.send(pool[n % len(pool)])
        n += 1
    started = time.perf_counter()
    end = started + seconds
    now = started
    while now < end:
        for fd, _ in poller.poll(0.5):
            data = by_fd[fd].recv(65536)
            buffer = buffers[fd] + data
            now = time.perf_counter()
            if not buffer.endswith(b"\n\n"):
                buffers[fd] = buffer
                continue
            buffers[fd] = b""
            latencies.append(now - sent_at[fd])
            actions[buffer.split(b" ", 1)[0].split(b"\n", 1)[0]] += 1
            sent_at[fd] = now
            by_fd[fd].send(pool[n % len(pool)])
            n += 1
        now = time.perf_counter()
    elapsed = now - started
    poller.close()
    for s in socks:
        s.close()
    latencies.sort()
    return {
        "requests": len(latencies),
        "rate": len(latencies) / elapsed,
        "p50_ms": percentile(latencies, 0.50) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "p999_ms": percentile(latencies, 0.999) * 1000,
        "actions": {k.decode(): v for k, v in actions.items()},
    }


def open_loop(
    port: int, connections: int, seconds: float, rate: float, pool: list[bytes]
) -> dict[str, Any]:
    """`rate` requests/s on whichever connection is free.

    Two latencies per request: from when it was due (what a Postfix arriving at that
    moment would see, the client's own lateness and any backlog included) and from
    when it was actually sent (the gateway and the loopback alone).
    """
    socks = connect_all(port, connections)
    by_fd = {s.fileno(): s for s in socks}
    poller = select.epoll()
    for fd in by_fd:
        poller.register(fd, select.EPOLLIN)
    idle = collections.deque(by_fd)
    due_at: dict[int, float] = {}
    sent_at: dict[int, float] = {}
    buffers: dict[int, bytes] = dict.fromkeys(by_fd, b"")
    from_due: list[float] = []
    from_sent: list[float] = []
    interval = 1.0 / rate
    started = time.perf_counter()
    end = started + seconds
    next_due = started
    n = 0
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        while next_due <= now and idle:
            fd = idle.popleft()
            due_at[fd] = next_due
            sent_at[fd] = time.perf_counter()
            by_fd[fd].send(pool[n % len(pool)])
            n += 1
            next_due += interval
        # Sleep until the next request is due (epoll's resolution is 1 ms, so requests
        # leave in small bursts, up to 1 ms late: counted in the latency from due).
        # Spinning instead would make this core look busy to the scheduler, which
        # would then move the machine's other work onto the gateway's core.
        wait = max(0.0, next_due - time.perf_counter()) if idle else 0.005
        for fd, _ in poller.poll(wait):
            buffer = buffers[fd] + by_fd[fd].recv(65536)
            if not buffer.endswith(b"\n\n"):
                buffers[fd] = buffer
                continue
            buffers[fd] = b""
            answered = time.perf_counter()
            from_due.append(answered - due_at[fd])
            from_sent.append(answered - sent_at[fd])
            idle.append(fd)
    elapsed = time.perf_counter() - started
    poller.close()
    for s in socks:
        s.close()
    from_due.sort()
    from_sent.sort()
    return {
        "requests": len(from_due),
        "rate": len(from_due) / elapsed,
        "p50_ms": percentile(from_due, 0.50) * 1000,
        "p99_ms": percentile(from_due, 0.99) * 1000,
        "p999_ms": percentile(from_due, 0.999) * 1000,
        "max_ms": (from_due[-1] if from_due else float("nan")) * 1000,
        "sent_p50_ms": percentile(from_sent, 0.50) * 1000,
        "sent_p99_ms": percentile(from_sent, 0.99) * 1000,
        "sent_p999_ms": percentile(from_sent, 0.999) * 1000,
    }


def block_to_reject(
    port: int, bootstrap: str, topic: str, codec: Codec, samples: int
) -> list[float]:
    """Seconds from producing a BLOCK to the first REJECT for its mailbox, per sample."""
    producer = bulk_producer(bootstrap, **{"linger.ms": 0})
    probe = socket.create_connection(("127.0.0.1", port))
    probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    results = []
    for i in range(samples):
        mailbox = f"fresh{i}-{time.time_ns()}@domain0.example"
        request = postfix_request(mailbox, i)
        key, value = block_message(codec, "tenant0", mailbox, int(time.time() * 1000))
        started = time.perf_counter()
        producer.produce(topic, value, key)
        producer.poll(0)
        while True:
            probe.sendall(request)
            answer = b""
            while not answer.endswith(b"\n\n"):
                answer += probe.recv(4096)
            if answer.startswith(b"action=REJECT"):
                results.append(time.perf_counter() - started)
                break
            if time.perf_counter() - started > 30:
                raise RuntimeError(f"no REJECT for {mailbox} within 30 s")
            producer.poll(0)
        producer.flush(10)
        time.sleep(0.2)
    probe.close()
    return results


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_queue_wait_seconds(pid: int) -> float:
    """Time the gateway's main thread (the event loop: every answer) has spent runnable
    but waiting for a CPU (schedstat): on a shared machine, the time other work held
    the gateway's core. Its Kafka threads' waits are left out (they wait for the main
    thread too, which is the gateway's own work)."""
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[1]) / 1e9


def gateway_histogram(web_port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/metrics", timeout=5) as response:
        text = response.read().decode()
    lines = [
        line
        for line in text.splitlines()
        if line.startswith("sendguard_gateway_request_duration_seconds_")
        and ("_count" in line or "_sum" in line)
    ]
    return "; ".join(lines)


def start_gateway(args: argparse.Namespace, prefix: str, tenants: Path, log: Path) -> Any:
    command = [
        SENDGUARD,
        "gateway",
        "--listen",
        "127.0.0.1:0",
        "--web-port",
        "0",
        "--tenants",
        str(tenants),
        "--bootstrap",
        args.bootstrap,
        "--topic-prefix",
        prefix,
    ]
    if args.gateway_cpu >= 0:
        command = ["taskset", "-c", str(args.gateway_cpu), *command]
    if args.gateway_nice:
        command = ["nice", "-n", str(args.gateway_nice), *command]
    with open(log, "wb") as stderr:
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True
        )
    assert process.stdout is not None
    line = process.stdout.readline()
    if "serving policy requests on" not in line:
        raise RuntimeError(f"gateway did not start: {line!r}; see {log}")
    policy = line.split("serving policy requests on ", 1)[1].split(" ", 1)[0]
    web = line.rsplit("web on ", 1)[1].rstrip(")\n")
    return process, int(policy.rsplit(":", 1)[1]), int(web.rsplit(":", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--bootstrap", default=os.environ.get("SENDGUARD_BOOTSTRAP", "127.0.0.1:9092")
    )
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=20_000.0)
    parser.add_argument("--blocked", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--gateway-cpu", type=int, default=0, help="-1: do not pin")
    parser.add_argument("--client-cpu", type=int, default=1, help="-1: do not pin")
    parser.add_argument(
        "--gateway-nice",
        type=int,
        default=0,
        help="nice value of the gateway (e.g. -10: its core mostly its own on a busy machine)",
    )
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sendguard-gateway-bench"))
    args = parser.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"load average before: {os.getloadavg()}")
    print(
        f"state: {state_bytes_per_mailbox(100_000):.0f} bytes per blocked mailbox "
        "(tracemalloc, 100,000 timed blocks)"
    )
    names = fresh_names("gwbench")
    create_topics(args.bootstrap, names)
    codec = Codec.from_config()
    tenants = args.workdir / "tenants.yaml"
    tenants.write_text("".join(f"domain{d}.example: tenant{d}\n" for d in range(DOMAINS)))
    now_ms = int(time.time() * 1000)
    blocked = [f"blocked{i}@domain{i % DOMAINS}.example" for i in range(args.blocked)]
    produce_all(
        bulk_producer(args.bootstrap),
        names.control,
        (block_message(codec, f"tenant{i % DOMAINS}", m, now_ms) for i, m in enumerate(blocked)),
    )
    print(f"{args.blocked} BLOCK commands on {names.control}")

    started = time.monotonic()
    process, port, web_port = start_gateway(
        args, names.prefix, tenants, args.workdir / "gateway.log"
    )
    rss_kib = int(
        next(
            line.split()[1]
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines()
            if line.startswith("VmRSS:")
        )
    )
    print(f"gateway resident memory with {args.blocked} blocks: {rss_kib / 1024:.1f} MiB")
    print(
        f"gateway caught up and serving after {time.monotonic() - started:.1f}s "
        f"(pinned to cpu {args.gateway_cpu}); policy port {port}, web port {web_port}"
    )
    if args.client_cpu >= 0:
        os.sched_setaffinity(0, {args.client_cpu})
    try:
        pool = request_pool(blocked)
        closed_loop(port, args.connections, 2.0, pool)  # warm-up
        cpu_before = cpu_seconds(process.pid)
        wait_before = run_queue_wait_seconds(process.pid)
        saturated = closed_loop(port, args.connections, args.seconds, pool)
        saturated["gateway_cpu_s"] = cpu_seconds(process.pid) - cpu_before
        saturated["gateway_waited_s"] = run_queue_wait_seconds(process.pid) - wait_before
        saturated["per_cpu_second"] = saturated["requests"] / max(saturated["gateway_cpu_s"], 1e-9)
        print(
            f"saturation, {args.connections} connections, {args.seconds:.0f}s: "
            f"{saturated['rate']:,.0f} requests/s, the gateway using "
            f"{saturated['gateway_cpu_s']:.2f} CPU-s ({saturated['per_cpu_second']:,.0f} "
            f"requests per CPU-second) and waiting {saturated['gateway_waited_s']:.2f} s for its "
            f"core; latency p50 {saturated['p50_ms']:.3f} ms, "
            f"p99 {saturated['p99_ms']:.3f} ms, p99.9 {saturated['p999_ms']:.3f} ms; "
            f"answers {saturated['actions']}"
        )
        wait_before = run_queue_wait_seconds(process.pid)
        fixed = open_loop(port, args.connections * 2, args.seconds, args.rate, pool)
        fixed["gateway_waited_s"] = run_queue_wait_seconds(process.pid) - wait_before
        print(
            f"fixed rate {args.rate:,.0f}/s over {args.connections * 2} connections: "
            f"achieved {fixed['rate']:,.0f} requests/s; latency from due p50 "
            f"{fixed['p50_ms']:.3f} ms, p99 {fixed['p99_ms']:.3f} ms, p99.9 "
            f"{fixed['p999_ms']:.3f} ms, max {fixed['max_ms']:.3f} ms; from sent p50 "
            f"{fixed['sent_p50_ms']:.3f} ms, p99 {fixed['sent_p99_ms']:.3f} ms, p99.9 "
            f"{fixed['sent_p999_ms']:.3f} ms; the gateway waited "
            f"{fixed['gateway_waited_s']:.2f} s for its core"
        )
        os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
        delays = sorted(block_to_reject(port, args.bootstrap, names.control, codec, args.samples))
        print(
            f"BLOCK produced -> first REJECT, {len(delays)} samples: "
            f"p50 {percentile(delays, 0.5) * 1000:.1f} ms, max {delays[-1] * 1000:.1f} ms"
        )
        print(f"gateway's own histogram: {gateway_histogram(web_port)}")
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)
        delete_topics(args.bootstrap, names)
    print(f"load average after: {os.getloadavg()}")
    print(f"settings: {vars(args)}")
    print(json.dumps({"saturation": saturated, "fixed_rate": fixed, "block_to_reject_s": delays}))


if __name__ == "__main__":
    main()
