"""A private Debian rspamd and Postfix on loopback, for `sendguard demo`'s mail loop and
the mail-loop tests.

Each runs from a directory of its own with its own ports, started in a session of its
own and stopped by its process group: nothing touches a system instance (/etc/rspamd
is only read; /etc/postfix is not used at all). Both need root: Postfix's master runs
as root, and rspamd is told to stay root (`-u root`) so it can read its directories.

rspamd is offline: its resolver is pointed at a loopback port where nothing listens
(so no name resolves and no online check or map download leaves the machine), the
online and Redis-backed modules are disabled, and one rule scores a marker in the
Subject as spam (rspamd 3.4 never exports GTUBE mail, see the README). Its proxy
worker is Postfix's milter; metadata_exporter posts every result to `sendguard ingest`
(the README's snippet, `defer = true`).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from processor.local.process_group import stop_process_group
from processor.local.service_tools import HOST, free_port, http_get, log_tail, wait_port

#: The Subject marker the rule scores 20 (rspamd's reject threshold is 15).
SPAM_MARKER = "sendguard-test-spam"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
#: The Debian packages the mail loop runs, and the program each installs.
MAIL_PACKAGES = (("rspamd", "rspamd"), ("postfix", "postfix"))

#: Modules that reach the network, need Redis, or load maps from URLs: off.
_OFFLINE_DISABLED = [
    "arc",
    "asn",
    "dkim",
    "dkim_signing",
    "dmarc",
    "emails",
    "fuzzy_check",
    "greylist",
    "history_redis",
    "mid",
    "mime_types",
    "multimap",
    "mx_check",
    "neural",
    "phishing",
    "ratelimit",
    "rbl",
    "replies",
    "reputation",
    "rspamd_update",
    "spf",
    "surbl",
    "url_redirector",
    "whitelist",
]

_SPAM_RULE = f"""\
-- sendguard's mail loop: a Subject marker makes a message spam (score 20 > reject 15).
config['regexp']['SENDGUARD_TEST_SPAM'] = {{
  re = 'Subject=/{SPAM_MARKER}/iH',
  score = 20.0,
  description = 'sendguard test spam marker in the Subject',
  group = 'sendguard_test',
}}
"""


def mail_packages_missing(search_path: str | None = None) -> list[str]:
    """The Debian packages (rspamd, postfix) whose programs are not on `search_path`
    (default: $PATH and /usr/sbin, where Debian puts postfix and root's PATH may not)."""
    if search_path is None:
        search_path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin"])
    return [
        package
        for package, program in MAIL_PACKAGES
        if shutil.which(program, path=search_path) is None
    ]


class Rspamd:
    """rspamd 3.4 from its Debian package with a configuration of its own under `root`."""

    def __init__(self, root: Path, exporter_url: str) -> None:
        self.root = root
        self.normal_port = free_port()
        self.proxy_port = free_port()
        self.controller_port = free_port()
        self.dns_port = free_port()  # nothing listens there: every lookup fails at once
        self.log = root / "log" / "rspamd.log"
        self.stdout = root / "rspamd.stdout"
        self.process: subprocess.Popen[bytes] | None = None
        self._write_config(exporter_url)

    def _write_config(self, exporter_url: str) -> None:
        for sub in ("local.d", "override.d", "run", "db", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        override = self.root / "override.d"
        (override / "worker-normal.inc").write_text(
            f'bind_socket = "{HOST}:{self.normal_port}";\ncount = 1;\n'
        )
        (override / "worker-controller.inc").write_text(
            f'bind_socket = "{HOST}:{self.controller_port}";\ncount = 1;\n'
        )
        (override / "worker-proxy.inc").write_text(
            f'bind_socket = "{HOST}:{self.proxy_port}";\n'
            "milter = yes;\ncount = 1;\ntimeout = 120s;\n"
            # Scan in the proxy itself: no HTTP hop to the normal worker.
            'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n'
        )
        (override / "logging.inc").write_text(
            f'type = "file";\nfilename = "{self.log}";\nlevel = "info";\n'
        )
        local = self.root / "local.d"
        (local / "options.inc").write_text(
            f'dns {{\n  nameserver = ["{HOST}:{self.dns_port}"];\n'
            "  timeout = 0.2s;\n  retransmits = 1;\n}\n"
            # Hyperscan's compiled rules take ~10 s to build; keep them between runs.
            f'hs_cache_dir = "{_hyperscan_cache()}";\n'
        )
        for module in _OFFLINE_DISABLED:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        # The operator's snippet from the README, pointed at this loop's ingest.
        (local / "metadata_exporter.conf").write_text(
            "rules {\n  SENDGUARD {\n"
            '    backend = "http";\n'
            f'    url = "{exporter_url}";\n'
            '    formatter = "json";\n'
            '    selector = "default";\n'
            "    defer = true;\n"
            "  }\n}\n"
        )
        (self.root / "rspamd.local.lua").write_text(_SPAM_RULE)

    def start(self) -> Rspamd:
        """Starts it (not waiting); `wait_ready` waits."""
        root = self.root
        with open(self.stdout, "ab") as stdout:
            self.process = subprocess.Popen(
                [
                    "rspamd",
                    "-f",
                    "-u",
                    "root",
                    "-g",
                    "root",
                    "-c",
                    "/etc/rspamd/rspamd.conf",
                    f"--var=LOCAL_CONFDIR={root}",
                    f"--var=RUNDIR={root / 'run'}",
                    f"--var=DBDIR={root / 'db'}",
                    f"--var=LOGDIR={root / 'log'}",
                ],
                stdout=stdout,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout_s: float = 90) -> None:
        """Returns once the proxy (the milter) and the scanner listen. Raises
        ServiceStartError with the log's tail otherwise."""
        for port, what in ((self.proxy_port, "rspamd proxy"), (self.normal_port, "rspamd")):
            wait_port(port, timeout_s, what, self.log_tail)

    def scan_result(self, message_id: str) -> dict[str, Any] | None:
        """rspamd's own record of the scan of the message with this Message-ID (its
        controller's /history row: action, score, required_score, symbols), or None if
        it has none (not scanned yet, or never: refused before DATA)."""
        wanted = message_id.strip().strip("<>")
        try:
            status, body = http_get(f"http://{HOST}:{self.controller_port}/history", 3)
            rows = json.loads(body) if status == 200 else []
        except (OSError, ValueError):
            return None
        if isinstance(rows, dict):  # newer rspamd versions wrap the rows
            rows = rows.get("rows", [])
        for row in rows:
            if isinstance(row, dict) and str(row.get("id", "")).strip("<>") == wanted:
                return row
        return None

    def log_tail(self, lines: int = 30) -> str:
        return (
            log_tail(self.stdout, 10, "rspamd stdout") + "\n" + log_tail(self.log, lines, "rspamd")
        )

    def stop(self) -> None:
        if self.process is not None:
            stop_process_group(self.process, grace_s=10)


def _hyperscan_cache() -> Path:
    base = Path(os.environ.get("SENDGUARD_CACHE_DIR", Path.home() / ".cache" / "sendguard"))
    path = base / "rspamd-hyperscan"
    path.mkdir(parents=True, exist_ok=True)
    return path


class Postfix:
    """A private Postfix instance: its own config, queue and data directories.

    smtpd listens on a port of its own with rspamd as its milter and delivers
    everything to `discard`. Loopback clients may use XCLIENT, so a client can act as
    an authenticated user (`LOGIN=`) or an outside client (`ADDR=`). `policy_service`
    is the `host:port` of a Postfix policy server (sendguard gateway), asked about the
    sender with the README's lines. Mail to `relay_domains` is accepted from anyone,
    mail elsewhere only from loopback (the tenants' own users).
    """

    def __init__(
        self,
        milter_port: int,
        policy_service: str | None = None,
        relay_domains: tuple[str, ...] = ("acme.example", "globex.example"),
    ) -> None:
        # Not under a 0700 directory (pytest's tmp_path is one): the postfix user
        # must reach its data directory.
        self.root = Path(tempfile.mkdtemp(prefix="sendguard-postfix-"))
        self.root.chmod(0o755)
        self.port = free_port()
        self.conf = self.root / "conf"
        self.log = self.root / "maillog"
        self.process: subprocess.Popen[bytes] | None = None
        for sub in ("conf", "queue", "data"):
            (self.root / sub).mkdir()
        postfix = pwd.getpwnam("postfix")
        os.chown(self.root / "data", postfix.pw_uid, postfix.pw_gid)
        # As the README's "Enforce it in Postfix" says: the gateway judges the sender
        # before any permit_*, and a gateway that does not answer defers the mail.
        policy = (
            [
                f"smtpd_sender_restrictions = check_policy_service inet:{policy_service}",
                "smtpd_policy_service_default_action = 451 4.3.5 Server configuration problem",
                "smtpd_policy_service_timeout = 10s",
            ]
            if policy_service
            else []
        )
        (self.conf / "main.cf").write_text(
            "\n".join(
                [
                    "compatibility_level = 3.6",
                    f"queue_directory = {self.root / 'queue'}",
                    f"data_directory = {self.root / 'data'}",
                    "maillog_file = /dev/stdout",
                    "myhostname = mx.sendguard.test",
                    "mydestination =",
                    f"inet_interfaces = {HOST}",
                    "inet_protocols = ipv4",
                    "mynetworks = 127.0.0.0/8",
                    f"relay_domains = {' '.join(relay_domains)}",
                    "smtpd_authorized_xclient_hosts = 127.0.0.0/8",
                    "default_transport = discard:sendguard test",
                    "relay_transport = discard:sendguard test",
                    "local_transport = discard:sendguard test",
                    f"smtpd_milters = inet:{HOST}:{milter_port}",
                    "milter_default_action = tempfail",
                    "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
                    *policy,
                    "smtputf8_enable = no",
                    "biff = no",
                    "",
                ]
            )
        )
        services = [
            f"{HOST}:{self.port} inet n - n - - smtpd",
            "cleanup unix n - n - 0 cleanup",
            "qmgr unix n - n 300 1 qmgr",
            "rewrite unix - - n - - trivial-rewrite",
            "bounce unix - - n - 0 bounce",
            "defer unix - - n - 0 bounce",
            "trace unix - - n - 0 bounce",
            "verify unix - - n - 1 verify",
            "flush unix n - n 1000? 0 flush",
            "proxymap unix - - n - - proxymap",
            "showq unix n - n - - showq",
            "error unix - - n - - error",
            "retry unix - - n - - error",
            "discard unix - - n - - discard",
            "anvil unix - - n - 1 anvil",
            "scache unix - - n - 1 scache",
            "postlog unix-dgram n - n - 1 postlogd",
        ]
        (self.conf / "master.cf").write_text("\n".join(services) + "\n")

    def start(self) -> Postfix:
        """Starts it (not waiting); `wait_ready` waits."""
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                ["postfix", "-c", str(self.conf), "start-fg"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        """Returns once smtpd listens. Raises ServiceStartError with the log's tail."""
        wait_port(self.port, timeout_s, "postfix smtpd", self.log_tail)

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log, lines, "postfix")

    def stop(self) -> None:
        """Stop the master and every Postfix daemon, and remove its directories. The
        master starts a session of its own (even in start-fg), so it is stopped through
        its pid file, not our process group."""
        if self.process is not None:
            master = self._master_pid()
            subprocess.run(
                ["postfix", "-c", str(self.conf), "stop"], capture_output=True, timeout=30
            )
            deadline = time.monotonic() + 15
            while master is not None and _alive(master) and time.monotonic() < deadline:
                time.sleep(0.1)
            if master is not None and _alive(master):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(master, signal.SIGKILL)
            stop_process_group(self.process, grace_s=10)
        shutil.rmtree(self.root, ignore_errors=True)

    def _master_pid(self) -> int | None:
        try:
            return int((self.root / "queue" / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie of ours still answers kill(0); it has stopped all the same.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state != "Z"
