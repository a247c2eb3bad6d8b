"""The policy file: defaults, durations, and errors that name the setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.policy import PolicyConfig, PolicyConfigError, parse_duration
from processor.policy.config import format_duration
from processor.policy_file import load_policy


def test_defaults_are_those_of_the_policy() -> None:
    config = load_policy(None)
    assert (
        config.threshold,
        config.window_ms,
        config.first_block_ms,
        config.growth_factor,
        config.permanent_on_offense,
        config.default_synchronized_security,
        config.allowlist,
        config.max_lateness_ms,
    ) == (5, 600_000, 3_600_000, 2, 6, True, frozenset(), 86_400_000)
    assert [config.block_duration_ms(n) for n in range(1, 7)] == [
        3_600_000,
        7_200_000,
        14_400_000,
        28_800_000,
        57_600_000,
        None,
    ]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("30s", 30_000),
        ("10m", 600_000),
        ("1h", 3_600_000),
        ("2d", 172_800_000),
        ("1.5h", 5_400_000),
        (" 20s ", 20_000),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration(text) == ms
    assert parse_duration(format_duration(ms)) == ms


@pytest.mark.parametrize("text", ["10", "10 minutes", "-1h", "0s", "1.5ms", "h", ""])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(PolicyConfigError, match="window"):
        PolicyConfig.from_mapping({"window": text})


def test_every_key_is_optional_and_read_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(
        "threshold: 3\nwindow: 20s\nfirst_block: 3s\ngrowth_factor: 3\n"
        "permanent_on_offense: 4\ndefault_synchronized_security: false\n"
        "allowlist: ['Boss@Example.com', '@trusted.example']\nmax_lateness: 6h\n"
    )
    config = load_policy(path)
    assert config == PolicyConfig(
        3,
        20_000,
        3_000,
        3,
        4,
        False,
        frozenset({"boss@example.com", "@trusted.example"}),
        6 * 3_600_000,
    )
    assert PolicyConfig.from_mapping(config.to_mapping()) == config
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    assert load_policy(empty) == PolicyConfig()


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"threshhold": 5}, "threshhold: unknown setting"),
        ({"threshold": 0}, "threshold"),
        ({"threshold": True}, "threshold"),
        ({"threshold": "5"}, "threshold"),
        ({"growth_factor": 0.5}, "growth_factor"),
        ({"permanent_on_offense": 2.5}, "permanent_on_offense"),
        ({"default_synchronized_security": "yes"}, "default_synchronized_security"),
        ({"allowlist": "a@b.c"}, "allowlist"),
        ({"allowlist": ["not-an-address"]}, "allowlist"),
        ({"first_block": 3600}, "first_block"),
        ({"max_lateness": "0s"}, "max_lateness"),
        ({"max_lateness": 86400}, "max_lateness"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict[str, object], named: str) -> None:
    with pytest.raises(PolicyConfigError, match=named):
        PolicyConfig.from_mapping(settings)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("threshold: [5\n")
    with pytest.raises(PolicyConfigError, match=r"broken\.yaml: not valid YAML"):
        load_policy(broken)
    with pytest.raises(PolicyConfigError, match=r"missing\.yaml: cannot read"):
        load_policy(tmp_path / "missing.yaml")
    listed = tmp_path / "list.yaml"
    listed.write_text("- 1\n")
    with pytest.raises(PolicyConfigError, match="mapping"):
        load_policy(listed)
