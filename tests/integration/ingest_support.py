"""`sendguard ingest` as a process, for the tests that POST to it or point rspamd at it."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from worker_support import SENDGUARD, free_port

from processor.local.process_group import stop_process_group

TENANTS_YAML = "acme.example: acme\nglobex.example: globex\n"


class IngestProcess:
    """One `sendguard ingest` on free loopback ports, logging to `<tmp>/<name>.log`."""

    def __init__(
        self, bootstrap: str, prefix: str, tmp: Path, *extra: str, name: str = "ingest"
    ) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.tenants = tmp / "tenants.yaml"
        if not self.tenants.exists():
            self.tenants.write_text(TENANTS_YAML)
        self.port = free_port()
        self.web_port = free_port()
        self.extra = extra
        self.log = tmp / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/rspamd"

    def start(self) -> IngestProcess:
        self.process = subprocess.Popen(
            [
                SENDGUARD,
                "ingest",
                "--bootstrap",
                self.bootstrap,
                "--topic-prefix",
                self.prefix,
                "--tenants",
                str(self.tenants),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--web-port",
                str(self.web_port),
                "--loglevel",
                "debug",
                *self.extra,
            ],
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        return self

    def ops(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET on the operations port."""
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{self.web_port}{path}", timeout=5
            ) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.read().decode()

    def wait_ready(self, timeout_s: float = 30, want: int = 200) -> str:
        """Until /ready answers `want`; returns its body."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"ingest exited:\n{self.log_tail()}")
            try:
                status, last = self.ops("/ready")
                if status == want:
                    return last
            except OSError as error:
                last = str(error)
            time.sleep(0.2)
        raise AssertionError(
            f"ingest /ready not {want} in {timeout_s}s ({last}):\n{self.log_tail()}"
        )

    def post(self, body: bytes, timeout_s: float = 10) -> tuple[int, dict[str, Any]]:
        """(status, JSON answer) of one POST, as rspamd sends it."""
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "text/plain"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def metric(self, line_start: str) -> float:
        """The value of the first /metrics sample line starting with `line_start`."""
        _, text = self.ops("/metrics")
        for line in text.splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"no metric {line_start} in:\n{text}")

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else "(no log)"
        return f"--- {self.log}:\n" + "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)
