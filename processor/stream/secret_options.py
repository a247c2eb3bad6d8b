"""The command-line options that carry secrets, shared by `worker`, `produce` and
`gateway`.

Each has an environment fallback, and the variable is the better choice: a flag's
value is visible to every user of the machine in the process list. A file
variant lets an orchestrator mount the secret instead of putting it in the
environment.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from processor.codec.action_signing import ActionKeys
from processor.codec.command_signing import CommandKeys
from processor.codec.signing_keys import SigningKeys
from processor.credentials import CredentialError

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(dir_okay=False, path_type=Path)


def _keys_options(keys: type[SigningKeys], flag: str, what: str, unset: str) -> Callable[[F], F]:
    """`--<flag>` and `--<flag>-file` for the key set `keys` (its variables)."""

    def decorate(function: F) -> F:
        function = click.option(
            f"--{flag}-file",
            envvar=keys.FILE_ENV,
            show_envvar=True,
            type=_FILE,
            help=f"File of {what} signing keys, `id:secret` per line; the first signs.",
        )(function)
        return click.option(
            f"--{flag}",
            envvar=keys.ENV,
            show_envvar=True,
            help=f"{what.capitalize()} signing keys, `id:secret[,id:secret...]`; the first "
            f"signs, all verify. Unset: {unset}.",
        )(function)

    return decorate


#: `--action-keys` / `--action-keys-file` (see `processor.codec.action_signing`).
action_keys_options = _keys_options(
    ActionKeys,
    "action-keys",
    "support action",
    "releases are disabled (every support action is dead-lettered)",
)
#: `--control-keys` / `--control-keys-file` (see `processor.codec.command_signing`).
control_keys_options = _keys_options(
    CommandKeys,
    "control-keys",
    "mailbox command",
    "commands are written unsigned (worker) or accepted unsigned (gateway)",
)

K = TypeVar("K", bound=SigningKeys)


def _keys_from(keys: type[K], inline: str | None, file: Path | None) -> K:
    try:
        return keys.from_options(inline, file)
    except CredentialError as error:
        raise click.UsageError(str(error)) from None


def action_keys_from(options: dict[str, Any]) -> ActionKeys:
    """The keys of the parsed options; click.UsageError with the reason when unusable."""
    return _keys_from(ActionKeys, options["action_keys"], options["action_keys_file"])


def control_keys_from(options: dict[str, Any]) -> CommandKeys:
    """The keys of the parsed options; click.UsageError with the reason when unusable."""
    return _keys_from(CommandKeys, options["control_keys"], options["control_keys_file"])
