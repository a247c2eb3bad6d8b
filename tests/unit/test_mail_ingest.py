"""`sendguard ingest`'s metrics and command line, without a broker."""

from __future__ import annotations

import os
from pathlib import Path

import click
import pytest
from prometheus_client import CollectorRegistry

from processor.mail.ingest_command import parse_host_port
from processor.mail.ingest_metrics import OUTCOMES, IngestMetrics
from processor.mail.rspamd import MAPPING_REASONS
from tests.unit.test_cli_startup import HEAVY, run_probe


def sample(metrics: IngestMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_every_series_exists_at_zero_and_none_is_keyed_by_tenant_or_mailbox() -> None:
    metrics = IngestMetrics(CollectorRegistry())

    for outcome in OUTCOMES:
        assert sample(metrics, "sendguard_ingest_requests_total", outcome=outcome) == 0
    for reason in MAPPING_REASONS:
        assert sample(metrics, "sendguard_ingest_dead_letters_total", reason=reason) == 0
    assert (
        sample(metrics, "sendguard_ingest_verdicts_total", direction="INBOUND", verdict="VIRUS")
        == 0
    )
    labels = {
        label for family in metrics.registry.collect() for s in family.samples for label in s.labels
    }
    assert labels <= {"outcome", "direction", "verdict", "reason", "version", "le"}
    names = {family.name for family in metrics.registry.collect()}
    assert {n.removesuffix("_total") for n in IngestMetrics.METRIC_NAMES} == names


def test_counts_and_refuses_labels_outside_their_set() -> None:
    metrics = IngestMetrics(CollectorRegistry())

    metrics.request("verdict")
    metrics.verdict("OUTBOUND", "SPAM")
    metrics.dead_letter("unknown_tenant")
    metrics.delivery(0.004, True)
    metrics.delivery(30.0, False)

    assert sample(metrics, "sendguard_ingest_requests_total", outcome="verdict") == 1
    assert (
        sample(metrics, "sendguard_ingest_verdicts_total", direction="OUTBOUND", verdict="SPAM")
        == 1
    )
    assert sample(metrics, "sendguard_ingest_dead_letters_total", reason="unknown_tenant") == 1
    assert sample(metrics, "sendguard_ingest_delivery_seconds_count") == 1
    assert sample(metrics, "sendguard_ingest_delivery_failures_total") == 1
    for bad in (
        lambda: metrics.request("j.doe@acme.example"),
        lambda: metrics.dead_letter("whatever"),
        lambda: metrics.verdict("SIDEWAYS", "SPAM"),
    ):
        with pytest.raises(ValueError, match="unknown"):
            bad()


@pytest.mark.parametrize(
    ("value", "expected"),
    [("127.0.0.1:6070", ("127.0.0.1", 6070)), ("[::1]:25", ("::1", 25)), ("h:1", ("h", 1))],
)
def test_listen_addresses(value: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(value, "--listen") == expected


@pytest.mark.parametrize("value", ["6070", ":6070", "host:", "host:0", "host:70000", "h:x"])
def test_bad_listen_addresses_name_the_flag(value: str) -> None:
    with pytest.raises(click.BadParameter, match="is not HOST:PORT"):
        parse_host_port(value, "--listen")


def test_ingest_help_is_light_and_shows_env_fallbacks() -> None:
    help_text, code, imported = run_probe("ingest", "--help")

    assert code == 0
    assert imported.isdisjoint({*HEAVY, "aiohttp", "prometheus_client"}), imported
    for envvar in (
        "SENDGUARD_TENANTS",
        "SENDGUARD_INGEST_LISTEN",
        "SENDGUARD_LOCAL_NETWORKS",
        "SENDGUARD_INGEST_MAX_BODY",
        "SENDGUARD_INGEST_ACK_TIMEOUT",
        "SENDGUARD_BOOTSTRAP",
    ):
        assert envvar in help_text


def test_the_tenant_map_is_reloaded_when_its_file_changes_and_kept_when_broken(
    tmp_path: Path,
) -> None:
    from processor.codec.wire import Codec
    from processor.mail.delivery import KafkaDelivery
    from processor.mail.ingest import IngestServer, IngestSettings
    from processor.mail.rspamd import MappingRules
    from processor.mail.tenants import TenantMap

    path = tmp_path / "tenants.yaml"
    path.write_text("acme.example: acme\n")
    # A real producer; nothing is sent, so no broker needs to listen there.
    delivery = KafkaDelivery(
        {"bootstrap.servers": "127.0.0.1:1"}, max_pending=10, delivery_timeout_s=1
    )
    try:
        server = IngestServer(
            IngestSettings(verdicts_topic="v", dead_letter_topic="d"),
            MappingRules(TenantMap.load(path)),
            Codec.from_config(),
            delivery,
            IngestMetrics(CollectorRegistry()),
            tenants_path=path,
        )
        path.write_text("acme.example: acme\nglobex.example: globex\n")
        os.utime(path, (1, 1))
        server.reload_tenants()
        assert server.rules.tenants.tenant_of("x@globex.example") == "globex"

        path.write_text("- not a map\n")
        os.utime(path, (2, 2))
        server.reload_tenants()
        assert server.rules.tenants.tenant_of("x@globex.example") == "globex"
    finally:
        delivery.close(1)
