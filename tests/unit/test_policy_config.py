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


@pytest.mark.parametrize(
    "text", ["10", "10 minutes", "-1h", "0s", "1.5ms", "h", "", "\u0663s", "1e3s", "0.0001s"]
)
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
        ({"growth_factor": float("inf")}, "growth_factor: inf must be a finite number"),
        ({"growth_factor": float("nan")}, "growth_factor: nan must be a finite number"),
        ({"growth_factor": 10**400}, "growth_factor: <a huge number> must be a finite"),
        ({"window": "36526d"}, "window: '36526d' is longer than 36525d"),
        ({"window": "1" + "0" * 5000 + "d"}, r"window: '10000.*\(5004 chars\) is longer"),
        ({"growth_factor": 100}, "growth_factor: the block of offense 5 would last"),
        ({"permanent_on_offense": 10**9}, "growth_factor: the block of offense 999999999"),
    ],
)
def test_bad_settings_name_the_setting(settings: dict[str, object], named: str) -> None:
    with pytest.raises(PolicyConfigError, match=named):
        PolicyConfig.from_mapping(settings)


def test_the_longest_timed_block_and_the_longest_duration_are_bounded() -> None:
    #   36525 d (a century) is the longest duration and the longest timed block accepted
    edge = PolicyConfig.from_mapping({"first_block": "36525d", "permanent_on_offense": 2})
    assert edge.block_duration_ms(1) == 36_525 * 86_400_000
    with pytest.raises(PolicyConfigError, match="growth_factor: the block of offense 2"):
        PolicyConfig.from_mapping({"first_block": "36525d", "permanent_on_offense": 3})
    #   growth 1 never grows, whatever the offense count
    flat = PolicyConfig.from_mapping({"growth_factor": 1, "permanent_on_offense": 10**9})
    assert flat.block_duration_ms(10**9 - 1) == 3_600_000
    #   exact: 0.3 s is 300 ms, although 0.3 * 1000 is not a whole number in floats
    assert parse_duration("0.3s") == 300 and parse_duration("1.001s") == 1001


def test_a_key_set_twice_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("threshold: 5\nwindow: 10m\nthreshold: 3\n")
    with pytest.raises(PolicyConfigError, match=r"threshold: set twice \(again on line 3\)"):
        load_policy(path)
    nested = tmp_path / "nested.yaml"
    nested.write_text("allowlist: [{a: 1, a: 2}]\n")
    with pytest.raises(PolicyConfigError, match="a: set twice"):
        load_policy(nested)


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
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b"allowlist: ['ren\xe9@example.com']\n")
    with pytest.raises(PolicyConfigError, match=r"latin1\.yaml: not UTF-8 text \(byte 0xe9"):
        load_policy(latin1)
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 100_000)
    with pytest.raises(PolicyConfigError, match=r"deep\.yaml: not valid YAML: nested too deeply"):
        load_policy(deep)


def test_the_specification_and_the_readme_show_every_setting() -> None:
    root = Path(__file__).resolve().parents[2]
    spec = (root / "docs" / "policy.md").read_text(encoding="utf-8")
    readme = (root / "README.md").read_text(encoding="utf-8")
    for key, value in PolicyConfig().to_mapping().items():
        shown_default = "[]" if value == [] else str(value).lower()
        assert f"| `{key}` | `{shown_default}` |" in spec, key  # the configuration table
        assert f"\n{key}: " in readme, key  # the README's policy file example
