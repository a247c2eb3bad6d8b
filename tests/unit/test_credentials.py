"""Start-up checks of configured secrets: 128 bits or a message saying what to do."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from processor.credentials import (
    CredentialError,
    read_secret,
    require_strong,
    strength_problem,
)


@pytest.mark.parametrize(
    "value",
    [
        secrets.token_urlsafe(16),  # 22 base64url characters: 132 bits
        secrets.token_hex(16),  # 32 hex digits
        secrets.token_hex(16).upper(),
        "1" * 39,  # 39 decimal digits: 129.6 bits
        "!#$%&()*+,;<=>?@[]^{",  # 20 of printable ASCII: 131 bits
    ],
)
def test_strong_enough(value: str) -> None:
    assert strength_problem(value) is None
    assert require_strong("X", value) == value


@pytest.mark.parametrize(
    ("value", "needed"),
    [
        (secrets.token_urlsafe(15), "22"),  # 20 characters
        (secrets.token_hex(15), "32"),
        ("1" * 38, "39"),
        ("short", "22"),
    ],
)
def test_too_short_names_the_length_needed(value: str, needed: str) -> None:
    problem = strength_problem(value)
    assert problem is not None and f"at least {needed}" in problem
    with pytest.raises(CredentialError, match=r"^SENDGUARD_ADMIN_TOKEN is \d+ characters"):
        require_strong("SENDGUARD_ADMIN_TOKEN", value)


@pytest.mark.parametrize(
    "value", ["", "with space in it and long enough....", "tökenlongenough12345678"]
)
def test_not_printable_ascii(value: str) -> None:
    assert strength_problem(value) == "must be printable ASCII without spaces"


def test_read_secret_inline_file_or_neither(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("  from-the-file\n")
    assert read_secret("inline", None, "V", "F") == "inline"
    assert read_secret(None, path, "V", "F") == "from-the-file"
    assert read_secret("", None, "V", "F") is None
    with pytest.raises(CredentialError, match="set V or F, not both"):
        read_secret("inline", path, "V", "F")
    with pytest.raises(CredentialError, match="F: cannot read"):
        read_secret(None, tmp_path / "missing", "V", "F")
    path.write_text("\n")
    with pytest.raises(CredentialError, match="is empty"):
        read_secret(None, path, "V", "F")
