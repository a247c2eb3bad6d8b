"""The mail side of sendguard on one machine, wired as the README wires it:

    Postfix ──milter──► rspamd ──metadata_exporter──► sendguard ingest ──► mail.verdicts
       │                                                                 (the worker)
       └──check_policy_service──► sendguard gateway ◄── mailbox.control ◄──┘

`MailServices` starts and stops the four for one deployment's topics (a topic prefix on
a broker); the worker is the caller's. `sendguard demo`'s mail loop and
tests/integration/test_mail_loop.py both run it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from processor.codec.command_signing import KEYS_ENV as CONTROL_KEYS_ENV
from processor.local.mailstack import SPAM_MARKER, Postfix, Rspamd
from processor.local.sendguard_services import GatewayProcess, IngestProcess, tenants_file


class MailServices:
    """sendguard ingest, rspamd (exporting to it), sendguard gateway, and Postfix (rspamd
    as its milter, the gateway as its policy service), under `workdir`."""

    def __init__(
        self, bootstrap: str, prefix: str, workdir: Path, control_keys: str | None = None
    ) -> None:
        """`control_keys` (`id:secret`, the worker's SENDGUARD_CONTROL_KEYS): the gateway
        enforces only commands they signed. None: it enforces every command."""
        workdir.mkdir(parents=True, exist_ok=True)
        tenants = tenants_file(workdir)
        self.ingest = IngestProcess(bootstrap, prefix, workdir, tenants=tenants)
        self.rspamd = Rspamd(workdir / "rspamd", self.ingest.url)
        keys = {CONTROL_KEYS_ENV: control_keys} if control_keys else None
        self.gateway = GatewayProcess(bootstrap, prefix, workdir, tenants=tenants, env=keys)
        self.postfix: Postfix | None = None  # made once the gateway's port is known

    @property
    def smtp_port(self) -> int:
        assert self.postfix is not None, "start() first"
        return self.postfix.port

    def start(self, progress: Callable[[str], object] = print, timeout_s: float = 90) -> None:
        """Starts all four and returns once each serves; `progress` gets one line per
        part. Raises ServiceStartError (with its log) when one does not; `stop` then
        stops the ones that did start."""
        self.ingest.start()
        self.rspamd.start()
        self.gateway.launch()
        self.gateway.wait_serving(timeout_s)
        progress(
            f"gateway: Postfix policy service on {self.gateway.policy_service}, "
            "following mailbox.control"
        )
        self.postfix = Postfix(self.rspamd.proxy_port, self.gateway.policy_service).start()
        self.ingest.wait_ready(timeout_s)
        progress(f"ingest:  {self.ingest.url} takes rspamd's results, writes mail.verdicts")
        self.rspamd.wait_ready(timeout_s)
        progress(
            f"rspamd:  milter on 127.0.0.1:{self.rspamd.proxy_port}, offline; a Subject with "
            f"{SPAM_MARKER!r} scores 20 (reject at 15)"
        )
        self.postfix.wait_ready(timeout_s)
        progress(
            f"Postfix: SMTP on 127.0.0.1:{self.postfix.port}, rspamd as milter, "
            "the gateway as check_policy_service"
        )

    def ports(self) -> dict[str, int]:
        """Every port the services listen on, by what listens there."""
        ports = {
            "sendguard ingest": self.ingest.port,
            "sendguard ingest web": self.ingest.web_port,
            "sendguard gateway": self.gateway.port,
            "sendguard gateway web": self.gateway.web_port,
            "rspamd proxy": self.rspamd.proxy_port,
            "rspamd": self.rspamd.normal_port,
            "rspamd controller": self.rspamd.controller_port,
        }
        if self.postfix is not None:
            ports["postfix smtpd"] = self.postfix.port
        return ports

    def diagnose(self) -> str:
        """The tails of every part's log."""
        parts = [self.ingest.log_tail(), self.rspamd.log_tail(), self.gateway.log_tail()]
        if self.postfix is not None:
            parts.append(self.postfix.log_tail())
        return "\n".join(parts)

    def stop(self) -> None:
        """Stops every part that was started, Postfix first. Each is tried even when one
        before it fails; the first failure is raised afterwards."""
        parts: list[Callable[[], None]] = [self.gateway.stop, self.rspamd.stop, self.ingest.stop]
        if self.postfix is not None:
            parts.insert(0, self.postfix.stop)
        failures: list[Exception] = []
        for stop in parts:
            try:
                stop()
            except Exception as error:  # stop the others all the same
                failures.append(error)
        if failures:
            raise failures[0]
