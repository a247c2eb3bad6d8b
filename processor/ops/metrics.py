"""Prometheus metrics of the sendguard worker.

`Metrics` owns every metric family on a registry it is given (never the global
default), so a test or a second worker in one process gets its own counters.
Inputs are plain values and the policy's decision dataclasses, so this module
does not import Faust and is tested without it.

The family names in `Metrics.METRIC_NAMES` are a contract shared with
`deploy/grafana/dashboards/sendguard.json` and `deploy/prometheus/alerts.yml`;
`tests/unit/test_deploy_files.py` checks both use only these names.

Label values are drawn from small closed sets (directions, verdicts, reasons,
offense numbers, topic partitions). No label ever carries a mailbox or tenant id:
each distinct label value is a time series kept forever by Prometheus.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from processor import __version__
from processor.codec.errors import DEAD_LETTER_REASONS as _DEAD_LETTER_REASONS
from processor.ops.audit import OUTCOMES as RELEASE_ATTEMPT_OUTCOMES
from processor.policy.decisions import (
    Alert,
    AlertKind,
    Block,
    Decision,
    Report,
    ScanRequest,
    Unblock,
    UnblockReason,
    visit,
)
from processor.policy.events import Direction, VerdictKind

DIRECTIONS: Final = tuple(d.value for d in Direction)
VERDICTS: Final = tuple(v.value for v in VerdictKind)
IGNORED_REASONS: Final = ("late", "duplicate", "while_blocked", "before_reset")
# One source of truth for dead-letter reasons: the decode error codes and the edge's own.
DEAD_LETTER_REASONS: Final[tuple[str, ...]] = _DEAD_LETTER_REASONS
UNBLOCK_REASONS: Final[tuple[str, ...]] = get_args(UnblockReason)
ALERT_KINDS: Final[tuple[str, ...]] = get_args(AlertKind)
# The default policy blocks permanently on the 6th offense, so 1..6 are every
# offense a default deployment can reach. A policy with a later permanent offense
# adds its few extra values on first use: still bounded by the policy file.
PRECREATED_OFFENSES: Final = tuple(str(n) for n in range(1, 7))

# From a triggering verdict's scanned_at to its BLOCK being sent. The normal path
# (scanner -> mail.verdicts -> edge stage -> repartition -> lockout agent) takes
# well under a second to a few seconds, hence the fine steps up to 10 s; a backlog
# after a restart or a slow broker pushes it to minutes, which the coarse steps up
# to 10 min still place. Beyond that it is an outage, which the consumer-lag gauge
# measures better than a latency bucket.
LATENCY_BUCKETS_SECONDS: Final = (
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    300.0,
    600.0,
)


def _bool_label(value: bool) -> str:
    return "true" if value else "false"


def _check(value: str, allowed: tuple[str, ...], label: str) -> str:
    # A value outside the pre-created set is a bug in the caller; adding it as a
    # new series would hide the bug and grow the series count, so refuse it.
    if value not in allowed:
        raise ValueError(f"unknown {label} {value!r}; expected one of {', '.join(allowed)}")
    return value


class Metrics:
    """The worker's metrics on one registry.

    After construction every counter series with a known label value exists at 0,
    so `rate()` and alert rules see a series before the first event, and
    `sendguard_worker_info{version}` is 1. Methods raise `ValueError` for a label
    value outside its closed set (dead-letter reasons excepted: any code is taken).
    """

    METRIC_NAMES: Final[frozenset[str]] = frozenset(
        {
            "sendguard_verdicts_total",
            "sendguard_qualifying_verdicts_total",
            "sendguard_verdicts_ignored_total",
            "sendguard_events_replayed_total",
            "sendguard_undeliverable_records_total",
            "sendguard_delivery_retries_total",
            "sendguard_dead_letters_total",
            "sendguard_blocks_total",
            "sendguard_unblocks_total",
            "sendguard_release_refusals_total",
            "sendguard_scan_requests_total",
            "sendguard_alerts_total",
            "sendguard_active_timed_blocks",
            "sendguard_permanent_blocks",
            "sendguard_decision_latency_seconds",
            "sendguard_consumer_lag",
            "sendguard_worker_info",
            "sendguard_release_attempts_total",
            "sendguard_audit_suppressed_total",
            "sendguard_edge_up",
            "sendguard_edge_restarts_total",
            "sendguard_edge_stalled",
            "sendguard_edge_batch_retries_total",
            "sendguard_input_lag",
            "sendguard_dead_letter_failures_total",
        }
    )

    def __init__(self, registry: CollectorRegistry, version: str = __version__) -> None:
        self.registry = registry
        self._verdicts = Counter(
            "sendguard_verdicts_total",
            "Decoded verdicts, by direction and verdict.",
            ["direction", "verdict"],
            registry=registry,
        )
        self._qualifying = Counter(
            "sendguard_qualifying_verdicts_total",
            "Qualifying verdicts (outbound spam or virus).",
            registry=registry,
        )
        self._ignored = Counter(
            "sendguard_verdicts_ignored_total",
            "Qualifying verdicts that did not count, by reason.",
            ["reason"],
            registry=registry,
        )
        self._replayed = Counter(
            "sendguard_events_replayed_total",
            "Internal events read again after a crash or rebalance and skipped, "
            "because the stored state already includes them.",
            registry=registry,
        )
        self._undeliverable = Counter(
            "sendguard_undeliverable_records_total",
            "Decision records Kafka refused for good (e.g. too large), by topic and error "
            "code: not sent, and their state stored anyway (README, crash safety).",
            ["topic", "reason"],
            registry=registry,
        )
        self._delivery_retries = Counter(
            "sendguard_delivery_retries_total",
            "Batches of decisions sent again after a failure that may pass (broker "
            "unreachable, timeout); the agent waits meanwhile.",
            registry=registry,
        )
        self._dead_letters = Counter(
            "sendguard_dead_letters_total",
            "Records sent to the dead-letter topic, by reason code.",
            ["reason"],
            registry=registry,
        )
        self._blocks = Counter(
            "sendguard_blocks_total",
            "BLOCK commands sent, by offense number and permanence.",
            ["offense", "permanent"],
            registry=registry,
        )
        self._unblocks = Counter(
            "sendguard_unblocks_total",
            "UNBLOCK commands sent, by reason.",
            ["reason"],
            registry=registry,
        )
        self._release_refusals = Counter(
            "sendguard_release_refusals_total",
            "Support releases refused (the mailbox was not permanently blocked).",
            registry=registry,
        )
        self._scan_requests = Counter(
            "sendguard_scan_requests_total",
            "Endpoint scan requests sent.",
            registry=registry,
        )
        self._alerts = Counter(
            "sendguard_alerts_total",
            "Alerts sent to tenant admins, by kind.",
            ["kind"],
            registry=registry,
        )
        self._active_timed_blocks = Gauge(
            "sendguard_active_timed_blocks",
            "Timed blocks in force on this worker's partitions.",
            registry=registry,
        )
        self._permanent_blocks = Gauge(
            "sendguard_permanent_blocks",
            "Permanent blocks in force on this worker's partitions.",
            registry=registry,
        )
        self._latency = Histogram(
            "sendguard_decision_latency_seconds",
            "From the triggering verdict's scanned_at to its BLOCK being sent.",
            buckets=LATENCY_BUCKETS_SECONDS,
            registry=registry,
        )
        self._lag = Gauge(
            "sendguard_consumer_lag",
            "Records of the internal topic not yet processed by this worker's lockout "
            "agent, by partition (the edge's input: sendguard_input_lag).",
            ["topic", "partition"],
            registry=registry,
        )
        self._release_attempts = Counter(
            "sendguard_release_attempts_total",
            "Requests to the release API received from clients, by outcome "
            "(released, refused, pending, invalid_request, unauthenticated, forbidden, "
            "unavailable).",
            ["outcome"],
            registry=registry,
        )
        self._audit_suppressed = Counter(
            "sendguard_audit_suppressed_total",
            "Unauthenticated release attempts beyond the audit rate limit: counted here, "
            "not written to mail.reports and the log one by one.",
            registry=registry,
        )
        self._edge_up = Gauge(
            "sendguard_edge_up",
            "1 while this worker's edge stage process is alive and reporting, else 0.",
            registry=registry,
        )
        self._edge_restarts = Counter(
            "sendguard_edge_restarts_total",
            "Edge stage processes that exited and were (or are about to be) restarted.",
            registry=registry,
        )
        self._edge_stalled = Gauge(
            "sendguard_edge_stalled",
            "1 while a partition this worker's edge holds has records waiting and no "
            "commit for 30 s, else 0.",
            registry=registry,
        )
        self._edge_batch_retries = Counter(
            "sendguard_edge_batch_retries_total",
            "Edge batches produced again after a failure not about one record "
            "(broker unreachable, delivery timed out, schema registry down).",
            registry=registry,
        )
        self._input_lag = Gauge(
            "sendguard_input_lag",
            "Records of an edge input topic partition not yet committed by the edge's "
            "consumer group, measured by the worker from the broker (group-wide: every "
            "worker reports every partition).",
            ["topic", "partition"],
            registry=registry,
        )
        self._dead_letter_failures = Counter(
            "sendguard_dead_letter_failures_total",
            "Records that should have been dead-lettered but whose dead letter was "
            "refused; each is logged with its source offset and skipped.",
            ["reason"],
            registry=registry,
        )
        self._info = Gauge(
            "sendguard_worker_info",
            "Always 1; the labels describe the running worker.",
            ["version"],
            registry=registry,
        )

        for direction in DIRECTIONS:
            for verdict in VERDICTS:
                self._verdicts.labels(direction, verdict)
        for reason in IGNORED_REASONS:
            self._ignored.labels(reason)
        for reason in DEAD_LETTER_REASONS:
            self._dead_letters.labels(reason)
            self._dead_letter_failures.labels(reason)
        # Both permanence values for every offense: which offense is permanent is a
        # policy setting, and a missing series would read as "no data", not 0.
        for offense in PRECREATED_OFFENSES:
            for permanent in (False, True):
                self._blocks.labels(offense, _bool_label(permanent))
        for reason in UNBLOCK_REASONS:
            self._unblocks.labels(reason)
        for kind in ALERT_KINDS:
            self._alerts.labels(kind)
        for outcome in RELEASE_ATTEMPT_OUTCOMES:
            self._release_attempts.labels(outcome)
        self._info.labels(version).set(1)

    def verdict(self, direction: str, verdict: str, count: int = 1) -> None:
        """Count decoded verdicts (every verdict, clean ones included); `count` lets the
        edge stage report its per-second totals in one call."""
        self._verdicts.labels(
            _check(direction, DIRECTIONS, "direction"), _check(verdict, VERDICTS, "verdict")
        ).inc(count)

    def qualifying(self, count: int = 1) -> None:
        """Count qualifying verdicts, before the policy decides whether they count."""
        self._qualifying.inc(count)

    def ignored(self, reason: str) -> None:
        """Count one qualifying verdict the policy ignored: late, duplicate, ..."""
        self._ignored.labels(_check(reason, IGNORED_REASONS, "ignored reason")).inc()

    def replayed(self, count: int = 1) -> None:
        """Count internal events skipped because the stored state includes them."""
        self._replayed.inc(count)

    def undeliverable(self, topic: str, reason: str) -> None:
        """Count one decision record refused for good; `reason` is a Kafka error code
        name (a small closed set), `topic` a contract topic name."""
        self._undeliverable.labels(topic, reason).inc()

    def delivery_retry(self) -> None:
        """Count one batch of decisions sent again."""
        self._delivery_retries.inc()

    def dead_letter(self, reason: str, count: int = 1) -> None:
        """Count records sent to the dead-letter topic under their reason code."""
        self._dead_letters.labels(reason).inc(count)

    def release_attempt(self, outcome: str) -> None:
        """Count one request to the release API under its outcome."""
        self._release_attempts.labels(
            _check(outcome, RELEASE_ATTEMPT_OUTCOMES, "release attempt outcome")
        ).inc()

    def audit_suppressed(self) -> None:
        """Count one unauthenticated release attempt not audited one by one."""
        self._audit_suppressed.inc()

    def dead_letter_failure(self, reason: str, count: int = 1) -> None:
        """Count records whose dead letter was refused (logged and skipped)."""
        self._dead_letter_failures.labels(reason).inc(count)

    def set_edge_up(self, up: bool) -> None:
        """Whether this worker's edge stage is alive and reporting."""
        self._edge_up.set(1 if up else 0)

    def edge_restarted(self, count: int = 1) -> None:
        """Count edge processes that exited (0 is allowed and changes nothing)."""
        if count:
            self._edge_restarts.inc(count)

    def set_edge_stalled(self, stalled: bool) -> None:
        """Whether this worker's edge holds records it has not committed for too long."""
        self._edge_stalled.set(1 if stalled else 0)

    def edge_batch_retries(self, count: int = 1) -> None:
        """Count edge batches produced again after a failure not about one record."""
        if count:
            self._edge_batch_retries.inc(count)

    def set_input_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the edge group's lag on one input partition (measured from the broker)."""
        self._input_lag.labels(topic, str(partition)).set(lag)

    def decisions(
        self, decisions: Iterable[Decision], now_ms: int, triggered_at_ms: int | None
    ) -> None:
        """Count the decisions of one policy step, as they are sent at `now_ms`.

        `triggered_at_ms` is the scanned_at of the verdict that caused the step, or
        None when no verdict did (a tick, a release): then a Block records no latency.
        """
        counter = _DecisionCounter(self, now_ms, triggered_at_ms)
        for decision in decisions:
            visit(decision, counter)

    def set_blocks(self, timed: int, permanent: int) -> None:
        """Set the numbers of timed and permanent blocks in force on this worker."""
        self._active_timed_blocks.set(timed)
        self._permanent_blocks.set(permanent)

    def set_lag(self, topic: str, partition: int, lag: int) -> None:
        """Set the consumer lag of one assigned partition."""
        self._lag.labels(topic, str(partition)).set(lag)

    def remove_lag(self, topic: str, partition: int) -> None:
        """Drop the lag series of a partition no longer assigned to this worker.

        Without this, a revoked partition would report its last lag forever.
        Removing a series that was never set is not an error.
        """
        self._lag.remove(topic, str(partition))

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry)


class _DecisionCounter:
    """Counts one step's decisions on `metrics` (a `DecisionVisitor`)."""

    def __init__(self, metrics: Metrics, now_ms: int, triggered_at_ms: int | None) -> None:
        self.metrics = metrics
        self.now_ms = now_ms
        self.triggered_at_ms = triggered_at_ms

    def block(self, d: Block) -> None:
        self.metrics._blocks.labels(str(d.offense), _bool_label(d.permanent)).inc()
        if self.triggered_at_ms is not None:
            # A scanned_at ahead of the worker's clock (scanner skew, up to the 5
            # minutes docs/policy.md rule 7 tolerates) would give a negative time; the
            # block was still sent at once, so it counts as 0 rather than pulling
            # the sum below the truth.
            self.metrics._latency.observe(max(0, self.now_ms - self.triggered_at_ms) / 1000)

    def unblock(self, d: Unblock) -> None:
        self.metrics._unblocks.labels(d.reason).inc()

    def scan_request(self, d: ScanRequest) -> None:
        self.metrics._scan_requests.inc()

    def alert(self, d: Alert) -> None:
        self.metrics._alerts.labels(d.kind).inc()

    def report(self, d: Report) -> None:
        # The other report events mirror a Block or Unblock counted above.
        if d.event == "release_refused":
            self.metrics._release_refusals.inc()
