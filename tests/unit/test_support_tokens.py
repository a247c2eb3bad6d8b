"""Personal support tokens: hashes in a file, read again on change, fail closed."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest
from click.testing import CliRunner

from processor.ops.support_tokens import (
    CHECK_EVERY_S,
    SupportTokens,
    TokenFileError,
    TokensUnavailable,
    parse_token_file,
    support_token,
    token_hash,
    token_line,
)

MARIA, SAM = secrets.token_urlsafe(32), secrets.token_urlsafe(32)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def tick(self) -> None:
        self.now += CHECK_EVERY_S


def write(path: Path, *lines: str) -> None:
    path.write_text("# support tokens\n" + "\n".join(lines) + "\n")
    # A rewrite within the file system's timestamp granularity must still be seen.
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


def test_the_file_holds_hashes_and_names_the_token_is_the_person(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write(path, token_line(MARIA, "helpdesk:maria"), token_line(SAM, "helpdesk:sam"))
    assert MARIA not in path.read_text() and token_hash(MARIA) in path.read_text()
    tokens = SupportTokens(path)
    assert len(tokens) == 2
    assert tokens.actor_of(MARIA) == "helpdesk:maria"
    assert tokens.actor_of(SAM) == "helpdesk:sam"
    assert tokens.actor_of(secrets.token_urlsafe(32)) is None


def test_a_weak_token_in_the_file_can_never_be_used(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    write(path, token_line("short", "helpdesk:weak"))
    assert SupportTokens(path).actor_of("short") is None


def test_changes_are_read_without_restart(tmp_path: Path) -> None:
    path, clock = tmp_path / "tokens", Clock()
    write(path, token_line(MARIA, "helpdesk:maria"))
    tokens = SupportTokens(path, clock)
    assert tokens.actor_of(SAM) is None
    write(path, token_line(SAM, "helpdesk:sam"))  # maria revoked, sam added
    assert tokens.actor_of(SAM) is None  # not looked at again within the second
    clock.tick()
    assert tokens.actor_of(SAM) == "helpdesk:sam"
    assert tokens.actor_of(MARIA) is None
    # Replaced by a new file (rename), as editors and config tools do.
    replacement = tmp_path / "tokens.new"
    replacement.write_text(token_line(MARIA, "helpdesk:maria") + "\n")
    replacement.replace(path)
    clock.tick()
    assert tokens.actor_of(MARIA) == "helpdesk:maria"


def test_a_broken_file_disables_releases_until_fixed(tmp_path: Path) -> None:
    path, clock = tmp_path / "tokens", Clock()
    write(path, token_line(MARIA, "helpdesk:maria"), token_line(SAM, "helpdesk:sam"))
    tokens = SupportTokens(path, clock)
    write(path, token_line(MARIA, "helpdesk:maria"), "not a line")  # sam revoked, badly
    clock.tick()
    with pytest.raises(TokensUnavailable, match="line 3"):
        tokens.actor_of(SAM)
    with pytest.raises(TokensUnavailable):
        tokens.actor_of(MARIA)
    path.unlink()
    clock.tick()
    with pytest.raises(TokensUnavailable, match="cannot read"):
        tokens.actor_of(MARIA)
    write(path, token_line(MARIA, "helpdesk:maria"))
    clock.tick()
    assert tokens.actor_of(MARIA) == "helpdesk:maria"
    assert tokens.actor_of(SAM) is None


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("abc helpdesk:x", "line 1: expected"),
        (f"{token_hash(MARIA)}", "line 1: expected"),
        (f"{token_hash(MARIA)} a\n{token_hash(MARIA)} b", "line 2: the same token hash twice"),
        (f"{token_hash(MARIA)} {'x' * 201}", "line 1: the actor must be printable"),
    ],
)
def test_bad_lines_are_named(text: str, problem: str) -> None:
    with pytest.raises(TokenFileError, match=problem):
        parse_token_file(text, "tokens")


def test_start_up_fails_on_an_unusable_file(tmp_path: Path) -> None:
    with pytest.raises(TokenFileError, match="cannot read"):
        SupportTokens(tmp_path / "missing")


def test_the_command_makes_a_token_and_appends_its_line(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    result = CliRunner().invoke(support_token, ["helpdesk:maria", "--file", str(path)])
    assert result.exit_code == 0, result.output
    token = result.stdout.strip()
    assert len(token) >= 43
    assert SupportTokens(path).actor_of(token) == "helpdesk:maria"
    again = CliRunner().invoke(support_token, ["helpdesk:maria", "--file", str(path)])
    assert "already has a token" in again.stderr
    assert len(parse_token_file(path.read_text(), "tokens")) == 2
    bare = CliRunner().invoke(support_token, ["helpdesk:sam"])
    assert token_hash(bare.stdout.strip()) in bare.stderr
