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


def test_status_cookie_is_an_hmac_bound_to_the_token_and_expires() -> None:
    now = 1_767_607_200_000
    cookie = status_cookie("s3cret", now, ttl_ms=60_000)
    expires, _, mac = cookie.partition(".")
    assert int(expires) == now + 60_000
    assert "s3cret" not in cookie and len(mac) == 64
    assert check_status_cookie(cookie, "s3cret", now)
    assert check_status_cookie(cookie, "s3cret", now + 59_999)
    assert not check_status_cookie(cookie, "s3cret", now + 60_000)  # expired
    assert not check_status_cookie(cookie, "other", now)  # a new token invalidates old cookies
    assert not check_status_cookie(cookie, None, now)
    assert not check_status_cookie(None, "s3cret", now)
    # The expiry is inside the HMAC: moving it forward breaks the cookie.
    assert not check_status_cookie(f"{now + 10**9}.{mac}", "s3cret", now)
    assert not check_status_cookie(f"x.{mac}", "s3cret", now)
    assert not check_status_cookie(mac, "s3cret", now)


def test_undecodable_bytes_are_no_token_not_an_error() -> None:
    # aiohttp hands bytes that are not UTF-8 over as lone surrogates.
    assert bearer("Bearer ab\udcff\udcfecd") is None
    assert bearer("Bearer caf\u00e9") is None  # not ASCII: no token either
    assert check("ab\udcff", "s3cret", "admin", "E") == Denied(401, "wrong admin token")
    assert not check_status_cookie("\udce9\udcff", "s3cret", 0)
    assert not check_status_cookie("1.\udce9", "s3cret", 0)
