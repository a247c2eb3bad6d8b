"""Bearer tokens of the worker's admin and support API.

Two roles, two tokens: an admin token reads mailbox state, blocks and the status
page; a support token releases permanent blocks (a privileged, audited act). One
token never grants the other role, so read access handed to a dashboard cannot
unblock anyone. A role whose token is not configured is disabled (403 with a
message naming the variable), never open. Tokens are compared with
`hmac.compare_digest`, so the time taken does not reveal how much of a guess was right.

The HTML status page also accepts a cookie, because a browser cannot send an
`Authorization` header by itself: `/status?token=...` checks the admin token once,
sets the cookie and redirects to `/status`, so the token leaves the address bar and
history at once. The cookie holds an HMAC of the admin token (never the token): it
is useless against the JSON API, it is invalidated by changing the token, and it is
HttpOnly, SameSite=Strict and limited to `/status`, so no script and no other site
can use it. The server's access log is off (Faust's default), so the one request
with the token in its query string is not written anywhere by sendguard.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

ADMIN_ENV = "SENDGUARD_ADMIN_TOKEN"
SUPPORT_ENV = "SENDGUARD_SUPPORT_TOKEN"
STATUS_COOKIE = "sendguard_status"
_COOKIE_CONTEXT = b"sendguard status page cookie v1"


@dataclass(frozen=True, slots=True)
class Tokens:
    """The configured tokens; None (or empty) disables that role's endpoints."""

    admin: str | None = None
    support: str | None = None


@dataclass(frozen=True, slots=True)
class Denied:
    """Why a request is refused: 401 (no or wrong token) or 403 (role disabled)."""

    status: int
    message: str


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, or None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def check(given: str | None, configured: str | None, role: str, env: str) -> Denied | None:
    """None when `given` is the configured token of `role`; otherwise why not."""
    if not configured:
        return Denied(403, f"the {role} API is disabled: start the worker with {env} set")
    if given is None:
        return Denied(401, f"{role} token required (Authorization: Bearer <token>)")
    if not _same(given, configured):
        return Denied(401, f"wrong {role} token")
    return None


def status_cookie(admin_token: str) -> str:
    """The status page cookie's value for this admin token (an HMAC, not the token)."""
    return hmac.new(admin_token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


def check_status_cookie(value: str | None, admin_token: str | None) -> bool:
    return bool(value and admin_token) and _same(value or "", status_cookie(admin_token or ""))
