"""`sendguard ingest` and `sendguard gateway` as child processes on loopback, for the
mail demo and the tests: started in a session of their own, logging to files under a
work directory, stopped with everything they started."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from processor.local.errors import ServiceStartError
from processor.local.process_group import stop_process_group
from processor.local.service_tools import HOST, free_port, http_get, log_tail, wait_until

#: The tenant map of the mail loop: the domains of its users.
TENANTS_YAML = "acme.example: acme\nglobex.example: globex\n"


def sendguard_command() -> list[str]:
    """How to run this installation's `sendguard` (the venv's script when there is one)."""
    script = Path(sys.executable).parent / "sendguard"
    if script.exists():
        return [str(script)]
    found = shutil.which("sendguard")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from processor.cli import main; sys.exit(main())"]


def tenants_file(workdir: Path) -> Path:
    """`<workdir>/tenants.yaml`, written with TENANTS_YAML unless it exists."""
    path = workdir / "tenants.yaml"
    if not path.exists():
        path.write_text(TENANTS_YAML)
    return path


class ServiceProcess:
    """One sendguard subcommand in a session of its own, on the broker at `bootstrap`
    with topics under `prefix` and the tenant map `tenants` (TENANTS_YAML by default);
    stderr (its JSON log lines) to `<workdir>/<name>.log`, stdout to
    `<workdir>/<name>.out`. `extra` arguments go at the end of its command line, `env`
    into its environment."""

    #: The name of its log files unless the caller gives one.
    NAME = "service"

    def __init__(
        self,
        bootstrap: str,
        prefix: str,
        workdir: Path,
        *extra: str,
        name: str | None = None,
        tenants: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.name = name or self.NAME
        self.env = env or {}
        self.log = workdir / f"{self.name}.log"
        self.out = workdir / f"{self.name}.out"
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.tenants = tenants if tenants is not None else tenants_file(workdir)
        self.extra = extra
        self.port = 0
        self.web_port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def _launch(self, argv: list[str]) -> None:
        with open(self.log, "ab") as log, open(self.out, "ab") as out:
            self.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=log,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
            )

    def _check_running(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise ServiceStartError(f"sendguard {self.name} exited:\n{self.log_tail()}")

    def ops(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET on its web port (/health, /ready, /metrics). Raises
        OSError when it does not answer."""
        return http_get(f"http://{HOST}:{self.web_port}{path}")

    def metric(self, name: str, **labels: str) -> float:
        """The value of the /metrics sample `name` with exactly these labels. Raises
        KeyError when there is none."""
        from prometheus_client.parser import text_string_to_metric_families

        _, text = self.ops("/metrics")
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return float(sample.value)
        raise KeyError(f"no sample {name}{labels} on sendguard {self.name}'s /metrics")

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines, f"sendguard {self.name}")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process)


class IngestProcess(ServiceProcess):
    """`sendguard ingest` on free loopback ports (chosen here, so `url` is known before
    it starts: rspamd's configuration names it)."""

    NAME = "ingest"

    def __init__(self, *args: Any, **options: Any) -> None:
        """As ServiceProcess, with both ports chosen now."""
        super().__init__(*args, **options)
        self.port = free_port()
        self.web_port = free_port()

    @property
    def url(self) -> str:
        """Where rspamd's metadata_exporter posts."""
        return f"http://{HOST}:{self.port}/rspamd"

    def start(self) -> IngestProcess:
        """Starts it (again, on the same ports, after `stop`); `wait_ready` waits."""
        # fmt: off
        self._launch([
            *sendguard_command(), "ingest", "--bootstrap", self.bootstrap,
            "--topic-prefix", self.prefix, "--tenants", str(self.tenants),
            "--listen", f"{HOST}:{self.port}", "--web-port", str(self.web_port),
            "--loglevel", "debug", *self.extra,
        ])
        # fmt: on
        return self

    def wait_ready(self, timeout_s: float = 30, want: int = 200) -> str:
        """Returns /ready's body once it answers `want`. Raises ServiceStartError if the
        process exits or it does not within `timeout_s`."""
        last = {"body": "no answer"}

        def answered() -> bool:
            self._check_running()
            try:
                status, last["body"] = self.ops("/ready")
            except OSError as error:
                last["body"] = str(error)
                return False
            return status == want

        wait_until(
            answered, timeout_s, f"sendguard ingest /ready to answer {want}", diagnose=self.log_tail
        )
        return last["body"]


class GatewayProcess(ServiceProcess):
    """`sendguard gateway` on ports it picks itself (`--listen 127.0.0.1:0 --web-port
    0`, no race for a port), known once it prints its serving line."""

    SERVING = "gateway serving policy requests on "

    NAME = "gateway"

    def launch(self) -> GatewayProcess:
        """Starts it without waiting; `wait_serving` waits."""
        self.out.write_bytes(b"")  # the serving line of this start, not of an earlier one
        # fmt: off
        self._launch([
            *sendguard_command(), "gateway", "--listen", f"{HOST}:0", "--web-port", "0",
            "--tenants", str(self.tenants), "--bootstrap", self.bootstrap,
            "--topic-prefix", self.prefix, *self.extra,
        ])
        # fmt: on
        return self

    def wait_serving(self, timeout_s: float = 60) -> GatewayProcess:
        """Returns once it has read mailbox.control to its end and serves (its ports
        then known). Raises ServiceStartError if it exits or does not in time."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self._check_running()
            line = self.out.read_text(errors="replace").split("\n", 1)[0]
            if line.startswith(self.SERVING) and "web on " in line:
                # "... on 127.0.0.1:PORT (caught up: ...; web on 127.0.0.1:WEB_PORT)"
                self.port = int(line.removeprefix(self.SERVING).split(" ", 1)[0].rsplit(":", 1)[1])
                self.web_port = int(line.rsplit(":", 1)[1].rstrip(")"))
                return self
            time.sleep(0.1)
        raise ServiceStartError(
            f"sendguard gateway was not serving after {timeout_s:.0f}s:\n{self.log_tail()}"
        )

    def start(self, timeout_s: float = 60) -> GatewayProcess:
        """`launch`, then `wait_serving`."""
        return self.launch().wait_serving(timeout_s)

    @property
    def policy_service(self) -> str:
        """What Postfix's check_policy_service names (after `wait_serving`)."""
        return f"{HOST}:{self.port}"

    def ready(self) -> tuple[int, dict[str, Any]]:
        """/ready's status and JSON body (`blocked`: timed and permanent blocks in force)."""
        status, body = self.ops("/ready")
        return status, json.loads(body)
