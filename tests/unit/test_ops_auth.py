"""Token checks of the worker API: disabled (403) is never open, 401 otherwise."""

from __future__ import annotations

from processor.ops.auth import Denied, bearer, check, check_status_cookie, status_cookie


def test_bearer_header() -> None:
    assert bearer("Bearer abc") == "abc"
    assert bearer("bearer  abc ") == "abc"
    assert bearer("Basic abc") is None
    assert bearer("Bearer ") is None
    assert bearer(None) is None


def test_unconfigured_role_is_disabled_whatever_is_sent() -> None:
    for given in (None, "", "anything"):
        denied = check(given, None, "admin", "SENDGUARD_ADMIN_TOKEN")
        assert denied is not None and denied.status == 403
        assert "SENDGUARD_ADMIN_TOKEN" in denied.message
    assert check("", "", "support", "X") == Denied(
        403, "the support API is disabled: start the worker with X set"
    )


def test_missing_or_wrong_token_is_401() -> None:
    assert check(None, "s3cret", "admin", "E") == Denied(
        401, "admin token required (Authorization: Bearer <token>)"
    )
    assert check("s3cre", "s3cret", "admin", "E") == Denied(401, "wrong admin token")
    assert check("s3cret", "s3cret", "admin", "E") is None


def test_status_cookie_is_an_hmac_bound_to_the_token() -> None:
    cookie = status_cookie("s3cret")
    assert "s3cret" not in cookie and len(cookie) == 64
    assert check_status_cookie(cookie, "s3cret")
    assert not check_status_cookie(cookie, "other")  # a new token invalidates old cookies
    assert not check_status_cookie(cookie, None)
    assert not check_status_cookie(None, "s3cret")
