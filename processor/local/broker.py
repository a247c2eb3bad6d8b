"""A single-node Apache Kafka (KRaft) broker for development and tests.

One data directory holds everything one broker owns::

    <data_dir>/
      cluster.id          generated on the first `up`, kept for the life of the directory
      server.properties   written on every `up` from the BrokerConfig
      log4j2.properties   written on every `up`
      kraft/              log.dirs: the metadata log and topic data (formatted once)
      broker.log          everything the JVM and log4j2 print; the previous run's is broker.log.1
      broker.pid          present while the broker runs

The broker is one JVM acting as broker and controller (`process.roles=broker,controller`),
listening on 127.0.0.1 only. `up` is idempotent, `down` stops by PID.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from processor.local.artifacts import KAFKA_VERSION, default_cache_dir, ensure_libs, file_lock
from processor.local.errors import (
    BrokerStartError,
    LocalBrokerError,
    MissingToolError,
    PortInUseError,
)

HOST = "127.0.0.1"
NODE_ID = 1
MIN_JAVA = 17
INSTALL_JAVA = "install OpenJDK 17 (apt-get install openjdk-17-jre-headless)"
LOG_TAIL_LINES = 25


def default_data_dir() -> Path:
    """``$XDG_DATA_HOME/sendguard/kafka``, else ``~/.local/share/sendguard/kafka``."""
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "sendguard" / "kafka"


@dataclass(frozen=True)
class BrokerConfig:
    """Where and how the local broker runs. Ports are on 127.0.0.1."""

    port: int = 9092
    controller_port: int = 9093
    data_dir: Path = field(default_factory=default_data_dir)
    cache_dir: Path = field(default_factory=default_cache_dir)
    kafka_version: str = KAFKA_VERSION
    heap: str = "768m"
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0
    # Extra server.properties entries; they override the single-node defaults.
    extra_properties: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_env(cls) -> BrokerConfig:
        """The configuration the `sendguard kafka` flags fall back to, read from the environment.

        SENDGUARD_KAFKA_PORT, SENDGUARD_KAFKA_CONTROLLER_PORT, SENDGUARD_KAFKA_DATA_DIR,
        SENDGUARD_CACHE_DIR, SENDGUARD_KAFKA_HEAP, SENDGUARD_KAFKA_START_TIMEOUT and
        SENDGUARD_KAFKA_STOP_TIMEOUT (seconds); unset ones keep the defaults.
        """
        env = os.environ
        defaults = cls()

        def number(name: str, default: float, kind: type[int] | type[float]) -> Any:
            raw = env.get(name)
            if raw is None or raw == "":
                return default
            try:
                return kind(raw)
            except ValueError:
                raise LocalBrokerError(f"{name}={raw!r} is not a number") from None

        data_dir = env.get("SENDGUARD_KAFKA_DATA_DIR")
        return cls(
            port=number("SENDGUARD_KAFKA_PORT", defaults.port, int),
            controller_port=number(
                "SENDGUARD_KAFKA_CONTROLLER_PORT", defaults.controller_port, int
            ),
            data_dir=Path(data_dir).expanduser() if data_dir else defaults.data_dir,
            cache_dir=defaults.cache_dir,
            heap=env.get("SENDGUARD_KAFKA_HEAP") or defaults.heap,
            start_timeout_s=number(
                "SENDGUARD_KAFKA_START_TIMEOUT", defaults.start_timeout_s, float
            ),
            stop_timeout_s=number("SENDGUARD_KAFKA_STOP_TIMEOUT", defaults.stop_timeout_s, float),
        )

    @property
    def bootstrap(self) -> str:
        return f"{HOST}:{self.port}"


@dataclass(frozen=True)
class BrokerStatus:
    running: bool
    pid: int | None
    bootstrap: str
    data_dir: Path
    log_file: Path
    kafka_version: str


class LocalBroker:
    """Start, stop and inspect the broker that owns ``config.data_dir``."""

    def __init__(
        self, config: BrokerConfig, progress: Callable[[str], None] = lambda _: None
    ) -> None:
        if config.port == config.controller_port:
            raise LocalBrokerError(
                f"the broker port and the controller port must differ (both are {config.port})"
            )
        self.config = config
        self._progress = progress
        self._process: subprocess.Popen[bytes] | None = None
        # Absolute, so the PID check can find this exact path on the broker's command line.
        data = config.data_dir.expanduser().resolve()
        self.data_dir = data
        self.pid_file = data / "broker.pid"
        self.log_file = data / "broker.log"
        self.properties_file = data / "server.properties"
        self.log4j_file = data / "log4j2.properties"
        self.cluster_id_file = data / "cluster.id"
        self.log_dir = data / "kraft"

    # -- public API ---------------------------------------------------------------------

    def status(self) -> BrokerStatus:
        pid = self._running_pid()
        return BrokerStatus(
            running=pid is not None,
            pid=pid,
            bootstrap=self._running_bootstrap() if pid is not None else self.config.bootstrap,
            data_dir=self.data_dir,
            log_file=self.log_file,
            kafka_version=self.config.kafka_version,
        )

    def up(self) -> bool:
        """Start the broker and wait until it answers Kafka metadata requests.

        Returns True if this call started it, False if it was already running (then
        nothing is changed). Afterwards the broker runs and ``broker.pid`` names it.
        Raises MissingToolError (java/mvn missing), PortInUseError, BrokerStartError
        (exited or not ready in time; the broker is then stopped and its log kept).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Serialises concurrent `up`/`down` on one data dir: the loser sees it running.
        with file_lock(self.data_dir / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                self._progress(
                    f"Kafka is already running at {self._running_bootstrap()} (pid {pid}); "
                    "nothing to do."
                )
                return False
            java = find_java()
            self._check_ports_free()
            libs = ensure_libs(self.config.cache_dir, self.config.kafka_version, self._progress)
            self._write_configs()
            self._format_storage(java, libs)
            self._launch(java, libs)
        self._wait_ready()
        return True

    def down(self) -> bool:
        """Stop the broker by its PID: SIGTERM, then SIGKILL after ``stop_timeout_s``.

        Returns True if a broker was stopped, False if none was running. Afterwards no
        broker of this data dir runs and ``broker.pid`` is gone.
        """
        if not self.data_dir.is_dir():
            return False
        with file_lock(self.data_dir / ".lock"):
            pid = self._running_pid()
            if pid is None:
                self.pid_file.unlink(missing_ok=True)  # stale: its process is gone
                return False
            self._progress(f"Stopping Kafka (pid {pid}) …")
            self._stop(pid)
            self.pid_file.unlink(missing_ok=True)
            return True

    # -- checks -------------------------------------------------------------------------

    def _check_ports_free(self) -> None:
        ports = {"broker": self.config.port, "controller": self.config.controller_port}
        for name, port in ports.items():
            if not port_is_free(port):
                raise PortInUseError(
                    f"{HOST}:{port} (the {name} port) is already in use by another process, "
                    f"not by the broker of {self.data_dir}. Stop that process or choose "
                    "another port (--port/--controller-port, SENDGUARD_KAFKA_PORT/"
                    "SENDGUARD_KAFKA_CONTROLLER_PORT)."
                )

    # -- process identity ---------------------------------------------------------------

    def _running_pid(self) -> int | None:
        """The PID in ``broker.pid`` if that process is alive and is this data dir's broker."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        _reap(pid)
        if not _alive(pid):
            return None
        cmdline = _cmdline(pid)
        # A PID can be reused after a reboot or crash; only a JVM running kafka.Kafka on
        # this data dir's properties file counts. Without /proc we trust the PID file.
        if cmdline is not None and (
            "kafka.Kafka" not in cmdline or str(self.properties_file) not in cmdline
        ):
            return None
        return pid

    def _running_bootstrap(self) -> str:
        # The running broker may have been started with other flags than this config's.
        try:
            text = self.properties_file.read_text()
        except OSError:
            return self.config.bootstrap
        match = re.search(r"^advertised\.listeners=PLAINTEXT://(\S+)$", text, re.MULTILINE)
        return match.group(1) if match else self.config.bootstrap

    # -- start --------------------------------------------------------------------------

    def _write_configs(self) -> None:
        self.properties_file.write_text(render_server_properties(self.config, self.log_dir))
        self.log4j_file.write_text(LOG4J2_PROPERTIES)

    def _cluster_id(self) -> str:
        try:
            existing = self.cluster_id_file.read_text().strip()
        except FileNotFoundError:
            existing = ""
        if existing:
            return existing
        cluster_id = new_cluster_id()
        self.cluster_id_file.write_text(cluster_id + "\n")
        return cluster_id

    def _format_storage(self, java: str, libs: Path) -> None:
        if (self.log_dir / "meta.properties").exists():
            return  # formatted on an earlier `up`; formatting again would be refused
        cluster_id = self._cluster_id()
        self._progress(f"Formatting KRaft storage in {self.log_dir} (cluster id {cluster_id}) …")
        command = [
            java,
            "-Xmx256m",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            f"{libs}/*",
            "kafka.tools.StorageTool",
            "format",
            "--config",
            str(self.properties_file),
            "--cluster-id",
            cluster_id,
            "--standalone",
        ]
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            raise BrokerStartError(
                f"formatting the KRaft storage in {self.log_dir} failed "
                f"(exit {result.returncode}):\n{(result.stdout + result.stderr).strip()}"
            )

    def _launch(self, java: str, libs: Path) -> None:
        if self.log_file.exists():
            self.log_file.replace(self.log_file.with_name(self.log_file.name + ".1"))
        command = [
            java,
            f"-Xmx{self.config.heap}",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.log4j_file}",
            "-cp",
            f"{libs}/*",
            "kafka.Kafka",
            str(self.properties_file),
        ]
        self._progress(
            f"Starting Kafka {self.config.kafka_version} at {self.config.bootstrap}, "
            f"log {self.log_file} …"
        )
        with self.log_file.open("ab") as log:
            # Own session: Ctrl-C in the shell that ran `up` must not stop the broker.
            # Output goes to the log only, so `$(sendguard kafka up)` never waits on it.
            self._process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        self.pid_file.write_text(f"{self._process.pid}\n")

    def _wait_ready(self) -> None:
        assert self._process is not None
        pid = self._process.pid
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            if self._process.poll() is not None:
                self.pid_file.unlink(missing_ok=True)
                raise BrokerStartError(
                    f"Kafka exited with code {self._process.returncode} while starting; "
                    f"see {self.log_file}. Its last lines:\n{self._log_tail()}"
                )
            if _accepts_tcp(self.config.port) and _answers_metadata(self.config.bootstrap):
                self._progress(f"Kafka is ready at {self.config.bootstrap} (pid {pid}).")
                return
            if time.monotonic() > deadline:
                self._stop(pid)
                self.pid_file.unlink(missing_ok=True)
                raise BrokerStartError(
                    f"Kafka did not accept connections at {self.config.bootstrap} within "
                    f"{self.config.start_timeout_s:g} s and was stopped; see {self.log_file}. "
                    f"Its last lines:\n{self._log_tail()}"
                )
            time.sleep(0.25)

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").splitlines()
        except OSError:
            return "(no log written)"
        return "\n".join(lines[-LOG_TAIL_LINES:]) or "(log is empty)"

    # -- stop ---------------------------------------------------------------------------

    def _stop(self, pid: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # Kafka shuts down cleanly on SIGTERM
        if self._wait_gone(pid, self.config.stop_timeout_s):
            return
        self._progress(
            f"Kafka (pid {pid}) did not stop within {self.config.stop_timeout_s:g} s; killing it."
        )
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        if not self._wait_gone(pid, 10.0):
            raise LocalBrokerError(f"Kafka (pid {pid}) survived SIGKILL; stop it by hand.")

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process is not None and self._process.pid == pid:
                self._process.poll()  # reaps our own child so it does not linger as a zombie
            else:
                _reap(pid)
            if not _alive(pid):
                return True
            time.sleep(0.1)
        return False


# -- configuration files ----------------------------------------------------------------


def render_server_properties(config: BrokerConfig, log_dir: Path) -> str:
    settings: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": str(NODE_ID),
        # Dynamic (KIP-853) quorum of one voter, as `kafka-storage format --standalone` sets up.
        "controller.quorum.bootstrap.servers": f"{HOST}:{config.controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{config.port},CONTROLLER://{HOST}:{config.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{config.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": str(log_dir),
        "num.partitions": "1",
        # One node: every replication factor and min ISR must be 1 or internal topics
        # (offsets, transactions, share groups) can never be created.
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Fewer __consumer_offsets partitions than the default 50: the first consumer
        # group of a test run then waits less for the coordinator to load.
        "offsets.topic.num.partitions": "10",
        # Consumers in tests join at once instead of waiting 3 s for more members.
        "group.initial.rebalance.delay.ms": "0",
    }
    settings.update(config.extra_properties)
    lines = ["# Generated by `sendguard kafka up` on every start; edits are overwritten."]
    lines += [f"{key}={value}" for key, value in settings.items()]
    return "\n".join(lines) + "\n"


# Console only: the JVM's stdout is the log file, so log4j2 output and JVM errors
# (a bad -Xmx, a crash) end up in one place that error messages can point at.
LOG4J2_PROPERTIES = """\
# Generated by `sendguard kafka up`.
status = warn
appender.out.type = Console
appender.out.name = out
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.out.ref = out
# Per-request and state-change chatter that buries the useful lines.
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.statechange.name = state.change.logger
logger.statechange.level = WARN
"""


def new_cluster_id() -> str:
    """A random cluster id in Kafka's Uuid text form (22 chars of unpadded base64url)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        # Kafka avoids ids starting with "-": a command line would read them as a flag.
        if not text.startswith("-"):
            return text


# -- tools and ports -------------------------------------------------------------------


def find_java() -> str:
    """Path of a Java 17+ `java`: $JAVA_HOME/bin/java if set, else the one on PATH.

    Raises MissingToolError naming the package to install.
    """
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise MissingToolError(
            f"Kafka needs Java {MIN_JAVA}+ but `java` is not on PATH: {INSTALL_JAVA}."
        )
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
    except OSError as exc:
        raise MissingToolError(f"`{java}` cannot be run ({exc}): {INSTALL_JAVA}.") from exc
    major = java_major_version(result.stderr + result.stdout)
    if major is None or major < MIN_JAVA:
        raise MissingToolError(
            f"Kafka needs Java {MIN_JAVA}+ but `{java}` is "
            f"{'of unknown version' if major is None else f'Java {major}'}: {INSTALL_JAVA}."
        )
    return java


def java_major_version(version_output: str) -> int | None:
    """17 for `openjdk version "17.0.15"`, 8 for `java version "1.8.0_392"`."""
    match = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if match is None:
        return None
    first = int(match.group(1))
    return int(match.group(2) or 0) if first == 1 else first


def port_is_free(port: int) -> bool:
    """Whether a listener could bind 127.0.0.1:port right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # Like Kafka's own listener: a port left in TIME_WAIT by a stopped broker is free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=1.0):
            return True
    except OSError:
        return False


def _answers_metadata(bootstrap: str) -> bool:
    # Imported here so that `sendguard --help` and `sendguard kafka status` stay fast.
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    # log_level 3 keeps librdkafka quiet about the refused connections of a starting broker.
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 3})
    try:
        metadata = admin.list_topics(timeout=5)
    except KafkaException:
        return False
    # A registered, unfenced broker is what clients need, not just an open socket.
    return len(metadata.brokers) > 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by another user
    # A zombie (exited, not yet reaped by its parent) still answers signal 0.
    stat = _proc_stat_state(pid)
    return stat != "Z"


def _reap(pid: int) -> None:
    # If the broker is a child of this process (tests), collect its exit status.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return None if not Path("/proc/self").exists() else []
    except OSError:
        return None
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _proc_stat_state(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Format: "pid (comm) S ..."; comm may contain spaces and parentheses.
    return stat.rsplit(")", 1)[-1].split()[0]
