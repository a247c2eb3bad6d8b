"""Bearer tokens of the worker's admin API, and the status page's cookie.

Two roles: the admin token reads mailbox state, blocks and the status page;
support tokens (one per person, `processor.ops.support_tokens`) release permanent
blocks (a privileged, audited act). One never grants the other role, so read
access handed to a dashboard cannot unblock anyone. A role whose token is not
configured is disabled (403 with a message naming the variable), never open.
Tokens are compared with `hmac.compare_digest`, so the time taken does not reveal
how much of a guess was right. A header or cookie that is not printable ASCII
(undecodable bytes arrive as surrogates) is no token at all: 401, never an error.

The HTML status page also accepts a cookie, because a browser cannot send an
`Authorization` header by itself: `/status?token=...` checks the admin token once,
sets the cookie and redirects to `/status`, so the token leaves the address bar and
history at once. The cookie holds an HMAC of the admin token and of its own expiry
time (never the token): it is useless against the JSON API, it is invalidated by
changing the token, it ends after `STATUS_COOKIE_TTL_MS` (the expiry is inside the
HMAC, so it cannot be extended), and it is HttpOnly, SameSite=Strict and limited to
`/status`, so no script and no other site can use it. The server's access log is
off (Faust's default), so the one request with the token in its query string is
not written anywhere by sendguard.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from processor.credentials import is_token_text

ADMIN_ENV = "SENDGUARD_ADMIN_TOKEN"
#: What the `sendguard release` client reads its (personal) support token from.
SUPPORT_ENV = "SENDGUARD_SUPPORT_TOKEN"
STATUS_COOKIE = "sendguard_status"
#: How long a status page cookie is good for: a working day.
STATUS_COOKIE_TTL_MS = 8 * 3600 * 1000
_COOKIE_CONTEXT = b"sendguard status page cookie v2\x00"


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a request is refused: 401 (no or wrong token) or 403 (role disabled)."""

    status: int
    message: str


def _same(given: str, expected: str) -> bool:
    """Constant-time equality; text that is no token (e.g. surrogates) is never equal."""
    return is_token_text(given) and hmac.compare_digest(given.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None (also when the
    token is not printable ASCII, e.g. undecodable bytes)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not is_token_text(token):
        return None
    return token


def check(given: str | None, configured: str | None, role: str, env: str) -> Denied | None:
    """None when `given` is the configured token of `role`; otherwise why not."""
    if not configured:
        return Denied(403, f"the {role} API is disabled: start the worker with {env} set")
    if given is None:
        return Denied(401, f"{role} token required (Authorization: Bearer <token>)")
    if not _same(given, configured):
        return Denied(401, f"wrong {role} token")
    return None


def _cookie_mac(admin_token: str, expires_ms: int) -> str:
    message = _COOKIE_CONTEXT + str(expires_ms).encode()
    return hmac.new(admin_token.encode(), message, hashlib.sha256).hexdigest()


def status_cookie(admin_token: str, now_ms: int, ttl_ms: int = STATUS_COOKIE_TTL_MS) -> str:
    """The status page cookie's value: `<expiry ms>.<HMAC of the expiry under the token>`."""
    expires_ms = now_ms + ttl_ms
    return f"{expires_ms}.{_cookie_mac(admin_token, expires_ms)}"


def check_status_cookie(value: str | None, admin_token: str | None, now_ms: int) -> bool:
    """Whether `value` is a cookie made by `status_cookie` for this token, not yet expired."""
    if not value or not admin_token or not is_token_text(value):
        return False
    expires, _, mac = value.partition(".")
    if not expires.isdigit() or len(expires) > 15:
        return False
    return _same(mac, _cookie_mac(admin_token, int(expires))) and now_ms < int(expires)
