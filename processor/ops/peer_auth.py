"""Requests between workers: authenticated by a shared secret, never by a user's token.

A worker that receives a request for a mailbox another worker owns forwards it
(and asks every worker for its blocks). The forwarded request carries no bearer
token: the user's token stays on the worker it was sent to. Instead it carries a
marker (`PEER_HEADER`) the receiving worker trusts in place of a token: the role
the first worker authenticated (admin or support), the person (for a release),
the client's address, the attempt id, a time and a random nonce, and an
HMAC-SHA256 under the inter-worker secret over all of those and the request's
method, raw path (with its query) and the SHA-256 of its body. So a client
cannot make one (it lacks the secret), and a captured marker cannot be moved to
another request, be replayed after `WINDOW_MS`, or be replayed within it (each
nonce is accepted once).

Header value: `v1.<base64url of the JSON claims>.<base64url of the HMAC>`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Literal

PEER_HEADER = "X-Sendguard-Peer"
SECRET_ENV = "SENDGUARD_PEER_SECRET"
SECRET_FILE_ENV = "SENDGUARD_PEER_SECRET_FILE"
#: A marker older or newer than this (by the receiver's clock) is refused. Workers'
#: clocks must agree to well within it (NTP); forwarding takes milliseconds.
WINDOW_MS = 30_000
#: Most nonces remembered at once; more markers than this within a window (which
#: only holders of the secret can make) are refused rather than forgotten.
MAX_REMEMBERED = 100_000
MAX_HEADER = 4096
_CONTEXT = b"sendguard peer request v1"

Role = Literal["admin", "support"]


class PeerAuthError(Exception):
    """The marker is malformed, forged, for another request, stale or replayed."""


@dataclass(frozen=True, slots=True)
class PeerClaims:
    """What the forwarding worker vouches for."""

    role: Role
    actor: str | None
    source: str | None
    attempt_id: str | None
    ts_ms: int
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _lp(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def _message(method: str, raw_path: str, body: bytes, claims_b64: str) -> bytes:
    return b"".join(
        _lp(part)
        for part in (
            _CONTEXT,
            method.upper().encode(),
            raw_path.encode("utf-8", "surrogateescape"),
            hashlib.sha256(body).digest(),
            claims_b64.encode(),
        )
    )


def _wall_ms() -> int:
    return int(time.time() * 1000)


class PeerAuth:
    """Makes and checks markers with the inter-worker secret."""

    def __init__(self, secret: str, clock: Callable[[], int] = _wall_ms) -> None:
        self._secret = secret.encode()
        self._clock = clock
        self._seen: OrderedDict[str, int] = OrderedDict()  # nonce -> expiry, oldest first

    def __repr__(self) -> str:
        return "PeerAuth(<secret>)"

    def _mac(self, message: bytes) -> bytes:
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def marker(
        self,
        method: str,
        raw_path: str,
        body: bytes,
        *,
        role: Role,
        actor: str | None = None,
        source: str | None = None,
        attempt_id: str | None = None,
    ) -> str:
        """The header value for one forwarded request (`raw_path` exactly as sent,
        percent-encoding and query included)."""
        claims = PeerClaims(role, actor, source, attempt_id, self._clock(), secrets.token_hex(16))
        claims_b64 = _b64(json.dumps(asdict(claims), separators=(",", ":")).encode())
        mac = self._mac(_message(method, raw_path, body, claims_b64))
        return f"v1.{claims_b64}.{_b64(mac)}"

    def verify(self, header: str, method: str, raw_path: str, body: bytes) -> PeerClaims:
        """The claims of a marker made for exactly this request, within the window and
        not seen before; PeerAuthError otherwise."""
        if len(header) > MAX_HEADER or not header.isascii():
            raise PeerAuthError("malformed peer marker")
        version, _, rest = header.partition(".")
        claims_b64, _, mac_b64 = rest.partition(".")
        if version != "v1" or not claims_b64 or not mac_b64:
            raise PeerAuthError("malformed peer marker")
        try:
            given = _unb64(mac_b64)
        except (binascii.Error, ValueError):
            raise PeerAuthError("malformed peer marker") from None
        expected = self._mac(_message(method, raw_path, body, claims_b64))
        if not hmac.compare_digest(given, expected):
            raise PeerAuthError("peer marker does not match (another secret, or another request)")
        claims = _parse_claims(claims_b64)
        now = self._clock()
        if abs(now - claims.ts_ms) > WINDOW_MS:
            raise PeerAuthError(f"peer marker outside the {WINDOW_MS // 1000}s window")
        self._remember(claims.nonce, now)
        return claims

    def _remember(self, nonce: str, now: int) -> None:
        seen = self._seen
        while seen and next(iter(seen.values())) < now:
            seen.popitem(last=False)
        if nonce in seen:
            raise PeerAuthError("peer marker replayed")
        if len(seen) >= MAX_REMEMBERED:
            raise PeerAuthError("too many peer requests to remember; refused")
        # Kept until the marker can no longer pass the window check.
        seen[nonce] = now + 2 * WINDOW_MS


def _parse_claims(claims_b64: str) -> PeerClaims:
    try:
        raw = json.loads(_unb64(claims_b64))
    except (binascii.Error, ValueError):
        raise PeerAuthError("malformed peer marker claims") from None
    if not isinstance(raw, dict):
        raise PeerAuthError("malformed peer marker claims")
    role, ts, nonce = raw.get("role"), raw.get("ts_ms"), raw.get("nonce")
    optional = [raw.get(name) for name in ("actor", "source", "attempt_id")]
    if (
        role not in ("admin", "support")
        or not isinstance(ts, int)
        or not isinstance(nonce, str)
        or not nonce
        or not all(value is None or isinstance(value, str) for value in optional)
    ):
        raise PeerAuthError("malformed peer marker claims")
    actor, source, attempt_id = optional
    return PeerClaims(role, actor, source, attempt_id, ts, nonce)
