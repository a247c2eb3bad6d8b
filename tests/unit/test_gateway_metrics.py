"""The gateway's metrics: exact after a scrape, series exist at zero, no mailbox labels."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from processor.mail.blocklist import command_from_record
from processor.mail.gateway_metrics import GatewayMetrics
from processor.mail.policy_answers import DUNNO_REPLY, Answer

T0 = 1_767_607_200_000


def samples(metrics: GatewayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_every_family_exists_before_any_request() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.watch(lambda: 1.5, lambda: False, lambda: (2, 1), lambda: 7)
    names = {name for name, _ in samples(metrics)}

    for family in GatewayMetrics.METRIC_NAMES:
        assert any(name.startswith(family) for name in names), family
    values = samples(metrics)
    assert values[("sendguard_gateway_requests_total", (("action", "reject"),))] == 0
    assert values[("sendguard_gateway_malformed_requests_total", (("reason", "not_utf8"),))] == 0
    assert values[("sendguard_gateway_state_age_seconds", ())] == 1.5
    assert values[("sendguard_gateway_mailboxes_blocked", (("block", "timed"),))] == 2
    assert values[("sendguard_gateway_directory_mailboxes", ())] == 7


def test_counts_are_exact_at_each_scrape() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    block = command_from_record(
        {
            "command_id": "c",
            "action": "BLOCK",
            "tenant_id": "acme",
            "mailbox": "a@acme.example",
            "at": T0,
            "offense": 6,
            "permanent": True,
            "until": None,
            "block_sequence": 6,
        }
    )
    for _ in range(3):
        metrics.answered(Answer("dunno", "not_blocked", DUNNO_REPLY, "map"))
    metrics.answered(Answer("reject", "blocked", b"", "directory", block, "a@acme.example"))
    metrics.malformed("line_too_long")
    for seconds in (0.00001, 0.0003, 5.0):
        metrics.observe_latency(seconds)

    values = samples(metrics)
    assert values[("sendguard_gateway_requests_total", (("action", "dunno"),))] == 3
    assert values[("sendguard_gateway_requests_total", (("action", "reject"),))] == 1
    assert values[("sendguard_gateway_requests_total", (("action", "defer"),))] == 1
    assert values[("sendguard_gateway_blocked_answers_total", (("block", "permanent"),))] == 1
    assert values[("sendguard_gateway_tenant_lookups_total", (("source", "map"),))] == 3
    assert (
        values[("sendguard_gateway_malformed_requests_total", (("reason", "line_too_long"),))] == 1
    )
    histogram = "sendguard_gateway_request_duration_seconds"
    assert values[(f"{histogram}_bucket", (("le", "5e-05"),))] == 1
    assert values[(f"{histogram}_bucket", (("le", "0.0005"),))] == 2
    assert values[(f"{histogram}_bucket", (("le", "1.0"),))] == 2
    assert values[(f"{histogram}_bucket", (("le", "+Inf"),))] == 3
    assert values[(f"{histogram}_count", ())] == 3
    assert abs(values[(f"{histogram}_sum", ())] - 5.00031) < 1e-9

    # A second scrape does not count them again.
    assert samples(metrics)[("sendguard_gateway_requests_total", (("action", "dunno"),))] == 3


def test_no_label_can_carry_a_mailbox_or_tenant() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    labels = {name for _, pairs in samples(metrics) for name, _ in pairs}
    assert labels <= {
        "action",
        "reason",
        "block",
        "source",
        "kind",
        "result",
        "topic",
        "le",
        "version",
    }


def test_every_metric_is_documented_in_the_mail_guide() -> None:
    guide = (Path(__file__).resolve().parents[2] / "docs" / "mail.md").read_text(encoding="utf-8")
    for name in GatewayMetrics.METRIC_NAMES:
        assert f"`{name}" in guide, name
