"""The gateway's state: blocks, directory, and how current they are.

The follower thread decodes records into `Update`s and hands them, in topic order,
to the event loop, which applies them here; a `caught up` mark travels the same
way, after the records it vouches for. So every read and write of the state happens
on the event loop, without locks.

"Age" is the time since the gateway last knew it had read both topics to their end
(see `processor.mail.state_follower`); before it first has, it counts from
start-up, and the state is not ready. Times here are the caller's monotonic
seconds (`time.monotonic()`), passed in: this module has no clock.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from processor.mail.blocklist import ApplyResult, Blocklist, ControlCommand
from processor.mail.policy_answers import format_until
from processor.mail.tenant_resolution import DirectoryIndex

log = logging.getLogger(__name__)

UpdateKind = Literal["command", "forget_mailbox", "directory", "forget_directory"]


@dataclass(frozen=True, slots=True)
class Update:
    """One record's effect: a command to apply, or a (tenant, mailbox) to add or drop."""

    kind: UpdateKind
    tenant_id: str
    mailbox: str
    command: ControlCommand | None = None


class GatewayState:
    """Blocklist + directory index + freshness; applied to from the event loop only."""

    def __init__(
        self,
        started_at: float,
        stale_after_s: float,
        on_command: Callable[[ApplyResult], None] = lambda result: None,
    ) -> None:
        self.blocklist = Blocklist()
        self.directory = DirectoryIndex()
        self.stale_after_s = stale_after_s
        self._started_at = started_at
        self._on_command = on_command
        #: When the gateway last knew it was caught up (None: never yet).
        self.caught_up_at: float | None = None
        #: Set once the initial catch-up is done; from then on commands are logged.
        self.live = False
        self.records = 0

    def apply(self, updates: list[Update]) -> None:
        """Apply a batch of updates in order."""
        for update in updates:
            self.records += 1
            if update.kind == "command":
                assert update.command is not None
                result = self.blocklist.apply(update.command)
                self._on_command(result)
                if self.live and result == "applied":
                    _log_command(update.command)
            elif update.kind == "forget_mailbox":
                self.blocklist.forget(update.tenant_id, update.mailbox)
            elif update.kind == "directory":
                self.directory.put(update.tenant_id, update.mailbox)
            else:
                self.directory.forget(update.tenant_id, update.mailbox)

    def mark_caught_up(self, at: float) -> None:
        """The topics were read to their end as of `at` (never moves back)."""
        if self.caught_up_at is None or at > self.caught_up_at:
            self.caught_up_at = at

    def age_s(self, now: float) -> float:
        """Seconds since the state was last known current (since start-up if never)."""
        since = self.caught_up_at if self.caught_up_at is not None else self._started_at
        return max(0.0, now - since)

    def stale(self, now: float) -> bool:
        """Never caught up, or not for longer than the stale threshold."""
        return self.caught_up_at is None or self.age_s(now) > self.stale_after_s


def _log_command(command: ControlCommand) -> None:
    if command.action == "BLOCK":
        until = (
            "permanently" if command.permanent else f"until {format_until(command.until_ms or 0)}"
        )
        log.info(
            "enforcing BLOCK of %s %s %s (command %s)",
            command.tenant_id,
            command.mailbox,
            until,
            command.command_id,
            extra={
                "event": "gateway_block",
                "tenant_id": command.tenant_id,
                "mailbox": command.mailbox,
                "permanent": command.permanent,
                "until_ms": command.until_ms,
                "command_id": command.command_id,
            },
        )
    else:
        log.info(
            "UNBLOCK of %s %s (command %s)",
            command.tenant_id,
            command.mailbox,
            command.command_id,
            extra={
                "event": "gateway_unblock",
                "tenant_id": command.tenant_id,
                "mailbox": command.mailbox,
                "command_id": command.command_id,
            },
        )
