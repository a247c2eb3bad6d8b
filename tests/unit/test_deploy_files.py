"""The docker-compose stack, Dockerfile, dashboard and alert rules, checked statically.

Nothing here runs Docker: the files are parsed and cross-checked against the
repository and against `Metrics.METRIC_NAMES`, so a panel or rule that queries a
metric the worker does not export, or a mount of a path that does not exist,
fails here instead of showing "No data" in production.
"""

from __future__ import annotations

import functools
import json
import re
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from processor.codec.schemas import SCHEMAS_DIR_ENV
from processor.ops.metrics import Metrics
from processor.topics import TOPICS_FILE_ENV

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DASHBOARD = ROOT / "deploy/grafana/dashboards/sendguard.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"
DATASOURCES = ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml"
DASHBOARD_PROVIDERS = ROOT / "deploy/grafana/provisioning/dashboards/sendguard.yml"

# Series Prometheus itself attaches to every scrape target.
PROMETHEUS_SERIES = frozenset({"up"})
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Words of PromQL that are not metric names when not followed by "(".
PROMQL_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def metric_names_in(query: str) -> set[str]:
    """The metric names a PromQL query reads (Grafana variables allowed).

    Removed first, in order: Grafana variables, string literals, label matchers
    `{...}`, range and subquery brackets `[...]`, and the label lists of
    `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`. What is left that
    looks like an identifier, is not a function call and is not a keyword is a
    metric name.
    """
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", query)
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)",
        "",
        text,
        flags=re.IGNORECASE,
    )
    names = set()
    # The lookbehind refuses a start after a digit, so the "e3" of 1e3 is no name.
    for match in re.finditer(r"(?<![\w.:])[A-Za-z_:][A-Za-z0-9_:]*", text):
        name = match.group(0)
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and name.lower() not in PROMQL_KEYWORDS:
            names.add(name)
    return names


@functools.cache
def histogram_families() -> frozenset[str]:
    registry = CollectorRegistry()
    Metrics(registry)
    return frozenset(f.name for f in registry.collect() if f.type == "histogram")


def unknown_metrics(query: str) -> set[str]:
    """The metric names in `query` that neither the worker nor Prometheus exports."""
    histograms = histogram_families()
    unknown = set()
    for name in metric_names_in(query):
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
                base = name.removesuffix(suffix)
        if base not in Metrics.METRIC_NAMES and base not in PROMETHEUS_SERIES:
            unknown.add(name)
    return unknown


# --- the extractor itself ----------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "names"),
    [
        pytest.param(
            "sum by (direction, verdict) "
            '(rate(sendguard_verdicts_total{job="x"}[$__rate_interval]))',
            {"sendguard_verdicts_total"},
            id="by-clause-matcher-and-grafana-variable",
        ),
        pytest.param(
            "histogram_quantile(0.99, "
            "sum by (le) (rate(sendguard_decision_latency_seconds_bucket[5m])))",
            {"sendguard_decision_latency_seconds_bucket"},
            id="histogram-quantile",
        ),
        pytest.param(
            "sum(a_metric) > 1e3 and on (topic) sum without (partition) (b_metric offset 5m)",
            {"a_metric", "b_metric"},
            id="number-keyword-and-modifiers",
        ),
        pytest.param(
            'up{job="sendguard", instance=~"worker:.*"} == 0',
            {"up"},
            id="regex-matcher",
        ),
        pytest.param(
            "sum(rate(sendguard_blocks_total[5m:1m]))"
            " / sum(rate(sendguard_blocks_total[${window}]))",
            {"sendguard_blocks_total"},
            id="subquery-and-braced-variable",
        ),
    ],
)
def test_extractor_finds_exactly_the_metric_names(query: str, names: set[str]) -> None:
    assert metric_names_in(query) == names


def test_a_panel_with_an_unexported_metric_is_caught() -> None:
    query = 'sum by (reason) (rate(sendguard_made_up_total{reason="x"}[$__rate_interval]))'
    assert unknown_metrics(query) == {"sendguard_made_up_total"}


def test_a_histogram_suffix_on_a_counter_is_caught() -> None:
    # Only histograms have _bucket/_sum/_count series.
    assert unknown_metrics("rate(sendguard_blocks_total_count[5m])") == {
        "sendguard_blocks_total_count"
    }
    assert unknown_metrics("rate(sendguard_decision_latency_seconds_count[5m])") == set()


# --- Grafana -----------------------------------------------------------------------


def dashboard_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        # Collapsed rows keep their panels inside the row.
        yield from dashboard_panels(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [
        (panel["title"], target["expr"])
        for panel in dashboard_panels(dashboard["panels"])
        for target in panel.get("targets", [])
    ]


def test_dashboard_queries_use_only_exported_metrics() -> None:
    queries = dashboard_queries()
    assert queries, "the dashboard has no queries"
    unknown = {title: names for title, expr in queries if (names := unknown_metrics(expr))}
    assert unknown == {}


def test_dashboard_shows_what_an_operator_needs() -> None:
    used = set().union(*(metric_names_in(expr) for _, expr in dashboard_queries()))
    expected = {
        "up",
        "sendguard_verdicts_total",
        "sendguard_qualifying_verdicts_total",
        "sendguard_verdicts_ignored_total",
        "sendguard_dead_letters_total",
        "sendguard_blocks_total",
        "sendguard_unblocks_total",
        "sendguard_release_refusals_total",
        "sendguard_scan_requests_total",
        "sendguard_alerts_total",
        "sendguard_active_timed_blocks",
        "sendguard_permanent_blocks",
        "sendguard_decision_latency_seconds_bucket",
        "sendguard_consumer_lag",
        "sendguard_worker_info",
    }
    assert expected <= used
    exprs = [expr for _, expr in dashboard_queries()]
    for quantile in ("0.5", "0.99"):
        assert any(
            f"histogram_quantile({quantile}," in expr
            and "sendguard_decision_latency_seconds_bucket" in expr
            for expr in exprs
        ), quantile


def test_dashboard_panels_use_the_provisioned_datasource() -> None:
    datasources = load_yaml(DATASOURCES)["datasources"]
    uids = {source["uid"] for source in datasources}
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    for panel in dashboard_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] in uids, panel["title"]


def test_datasource_points_at_the_compose_prometheus() -> None:
    (source,) = load_yaml(DATASOURCES)["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert "prometheus" in load_yaml(COMPOSE)["services"]


# --- Prometheus --------------------------------------------------------------------


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = load_yaml(ALERTS)["groups"]
    return {rule["alert"]: rule for group in groups for rule in group["rules"]}


def test_alert_rules_exist_with_for_labels_and_annotations() -> None:
    rules = alert_rules()
    assert set(rules) >= {
        "SendguardWorkerDown",
        "SendguardConsumerLagGrowing",
        "SendguardDeadLettersRising",
        "SendguardBlockStorm",
        "SendguardUnauthenticatedSupportAction",
    }
    for name, rule in rules.items():
        assert re.fullmatch(r"\d+[smh]", rule["for"]), name
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["description"], name


def test_worker_down_rule_watches_the_scrape_job() -> None:
    assert alert_rules()["SendguardWorkerDown"]["expr"].strip() == 'up{job="sendguard"} == 0'


@pytest.mark.parametrize(
    ("rule", "metric"),
    [
        ("SendguardConsumerLagGrowing", "sendguard_consumer_lag"),
        ("SendguardDeadLettersRising", "sendguard_dead_letters_total"),
        ("SendguardBlockStorm", "sendguard_blocks_total"),
        ("SendguardUnauthenticatedSupportAction", "sendguard_dead_letters_total"),
        ("SendguardReleaseAuthFailures", "sendguard_release_attempts_total"),
    ],
)
def test_each_rule_reads_its_metric(rule: str, metric: str) -> None:
    assert metric in metric_names_in(alert_rules()[rule]["expr"])


def test_alert_rules_use_only_exported_metrics() -> None:
    unknown = {
        name: names
        for name, rule in alert_rules().items()
        if (names := unknown_metrics(rule["expr"]))
    }
    assert unknown == {}


def test_prometheus_scrapes_the_worker_and_loads_the_rules() -> None:
    config = load_yaml(PROMETHEUS)
    for rule_file in config["rule_files"]:
        # Relative rule files resolve against the config file's directory.
        assert (PROMETHEUS.parent / rule_file).is_file(), rule_file
    assert ALERTS.name in config["rule_files"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "sendguard"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == ["worker:6066"]


# --- docker-compose.yml and Dockerfile ---------------------------------------------


def services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = load_yaml(COMPOSE)["services"]
    return services


def host_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(host path, container path) of the service's bind mounts."""
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                yield volume["source"], volume["target"]
            continue
        source, target = volume.split(":")[:2]
        # Named volumes have no path separator; bind mounts start with . or /.
        if source.startswith((".", "/")):
            yield source, target


def test_compose_has_the_services() -> None:
    assert set(services()) >= {"kafka", "topics", "worker", "prometheus", "grafana"}


def test_compose_images_are_pinned() -> None:
    images = {name: s["image"] for name, s in services().items() if "build" not in s}
    assert images["kafka"].startswith("apache/kafka:4.")
    for name, image in images.items():
        _, _, tag = image.partition(":")
        assert tag and tag != "latest", f"{name}: {image} is not pinned"


def test_compose_host_paths_exist() -> None:
    for name, service in services().items():
        build = service.get("build")
        if build is not None:
            context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
            assert context.is_dir(), name
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile")
            assert (context / (dockerfile or "Dockerfile")).is_file(), name
        for source, _ in host_mounts(service):
            assert (ROOT / source).exists(), f"{name} mounts {source}, which does not exist"


def test_compose_mounts_put_configs_where_the_images_read_them() -> None:
    prometheus = dict(host_mounts(services()["prometheus"]))
    assert prometheus["./deploy/prometheus"] == "/etc/prometheus"

    grafana = dict(host_mounts(services()["grafana"]))
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = load_yaml(DASHBOARD_PROVIDERS)["providers"]
    assert grafana["./deploy/grafana/dashboards"] == provider["options"]["path"]


def test_compose_starts_in_order() -> None:
    s = services()
    assert s["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert s["worker"]["depends_on"]["topics"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in s["kafka"]
    assert "healthcheck" in s["worker"]


def test_compose_worker_reaches_kafka_and_publishes_metrics() -> None:
    s = services()
    assert s["worker"]["environment"]["SENDGUARD_BOOTSTRAP"] == "kafka:9092"
    assert "6066:6066" in s["worker"]["ports"]
    # Bound where Prometheus's container reaches it (the worker binds exactly its web
    # host), and advertising the address Prometheus scrapes.
    assert s["worker"]["environment"]["SENDGUARD_WEB_HOST"] == "0.0.0.0"
    (job,) = [j for j in load_yaml(PROMETHEUS)["scrape_configs"] if j["job_name"] == "sendguard"]
    (target,) = [t for static in job["static_configs"] for t in static["targets"]]
    assert s["worker"]["environment"]["SENDGUARD_ADVERTISED_URL"] == f"http://{target}"
    assert s["topics"]["command"] == ["sendguard", "topics", "apply", "--bootstrap", "kafka:9092"]
    assert "PLAINTEXT://kafka:9092" in s["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, arguments = line.partition(" ")
            instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def copy_sources(arguments: str) -> list[str]:
    """The sources of one COPY/ADD (all but the destination), flags dropped."""
    if arguments.startswith("["):
        parts = json.loads(arguments)
    else:
        parts = [part for part in shlex.split(arguments) if not part.startswith("--")]
    return list(parts[:-1])


def test_copy_sources_parses_both_forms() -> None:
    assert copy_sources("--chown=app schemas topics.yaml ./") == ["schemas", "topics.yaml"]
    assert copy_sources('["processor", "/app/processor"]') == ["processor"]


def test_dockerfile_copies_only_paths_that_exist() -> None:
    copies = [args for keyword, args in dockerfile_instructions() if keyword in {"COPY", "ADD"}]
    assert copies
    for arguments in copies:
        if "--from=" in arguments:
            continue  # from another build stage, not the build context
        for source in copy_sources(arguments):
            assert (ROOT / source).exists(), f"COPY {source}: not in the repository"


def test_dockerfile_builds_the_worker_image() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    sources = {
        source
        for keyword, args in instructions
        if keyword == "COPY"
        for source in copy_sources(args)
    }
    assert {"pyproject.toml", "processor", "schemas", "topics.yaml"} <= sources
    assert ("RUN", "pip install .") in instructions
    assert ("EXPOSE", "6066") in instructions
    assert ("CMD", '["sendguard", "worker"]') in instructions


def dockerfile_env() -> dict[str, str]:
    env = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                name, _, value = pair.partition("=")
                env[name] = value
    return env


def test_dockerfile_points_the_loaders_at_the_copied_files() -> None:
    # Installed into site-packages, the loaders' repository-relative defaults find
    # nothing: the image must name the copied schemas and topics file.
    (workdir,) = [args for keyword, args in dockerfile_instructions() if keyword == "WORKDIR"]
    env = dockerfile_env()
    assert env[SCHEMAS_DIR_ENV] == f"{workdir}/schemas"
    assert env[TOPICS_FILE_ENV] == f"{workdir}/topics.yaml"
    assert env["SENDGUARD_BOOTSTRAP"] == "kafka:9092"
