"""Who is asking: a request's credentials resolved to a role and a person, or refused.

Three kinds of credentials reach the worker's API:

- the admin bearer token (`processor.ops.auth`): role admin, no person;
- a personal support token (`processor.ops.support_tokens`): role support, the
  person the token file names, whatever the request body claims;
- a peer marker (`processor.ops.peer_auth`) on a request another worker forwarded:
  the role and person that worker authenticated. A request with a marker is
  judged by the marker alone; one that also carries a bearer token is refused,
  since no worker forwards a user's token.

Pure: the web layer passes what it read from the request (`Presented`), so this
is tested without a server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from processor.ops.auth import ADMIN_ENV, Denied, bearer, check
from processor.ops.peer_auth import PEER_HEADER, SECRET_ENV, PeerAuth, PeerAuthError, Role
from processor.ops.support_tokens import TOKENS_FILE_ENV, SupportTokens, TokensUnavailable


@dataclass(frozen=True, slots=True)
class Presented:
    """What a request presents: its method, raw path (with query), headers and body."""

    method: str
    raw_path: str
    headers: Mapping[str, str]
    body: bytes = b""
    #: The address the connection came from.
    remote: str | None = None


@dataclass(frozen=True, slots=True)
class Caller:
    """An authenticated request: the role, the person (support), and where it came from."""

    role: Role
    actor: str | None
    #: The client's address: the connection's, or the one a peer vouches for.
    source: str | None
    #: Set by the worker that received the request from the client (peer requests).
    attempt_id: str | None = None
    via_peer: bool = False


@dataclass(frozen=True, slots=True)
class Access:
    """The worker's configured credentials; None disables that role (403), never opens it."""

    admin_token: str | None = None
    support_tokens: SupportTokens | None = None
    peers: PeerAuth | None = None

    def authenticate(self, role: Role, request: Presented) -> Caller | Denied:
        """The caller of `request` in `role`, or why not (401 no or bad credentials,
        403 role disabled, 503 the token file is broken)."""
        if request.headers.get(PEER_HEADER) is not None:
            return self._peer(role, request)
        token = bearer(request.headers.get("Authorization"))
        if role == "admin":
            denied = check(token, self.admin_token, "admin", ADMIN_ENV)
            return denied or Caller("admin", None, request.remote)
        if self.support_tokens is None:
            return Denied(
                403, f"the support API is disabled: start the worker with {TOKENS_FILE_ENV} set"
            )
        if token is None:
            return Denied(401, "support token required (Authorization: Bearer <token>)")
        try:
            actor = self.support_tokens.actor_of(token)
        except TokensUnavailable:
            return Denied(503, "support tokens cannot be read now; see the worker's log")
        if actor is None:
            return Denied(401, "unknown support token")
        return Caller("support", actor, request.remote)

    def _peer(self, role: Role, request: Presented) -> Caller | Denied:
        if self.peers is None:
            return Denied(401, f"peer requests are not accepted: no {SECRET_ENV} on this worker")
        if request.headers.get("Authorization") is not None:
            return Denied(401, "a forwarded request never carries a user's token")
        try:
            claims = self.peers.verify(
                request.headers[PEER_HEADER], request.method, request.raw_path, request.body
            )
        except PeerAuthError as error:
            return Denied(401, str(error))
        if claims.role != role or (role == "support" and not claims.actor):
            return Denied(401, f"the peer marker is not for the {role} role")
        return Caller(role, claims.actor, claims.source, claims.attempt_id, via_peer=True)
