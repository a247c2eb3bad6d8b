"""Support tokens, one per person: who released a block is who held the token.

The worker reads a file of SHA-256 hashes of tokens and the person each belongs
to; it never holds the tokens themselves, so the file is no secret worth stealing
(a token has at least 128 bits: its hash cannot be searched back). One line each:

    # sha256 of the token                                              actor
    9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08  helpdesk:maria

`sendguard support-token ACTOR --file FILE` makes a token and appends its line.
The file is read again when it changes (checked at most once a second, on use),
so adding or revoking a person needs no restart. A file that can no longer be
read or parsed disables releases until it is fixed (fail closed: the line that
revoked someone must not be ignored because another line is broken); the worker
logs why, and refuses to start on such a file.

A presented token shorter than 128 bits of entropy is refused before it is
looked up, so a weak token in the file can never be used. Hashes are compared
with `hmac.compare_digest` against every line.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import click

from processor.credentials import strength_problem
from processor.limits import MAX_ACTOR

TOKENS_FILE_ENV = "SENDGUARD_SUPPORT_TOKENS_FILE"
#: How often a change of the file is looked for.
CHECK_EVERY_S = 1.0

_LINE = re.compile(r"([0-9a-fA-F]{64})\s+(\S.*)")

log = logging.getLogger(__name__)


class TokenFileError(Exception):
    """The token file cannot be read or has a bad line (the message says which)."""


class TokensUnavailable(Exception):
    """The token file is broken since it was last read well: nobody can be authenticated."""


def token_hash(token: str) -> str:
    """The hex SHA-256 of a token, as the token file holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


def token_line(token: str, actor: str) -> str:
    """The token file line for `token` held by `actor` (no newline)."""
    return f"{token_hash(token)}  {actor}"


def parse_token_file(text: str, source: str) -> dict[str, str]:
    """hash -> actor from the file's text; TokenFileError naming `source` and the line."""
    entries: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _LINE.fullmatch(line)
        if match is None:
            raise TokenFileError(
                f"{source} line {number}: expected '<64 hex digits of sha256> <actor>'"
            )
        digest, actor = match.group(1).lower(), match.group(2).strip()
        if len(actor) > MAX_ACTOR or not actor.isprintable():
            raise TokenFileError(
                f"{source} line {number}: the actor must be printable, at most {MAX_ACTOR}"
            )
        if digest in entries:
            raise TokenFileError(f"{source} line {number}: the same token hash twice")
        entries[digest] = actor
    return entries


@dataclass(frozen=True, slots=True)
class _Stamp:
    """What tells a changed file: replaced (inode), rewritten (mtime, size)."""

    inode: int
    mtime_ns: int
    size: int

    @classmethod
    def of(cls, path: Path) -> _Stamp:
        st = os.stat(path)
        return cls(st.st_ino, st.st_mtime_ns, st.st_size)


class SupportTokens:
    """The people who may release blocks, from a token file kept up to date."""

    def __init__(self, path: Path, clock: Callable[[], float] = time.monotonic) -> None:
        """Reads the file; raises TokenFileError when it is unusable (start-up fails)."""
        self.path = path
        self._clock = clock
        self._stamp, self._entries = self._read()
        self._broken: str | None = None
        self._next_check = clock() + CHECK_EVERY_S

    def __len__(self) -> int:
        return len(self._entries)

    def _read(self) -> tuple[_Stamp, dict[str, str]]:
        try:
            stamp = _Stamp.of(self.path)
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TokenFileError(f"{TOKENS_FILE_ENV}: cannot read {self.path}: {error}") from None
        return stamp, parse_token_file(text, str(self.path))

    def refresh(self) -> None:
        """Read the file again if it changed since it was last read."""
        try:
            changed = _Stamp.of(self.path) != self._stamp
        except OSError:
            changed = True
        if not changed and self._broken is None:
            return
        try:
            self._stamp, self._entries = self._read()
        except TokenFileError as error:
            if self._broken != str(error):
                log.error("support tokens disabled until the file is fixed: %s", error)
            self._broken = str(error)
            self._entries = {}
            return
        if self._broken is not None:
            log.warning("support tokens usable again: %d person(s)", len(self._entries))
        else:
            log.info("support tokens reloaded: %d person(s)", len(self._entries))
        self._broken = None

    def actor_of(self, token: str) -> str | None:
        """The person holding `token`, or None. Raises TokensUnavailable while the file
        is broken."""
        now = self._clock()
        if now >= self._next_check:
            self._next_check = now + CHECK_EVERY_S
            self.refresh()
        if self._broken is not None:
            raise TokensUnavailable(self._broken)
        if strength_problem(token) is not None:
            return None
        digest = token_hash(token)
        found = None
        for candidate, actor in self._entries.items():  # every line: no early exit
            if hmac.compare_digest(candidate, digest):
                found = actor
        return found


def new_token() -> str:
    """A fresh support token: 256 bits, base64url."""
    return secrets.token_urlsafe(32)


@click.command("support-token")
@click.argument("actor")
@click.option(
    "--file",
    "path",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar=TOKENS_FILE_ENV,
    show_envvar=True,
    help="Append the token's line to this token file (the workers pick it up).",
)
def support_token(actor: str, path: Path | None) -> None:
    """Make a support token for ACTOR: the token on stdout (give it to that person,
    once), its line for the workers' token file on stderr or appended to --file."""
    actor = actor.strip()
    if not actor or len(actor) > MAX_ACTOR or not actor.isprintable():
        raise click.BadParameter(f"printable, 1 to {MAX_ACTOR} characters", param_hint="ACTOR")
    token = new_token()
    line = token_line(token, actor)
    if path is None:
        click.echo(line, err=True)
    else:
        if path.exists():
            try:
                known = parse_token_file(path.read_text(encoding="utf-8"), str(path))
            except (OSError, UnicodeDecodeError, TokenFileError) as error:
                raise click.ClickException(str(error)) from None
            if actor in known.values():
                click.echo(f"note: {actor} already has a token in {path}", err=True)
        with path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")
        click.echo(f"appended {actor}'s line to {path}", err=True)
    click.echo(token)
