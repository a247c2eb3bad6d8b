"""Prometheus metrics of `sendguard gateway`.

Like `processor.ops.metrics`, every family lives on a registry the caller gives
(never the global default), every labelled series of a known value exists at 0 from
the start, and no label ever carries a mailbox or a tenant: label values come from
small closed sets (actions, reasons, sources, block kinds).

The request path is hot (tens of thousands of requests a second on one core, where
prometheus-client's locked `inc`/`observe` cost ~10 % of a request): `answered`,
`malformed` and `observe_latency` add to plain integers, which `flush` moves into
the counters. The gateway flushes every second and before every scrape (`render`),
so a scrape is always exact. The latency histogram is a small collector of its own
(`LatencyHistogram`) for the same reason: prometheus-client's Histogram has no way
to add many observations at once. All of it is called from the event loop only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from processor import __version__
from processor.codec.command_signing import UNAUTHENTICATED
from processor.codec.errors import DECODE_REASONS
from processor.mail.blocklist import APPLY_RESULTS, ApplyResult
from processor.mail.policy_answers import ANSWER_ACTIONS, Answer
from processor.mail.policy_protocol import MALFORMED_REASONS, MalformedReason
from processor.mail.tenant_resolution import SOURCES

#: From a request's last byte read to its answer handed to the socket. Answers come
#: from memory, so the normal case is tens of microseconds; the steps up to 10 ms
#: show a loaded event loop, the coarse ones beyond it a stalled one.
LATENCY_BUCKETS_SECONDS: Final = (
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.1,
    1.0,
)
#: The topics the gateway reads, as label values (their names without a prefix).
RECORD_TOPICS: Final = ("mailbox.control", "directory.mailboxes")
TIMEOUT_KINDS: Final = ("idle", "read", "write")
BLOCK_KINDS: Final = ("timed", "permanent")


class LatencyHistogram(Collector):
    """A Prometheus histogram fed by `observe` (one list index and two additions)."""

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = buckets
        # counts[i]: observations in (bounds[i-1], bounds[i]]; the last one: above all.
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds

    def collect(self) -> Iterator[HistogramMetricFamily]:
        cumulative, running = [], 0
        for bound, count in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += count
            cumulative.append((_le(bound), float(running)))
        family = HistogramMetricFamily(self.name, self.documentation)
        family.add_metric([], cumulative, sum_value=self.total)
        yield family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(float(bound))


class GatewayMetrics:
    """The gateway's metrics on one registry."""

    METRIC_NAMES: Final[frozenset[str]] = frozenset(
        {
            "sendguard_gateway_requests_total",
            "sendguard_gateway_malformed_requests_total",
            "sendguard_gateway_blocked_answers_total",
            "sendguard_gateway_tenant_lookups_total",
            "sendguard_gateway_request_duration_seconds",
            "sendguard_gateway_connections",
            "sendguard_gateway_connections_refused_total",
            "sendguard_gateway_timeouts_total",
            "sendguard_gateway_commands_total",
            "sendguard_gateway_undecodable_records_total",
            "sendguard_gateway_state_age_seconds",
            "sendguard_gateway_state_stale",
            "sendguard_gateway_mailboxes_blocked",
            "sendguard_gateway_directory_mailboxes",
            "sendguard_gateway_info",
        }
    )

    def __init__(self, registry: CollectorRegistry, version: str = __version__) -> None:
        self.registry = registry
        requests = Counter(
            "sendguard_gateway_requests_total",
            "Policy requests answered, by the action answered (malformed ones too: defer).",
            ["action"],
            registry=registry,
        )
        self._requests: dict[str, Counter] = {
            action: requests.labels(action) for action in ANSWER_ACTIONS
        }
        malformed = Counter(
            "sendguard_gateway_malformed_requests_total",
            "Requests that broke the protocol or a limit, by reason.",
            ["reason"],
            registry=registry,
        )
        self._malformed: dict[str, Counter] = {
            reason: malformed.labels(reason) for reason in MALFORMED_REASONS
        }
        blocked = Counter(
            "sendguard_gateway_blocked_answers_total",
            "Requests refused because the sender's mailbox is blocked, by block kind.",
            ["block"],
            registry=registry,
        )
        self._blocked: dict[str, Counter] = {kind: blocked.labels(kind) for kind in BLOCK_KINDS}
        lookups = Counter(
            "sendguard_gateway_tenant_lookups_total",
            "Where a sender's tenant was found (none: not sendguard's to enforce).",
            ["source"],
            registry=registry,
        )
        self._lookups: dict[str, Counter] = {source: lookups.labels(source) for source in SOURCES}
        self._latency = LatencyHistogram(
            "sendguard_gateway_request_duration_seconds",
            "From a request's last byte read to its answer handed to the socket.",
            LATENCY_BUCKETS_SECONDS,
        )
        registry.register(self._latency)
        # Counts not yet moved into the counters (see the module docstring).
        self._pending_requests: dict[str, int] = dict.fromkeys(ANSWER_ACTIONS, 0)
        self._pending_lookups: dict[str, int] = dict.fromkeys(SOURCES, 0)
        self._pending_blocked: dict[str, int] = dict.fromkeys(BLOCK_KINDS, 0)
        self._pending_malformed: dict[str, int] = dict.fromkeys(MALFORMED_REASONS, 0)
        self.connections = Gauge(
            "sendguard_gateway_connections",
            "Open policy connections.",
            registry=registry,
        )
        self.connections_refused = Counter(
            "sendguard_gateway_connections_refused_total",
            "Connections closed at once because the connection limit was reached.",
            registry=registry,
        )
        timeouts = Counter(
            "sendguard_gateway_timeouts_total",
            "Connections closed for silence: idle between requests, read (a request begun "
            "but not finished in time) or write (answers not read in time).",
            ["kind"],
            registry=registry,
        )
        self._timeouts = {kind: timeouts.labels(kind) for kind in TIMEOUT_KINDS}
        commands = Counter(
            "sendguard_gateway_commands_total",
            "BLOCK/UNBLOCK commands read, by what they did to the state.",
            ["result"],
            registry=registry,
        )
        self._commands = {result: commands.labels(result) for result in APPLY_RESULTS}
        undecodable = Counter(
            "sendguard_gateway_undecodable_records_total",
            "Records skipped because they could not be decoded or validated.",
            ["topic", "reason"],
            registry=registry,
        )
        for topic in RECORD_TOPICS:
            for reason in (*DECODE_REASONS, UNAUTHENTICATED):
                undecodable.labels(topic, reason)
        self._undecodable = undecodable
        self._state_age = Gauge(
            "sendguard_gateway_state_age_seconds",
            "Seconds since the gateway last knew it had read mailbox.control to its end "
            "(since start-up until it first has).",
            registry=registry,
        )
        self._stale = Gauge(
            "sendguard_gateway_state_stale",
            "1 when the state age is over the stale threshold (or it never caught up).",
            registry=registry,
        )
        self._blocked_now = Gauge(
            "sendguard_gateway_mailboxes_blocked",
            "Mailboxes blocked now, by block kind.",
            ["block"],
            registry=registry,
        )
        self._directory = Gauge(
            "sendguard_gateway_directory_mailboxes",
            "Directory entries (tenant, mailbox) known to the gateway.",
            registry=registry,
        )
        info = Gauge(
            "sendguard_gateway_info",
            "Always 1; the labels describe the running gateway.",
            ["version"],
            registry=registry,
        )
        info.labels(version).set(1)

    # -- the request path ----------------------------------------------------------
    def answered(self, answer: Answer) -> None:
        """Count one answered well-formed request."""
        self._pending_requests[answer.action] += 1
        if answer.source is not None:
            self._pending_lookups[answer.source] += 1
        if answer.block is not None:
            self._pending_blocked["permanent" if answer.block.permanent else "timed"] += 1

    def malformed(self, reason: MalformedReason) -> None:
        """Count one malformed request (answered with a defer)."""
        self._pending_malformed[reason] += 1
        self._pending_requests["defer"] += 1

    def observe_latency(self, seconds: float) -> None:
        self._latency.observe(seconds)

    def flush(self) -> None:
        """Move the request path's counts into the counters."""
        pairs: tuple[tuple[dict[str, int], Mapping[str, Counter]], ...] = (
            (self._pending_requests, self._requests),
            (self._pending_lookups, self._lookups),
            (self._pending_blocked, self._blocked),
            (self._pending_malformed, self._malformed),
        )
        for pending, children in pairs:
            for label, count in pending.items():
                if count:
                    children[label].inc(count)
                    pending[label] = 0

    def timeout(self, kind: str) -> None:
        self._timeouts[kind].inc()

    # -- the follower ----------------------------------------------------------------
    def command(self, result: ApplyResult) -> None:
        self._commands[result].inc()

    def undecodable(self, topic: str, reason: str) -> None:
        """Count a skipped record; `topic` is one of RECORD_TOPICS, `reason` any code."""
        self._undecodable.labels(topic, reason).inc()

    # -- gauges computed when scraped ------------------------------------------------
    def watch(
        self,
        state_age_s: Callable[[], float],
        stale: Callable[[], bool],
        blocked: Callable[[], tuple[int, int]],
        directory_entries: Callable[[], int],
    ) -> None:
        """Gauges that read the live state at each scrape (`blocked`: timed, permanent)."""
        self._state_age.set_function(state_age_s)
        self._stale.set_function(lambda: 1.0 if stale() else 0.0)
        self._blocked_now.labels("timed").set_function(lambda: blocked()[0])
        self._blocked_now.labels("permanent").set_function(lambda: blocked()[1])
        self._directory.set_function(directory_entries)

    def render(self) -> bytes:
        """The registry in the Prometheus text exposition format (counts flushed first)."""
        self.flush()
        return generate_latest(self.registry)
