"""`sendguard gateway`'s command line: light help, env fallbacks, refused settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from processor.mail.gateway import parse_listen
from processor.mail.gateway_command import gateway

PROBE = """
import json, sys
from processor.cli import cli
try:
    cli.main(args=["gateway", "--help"], prog_name="sendguard")
except SystemExit:
    pass
print("PROBE:" + json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def test_help_imports_no_kafka_client_or_web_server() -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60
    )
    help_text, _, imported = result.stdout.rpartition("PROBE:")
    modules = set(json.loads(imported))

    assert "Usage: sendguard gateway" in help_text
    assert modules.isdisjoint({"faust", "confluent_kafka", "aiokafka", "aiohttp"})
    for envvar in (
        "SENDGUARD_GATEWAY_LISTEN",
        "SENDGUARD_TENANTS",
        "SENDGUARD_BOOTSTRAP",
        "SENDGUARD_TOPIC_PREFIX",
        "SENDGUARD_SCHEMA_REGISTRY_URL",
        "SENDGUARD_GATEWAY_WEB_PORT",
        "SENDGUARD_GATEWAY_WHEN_STALE",
        "SENDGUARD_GATEWAY_STALE_AFTER",
    ):
        assert envvar in help_text
    assert "127.0.0.1:10040" in help_text
    assert "keep-enforcing" in help_text


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--no-directory"], "--no-directory needs --tenants"),
        (["--listen", "10040"], "is not HOST:PORT"),
        (["--status-code", "4.7.1"], "needs a 5.x.x status code"),
        (["--block-action", "defer", "--status-code", "5.7.1"], "needs a 4.x.x status code"),
        (["--timed-text", "until {when}"], "only the placeholder {until}"),
        (["--when-stale", "panic"], "panic"),
        (["--stale-after", "0"], "--stale-after"),
    ],
)
def test_bad_settings_are_refused_before_anything_starts(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(gateway, args)
    assert result.exit_code == 2, result.output
    assert complaint in result.output


def test_a_bad_tenant_map_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "tenants.yaml"
    bad.write_text("- not a mapping\n")
    result = CliRunner().invoke(gateway, ["--tenants", str(bad), "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert "expected a mapping of mail domain to tenant id" in result.output


def test_parse_listen() -> None:
    assert parse_listen("127.0.0.1:10040") == ("127.0.0.1", 10040)
    assert parse_listen("[::1]:0") == ("::1", 0)
    for bad in ("localhost", ":25", "host:99999", "host:port"):
        with pytest.raises(ValueError):
            parse_listen(bad)
