"""Signed mailbox commands: a gateway enforces only what the worker decided.

A record on `mailbox.control` blocks or lets a mailbox send at every gateway that
follows the topic, so writing to that topic must not be enough: a forged UNBLOCK
(with a block sequence above the real one) or a forged tombstone would lift a block
at the MTA. The worker signs every command it writes with HMAC-SHA256 under a
secret key, in a record header (`SIGNATURE_HEADER`: `key_id:hex`); a gateway given
the keys skips, counts and logs (`unauthenticated_command`) every record without a
valid signature, tombstones included.

What is signed: a fixed context string, then the record's key and value as written
(Avro bytes, a tombstone as null), each type-tagged and length-prefixed so no two
records share signed bytes. A header rather than a schema field: a command's
schema stays what gateways of other makers read, and a tombstone (no value) can
carry one too. There is no freshness window, unlike support actions: the compacted
topic is read from the start, so old commands are the state; a replayed older
command loses anyway to the newer one by the gateway's command order
(`processor.mail.blocklist`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from processor.codec.errors import DecodeError, DecodeReason
from processor.codec.signing_keys import SigningKeys

KEYS_ENV = "SENDGUARD_CONTROL_KEYS"
KEYS_FILE_ENV = "SENDGUARD_CONTROL_KEYS_FILE"
SIGNATURE_HEADER = "sendguard-signature"
#: The reason a skipped record is counted and logged under.
UNAUTHENTICATED: Final[DecodeReason] = "unauthenticated_command"
_CONTEXT = b"sendguard MailboxCommand record signature v1"
#: A header longer than a key id, a colon and a SHA-256 in hex is not ours.
_MAX_HEADER = 64 + 1 + 64

Headers = Sequence[tuple[str, bytes | None]] | None


def _part(data: bytes | None) -> bytes:
    if data is None:
        return b"N"
    return b"B" + len(data).to_bytes(8, "big") + data


def _mac(secret: bytes, key: bytes | None, value: bytes | None) -> str:
    signed = _CONTEXT + _part(key) + _part(value)
    return hmac.new(secret, signed, hashlib.sha256).hexdigest()


def _unauthenticated(detail: str) -> DecodeError:
    return DecodeError(UNAUTHENTICATED, detail)


class CommandKeys(SigningKeys):
    """The keys that sign mailbox commands (`SENDGUARD_CONTROL_KEYS`)."""

    ENV = KEYS_ENV
    FILE_ENV = KEYS_FILE_ENV

    def header(self, key: bytes | None, value: bytes | None) -> tuple[str, bytes]:
        """The signature header of the record (`key`, `value`) under the signing key.
        Raises ValueError when there is no key."""
        if not self.keys:
            raise ValueError(f"no control keys: set {KEYS_ENV} or {KEYS_FILE_ENV}")
        key_id, secret = self.keys[0]
        return SIGNATURE_HEADER, f"{key_id}:{_mac(secret, key, value)}".encode()

    def verify(self, key: bytes | None, value: bytes | None, headers: Headers) -> None:
        """Return if the record carries a signature header that one of the keys made
        over exactly `key` and `value`; else raise DecodeError `unauthenticated_command`
        saying which check failed."""
        found = [v for name, v in headers or () if name == SIGNATURE_HEADER]
        if not found or found[0] is None:
            raise _unauthenticated("the record is not signed")
        if len(found) > 1:
            raise _unauthenticated("more than one signature header")
        text = found[0][: _MAX_HEADER + 1].decode("ascii", "replace")
        key_id, colon, signature = text.partition(":")
        secret = self.secret(key_id)
        if not colon or secret is None:
            raise _unauthenticated(f"signed by an unknown key id {key_id[:64]!r}")
        if not hmac.compare_digest(signature.encode(), _mac(secret, key, value).encode()):
            raise _unauthenticated(f"the signature does not match (key {key_id!r})")
