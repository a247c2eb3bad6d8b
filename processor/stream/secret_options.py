"""The command-line options that carry secrets, shared by `worker` and `produce`.

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

from processor.codec.action_signing import KEYS_ENV, KEYS_FILE_ENV, ActionKeys
from processor.credentials import CredentialError

F = TypeVar("F", bound=Callable[..., Any])

_FILE = click.Path(dir_okay=False, path_type=Path)


def action_keys_options(function: F) -> F:
    """`--action-keys` / `--action-keys-file` (see `processor.codec.action_signing`)."""
    function = click.option(
        "--action-keys-file",
        envvar=KEYS_FILE_ENV,
        show_envvar=True,
        type=_FILE,
        help="File of support action signing keys, `id:secret` per line; the first signs.",
    )(function)
    return click.option(
        "--action-keys",
        envvar=KEYS_ENV,
        show_envvar=True,
        help="Support action signing keys, `id:secret[,id:secret...]`; the first signs, "
        "all verify. Unset: releases are disabled (every support action is dead-lettered).",
    )(function)


def action_keys_from(options: dict[str, Any]) -> ActionKeys:
    """The keys of the parsed options; click.UsageError with the reason when unusable."""
    try:
        return ActionKeys.from_options(options["action_keys"], options["action_keys_file"])
    except CredentialError as error:
        raise click.UsageError(str(error)) from None
