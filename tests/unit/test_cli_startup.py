"""`sendguard --help` must stay fast: listing commands imports no Kafka client or Faust."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from processor.cli import COMMANDS, LazyGroup

HEAVY = ("faust", "confluent_kafka", "aiokafka")

# Runs the click group in a fresh interpreter and reports every top-level package imported.
PROBE = """
import json, sys
from processor.cli import cli
try:
    cli.main(args=sys.argv[1:], prog_name="sendguard")
except SystemExit as exit:
    code = exit.code
imported = sorted({name.split(".")[0] for name in sys.modules})
print("PROBE:" + json.dumps({"code": code, "imported": imported}))
"""


def run_probe(*args: str) -> tuple[str, int, set[str]]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    help_text, _, report = result.stdout.rpartition("PROBE:")
    parsed = json.loads(report)
    return help_text, parsed["code"], set(parsed["imported"])


def test_the_console_script_lists_every_available_command() -> None:
    script = Path(sys.executable).with_name("sendguard")
    if not script.exists():
        pytest.skip(f"no console script next to {sys.executable}; run `pip install -e .`")
    available = [name for name in COMMANDS if LazyGroup._available(name)]

    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "kafka" in available
    for name in available:
        assert f"\n  {name} " in result.stdout, name


@pytest.mark.parametrize("args", [["--help"], ["kafka", "--help"], ["kafka", "up", "--help"]])
def test_help_imports_no_kafka_client_or_faust(args: list[str]) -> None:
    help_text, code, imported = run_probe(*args)

    assert code == 0
    assert "Usage: sendguard" in help_text
    assert "click" in imported  # the probe does see what the command imported
    assert imported.isdisjoint(HEAVY), imported & set(HEAVY)


def test_kafka_up_help_shows_env_fallbacks_and_defaults() -> None:
    help_text, _, _ = run_probe("kafka", "up", "--help")

    for envvar in (
        "SENDGUARD_KAFKA_PORT",
        "SENDGUARD_KAFKA_CONTROLLER_PORT",
        "SENDGUARD_KAFKA_DATA_DIR",
        "SENDGUARD_CACHE_DIR",
        "SENDGUARD_KAFKA_HEAP",
        "SENDGUARD_KAFKA_START_TIMEOUT",
    ):
        assert envvar in help_text
    assert "default: 9092" in help_text
