"""Prometheus metrics of `sendguard ingest` (the rspamd connector).

Same rules as the worker's (`processor.ops.metrics`): an injected registry, every
series of a closed label set created at zero, and no label carries a tenant, a
mailbox or anything else a sender chooses.
"""

from __future__ import annotations

from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from processor import __version__
from processor.mail.rspamd import MAPPING_REASONS
from processor.ops.metrics import DIRECTIONS, VERDICTS

#: What became of one POST, and the HTTP status rspamd got:
#: verdict (200), dead_letter (200, or 413 for a body over the limit),
#: busy (503: too many requests at once or the producer queue is full),
#: not_delivered (503: the broker did not acknowledge in time or refused),
#: bad_request (400/404/405/408: wrong path or method, a body that did not arrive).
OUTCOMES: Final = ("verdict", "dead_letter", "busy", "not_delivered", "bad_request")

#: librdkafka's batching adds up to 5 ms (linger.ms); a healthy local broker
#: acknowledges in milliseconds, rspamd gives up after 5 s.
DELIVERY_BUCKETS_SECONDS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _check(value: str, allowed: tuple[str, ...], label: str) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {label} {value!r}; expected one of {', '.join(allowed)}")
    return value


class IngestMetrics:
    """The connector's metrics on one registry; methods raise ValueError for a label
    value outside its closed set."""

    METRIC_NAMES: Final[frozenset[str]] = frozenset(
        {
            "sendguard_ingest_requests_total",
            "sendguard_ingest_verdicts_total",
            "sendguard_ingest_dead_letters_total",
            "sendguard_ingest_delivery_seconds",
            "sendguard_ingest_delivery_failures_total",
            "sendguard_ingest_in_flight_requests",
            "sendguard_ingest_pending_records",
            "sendguard_ingest_broker_up",
            "sendguard_ingest_info",
        }
    )

    def __init__(self, registry: CollectorRegistry, version: str = __version__) -> None:
        self.registry = registry
        self._requests = Counter(
            "sendguard_ingest_requests_total",
            "rspamd POSTs, by what became of them (see the README for the HTTP status).",
            ["outcome"],
            registry=registry,
        )
        self._verdicts = Counter(
            "sendguard_ingest_verdicts_total",
            "Verdicts delivered to mail.verdicts, by direction and verdict.",
            ["direction", "verdict"],
            registry=registry,
        )
        self._dead_letters = Counter(
            "sendguard_ingest_dead_letters_total",
            "rspamd results dead-lettered, by reason.",
            ["reason"],
            registry=registry,
        )
        self._delivery = Histogram(
            "sendguard_ingest_delivery_seconds",
            "From producing a record to the broker's acknowledgement.",
            buckets=DELIVERY_BUCKETS_SECONDS,
            registry=registry,
        )
        self._delivery_failures = Counter(
            "sendguard_ingest_delivery_failures_total",
            "Records the broker did not take within the delivery timeout.",
            registry=registry,
        )
        self._in_flight = Gauge(
            "sendguard_ingest_in_flight_requests",
            "POSTs being read, mapped or waiting for their delivery.",
            registry=registry,
        )
        self._pending = Gauge(
            "sendguard_ingest_pending_records",
            "Records in the producer's queue or in flight to the broker.",
            registry=registry,
        )
        self._broker_up = Gauge(
            "sendguard_ingest_broker_up",
            "1 when the last check reached the broker and found the topics, else 0.",
            registry=registry,
        )
        self._info = Gauge(
            "sendguard_ingest_info",
            "Always 1; the labels describe the running connector.",
            ["version"],
            registry=registry,
        )
        for outcome in OUTCOMES:
            self._requests.labels(outcome)
        for direction in DIRECTIONS:
            for verdict in VERDICTS:
                self._verdicts.labels(direction, verdict)
        for reason in MAPPING_REASONS:
            self._dead_letters.labels(reason)
        self._info.labels(version).set(1)

    def request(self, outcome: str) -> None:
        self._requests.labels(_check(outcome, OUTCOMES, "outcome")).inc()

    def verdict(self, direction: str, verdict: str) -> None:
        self._verdicts.labels(
            _check(direction, DIRECTIONS, "direction"), _check(verdict, VERDICTS, "verdict")
        ).inc()

    def dead_letter(self, reason: str) -> None:
        self._dead_letters.labels(_check(reason, MAPPING_REASONS, "reason")).inc()

    def delivery(self, seconds: float, delivered: bool) -> None:
        if delivered:
            self._delivery.observe(seconds)
        else:
            self._delivery_failures.inc()

    def set_in_flight(self, count: int) -> None:
        self._in_flight.set(count)

    def set_pending(self, count: int) -> None:
        self._pending.set(count)

    def set_broker_up(self, up: bool) -> None:
        self._broker_up.set(1 if up else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
