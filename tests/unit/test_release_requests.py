"""A release request as the API judges it: body, path, and distinct refusal ids."""

from __future__ import annotations

from processor.limits import MAX_MAILBOX, MAX_REASON
from processor.ops.status import ReleasePlan, plan_release
from processor.policy import MailboxKey, Release
from processor.stream.web import path_problem, release_problem

KEY = MailboxKey.of("t1", "alice@example.com")
NOW = 1_767_607_200_000


def test_the_body_needs_a_reason_and_its_actor_is_ignored() -> None:
    assert release_problem({"reason": "reimaged"}) is None
    assert release_problem({"reason": "reimaged", "actor": "someone else"}) is None
    assert release_problem({"actor": "maria"}) == "reason is required (a non-empty string)"
    assert release_problem({"reason": " "}) == "reason is required (a non-empty string)"
    assert release_problem({"reason": "x" * (MAX_REASON + 1)}) is not None
    assert release_problem(["reason"]) is not None
    assert release_problem(None) is not None


def test_path_segments_have_limits() -> None:
    assert path_problem("t1", "a/b?c#d%e@x.com") is None  # reserved characters are data
    assert path_problem("t1", "x" * (MAX_MAILBOX + 1)) == (
        f"mailbox is longer than {MAX_MAILBOX} characters"
    )
    assert path_problem(" ", "a@x.com") == "tenant is empty"


def test_two_refusals_in_the_same_millisecond_have_distinct_ids() -> None:
    first = plan_release(None, Release(KEY, "maria", "early", NOW, "attempt-1"), NOW)
    second = plan_release(None, Release(KEY, "maria", "early", NOW, "attempt-2"), NOW)
    again = plan_release(None, Release(KEY, "maria", "early", NOW, "attempt-1"), NOW)
    assert not isinstance(first, ReleasePlan) and not isinstance(second, ReleasePlan)
    assert not isinstance(again, ReleasePlan)
    assert first.report.report_id != second.report.report_id
    assert first.report.report_id == again.report.report_id  # a replay keeps its id
