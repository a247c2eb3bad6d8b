"""docs/policy.md, rule by rule. Each test names the rule it pins; timelines use a 10-minute
window and a threshold of 5 unless the test says otherwise."""

from __future__ import annotations

import pytest

from processor.policy import (
    Alert,
    Block,
    Direction,
    Directory,
    MailboxKey,
    MailboxState,
    Outcome,
    PolicyConfig,
    Report,
    ScanRequest,
    Unblock,
    Verdict,
    VerdictKind,
    forgettable,
    step_verdict,
)
from processor.policy.decisions import decision_id
from tests.unit.policy_dsl import ALICE, HOUR, MINUTE, Run, t, verdict

# ---------------------------------------------------------------- terms ---


def test_mailbox_key_is_normalised_but_tenant_is_compared_as_given() -> None:
    # " Alice@Example.COM " and "alice@example.com" are one mailbox; "T1" is another tenant.
    run = Run()
    for i, address in enumerate(
        [
            " Alice@Example.COM ",
            "ALICE@example.com",
            "alice@example.com",
            "alice@EXAMPLE.com\t",
            "alice@example.com",
        ]
    ):
        run.feed(verdict(f"m{i}", f"10:0{i}", mailbox=address))
    assert run.blocks() == [(1, t("10:04"), t("11:04"))]
    assert run.of(Block)[0].key == MailboxKey("t1", "alice@example.com")

    other_tenant = Run().spam("10:00 10:01 10:02", tenant="t1").spam("10:03 10:04", tenant="T1")
    assert other_tenant.blocks() == []


@pytest.mark.parametrize(
    ("direction", "kind"),
    [("INBOUND", "SPAM"), ("INBOUND", "VIRUS"), ("OUTBOUND", "CLEAN"), ("INBOUND", "CLEAN")],
)
def test_only_outbound_spam_or_virus_qualifies(direction: str, kind: str) -> None:
    run = Run()
    for i in range(10):
        outcome, decisions = run.engine.verdict(
            verdict(f"m{i}", f"10:0{i}", kind=kind, direction=direction)
        )
        assert outcome is Outcome.NOT_QUALIFYING and decisions == []
    assert run.engine.states == {}  # no state at all, not even an empty one


def test_virus_and_spam_count_together() -> None:
    run = Run()
    for i, kind in enumerate(["SPAM", "VIRUS", "SPAM", "VIRUS", "VIRUS"]):
        run.feed(verdict(f"m{i}", f"10:0{i}", kind=kind))
    assert len(run.blocks()) == 1


# ------------------------------------------------------------- counting ---


def test_rule1_late_verdicts_are_ignored() -> None:
    #   H = 10:20 ───────────────────────────────► a verdict at <= H - 10 min is late
    #   10:10:00 (= H - window): late      10:10:00.001: counts
    run = Run().spam("10:20")
    state = run.engine.states[ALICE]
    outcome, _ = run.engine.verdict(verdict("late", "10:10"))
    assert outcome is Outcome.LATE
    outcome, _ = run.engine.verdict(verdict("edge", "10:10:00.001"))
    assert outcome is Outcome.COUNTED
    assert state.high_water_ms == t("10:20")


def test_rule1_late_verdicts_cannot_complete_a_window() -> None:
    #   10:20 10:21 10:22 10:23, then a straggler from 10:05 (late) → no block
    run = Run().spam("10:20 10:21 10:22 10:23").spam("10:05", prefix="x")
    assert run.blocks() == []


def test_rule1_verdicts_scanned_longer_ago_than_max_lateness_are_late() -> None:
    #   max_lateness = 1 d; the clock is at +1d 10:00 (a tick)
    #   scanned 10:00 (exactly 1 d ago): counts      09:59:59.999: late, and H does not move
    run = Run().tick("+1d 10:00")
    outcome, _ = run.engine.verdict(verdict("old", "09:59:59.999"))
    assert outcome is Outcome.LATE
    assert ALICE not in run.engine.states  # a late verdict creates no state at all
    outcome, _ = run.engine.verdict(verdict("edge", "10:00"))
    assert outcome is Outcome.COUNTED
    outcome, _ = run.engine.verdict(verdict("older", "09:00"))  # not late by H (10:00) …
    assert outcome is Outcome.LATE  # … but by the clock
    assert run.engine.states[ALICE].high_water_ms == t("10:00")


def test_rule1_max_lateness_is_configurable() -> None:
    #   max_lateness = 30 min; clock 11:00: 10:30 counts, 10:29:59.999 is late
    run = Run(PolicyConfig.from_mapping({"max_lateness": "30m"})).tick("11:00")
    assert run.engine.verdict(verdict("a", "10:29:59.999"))[0] is Outcome.LATE
    assert run.engine.verdict(verdict("b", "10:30"))[0] is Outcome.COUNTED


def test_rule1_late_by_the_clock_cannot_complete_a_window() -> None:
    #   four verdicts on day 0 at 10:00 … 10:03, then the clock is at +1d 10:05;
    #   a fifth scanned 10:04 on day 0 would complete (09:54, 10:04] but is late
    run = Run().spam("10:00 10:01 10:02 10:03").tick("+1d 10:05")
    run.spam("10:04", prefix="backlog")
    assert run.blocks() == []


def test_rule1_a_backlog_completes_a_window_after_more_than_two_windows_of_clock() -> None:
    #   10:00 10:01 10:02 10:03   alice: four counted (H = 10:03)
    #   10:00 ─────────────── 10:45   bob's traffic moves the clock on: > 2 windows
    #   10:45  alice's fifth arrives from a scanner's backlog, scanned 10:04:
    #          not late (10:04 > H - 10 min, and > now - 1 d) → (09:54, 10:04] holds 5
    #   → BLOCK at now = 10:45 (rule 8), even though the engine forgot what it could
    run = Run().spam("10:00 10:01 10:02 10:03")
    run.spam("10:20 10:45", mailbox="bob@example.com")
    assert run.engine.forget() == 0  # alice's window still matters
    run.spam("10:04", prefix="backlog")
    assert run.blocks() == [(1, t("10:45"), t("11:45"))]
    evidence = [e.scanned_at_ms for e in run.of(Block)[0].evidence]
    assert evidence == [t(c) for c in ("10:00", "10:01", "10:02", "10:03", "10:04")]


def test_rule2_duplicate_message_ids_count_once() -> None:
    run = Run()
    for clock in ["10:00", "10:01", "10:02", "10:03", "10:04", "10:05"]:
        outcome, _ = run.engine.verdict(verdict("same-id", clock))
    assert outcome is Outcome.DUPLICATE
    assert run.blocks() == []
    run.spam("10:06 10:07 10:08 10:09")  # four more distinct ids: 5 distinct in all
    assert len(run.blocks()) == 1


def test_rule2_replaying_a_stream_is_idempotent() -> None:
    stream = [verdict(f"m{i}", f"10:0{i}") for i in range(5)]
    once = Run()
    for item in stream:
        once.feed(item)
    twice = Run()
    for item in stream + stream:
        twice.feed(item)
    assert twice.decisions == once.decisions


def test_rule3_verdicts_while_blocked_are_ignored_and_no_second_block() -> None:
    #   block at 10:04 until 11:04; 20 more spam verdicts at 10:05 … 10:24 are ignored
    run = Run().spam("10:00 10:01 10:02 10:03 10:04")
    outcomes = [run.engine.verdict(verdict(f"b{i}", f"10:{5 + i:02d}"))[0] for i in range(20)]
    assert set(outcomes) == {Outcome.WHILE_BLOCKED}
    assert run.blocks() == [(1, t("10:04"), t("11:04"))]


def test_rule3_permanent_block_ignores_everything_forever() -> None:
    run = Run(PolicyConfig(permanent_on_offense=1)).spam("10:00 10:01 10:02 10:03 10:04")
    for i in range(5):
        outcome, _ = run.engine.verdict(verdict(f"later{i}", f"+30d 10:0{i}"))
        assert outcome is Outcome.WHILE_BLOCKED
    assert run.blocks() == [(1, t("10:04"), None)]


def test_rule4_window_is_cleared_when_a_block_starts() -> None:
    #   10:00 … 10:04 → block (1 h) → expires 11:04
    #   10:59 10:59:30 (while blocked, ignored) then 11:04 11:05 11:06 11:07 → only 4 counted
    run = Run().spam("10:00 10:01 10:02 10:03 10:04")
    assert len(run.engine.states[ALICE].window) == 0
    run.spam("10:59 10:59:30", prefix="during").spam("11:04 11:05 11:06 11:07", prefix="after")
    assert run.blocks() == [(1, t("10:04"), t("11:04"))]
    run.spam("11:08", prefix="fifth")
    assert run.blocks()[-1] == (2, t("11:08"), t("13:08"))


def test_rule4_only_verdicts_scanned_at_or_after_the_unblock_count() -> None:
    #   block ends U = 11:04. Verdicts arriving later but scanned before U do not count,
    #   one scanned exactly at U does.
    run = Run().spam("10:00 10:01 10:02 10:03 10:04").tick("11:10")
    assert run.unblocks() == [(1, t("11:04"), "expired")]
    outcome, _ = run.engine.verdict(verdict("old", "11:03:59.999"))
    assert outcome is Outcome.BEFORE_RESET
    outcome, _ = run.engine.verdict(verdict("at-u", "11:04"))
    assert outcome is Outcome.COUNTED


def test_rule5_burst_straddling_a_tumbling_boundary_triggers() -> None:
    #   tumbling windows [10:00, 10:10) and [10:10, 10:20) would each see fewer than 5:
    #   10:07 10:08 10:09 | 10:11 10:12  → sliding (10:02, 10:12] holds all 5
    run = Run().spam("10:07 10:08 10:09 10:11 10:12")
    assert run.blocks() == [(1, t("10:12"), t("11:12"))]


def test_rule5_exactly_one_window_apart_is_not_one_window() -> None:
    #   10:00 10:01 10:02 10:03 | 10:10 → (10:00, 10:10] excludes 10:00 → 4, no block
    run = Run().spam("10:00 10:01 10:02 10:03 10:10")
    assert run.blocks() == []
    #   one millisecond less than a window apart is one window
    run2 = Run().spam("10:00 10:01 10:02 10:03 10:09:59.999")
    assert run2.blocks() == [(1, t("10:09:59.999"), t("11:09:59.999"))]


def test_rule5_threshold_minus_one_never_blocks() -> None:
    #   4 per window, forever: 10:00 10:01 10:02 10:03 | 10:10 10:11 10:12 10:13 | …
    run = Run()
    for block in range(6):
        base = 10 * block
        run.spam(
            " ".join(f"{10 + (base + i) // 60}:{(base + i) % 60:02d}" for i in range(4)),
            prefix=f"b{block}-",
        )
    assert run.blocks() == []


def test_rule5_out_of_order_verdict_completes_an_earlier_window() -> None:
    #   in: 10:00 10:01 10:02 10:11   then 10:03 arrives late-but-not-late (H=10:11)
    #   (10:00, 10:10] would hold 10:01 10:02 10:03 = 3; (09:53, 10:03] holds 10:00…10:03 = 4
    #   then 10:05 arrives: (09:55, 10:05] holds 10:00 10:01 10:02 10:03 10:05 = 5 → block
    run = Run().spam("10:00 10:01 10:02 10:11").spam("10:03", prefix="o")
    assert run.blocks() == []
    run.spam("10:05", prefix="p")
    assert [b[0] for b in run.blocks()] == [1]
    evidence = [e.scanned_at_ms for e in run.of(Block)[0].evidence]
    assert evidence == [t(c) for c in ("10:00", "10:01", "10:02", "10:03", "10:05")]


def test_rule5_new_verdict_completing_a_later_window() -> None:
    #   10:05 10:06 10:07 10:08 counted; then an out-of-order 10:01 (H=10:08):
    #   (10:- , 10:08] = (09:58, 10:08] holds 10:01 10:05 10:06 10:07 10:08 → block
    run = Run().spam("10:05 10:06 10:07 10:08").spam("10:01", prefix="o")
    assert [b[0] for b in run.blocks()] == [1]


def test_rule5_configurable_threshold_and_window() -> None:
    config = PolicyConfig(threshold=3, window_ms=30_000)
    run = Run(config).spam("10:00:00 10:00:10 10:00:30")  # (10:00:00, 10:00:30] holds 2
    assert run.blocks() == []
    run.spam("10:00:35", prefix="x")  # (10:00:05, 10:00:35] holds 10:00:10 10:00:30 10:00:35
    assert len(run.blocks()) == 1


def test_rule6_old_window_entries_are_dropped() -> None:
    #   entries older than H - 2 windows can never matter: they are dropped
    run = Run().spam("10:00 10:01")
    run.spam("10:25", prefix="x")  # H = 10:25, H - 20 min = 10:05 → 10:00 and 10:01 dropped
    entries = run.engine.states[ALICE].window.entries
    assert [at for at, _ in entries] == [t("10:25")]


def test_rule6_entries_too_old_for_any_verdict_still_to_come_are_dropped() -> None:
    #   day 0  10:00 10:01 counted (H = 10:01)
    #   day 1  10:11 on the clock: every verdict still to come is scanned at or after
    #          day 0 10:11 (rule 1), so an interval (x - 10 min, x] holding it starts at
    #          or after 10:01: neither entry can join a window again, and both are dropped
    #          (H - 2 windows = 09:51 would have kept them).
    #          m1 retried, scanned day 0 10:11 (not late): counted, not a duplicate.
    run = Run().spam("10:00 10:01").tick("+1d 10:11")
    outcome, _ = run.engine.verdict(verdict("m1@10:01", "10:11"))
    assert outcome is Outcome.COUNTED
    assert run.engine.states[ALICE].window.entries == [(t("10:11"), "m1@10:01")]
    #   one millisecond earlier on the clock, (10:00:59.999, 10:10:59.999] could still hold
    #   10:01: it is kept, and the retry is a duplicate
    early = Run().spam("10:00 10:01").tick("+1d 10:10:59.999")
    outcome, _ = early.engine.verdict(verdict("m1@10:01", "10:10:59.999"))
    assert outcome is Outcome.DUPLICATE


def test_rule6_a_quiet_mailbox_is_forgotten_exactly_when_the_rule_allows() -> None:
    #   10:00 one stray spam: H = 10:00, window 10 min, max_lateness 1 d.
    #   Forgettable once H + window (10:10) is before now - 1 d, i.e. from +1d 10:10:00.001.
    config = PolicyConfig()
    run = Run(config).spam("10:00")
    state = run.engine.states[ALICE]
    assert not forgettable(config, state, t("+1d 10:10"))
    assert forgettable(config, state, t("+1d 10:10:00.001"))
    run.tick("+1d 10:10")
    assert run.engine.forget() == 0 and ALICE in run.engine.states
    run.tick("+1d 10:10:00.001")
    assert run.engine.forget() == 1 and ALICE not in run.engine.states
    #   with max_lateness 1 h: from 11:10:00.001 on the same day
    hourly = PolicyConfig(max_lateness_ms=HOUR)
    assert not forgettable(hourly, state, t("11:10"))
    assert forgettable(hourly, state, t("11:10:00.001"))


def test_rule6_the_last_unblock_or_release_must_also_be_before_now_minus_max_lateness() -> None:
    #   A state with no offense, no block and an old H, whose verdicts count only from
    #   12:00 (the time of its last unblock or release). The engine never makes one (a
    #   mailbox that was blocked is kept, see below), but the rule reads it this way.
    config = PolicyConfig()
    state = MailboxState()
    state.high_water_ms, state.counts_from_ms = t("10:00"), t("12:00")
    assert not forgettable(config, state, t("+1d 12:00"))
    assert forgettable(config, state, t("+1d 12:00:00.001"))


def test_rule6_a_mailbox_ever_blocked_or_allowlisted_is_kept() -> None:
    #   Our choice beyond the rule: their block sequence and allowlist count keep
    #   decision ids unique (rule 13), so they are never forgotten.
    released = Run(PolicyConfig(permanent_on_offense=1)).spam("10:00 10:01 10:02 10:03 10:04")
    released.release("10:30").tick("+90d 10:00")
    state = released.engine.states[ALICE]
    assert state.offenses == 0 and not state.blocked
    assert not forgettable(released.engine.config, state, t("+90d 10:00"))
    offender = Run().spam("10:00 10:01 10:02 10:03 10:04").tick("+90d 10:00")
    assert offender.engine.states[ALICE].offenses == 1
    allowlisted = Run(PolicyConfig.from_mapping({"allowlist": ["@example.com"]}))
    allowlisted.spam("10:00 10:01 10:02 10:03 10:04").tick("+90d 10:00")
    for run in (released, offender, allowlisted):
        assert run.engine.forget() == 0 and ALICE in run.engine.states


def test_rule6_forgetting_never_changes_a_decision() -> None:
    #   day 0  10:00 10:01 10:02 10:03 counted (H = 10:03)
    #   day 1  10:13:00.001 alice is forgotten (the earliest moment the rule allows), then
    #          m0 retried, scanned exactly max_lateness ago (day 0 10:13:00.001): counted,
    #            not a duplicate: its old entry can never join a window again
    #          m1 retried, scanned now: counted
    #          10:14 10:15 10:16 10:17 → (10:07, 10:17] holds 5 → BLOCK
    #   … exactly as when nothing was forgotten.
    def scenario(forget: bool) -> tuple[Run, list[Outcome]]:
        run = Run().spam("10:00 10:01 10:02 10:03").tick("+1d 10:13:00.001")
        if forget:
            assert run.engine.forget() == 1
        outcomes = []
        for message_id, clock in [
            ("m0@10:00", "10:13:00.001"),
            ("m1@10:01", "+1d 10:13:00.001"),
            *((f"x@{c}", f"+1d {c}") for c in ("10:14", "10:15", "10:16", "10:17")),
        ]:
            outcome, decisions = run.engine.verdict(verdict(message_id, clock))
            run.decisions.extend(decisions)
            outcomes.append(outcome)
        return run, outcomes

    (kept, kept_outcomes), (forgotten, forgotten_outcomes) = scenario(False), scenario(True)
    assert kept_outcomes == [Outcome.COUNTED] * 5 + [Outcome.TRIGGERED]
    assert kept.blocks() == [(1, t("+1d 10:17"), t("+1d 11:17"))]
    assert (forgotten_outcomes, forgotten.decisions) == (kept_outcomes, kept.decisions)
    assert forgotten.engine.states == kept.engine.states


def test_rule6_engine_memory_is_bounded_by_forgetting() -> None:
    #   30,000 mailboxes each send one stray spam, one per second, with max_lateness 1 min:
    #   a state may be forgotten 11 min (window + max_lateness) after its spam, so few
    #   are held at any time: the engine forgets in batches, holding at most ~10,000 more.
    run = Run(PolicyConfig(max_lateness_ms=MINUTE))
    for i in range(30_000):
        run.feed(
            Verdict(
                MailboxKey.of("t1", f"user{i}@example.com"),
                f"m{i}",
                Direction.OUTBOUND,
                VerdictKind.SPAM,
                t("10:00") + i * 1000,
            )
        )
    assert len(run.engine.states) < 12_000
    run.engine.forget()
    assert len(run.engine.states) == 11 * 60 + 1  # the last 661 seconds' senders


def test_rule7_a_skewed_future_timestamp_is_treated_as_now() -> None:
    #   now = 10:00; a verdict stamped 12:00 (2 h ahead) counts as 10:00, so H stays 10:00
    #   and later honest verdicts are not late.
    config, state, now = PolicyConfig(), MailboxState(), t("10:00")
    context = Directory()
    step_verdict(config, state, verdict("skewed", "12:00"), now, context)
    assert state.high_water_ms == now
    assert state.window.entries == [(now, "skewed")]
    outcome, _ = step_verdict(config, state, verdict("honest", "10:01"), t("10:01"), context)
    assert outcome is Outcome.COUNTED
    #   within 5 minutes ahead is kept as stamped
    step_verdict(config, state, verdict("slightly", "10:06"), t("10:01"), context)
    assert state.high_water_ms == t("10:06")


# ------------------------------------------------------------- blocking ---


def _offend(run: Run, day: int) -> None:
    """Five spam verdicts on day `day` at 10:00 … 10:04."""
    for i in range(5):
        run.feed(verdict(f"d{day}-m{i}", f"+{day}d 10:0{i}"))


def test_rule8_escalation_doubles_then_is_permanent_on_the_sixth() -> None:
    run = Run()
    for day in range(7):
        _offend(run, day)
    durations = [(b[2] - b[1]) / HOUR if b[2] else None for b in run.blocks()]
    assert durations == [1, 2, 4, 8, 16, None]
    assert [b[0] for b in run.blocks()] == [1, 2, 3, 4, 5, 6]
    assert run.of(Block)[-1].permanent and run.of(Report)[-1].event == "permanently_blocked"
    assert len(run.blocks()) == 6  # day 7's burst lands on the permanent block


def test_rule8_offenses_never_decay() -> None:
    run = Run()
    _offend(run, 0)
    _offend(run, 200)  # 200 days later, still the second offense
    assert [(b[0], (b[2] - b[1]) // HOUR) for b in run.blocks()] == [(1, 1), (2, 2)]


def test_rule8_block_starts_at_now_not_at_the_verdict_time() -> None:
    #   now = 10:30 (a tick); an out-of-order burst scanned 10:21 … 10:25 triggers at now
    run = Run().tick("10:30").spam("10:21 10:22 10:23 10:24 10:25")
    assert run.blocks() == [(1, t("10:30"), t("11:30"))]


def test_rule8_configurable_escalation() -> None:
    config = PolicyConfig(first_block_ms=3_000, growth_factor=3, permanent_on_offense=3)
    run = Run(config)
    for day in range(3):
        _offend(run, day)
    assert [(b[0], None if b[2] is None else b[2] - b[1]) for b in run.blocks()] == [
        (1, 3_000),
        (2, 9_000),
        (3, None),
    ]


def test_rule9_timed_block_ends_exactly_at_until() -> None:
    run = Run().spam("10:00 10:01 10:02 10:03 10:04")
    run.tick("11:03:59.999")
    assert run.unblocks() == []
    run.tick("11:04")
    assert run.unblocks() == [(1, t("11:04"), "expired")]
    unblock = run.of(Unblock)[0]
    assert unblock.command_id == decision_id(ALICE, 1, "unblock")
    assert run.of(Report)[-1].event == "unblocked"


def test_rule9_unblocks_are_stamped_with_their_own_until_in_until_order() -> None:
    #   bob blocked 10:04 (until 11:04), alice 10:14 (until 11:14); a tick at 13:00 ends both
    run = Run().spam("10:00 10:01 10:02 10:03 10:04", mailbox="bob@example.com")
    run.spam("10:10 10:11 10:12 10:13 10:14")
    run.tick("13:00")
    ends = [(d.key.mailbox, d.at_ms) for d in run.of(Unblock)]
    assert ends == [("bob@example.com", t("11:04")), ("alice@example.com", t("11:14"))]


def test_rule9_a_release_cannot_shorten_a_timed_block() -> None:
    run = Run().spam("10:00 10:01 10:02 10:03 10:04").release("10:30")
    assert run.unblocks() == []
    assert "timed block" in run.refusals[0] and "cannot be shortened" in run.refusals[0]
    run.tick("11:04")
    assert run.unblocks() == [(1, t("11:04"), "expired")]


def test_rule10_release_ends_a_permanent_block_and_resets_offenses() -> None:
    run = Run(PolicyConfig(permanent_on_offense=2))
    _offend(run, 0)
    _offend(run, 1)
    assert run.blocks()[-1] == (2, t("+1d 10:04"), None)
    run.release("+1d 12:00")
    assert run.unblocks()[-1] == (2, t("+1d 12:00"), "released")  # carries the ended offense
    release_unblock = run.of(Unblock)[-1]
    assert release_unblock.actor == "support-7"
    report = run.of(Report)[-1]
    assert (report.event, report.actor, report.reason) == (
        "released",
        "support-7",
        "owner verified",
    )
    state = run.engine.states[ALICE]
    assert state.offenses == 0 and not state.blocked
    #   verdicts scanned before the release do not count; after it the ladder restarts at 1
    outcome, _ = run.engine.verdict(verdict("before", "+1d 11:59"))
    assert outcome is Outcome.BEFORE_RESET
    _offend(run, 2)
    assert run.blocks()[-1] == (1, t("+2d 10:04"), t("+2d 11:04"))


def test_rule10_release_of_a_mailbox_that_is_not_blocked_is_refused() -> None:
    run = Run().release("10:00")
    assert run.refusals and "not blocked" in run.refusals[0]
    assert run.decisions == []


def test_rule10_a_release_requested_before_the_block_started_is_refused() -> None:
    #   10:00-10:04 spam ─► permanent BLOCK at 10:04 (permanent on the 1st offense)
    #   a release asked for at 10:02 arrives after it (delayed, or replayed): refused,
    #   it was meant for an earlier block; one asked for at 10:30 releases
    run = Run(PolicyConfig(permanent_on_offense=1)).spam("10:00 10:01 10:02 10:03 10:04")
    run.release("10:02")
    assert run.unblocks() == []
    assert "after this release was requested" in run.refusals[0]
    run.release("10:30")
    assert run.unblocks() == [(1, t("10:30"), "released")]


def test_rule11_every_block_in_order_block_scans_alert_report() -> None:
    run = Run().directory("u-alice", ["laptop-1", "phone-2"], "09:00")
    run.spam("10:00 10:01 10:02 10:03 10:04")
    assert run.kinds() == ["block", "scan", "scan", "alert", "report"]
    scans = run.of(ScanRequest)
    assert [(s.owner_id, s.device_id) for s in scans] == [
        ("u-alice", "laptop-1"),
        ("u-alice", "phone-2"),
    ]
    alert = run.of(Alert)[0]
    assert (
        alert.kind,
        alert.offense,
        alert.until_ms,
        alert.owner_id,
        alert.devices,
        alert.scans_requested,
    ) == ("blocked", 1, t("11:04"), "u-alice", ("laptop-1", "phone-2"), True)
    assert len(alert.message_ids) == 5
    assert run.of(Report)[0].event == "blocked"


def test_rule11_synchronized_security_off_stops_scans_never_the_block() -> None:
    #   on by default → scans; off at 10:30 → next block has none; on again → scans again
    run = Run().directory("u-alice", ["laptop-1"], "09:00")
    _offend(run, 0)
    run.settings(False, "+0d 12:00")
    _offend(run, 1)
    run.settings(True, "+1d 12:00")
    _offend(run, 2)
    assert [b[0] for b in run.blocks()] == [1, 2, 3]
    per_block = [a.scans_requested for a in run.of(Alert)]
    assert per_block == [True, False, True]
    assert len(run.of(ScanRequest)) == 2


def test_rule11_default_synchronized_security_is_configurable() -> None:
    run = Run(PolicyConfig(default_synchronized_security=False))
    run.directory("u-alice", ["laptop-1"], "09:00")
    _offend(run, 0)
    assert run.of(ScanRequest) == [] and run.blocks()


def test_rule11_directory_as_known_at_the_block() -> None:
    #   alice's mailbox changes hands between blocks; each block scans the owner of its time
    run = Run().directory("u-alice", ["laptop-1"], "09:00")
    _offend(run, 0)
    run.directory("u-carol", ["tablet-9", "phone-3"], "+0d 20:00")
    _offend(run, 1)
    owners = [(s.owner_id, s.device_id) for s in run.of(ScanRequest)]
    assert owners == [("u-alice", "laptop-1"), ("u-carol", "tablet-9"), ("u-carol", "phone-3")]


def test_rule11_unknown_owner_still_blocks_and_alerts() -> None:
    run = Run().spam("10:00 10:01 10:02 10:03 10:04")
    assert run.kinds() == ["block", "alert", "report"]
    alert = run.of(Alert)[0]
    assert alert.owner_id is None and alert.devices == () and not alert.scans_requested


def test_rule11_an_older_directory_entry_does_not_replace_a_newer_one() -> None:
    run = Run().directory("u-new", ["d-new"], "09:30").directory("u-old", ["d-old"], "09:00")
    _offend(run, 0)
    assert [s.owner_id for s in run.of(ScanRequest)] == ["u-new"]


@pytest.mark.parametrize("entry", ["alice@example.com", "@example.com", " ALICE@Example.com "])
def test_rule12_allowlist_never_blocks_but_alerts(entry: str) -> None:
    run = Run(PolicyConfig.from_mapping({"allowlist": [entry]}))
    run.spam("10:00 10:01 10:02 10:03 10:04")
    assert run.blocks() == []
    assert run.kinds() == ["alert"]
    alert = run.of(Alert)[0]
    assert alert.kind == "allowlisted" and len(alert.evidence) == 5
    state = run.engine.states[ALICE]
    assert state.offenses == 0 and len(state.window) == 0
    run.spam("10:05 10:06 10:07 10:08 10:09", prefix="again")
    alerts = run.of(Alert)
    assert len(alerts) == 2 and alerts[0].alert_id != alerts[1].alert_id


def test_rule12_allowlist_domain_does_not_match_other_domains() -> None:
    run = Run(PolicyConfig.from_mapping({"allowlist": ["@example.org", "bob@example.com"]}))
    run.spam("10:00 10:01 10:02 10:03 10:04")
    assert len(run.blocks()) == 1


def test_rule13_ids_are_deterministic_and_never_reused_after_a_release() -> None:
    def scenario() -> Run:
        run = Run(PolicyConfig(permanent_on_offense=1))
        _offend(run, 0)
        run.release("+0d 12:00")
        _offend(run, 1)
        return run

    first, second = scenario(), scenario()
    assert [d for d in first.decisions] == [d for d in second.decisions]
    blocks = first.of(Block)
    assert [b.offense for b in blocks] == [1, 1]  # offense reset by the release …
    assert blocks[0].command_id != blocks[1].command_id  # … the block sequence did not
    assert [b.sequence for b in blocks] == [1, 2]
    ids = [
        getattr(d, name)
        for d in first.decisions
        for name in ("command_id", "request_id", "alert_id", "report_id")
        if hasattr(d, name)
    ]
    assert len(ids) == len(set(ids))


def test_rule13_unblock_carries_the_offense_of_the_block_it_ends() -> None:
    run = Run()
    _offend(run, 0)
    _offend(run, 1)
    run.tick("+2d 00:00")
    assert [u[0] for u in run.unblocks()] == [1, 2]
    blocks, unblocks = run.of(Block), run.of(Unblock)
    assert [b.sequence for b in blocks] == [u.sequence for u in unblocks]
