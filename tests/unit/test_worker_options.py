"""`sendguard worker`'s web and credential options, checked before anything starts."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import click
import pytest

from processor.stream.commands import access_from, advertised_url


@pytest.mark.parametrize(
    ("host", "given", "url"),
    [
        ("127.0.0.2", None, "http://127.0.0.2:6066"),
        ("::1", None, "http://[::1]:6066"),
        ("0.0.0.0", "http://worker:6066", "http://worker:6066"),
        ("::", "https://w2.internal/", "https://w2.internal"),
        ("127.0.0.1", "http://10.0.0.5:7000", "http://10.0.0.5:7000"),
    ],
)
def test_the_advertised_url(host: str, given: str | None, url: str) -> None:
    assert advertised_url(host, 6066, given) == url


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "[::]"])
def test_a_wildcard_bind_needs_an_advertised_url(host: str) -> None:
    with pytest.raises(ValueError, match="SENDGUARD_ADVERTISED_URL"):
        advertised_url(host, 6066, None)


@pytest.mark.parametrize(
    "given",
    [
        "worker:6066",
        "ftp://worker:6066",
        "http://worker:6066/sendguard",
        "http://0.0.0.0:6066",
        "http://user@worker:6066",
        "http://worker:99999",
        "http://worker:6066?x=1",
    ],
)
def test_an_unusable_advertised_url_is_refused(given: str) -> None:
    with pytest.raises(ValueError):
        advertised_url("0.0.0.0", 6066, given)


def options(**given: Any) -> dict[str, Any]:
    return {
        "admin_token": None,
        "peer_secret": None,
        "peer_secret_file": None,
        "support_tokens_file": None,
        **given,
    }


def test_credentials_are_checked_at_start_up(tmp_path: Path) -> None:
    with pytest.raises(click.UsageError, match="SENDGUARD_ADMIN_TOKEN is 6 characters"):
        access_from(options(admin_token="secret"))
    with pytest.raises(click.UsageError, match="SENDGUARD_PEER_SECRET is 10 characters"):
        access_from(options(peer_secret="0123456789"))
    tokens = tmp_path / "tokens"
    tokens.write_text("not a token line\n")
    with pytest.raises(click.UsageError, match="line 1: expected"):
        access_from(options(support_tokens_file=tokens))
    secret_file = tmp_path / "peer"
    secret_file.write_text(secrets.token_urlsafe(32) + "\n")
    access = access_from(
        options(admin_token=secrets.token_urlsafe(16), peer_secret_file=secret_file)
    )
    assert access.admin_token is not None and access.peers is not None
    assert access.support_tokens is None
    with pytest.raises(click.UsageError, match="not both"):
        access_from(options(peer_secret=secrets.token_urlsafe(32), peer_secret_file=secret_file))
