"""Who is asking: admin token, personal support token, or a worker's marker."""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

from processor.ops.access import Access, Caller, Presented
from processor.ops.auth import Denied
from processor.ops.peer_auth import PEER_HEADER, PeerAuth
from processor.ops.support_tokens import SupportTokens, token_line

ADMIN = secrets.token_urlsafe(32)
MARIA = secrets.token_urlsafe(32)
PEERS = PeerAuth(secrets.token_urlsafe(32))
PATH = "/api/mailboxes/t1/a%40x.com/release"


@pytest.fixture
def access(tmp_path: Path) -> Access:
    path = tmp_path / "tokens"
    path.write_text(token_line(MARIA, "helpdesk:maria") + "\n")
    return Access(ADMIN, SupportTokens(path), PEERS)


def request(headers: dict[str, str], body: bytes = b"", method: str = "POST") -> Presented:
    return Presented(method, PATH, headers, body, "192.0.2.7")


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_the_person_is_the_tokens(access: Access) -> None:
    assert access.authenticate("support", request(bearer(MARIA))) == Caller(
        "support", "helpdesk:maria", "192.0.2.7"
    )
    assert access.authenticate("admin", request(bearer(ADMIN))) == Caller(
        "admin", None, "192.0.2.7"
    )


def test_one_role_never_grants_the_other(access: Access) -> None:
    assert access.authenticate("admin", request(bearer(MARIA))) == Denied(401, "wrong admin token")
    assert access.authenticate("support", request(bearer(ADMIN))) == Denied(
        401, "unknown support token"
    )


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer \udcff\udcfe"}, {"Authorization": "Basic abc"}],
)
def test_no_usable_token_is_401(access: Access, headers: dict[str, str]) -> None:
    denied = access.authenticate("support", request(headers))
    assert isinstance(denied, Denied) and denied.status == 401


def test_unconfigured_roles_are_disabled() -> None:
    closed = Access()
    denied = closed.authenticate("support", request(bearer(MARIA)))
    assert isinstance(denied, Denied) and denied.status == 403
    assert "SENDGUARD_SUPPORT_TOKENS_FILE" in denied.message
    denied = closed.authenticate("admin", request(bearer(ADMIN)))
    assert isinstance(denied, Denied) and denied.status == 403


def test_a_peer_marker_stands_in_for_the_token(access: Access) -> None:
    body = b'{"reason": "x"}'
    marker = PEERS.marker(
        "POST", PATH, body, role="support", actor="helpdesk:maria", source="198.51.100.1"
    )
    caller = access.authenticate("support", request({PEER_HEADER: marker}, body))
    assert caller == Caller("support", "helpdesk:maria", "198.51.100.1", None, via_peer=True)


def test_a_marker_with_a_token_or_for_another_role_is_refused(access: Access) -> None:
    marker = PEERS.marker("POST", PATH, b"", role="support", actor="helpdesk:maria")
    denied = access.authenticate("support", request({PEER_HEADER: marker, **bearer(MARIA)}))
    assert denied == Denied(401, "a forwarded request never carries a user's token")
    admin_marker = PEERS.marker("POST", PATH, b"", role="admin")
    denied = access.authenticate("support", request({PEER_HEADER: admin_marker}))
    assert denied == Denied(401, "the peer marker is not for the support role")


def test_a_forged_marker_is_refused_even_with_a_good_token(access: Access) -> None:
    for forged in (
        "1",
        "v1.e30.AAAA",
        PeerAuth(secrets.token_urlsafe(32)).marker("POST", PATH, b"", role="support", actor="x"),
    ):
        denied = access.authenticate("support", request({PEER_HEADER: forged}))
        assert isinstance(denied, Denied) and denied.status == 401
    # A worker without a peer secret accepts no marker at all.
    denied = Access(ADMIN).authenticate("admin", request({PEER_HEADER: "v1.x.y"}))
    assert isinstance(denied, Denied) and denied.status == 401
    assert "SENDGUARD_PEER_SECRET" in denied.message


def test_a_broken_token_file_is_503_not_open(access: Access, tmp_path: Path) -> None:
    assert access.support_tokens is not None
    (tmp_path / "tokens").write_text("broken\n")
    access.support_tokens.refresh()
    denied = access.authenticate("support", request(bearer(MARIA)))
    assert isinstance(denied, Denied) and denied.status == 503
