"""Markers between workers: bound to one request, fresh, used once, unforgeable."""

from __future__ import annotations

import secrets

import pytest

from processor.ops.peer_auth import MAX_HEADER, WINDOW_MS, PeerAuth, PeerAuthError

SECRET = secrets.token_urlsafe(32)
PATH = "/api/mailboxes/t1/a%2Fb%40x.com/release"
BODY = b'{"reason": "reimaged"}'


class Clock:
    def __init__(self) -> None:
        self.now = 1_767_607_200_000

    def __call__(self) -> int:
        return self.now


def pair() -> tuple[PeerAuth, PeerAuth, Clock]:
    clock = Clock()
    return PeerAuth(SECRET, clock), PeerAuth(SECRET, clock), clock


def test_a_marker_carries_who_the_first_worker_authenticated() -> None:
    sender, receiver, _ = pair()
    marker = sender.marker(
        "POST", PATH, BODY, role="support", actor="maria", source="192.0.2.7", attempt_id="a1"
    )
    assert SECRET not in marker
    claims = receiver.verify(marker, "POST", PATH, BODY)
    assert (claims.role, claims.actor, claims.source, claims.attempt_id) == (
        "support",
        "maria",
        "192.0.2.7",
        "a1",
    )


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", PATH, BODY),
        ("POST", "/api/mailboxes/t1/other%40x.com/release", BODY),
        ("POST", "/api/mailboxes/t1/a/b%40x.com/release", BODY),  # the raw path counts
        ("POST", PATH + "?x=1", BODY),
        ("POST", PATH, b'{"reason": "something else"}'),
    ],
)
def test_a_marker_fits_only_its_own_request(method: str, path: str, body: bytes) -> None:
    sender, receiver, _ = pair()
    marker = sender.marker("POST", PATH, BODY, role="support", actor="maria")
    with pytest.raises(PeerAuthError, match="does not match"):
        receiver.verify(marker, method, path, body)


def test_claims_cannot_be_changed() -> None:
    import base64
    import json

    sender, receiver, _ = pair()
    marker = sender.marker("POST", PATH, BODY, role="support", actor="maria")
    version, claims_b64, mac = marker.split(".")
    claims = json.loads(base64.urlsafe_b64decode(claims_b64 + "=="))
    claims["actor"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    with pytest.raises(PeerAuthError, match="does not match"):
        receiver.verify(f"{version}.{forged}.{mac}", "POST", PATH, BODY)


def test_another_secret_cannot_make_one() -> None:
    _, receiver, clock = pair()
    stranger = PeerAuth(secrets.token_urlsafe(32), clock)
    with pytest.raises(PeerAuthError, match="does not match"):
        receiver.verify(
            stranger.marker("GET", "/api/blocks", b"", role="admin"), "GET", "/api/blocks", b""
        )


def test_a_marker_is_used_once_and_only_within_the_window() -> None:
    sender, receiver, clock = pair()
    marker = sender.marker("GET", "/api/blocks", b"", role="admin")
    receiver.verify(marker, "GET", "/api/blocks", b"")
    with pytest.raises(PeerAuthError, match="replayed"):
        receiver.verify(marker, "GET", "/api/blocks", b"")
    old = sender.marker("GET", "/api/blocks", b"", role="admin")
    clock.now += WINDOW_MS + 1
    with pytest.raises(PeerAuthError, match="window"):
        receiver.verify(old, "GET", "/api/blocks", b"")
    ahead = sender.marker("GET", "/api/blocks", b"", role="admin")
    clock.now -= 2 * WINDOW_MS + 2
    with pytest.raises(PeerAuthError, match="window"):
        receiver.verify(ahead, "GET", "/api/blocks", b"")
    # Two markers for the same request in the same millisecond are two markers.
    first = sender.marker("GET", "/api/blocks", b"", role="admin")
    second = sender.marker("GET", "/api/blocks", b"", role="admin")
    receiver.verify(first, "GET", "/api/blocks", b"")
    receiver.verify(second, "GET", "/api/blocks", b"")


def test_remembered_nonces_are_forgotten_once_they_could_no_longer_pass() -> None:
    sender, receiver, clock = pair()
    for _ in range(3):
        receiver.verify(sender.marker("GET", "/x", b"", role="admin"), "GET", "/x", b"")
    assert len(receiver._seen) == 3
    clock.now += 2 * WINDOW_MS + 1
    receiver.verify(sender.marker("GET", "/x", b"", role="admin"), "GET", "/x", b"")
    assert len(receiver._seen) == 1


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        "v1.",
        "v2.e30.AAAA",
        "v1.e30.!!!!",
        "v1.\udcff.AAAA",
        "v1." + "A" * MAX_HEADER,
    ],
)
def test_malformed_markers_are_refused_not_errors(header: str) -> None:
    _, receiver, _ = pair()
    with pytest.raises(PeerAuthError):
        receiver.verify(header, "GET", "/api/blocks", b"")


def test_well_signed_but_malformed_claims_are_refused() -> None:
    import base64
    import hashlib
    import hmac as hmac_module

    from processor.ops import peer_auth

    _, receiver, _ = pair()
    claims = base64.urlsafe_b64encode(b'{"role": "root", "ts_ms": 1, "nonce": "n"}')
    claims_b64 = claims.rstrip(b"=").decode()
    message = peer_auth._message("GET", "/x", b"", claims_b64)
    mac = hmac_module.new(SECRET.encode(), message, hashlib.sha256).digest()
    mac_b64 = base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with pytest.raises(PeerAuthError, match="claims"):
        receiver.verify(f"v1.{claims_b64}.{mac_b64}", "GET", "/x", b"")
