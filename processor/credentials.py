"""Secrets the worker is configured with: where they come from and how strong they are.

Every token and secret (the admin token, the inter-worker secret, the keys that
sign support actions) is checked when the worker starts, so a weak one stops the
start-up with a message naming it, instead of protecting the API badly for months.

Strength is judged by length against the alphabet the value is drawn from, as if
its characters were random: 128 bits need 39 decimal digits, 32 hex digits, 22
base64/base64url characters or 20 characters of printable ASCII. The check cannot
see that "aaaa…" is not random; it catches the short, the typed and the default.
Values must be printable ASCII without spaces: that is what `secrets.token_*` makes,
what fits in an HTTP header, and what compares in constant time as text.
"""

from __future__ import annotations

import math
import string
from pathlib import Path

MIN_BITS = 128
#: What to run for a good value (shown in every error).
GENERATE_HINT = "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"

_PRINTABLE = frozenset(chr(c) for c in range(0x21, 0x7F))  # printable ASCII, no space
#: (name, characters, values per character): hex digits in either case are 16 values,
#: and base64's padding "=" adds nothing.
_ALPHABETS: tuple[tuple[str, frozenset[str], int], ...] = (
    ("decimal digits", frozenset(string.digits), 10),
    ("hex digits", frozenset(string.hexdigits), 16),
    ("base64url characters", frozenset(string.ascii_letters + string.digits + "-_+/="), 64),
    ("printable ASCII characters", _PRINTABLE, len(_PRINTABLE)),
)


class CredentialError(ValueError):
    """A configured secret is missing, unreadable, malformed or too weak (message says which)."""


def is_token_text(value: str) -> bool:
    """Whether `value` is non-empty printable ASCII without spaces (a usable token)."""
    return bool(value) and all(c in _PRINTABLE for c in value)


def required_length(value: str) -> tuple[int, str]:
    """(characters needed for MIN_BITS, alphabet name) for the smallest alphabet of `value`."""
    chars = set(value)
    for name, alphabet, size in _ALPHABETS:
        if chars <= alphabet:
            return math.ceil(MIN_BITS / math.log2(size)), name
    raise CredentialError("not printable ASCII")  # callers check is_token_text first


def strength_problem(value: str) -> str | None:
    """Why `value` is not a usable secret of at least MIN_BITS, or None when it is."""
    if not is_token_text(value):
        return "must be printable ASCII without spaces"
    needed, alphabet = required_length(value)
    if len(value) < needed:
        return (
            f"is {len(value)} characters of {alphabet}; {MIN_BITS} bits of entropy need at "
            f"least {needed} (22 base64url characters or 32 hex digits), e.g. {GENERATE_HINT}"
        )
    return None


def require_strong(name: str, value: str) -> str:
    """`value`, after checking its strength; CredentialError naming `name` otherwise."""
    problem = strength_problem(value)
    if problem is not None:
        raise CredentialError(f"{name} {problem}")
    return value


def read_secret(
    value: str | None, file: Path | None, value_name: str, file_name: str
) -> str | None:
    """The secret given inline (`value`) or in `file` (surrounding whitespace stripped),
    or None when neither is set. Raises CredentialError when both are set or the file
    cannot be read."""
    if value and file is not None:
        raise CredentialError(f"set {value_name} or {file_name}, not both")
    if file is None:
        return value or None
    try:
        text = file.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as error:
        raise CredentialError(f"{file_name}: cannot read {file}: {error}") from None
    if not text:
        raise CredentialError(f"{file_name}: {file} is empty")
    return text
