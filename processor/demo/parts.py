"""What the demo starts and talks to: the worker process, the broker probe, the API."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from processor.demo.scenario import SupportRelease


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sendguard_command() -> list[str]:
    script = Path(sys.executable).parent / "sendguard"
    if script.exists():
        return [str(script)]
    found = shutil.which("sendguard")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from processor.cli import main; sys.exit(main())"]


def broker_answers(bootstrap: str) -> bool:
    """A Kafka broker (not run by `sendguard kafka`, e.g. docker compose) answers there."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.rpartition(":")
    try:
        # A refused TCP connect answers at once; librdkafka would retry and log each try.
        socket.create_connection((host, int(port)), timeout=2).close()
        AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=3)
        return True
    except Exception:
        return False


@dataclass
class Worker:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def wait_ready(self, timeout_s: float) -> None:
        """Until /ready answers 200. Raises click.ClickException with the log's tail."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise click.ClickException(f"the worker exited early:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise click.ClickException(f"the worker was not ready in {timeout_s:.0f}s:\n{self.tail()}")

    def tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        from processor.local.process_group import stop_process_group

        stop_process_group(self.process)


def release_via_api(url: str, token: str, release: SupportRelease) -> tuple[int, dict[str, Any]]:
    from processor.ops.client import call, mailbox_path

    target = url + mailbox_path(release.tenant_id, release.mailbox) + "/release"
    try:
        return call("POST", target, token, {"reason": release.reason})
    except click.ClickException as error:
        return 0, {"error": error.message}


def scrape_metrics(url: str) -> dict[str, float]:
    """Totals of the worker's main counters and gauges (labels summed)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith(("_created", "_bucket")):
                continue
            totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals
