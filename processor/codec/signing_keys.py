"""A set of HMAC keys named by id, as the signing of support actions and of mailbox
commands configures them.

Keys rotate without downtime: every key of the set verifies, the first one signs.
To rotate, add the new key after the old everywhere, restart; move it first,
restart; drop the old one once nothing signed by it can still matter.
Key text: `id:secret` entries, separated by commas or new lines (`#` starts a
comment); ids are `[A-Za-z0-9._-]{1,64}`, secrets must be strong
(`processor.credentials`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Self

from processor.credentials import CredentialError, read_secret, require_strong

_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@dataclass(frozen=True, slots=True)
class SigningKeys:
    """Secrets by id: every key verifies, the first one signs. Empty: nothing can be
    signed and everything fails verification. Subclasses name their variables."""

    #: The environment variables of the keys and of a file holding them.
    ENV: ClassVar[str] = ""
    FILE_ENV: ClassVar[str] = ""

    keys: tuple[tuple[str, bytes], ...] = ()

    def __post_init__(self) -> None:
        ids = [key_id for key_id, _ in self.keys]
        if len(set(ids)) != len(ids):
            raise CredentialError(f"{self.ENV}: the same key id twice")

    def __bool__(self) -> bool:
        return bool(self.keys)

    def __repr__(self) -> str:  # never the secrets, in a log or a traceback
        return f"{type(self).__name__}(ids={[key_id for key_id, _ in self.keys]})"

    @property
    def signing_id(self) -> str | None:
        return self.keys[0][0] if self.keys else None

    def secret(self, key_id: object) -> bytes | None:
        """The secret of `key_id`, or None when no key has that id."""
        return dict(self.keys).get(key_id) if isinstance(key_id, str) else None

    @classmethod
    def parse(cls, text: str, source: str | None = None) -> Self:
        """Keys from `id:secret` entries (commas or new lines between them, `#` comments).
        Raises CredentialError naming `source` (default: ENV) and the entry."""
        source = source or cls.ENV
        keys = []
        for line in text.splitlines():
            for entry in line.split("#", 1)[0].split(","):
                entry = entry.strip()
                if not entry:
                    continue
                key_id, colon, secret = entry.partition(":")
                if not colon or not _KEY_ID.fullmatch(key_id):
                    raise CredentialError(
                        f"{source}: expected id:secret with an id of letters, digits, "
                        f"'.', '_' or '-' (at most 64), got an entry starting {entry[:8]!r}"
                    )
                require_strong(f"{source}: the secret of key {key_id!r}", secret)
                keys.append((key_id, secret.encode()))
        if not keys:
            raise CredentialError(f"{source}: no keys")
        return cls(tuple(keys))

    @classmethod
    def from_options(cls, inline: str | None, file: Path | None) -> Self:
        """The keys given inline or in `file` (their options' values), or none when
        neither is set. Raises CredentialError (both set, unreadable, malformed, weak)."""
        text = read_secret(inline, file, cls.ENV, cls.FILE_ENV)
        if text is None:
            return cls()
        return cls.parse(text, cls.FILE_ENV if file is not None else cls.ENV)
