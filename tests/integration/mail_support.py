"""A private Debian rspamd and Postfix on loopback, for the mail-loop tests.

Each runs from a temporary directory of its own with its own ports, started in a
session of its own and stopped by its process group: nothing touches a system
instance (/etc/rspamd is only read; /etc/postfix is not used at all).

rspamd is offline: its resolver is pointed at a loopback port where nothing listens
(so no name resolves and no online check or map download leaves the machine), the
online and Redis-backed modules are disabled, and one test rule scores a marker in
the Subject as spam. Its proxy worker is Postfix's milter; metadata_exporter posts
every result to `sendguard ingest`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from worker_support import free_port

from processor.local.process_group import stop_process_group

#: The Subject marker the test rule scores 20 (rspamd's reject threshold is 15).
SPAM_MARKER = "sendguard-test-spam"
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

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

_TEST_RULE = f"""\
-- sendguard's mail-loop test: a Subject marker makes a message spam (score 20 > reject 15).
config['regexp']['SENDGUARD_TEST_SPAM'] = {{
  re = 'Subject=/{SPAM_MARKER}/iH',
  score = 20.0,
  description = 'sendguard test spam marker in the Subject',
  group = 'sendguard_test',
}}
"""


def mail_packages_missing() -> list[str]:
    """The Debian packages (rspamd, postfix) whose programs are not installed."""
    return [
        package
        for package, program in (("rspamd", "rspamd"), ("postfix", "postfix"))
        if shutil.which(program) is None and not Path(f"/usr/sbin/{program}").exists()
    ]


def wait_port(port: int, timeout_s: float, what: str, diagnose: object = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    detail = f"\n{diagnose() if callable(diagnose) else ''}"
    raise AssertionError(f"{what} did not listen on 127.0.0.1:{port} in {timeout_s:.0f}s{detail}")


def _tail(path: Path, lines: int, title: str) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no log)"
    return f"--- {title} ({path}), last {lines} lines:\n" + "\n".join(text.splitlines()[-lines:])


class Rspamd:
    """rspamd 3.4 from its Debian package with a configuration of its own."""

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
            f'bind_socket = "127.0.0.1:{self.normal_port}";\ncount = 1;\n'
        )
        (override / "worker-controller.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.controller_port}";\ncount = 1;\n'
        )
        (override / "worker-proxy.inc").write_text(
            f'bind_socket = "127.0.0.1:{self.proxy_port}";\n'
            "milter = yes;\ncount = 1;\ntimeout = 120s;\n"
            # Scan in the proxy itself: no HTTP hop to the normal worker.
            'upstream "local" {\n  default = yes;\n  self_scan = yes;\n}\n'
        )
        (override / "logging.inc").write_text(
            f'type = "file";\nfilename = "{self.log}";\nlevel = "info";\n'
        )
        local = self.root / "local.d"
        (local / "options.inc").write_text(
            f'dns {{\n  nameserver = ["127.0.0.1:{self.dns_port}"];\n'
            "  timeout = 0.2s;\n  retransmits = 1;\n}\n"
            # Hyperscan's compiled rules take ~10 s to build; keep them between runs.
            f'hs_cache_dir = "{_hyperscan_cache()}";\n'
        )
        for module in _OFFLINE_DISABLED:
            (local / f"{module}.conf").write_text("enabled = false;\n")
        # The operator's snippet from the README, pointed at the test's ingest.
        (local / "metadata_exporter.conf").write_text(
            "rules {\n  SENDGUARD {\n"
            '    backend = "http";\n'
            f'    url = "{exporter_url}";\n'
            '    formatter = "json";\n'
            '    selector = "default";\n'
            "    defer = true;\n"
            "  }\n}\n"
        )
        (self.root / "rspamd.local.lua").write_text(_TEST_RULE)

    def start(self) -> Rspamd:
        root = self.root
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
            stdout=open(self.stdout, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout_s: float = 90) -> None:
        for port, what in ((self.proxy_port, "rspamd proxy"), (self.normal_port, "rspamd")):
            wait_port(port, timeout_s, what, self.log_tail)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.stdout, 10, "rspamd stdout") + "\n" + _tail(self.log, lines, "rspamd")

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

    smtpd listens on a test port with rspamd as its milter and delivers everything to
    `discard`. Loopback clients may use XCLIENT, so a test can act as an authenticated
    user (`LOGIN=`) or an outside client (`ADDR=`). `policy_service` is the
    `host:port` of a Postfix policy server (sendguard gateway), asked about the sender.
    """

    def __init__(self, milter_port: int, policy_service: str | None = None) -> None:
        # Not under pytest's tmp_path: its 0700 parent keeps the postfix user out.
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
                    "inet_interfaces = 127.0.0.1",
                    "inet_protocols = ipv4",
                    "mynetworks = 127.0.0.0/8",
                    "relay_domains = acme.example globex.example",
                    "smtpd_authorized_xclient_hosts = 127.0.0.0/8",
                    "default_transport = discard:sendguard test",
                    "relay_transport = discard:sendguard test",
                    "local_transport = discard:sendguard test",
                    f"smtpd_milters = inet:127.0.0.1:{milter_port}",
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
            f"127.0.0.1:{self.port} inet n - n - - smtpd",
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
        self.process = subprocess.Popen(
            ["postfix", "-c", str(self.conf), "start-fg"],
            stdout=open(self.log, "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_ready(self, timeout_s: float = 30) -> None:
        wait_port(self.port, timeout_s, "postfix smtpd", self.log_tail)

    def log_tail(self, lines: int = 30) -> str:
        return _tail(self.log, lines, "postfix")

    def stop(self) -> None:
        """Stop the master and every Postfix daemon. The master starts a session of its
        own (even in start-fg), so it is stopped through its pid file, not our group."""
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


def new_message(sender: str, recipient: str, subject: str, body: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "sendguard.test")
    message.set_content(body)
    return message


@dataclass(frozen=True)
class Sent:
    """What Postfix answered: 250 accepted, 4xx deferred, 5xx refused; at which step."""

    code: int
    text: str
    step: str  # "data" when accepted, else the SMTP command that was refused

    def __str__(self) -> str:
        return f"{self.code} {self.text} (at {self.step})"


def send(
    port: int,
    sender: str,
    recipient: str,
    *,
    subject: str = "lunch",
    body: str = "Shall we meet at noon?",
    login: str | None = None,
    client_ip: str | None = None,
    message: EmailMessage | None = None,
) -> Sent:
    """One message over SMTP; XCLIENT LOGIN= authenticates it, ADDR= makes it an outside
    one. `message` sends that exact message again (a retry), else a new one is built."""
    message = message if message is not None else new_message(sender, recipient, subject, body)
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        smtp.ehlo("client.sendguard.test")
        attributes = [f"LOGIN={login}"] if login else []
        attributes += [f"ADDR={client_ip}"] if client_ip else []
        if attributes:
            code, text = smtp.docmd("XCLIENT", " ".join(attributes))
            assert code == 220, f"XCLIENT refused: {code} {text!r}"
            smtp.ehlo("client.sendguard.test")
        try:
            smtp.send_message(message, sender, [recipient])
        except smtplib.SMTPRecipientsRefused as refused:
            code, text = refused.recipients[recipient]
            return Sent(code, text.decode(errors="replace"), "rcpt")
        except smtplib.SMTPSenderRefused as refused:
            return Sent(refused.smtp_code, refused.smtp_error.decode(errors="replace"), "mail")
        except smtplib.SMTPDataError as refused:
            return Sent(refused.smtp_code, refused.smtp_error.decode(errors="replace"), "data")
    return Sent(250, "accepted", "data")
