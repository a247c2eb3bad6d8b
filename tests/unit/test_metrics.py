"""`processor.ops.metrics.Metrics`: values read back with `registry.get_sample_value`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from processor import __version__
from processor.ops.metrics import (
    DEAD_LETTER_REASONS,
    DIRECTIONS,
    IGNORED_REASONS,
    VERDICTS,
    Metrics,
)
from processor.policy.decisions import Alert, Block, Decision, Report, ScanRequest, Unblock
from processor.policy.machine import Outcome
from tests.unit.decision_fixtures import T0, alert, block, report, scan, unblock


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_every_known_series_exists_at_zero_before_any_event(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    for direction in DIRECTIONS:
        for verdict in VERDICTS:
            assert (
                value(registry, "sendguard_verdicts_total", direction=direction, verdict=verdict)
                == 0
            )
    for reason in IGNORED_REASONS:
        assert value(registry, "sendguard_verdicts_ignored_total", reason=reason) == 0
    for reason in DEAD_LETTER_REASONS:
        assert value(registry, "sendguard_dead_letters_total", reason=reason) == 0
    for offense in "123456":
        for permanent in ("true", "false"):
            assert (
                value(registry, "sendguard_blocks_total", offense=offense, permanent=permanent) == 0
            )
    for reason in ("expired", "released"):
        assert value(registry, "sendguard_unblocks_total", reason=reason) == 0
    for kind in ("blocked", "allowlisted"):
        assert value(registry, "sendguard_alerts_total", kind=kind) == 0
    for name in (
        "sendguard_qualifying_verdicts_total",
        "sendguard_release_refusals_total",
        "sendguard_scan_requests_total",
        "sendguard_active_timed_blocks",
        "sendguard_permanent_blocks",
        "sendguard_decision_latency_seconds_count",
    ):
        assert value(registry, name) == 0, name
    assert value(registry, "sendguard_worker_info", version=__version__) == 1


def test_metric_names_are_exactly_the_exported_families(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    # The client library drops "_total" from a counter's family name; PromQL uses it.
    exported = {
        family.name + "_total" if family.type == "counter" else family.name
        for family in registry.collect()
    }
    assert exported == Metrics.METRIC_NAMES


def test_no_label_can_carry_a_mailbox_or_tenant(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_lag("mail.verdicts", 0, 1)
    labels = {name for family in registry.collect() for s in family.samples for name in s.labels}
    assert labels == {
        "direction",
        "verdict",
        "reason",
        "offense",
        "permanent",
        "kind",
        "topic",
        "partition",
        "version",
        "le",
        "outcome",
    }


def test_release_attempts_are_counted_by_a_closed_set_of_outcomes(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    for outcome in ("released", "refused", "pending", "unauthenticated", "forbidden"):
        assert value(registry, "sendguard_release_attempts_total", outcome=outcome) == 0
    metrics.release_attempt("unauthenticated")
    metrics.release_attempt("unauthenticated")
    metrics.audit_suppressed()
    assert value(registry, "sendguard_release_attempts_total", outcome="unauthenticated") == 2
    assert value(registry, "sendguard_audit_suppressed_total") == 1
    with pytest.raises(ValueError, match="unknown release attempt outcome"):
        metrics.release_attempt("t1/alice@example.com")


def test_two_instances_on_two_registries_do_not_share_counts() -> None:
    first, second = CollectorRegistry(), CollectorRegistry()
    Metrics(first).qualifying()
    Metrics(second)
    assert first.get_sample_value("sendguard_qualifying_verdicts_total") == 1
    assert second.get_sample_value("sendguard_qualifying_verdicts_total") == 0


def test_verdict_counts_only_its_own_series(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.verdict("OUTBOUND", "SPAM")
    metrics.verdict("OUTBOUND", "SPAM")
    metrics.verdict("INBOUND", "CLEAN")
    assert value(registry, "sendguard_verdicts_total", direction="OUTBOUND", verdict="SPAM") == 2
    assert value(registry, "sendguard_verdicts_total", direction="INBOUND", verdict="CLEAN") == 1
    assert value(registry, "sendguard_verdicts_total", direction="OUTBOUND", verdict="CLEAN") == 0


@pytest.mark.parametrize(
    ("direction", "verdict"),
    [
        pytest.param("outbound", "SPAM", id="lower-case-direction"),
        pytest.param("OUTBOUND", "PHISH", id="unknown-verdict"),
        pytest.param("alice@example.com", "SPAM", id="mailbox-as-direction"),
    ],
)
def test_verdict_refuses_a_label_outside_its_set_and_adds_no_series(
    registry: CollectorRegistry, metrics: Metrics, direction: str, verdict: str
) -> None:
    with pytest.raises(ValueError, match="unknown"):
        metrics.verdict(direction, verdict)
    assert value(registry, "sendguard_verdicts_total", direction=direction, verdict=verdict) is None


def test_qualifying_and_ignored(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.qualifying()
    metrics.qualifying()
    metrics.ignored("late")
    metrics.ignored("before_reset")
    metrics.ignored("before_reset")
    assert value(registry, "sendguard_qualifying_verdicts_total") == 2
    assert value(registry, "sendguard_verdicts_ignored_total", reason="late") == 1
    assert value(registry, "sendguard_verdicts_ignored_total", reason="before_reset") == 2
    assert value(registry, "sendguard_verdicts_ignored_total", reason="duplicate") == 0
    with pytest.raises(ValueError, match="ignored reason"):
        metrics.ignored("counted")


def test_every_ignoring_outcome_of_the_policy_is_a_known_reason(metrics: Metrics) -> None:
    # The worker passes Outcome.value straight to ignored(); a renamed or new
    # ignoring outcome must fail here, not in production.
    counted = {Outcome.NOT_QUALIFYING, Outcome.COUNTED, Outcome.TRIGGERED}
    ignoring = {outcome.value for outcome in Outcome if outcome not in counted}
    assert ignoring == set(IGNORED_REASONS)
    for reason in ignoring:
        metrics.ignored(reason)


def test_dead_letter_takes_any_code(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.dead_letter("bad_body")
    metrics.dead_letter("some_future_code")
    assert value(registry, "sendguard_dead_letters_total", reason="bad_body") == 1
    assert value(registry, "sendguard_dead_letters_total", reason="some_future_code") == 1
    assert value(registry, "sendguard_dead_letters_total", reason="not_avro") == 0


def test_a_block_step_counts_every_decision_and_its_latency(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    step: list[Decision] = [
        block(offense=2),
        scan("laptop-1"),
        scan("phone-1"),
        alert("blocked"),
        report("blocked"),
    ]
    metrics.decisions(step, now_ms=T0, triggered_at_ms=T0 - 1_500)

    assert value(registry, "sendguard_blocks_total", offense="2", permanent="false") == 1
    assert value(registry, "sendguard_blocks_total", offense="1", permanent="false") == 0
    assert value(registry, "sendguard_scan_requests_total") == 2
    assert value(registry, "sendguard_alerts_total", kind="blocked") == 1
    assert value(registry, "sendguard_release_refusals_total") == 0
    assert value(registry, "sendguard_decision_latency_seconds_count") == 1
    assert value(registry, "sendguard_decision_latency_seconds_sum") == pytest.approx(1.5)
    assert value(registry, "sendguard_decision_latency_seconds_bucket", le="1.0") == 0
    assert value(registry, "sendguard_decision_latency_seconds_bucket", le="2.5") == 1


def test_a_permanent_block_is_labelled_permanent(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.decisions([block(offense=6, permanent=True)], now_ms=T0, triggered_at_ms=T0)
    assert value(registry, "sendguard_blocks_total", offense="6", permanent="true") == 1
    assert value(registry, "sendguard_blocks_total", offense="6", permanent="false") == 0


def test_an_offense_beyond_six_gets_its_own_series(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    # A policy with permanent_on_offense > 6 reaches offense 7.
    metrics.decisions([block(offense=7)], now_ms=T0, triggered_at_ms=None)
    assert value(registry, "sendguard_blocks_total", offense="7", permanent="false") == 1


def test_a_block_without_a_triggering_time_records_no_latency(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.decisions([block()], now_ms=T0, triggered_at_ms=None)
    assert value(registry, "sendguard_blocks_total", offense="1", permanent="false") == 1
    assert value(registry, "sendguard_decision_latency_seconds_count") == 0


def test_a_scanned_at_ahead_of_the_clock_records_zero_latency(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    # Scanner clock 2 minutes fast: the block was sent at once, not 2 minutes early.
    metrics.decisions([block()], now_ms=T0, triggered_at_ms=T0 + 120_000)
    assert value(registry, "sendguard_decision_latency_seconds_count") == 1
    assert value(registry, "sendguard_decision_latency_seconds_sum") == 0
    assert value(registry, "sendguard_decision_latency_seconds_bucket", le="0.05") == 1


def test_unblocks_by_reason_and_their_reports_count_once(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.decisions([unblock("expired"), report("unblocked")], now_ms=T0, triggered_at_ms=None)
    metrics.decisions([unblock("released"), report("released")], now_ms=T0, triggered_at_ms=None)
    assert value(registry, "sendguard_unblocks_total", reason="expired") == 1
    assert value(registry, "sendguard_unblocks_total", reason="released") == 1
    assert value(registry, "sendguard_release_refusals_total") == 0


def test_a_refused_release_is_counted(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.decisions([report("release_refused")], now_ms=T0, triggered_at_ms=None)
    assert value(registry, "sendguard_release_refusals_total") == 1


def test_an_allowlist_alert_blocks_nothing(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.decisions([alert("allowlisted")], now_ms=T0, triggered_at_ms=T0)
    assert value(registry, "sendguard_alerts_total", kind="allowlisted") == 1
    assert value(registry, "sendguard_alerts_total", kind="blocked") == 0
    assert value(registry, "sendguard_decision_latency_seconds_count") == 0


def test_an_object_that_is_no_decision_is_refused(metrics: Metrics) -> None:
    with pytest.raises(AssertionError):
        metrics.decisions([object()], now_ms=T0, triggered_at_ms=None)  # type: ignore[list-item]


def test_gauges_are_set_not_added(registry: CollectorRegistry, metrics: Metrics) -> None:
    metrics.set_blocks(timed=4, permanent=1)
    metrics.set_blocks(timed=3, permanent=2)
    assert value(registry, "sendguard_active_timed_blocks") == 3
    assert value(registry, "sendguard_permanent_blocks") == 2

    metrics.set_lag("mail.verdicts", 0, 10)
    metrics.set_lag("mail.verdicts", 0, 7)
    metrics.set_lag("mail.verdicts", 1, 0)
    assert value(registry, "sendguard_consumer_lag", topic="mail.verdicts", partition="0") == 7
    assert value(registry, "sendguard_consumer_lag", topic="mail.verdicts", partition="1") == 0


def test_a_revoked_partition_stops_reporting_lag(
    registry: CollectorRegistry, metrics: Metrics
) -> None:
    metrics.set_lag("mail.verdicts", 3, 42)
    metrics.remove_lag("mail.verdicts", 3)
    metrics.remove_lag("mail.verdicts", 9)  # never set: not an error
    assert value(registry, "sendguard_consumer_lag", topic="mail.verdicts", partition="3") is None


def test_render_is_the_text_exposition_of_its_own_registry(metrics: Metrics) -> None:
    metrics.qualifying()
    text = metrics.render().decode()
    assert "sendguard_qualifying_verdicts_total 1.0" in text
    assert f'sendguard_worker_info{{version="{__version__}"}} 1.0' in text
    # Nothing from the process-wide default registry (its process_/python_ collectors).
    assert "python_info" not in text


DECISIONS = st.one_of(
    st.builds(block, offense=st.integers(1, 6), permanent=st.booleans()),
    st.builds(unblock, reason=st.sampled_from(["expired", "released"])),
    st.builds(scan),
    st.builds(alert, kind=st.sampled_from(["blocked", "allowlisted"])),
    st.builds(
        report,
        event=st.sampled_from(
            ["blocked", "permanently_blocked", "unblocked", "released", "release_refused"]
        ),
    ),
)


@given(steps=st.lists(st.lists(DECISIONS, max_size=6), max_size=10))
def test_family_totals_match_the_decisions_sent(steps: list[list[Decision]]) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for step in steps:
        metrics.decisions(step, now_ms=T0, triggered_at_ms=T0 - 10)
    sent = [d for step in steps for d in step]

    def total(name: str) -> float:
        return sum(
            s.value for family in registry.collect() for s in family.samples if s.name == name
        )

    blocks = sum(isinstance(d, Block) for d in sent)
    assert total("sendguard_blocks_total") == blocks
    assert total("sendguard_decision_latency_seconds_count") == blocks
    assert total("sendguard_unblocks_total") == sum(isinstance(d, Unblock) for d in sent)
    assert total("sendguard_scan_requests_total") == sum(isinstance(d, ScanRequest) for d in sent)
    assert total("sendguard_alerts_total") == sum(isinstance(d, Alert) for d in sent)
    assert total("sendguard_release_refusals_total") == sum(
        isinstance(d, Report) and d.event == "release_refused" for d in sent
    )


def test_counts_in_bulk_add_up_like_single_counts() -> None:
    # The edge stage reports per-second totals; one call with count=n equals n calls.
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.verdict("OUTBOUND", "CLEAN", count=1000)
    metrics.verdict("OUTBOUND", "CLEAN")
    metrics.qualifying(count=20)
    metrics.dead_letter("not_avro", count=3)
    value = registry.get_sample_value
    assert value("sendguard_verdicts_total", {"direction": "OUTBOUND", "verdict": "CLEAN"}) == 1001
    assert value("sendguard_qualifying_verdicts_total") == 20
    assert value("sendguard_dead_letters_total", {"reason": "not_avro"}) == 3
