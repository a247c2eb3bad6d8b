"""The `sendguard` command.

Subcommands live in their own modules and are imported only when invoked, so
`sendguard --help` and `sendguard simulate` never import Faust or the Kafka clients.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

# name -> "module:attribute" of a click.Command; the module is imported on first use.
COMMANDS: dict[str, tuple[str, str]] = {
    "kafka": ("processor.local.commands:kafka", "Run a local single-node Kafka broker."),
    "topics": ("processor.stream.topic_admin:topics", "Create and check the topics."),
    "simulate": ("processor.simulate:simulate", "Replay a scenario through the policy."),
    "worker": ("processor.stream.commands:worker", "Run the live Faust worker."),
    "produce": ("processor.tools.produce:produce", "Publish a scenario file to Kafka."),
    "tail": ("processor.tools.tail:tail", "Print a topic's records as JSON lines."),
    "demo": ("processor.demo.run:demo", "Show sendguard working on the local broker."),
    "status": ("processor.ops.client:status", "Show a mailbox's state (worker API)."),
    "release": ("processor.ops.client:release", "Release a permanently blocked mailbox."),
    "ingest": ("processor.mail.ingest_command:ingest", "Turn rspamd scan results into verdicts."),
    "support-token": (
        "processor.ops.support_tokens:support_token",
        "Make a personal support token.",
    ),
    "gateway": (
        "processor.mail.gateway_command:gateway",
        "Postfix policy service: reject mail from blocked mailboxes.",
    ),
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [name for name in COMMANDS if self._available(name)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS or not self._available(cmd_name):
            return None
        target, _ = COMMANDS[cmd_name]
        module_name, attribute = target.split(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Help text comes from the table, so listing commands imports nothing.
        rows = [(name, COMMANDS[name][1]) for name in self.list_commands(ctx)]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    @staticmethod
    def _available(name: str) -> bool:
        module_name = COMMANDS[name][0].split(":")[0]
        try:
            return importlib.util.find_spec(module_name) is not None
        except ModuleNotFoundError:  # the parent package is not there either
            return False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sendguard")
def cli() -> None:
    """sendguard: block mailboxes that send spam or viruses, from Kafka verdicts."""


def main(argv: list[str] | None = None) -> Any:
    return cli.main(args=argv, prog_name="sendguard")
