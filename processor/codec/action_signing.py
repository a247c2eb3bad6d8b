"""Signed support actions: only the API (or an operator holding a key) can release a block.

A SupportAction on `mailbox.support-actions` lifts a permanent block, so writing
to that topic must not be enough. The worker's API signs every action it sends
with HMAC-SHA256 under a secret key, naming the key by id (`key_id`); the edge
stage verifies each action before it reaches the policy and dead-letters
(`unauthenticated_action`) what is unsigned, signed by an unknown key, forged,
or too old or too far in the future to be a live request (a replay of an old
action read from the topic).

What is signed: `canonical_bytes`, every field of the record except the
signature itself, each as a length-prefixed name and a type-tagged,
length-prefixed value, after a fixed context string. Length prefixes make the
encoding unambiguous (no two records share bytes by moving text between
fields); the type tag tells null from "" and a number from its digits. A field
added to the schema must be added to `SIGNED_FIELDS` (a unit test compares them).

Keys rotate as `processor.codec.signing_keys` says; drop an old key once no action
signed by it can still be in flight (after `MAX_AGE_MS`).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from processor.codec.errors import DecodeError
from processor.codec.signing_keys import SigningKeys
from processor.credentials import CredentialError

KEYS_ENV = "SENDGUARD_ACTION_KEYS"
KEYS_FILE_ENV = "SENDGUARD_ACTION_KEYS_FILE"

#: The SupportAction fields covered by the signature, in signing order.
SIGNED_FIELDS = (
    "action_id",
    "action",
    "tenant_id",
    "mailbox",
    "actor",
    "reason",
    "at",
    "source",
    "key_id",
)
SIGNATURE_FIELD = "signature"
_CONTEXT = b"sendguard SupportAction signature v1"
#: An action older than this (by its `at`) is refused: a live request reaches the
#: edge in seconds; a worker outage longer than this means asking again.
MAX_AGE_MS = 15 * 60 * 1000
#: ... and one this far ahead of the verifier's clock (skew between hosts).
MAX_SKEW_MS = 5 * 60 * 1000


def _length_prefixed(data: bytes) -> bytes:
    if len(data) >= 1 << 32:
        raise ValueError("field too long to sign")
    return len(data).to_bytes(4, "big") + data


def _tagged(value: Any) -> bytes:
    if value is None:
        return b"N"
    if isinstance(value, bool):  # before int: bool is an int
        raise TypeError("booleans are not signed fields")
    if isinstance(value, int):
        return b"I" + str(value).encode()
    if isinstance(value, str):
        return b"S" + value.encode("utf-8", "surrogatepass")
    if isinstance(value, bytes):
        return b"B" + value
    raise TypeError(f"cannot sign a {type(value).__name__}")


def canonical_bytes(record: Mapping[str, Any]) -> bytes:
    """The bytes the signature covers: every field of SIGNED_FIELDS (a missing one as
    null), length-prefixed name and type-tagged value. Raises TypeError for a value of
    a type no SupportAction field has."""
    parts = [_length_prefixed(_CONTEXT)]
    for name in SIGNED_FIELDS:
        parts.append(_length_prefixed(name.encode()))
        parts.append(_length_prefixed(_tagged(record.get(name))))
    return b"".join(parts)


def _mac(secret: bytes, record: Mapping[str, Any]) -> bytes:
    return hmac.new(secret, canonical_bytes(record), hashlib.sha256).digest()


def _unauthenticated(detail: str) -> DecodeError:
    return DecodeError("unauthenticated_action", detail)


class ActionKeys(SigningKeys):
    """The keys that sign support actions (`SENDGUARD_ACTION_KEYS`)."""

    ENV = KEYS_ENV
    FILE_ENV = KEYS_FILE_ENV

    def sign(self, record: Mapping[str, Any]) -> dict[str, Any]:
        """A copy of the SupportAction `record` with `key_id` and `signature` set by the
        signing key. Raises CredentialError when there is no key."""
        if not self.keys:
            raise CredentialError(f"no action keys: set {KEYS_ENV} or {KEYS_FILE_ENV}")
        key_id, secret = self.keys[0]
        signed = {**record, "key_id": key_id, SIGNATURE_FIELD: None}
        signed[SIGNATURE_FIELD] = _mac(secret, signed)
        return signed

    def verify(self, record: Mapping[str, Any], now_ms: int) -> None:
        """Return if `record` is signed by one of the keys and its `at` lies within
        [now - MAX_AGE_MS, now + MAX_SKEW_MS]; else raise DecodeError
        `unauthenticated_action` saying which check failed."""
        signature = record.get(SIGNATURE_FIELD)
        key_id = record.get("key_id")
        if signature is None or key_id is None:
            raise _unauthenticated("the action is not signed")
        secret = self.secret(key_id)
        if secret is None:
            raise _unauthenticated(f"signed by an unknown key id {str(key_id)[:64]!r}")
        try:
            expected = _mac(secret, record)
        except (TypeError, ValueError) as error:
            raise _unauthenticated(f"cannot be canonicalised: {error}") from None
        if not isinstance(signature, bytes) or not hmac.compare_digest(signature, expected):
            raise _unauthenticated(f"the signature does not match (key {key_id!r})")
        at = record.get("at")
        if not isinstance(at, int) or isinstance(at, bool):
            raise _unauthenticated("no time to check freshness")
        if at < now_ms - MAX_AGE_MS:
            raise _unauthenticated(
                f"signed at {at}, more than {MAX_AGE_MS // 60000} minutes before now "
                f"({now_ms}): a replay, or a request that waited too long"
            )
        if at > now_ms + MAX_SKEW_MS:
            raise _unauthenticated(f"signed at {at}, ahead of now ({now_ms}) beyond clock skew")
