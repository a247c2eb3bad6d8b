"""What the API decides before publishing a support release (`plan_release`)."""

from __future__ import annotations

from processor.ops.status import ReleasePlan, plan_release
from processor.policy import (
    MailboxState,
    PolicyConfig,
    Release,
    ReleaseRefused,
    Report,
    refusal_report_id,
    release,
)
from tests.unit.policy_dsl import ALICE, Run, t


def _permanently_blocked() -> MailboxState:
    run = Run(PolicyConfig(permanent_on_offense=1)).spam("10:00 10:01 10:02 10:03 10:04")
    return run.engine.states[ALICE]


def test_plan_names_the_ids_the_agent_will_report_either_way() -> None:
    #   10:04 permanent block; 10:30 the API plans a release. Whatever happens first at the
    #   agent, it reports under one of the two ids the plan names.
    record = _permanently_blocked().to_record()
    request = Release(ALICE, "support-7", "owner verified", t("10:30"))
    plan = plan_release(record, request, t("10:30"))
    assert isinstance(plan, ReleasePlan) and plan.offense == 1

    state = MailboxState.from_record(record)
    decisions, refused = release(state, request, t("10:31"))
    assert refused is None
    released = [d for d in decisions if isinstance(d, Report)]
    assert [r.report_id for r in released] == [plan.released_report_id]
    #   another release got there first: the same request is now refused, under the plan's id
    _, refused = release(state, request, t("10:32"))
    assert refused is not None and refused.report.report_id == plan.refused_report_id
    assert plan.refused_report_id == refusal_report_id(state, request)
    assert plan.refused_report_id != plan.released_report_id


def test_plan_refuses_a_timed_block_with_the_policys_words_and_changes_nothing() -> None:
    state = Run().spam("10:00 10:01 10:02 10:03 10:04").engine.states[ALICE]
    record = state.to_record()
    request = Release(ALICE, "support-7", "asked nicely", t("10:30"))
    plan = plan_release(record, request, t("10:30"))
    assert isinstance(plan, ReleaseRefused) and "cannot be shortened" in plan.reason
    assert plan.report.report_id == refusal_report_id(state, request)
    assert state.to_record() == record
