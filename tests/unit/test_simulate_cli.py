"""`sendguard simulate`: the offline contract of docs/policy.md, through the real command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from processor.simulate import simulate


def _lines(*records: dict[str, object] | str) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def _spam(message_id: str, at: str | int, mailbox: str = "alice@example.com") -> dict[str, object]:
    return {
        "type": "verdict",
        "tenant_id": "t1",
        "message_id": message_id,
        "mailbox": mailbox,
        "direction": "OUTBOUND",
        "verdict": "SPAM",
        "scanned_at": at,
    }


BURST = [_spam(f"m{i}", f"2026-01-05T10:0{i}:00Z") for i in range(5)]


def _simulate(tmp_path: Path, text: str, *args: str) -> tuple[int, list[dict], str]:
    scenario = tmp_path / "scenario.jsonl"
    scenario.write_text(text, encoding="utf-8")
    result = CliRunner().invoke(simulate, [str(scenario), *args])
    out = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.exit_code, out, result.stderr


def test_output_contract_for_a_block_and_its_expiry(tmp_path: Path) -> None:
    text = _lines(
        {
            "type": "directory",
            "tenant_id": "t1",
            "mailbox": "Alice@Example.com",
            "owner_id": "u1",
            "devices": ["d1"],
            "at": "2026-01-05T09:00:00Z",
        },
        *BURST,
        {"type": "tick", "at": "2026-01-05T11:30:00Z"},
    )
    code, out, err = _simulate(tmp_path, text)
    assert (code, err) == (0, "")
    assert [o["type"] for o in out] == [
        "block",
        "scan_request",
        "alert",
        "report",
        "unblock",
        "report",
    ]
    block = out[0]
    assert {
        k: block[k] for k in ("tenant_id", "mailbox", "at", "offense", "permanent", "until")
    } == {
        "tenant_id": "t1",
        "mailbox": "alice@example.com",
        "at": "2026-01-05T10:04:00Z",
        "offense": 1,
        "permanent": False,
        "until": "2026-01-05T11:04:00Z",
    }
    assert isinstance(block["command_id"], str) and block["command_id"]
    scan = out[1]
    assert {k: scan[k] for k in ("tenant_id", "mailbox", "owner_id", "device_id", "at")} == {
        "tenant_id": "t1",
        "mailbox": "alice@example.com",
        "owner_id": "u1",
        "device_id": "d1",
        "at": "2026-01-05T10:04:00Z",
    }
    alert = out[2]
    assert alert["message_ids"] == ["m0", "m1", "m2", "m3", "m4"]
    assert alert["scans_requested"] is True and alert["owner_id"] == "u1"
    assert out[3]["event"] == "blocked"
    unblock = out[4]
    assert {k: unblock[k] for k in ("at", "offense", "reason")} == {
        "at": "2026-01-05T11:04:00Z",
        "offense": 1,
        "reason": "expired",
    }
    assert unblock["command_id"] != block["command_id"]
    assert out[5]["event"] == "unblocked"


def test_epoch_milliseconds_fractions_and_case_insensitive_enums(tmp_path: Path) -> None:
    base = 1_767_607_200_000  # 2026-01-05T10:00:00Z
    records = [
        {
            "type": "VERDICT",
            "tenant_id": "t1",
            "message_id": f"m{i}",
            "mailbox": "a@x.io",
            "direction": "outbound",
            "verdict": ["spam", "Virus"][i % 2],
            "scanned_at": base + i * 1000 if i % 2 else f"2026-01-05T10:00:0{i}.250Z",
        }
        for i in range(5)
    ]
    code, out, _ = _simulate(tmp_path, _lines(*records))
    assert code == 0
    assert out[0]["type"] == "block" and out[0]["at"] == "2026-01-05T10:00:04.250Z"


def test_bad_lines_are_reported_with_their_number_and_skipped(tmp_path: Path) -> None:
    text = _lines(
        BURST[0],
        "this is not json",
        {"type": "verdict", "tenant_id": "t1", "mailbox": "a@x.io"},  # missing fields
        {"type": "bogus", "at": "2026-01-05T10:00:00Z"},
        {**BURST[1], "scanned_at": "yesterday"},
        {**BURST[1], "direction": "SIDEWAYS"},
        {**BURST[1], "scanned_at": -5},
        {
            "type": "settings",
            "tenant_id": "t1",
            "synchronized_security": "yes",
            "at": "2026-01-05T10:00:00Z",
        },
        "[1, 2, 3]",
        *BURST[1:],
    )
    code, out, err = _simulate(tmp_path, text)
    assert code == 1
    reported = [line.split(":")[0] for line in err.splitlines()]
    assert reported == [f"line {n}" for n in range(2, 10)]
    assert "message_id: missing" in err and "unknown type" in err and "SIDEWAYS" in err
    assert out[0]["type"] == "block"  # valid lines were still processed


def test_refused_release_is_an_error_but_the_rest_runs(tmp_path: Path) -> None:
    text = _lines(
        *BURST,
        {
            "type": "release",
            "tenant_id": "t1",
            "mailbox": "alice@example.com",
            "actor": "s1",
            "reason": "asked",
            "at": "2026-01-05T10:10:00Z",
        },
        {"type": "tick", "at": "2026-01-05T12:00:00Z"},
    )
    code, out, err = _simulate(tmp_path, text)
    assert code == 1 and err.startswith("line 6: release refused")
    assert [o["type"] for o in out].count("unblock") == 1


def test_permanent_block_and_support_release(tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text("permanent_on_offense: 1\n")
    text = _lines(
        *BURST,
        {
            "type": "release",
            "tenant_id": "t1",
            "mailbox": "ALICE@example.com",
            "actor": "s1",
            "reason": "cleaned",
            "at": "2026-01-05T12:00:00Z",
        },
    )
    code, out, err = _simulate(tmp_path, text, "--config", str(config))
    assert (code, err) == (0, "")
    assert out[0]["permanent"] is True and out[0]["until"] is None
    assert out[2]["event"] == "permanently_blocked"
    unblock = out[3]
    assert (unblock["type"], unblock["reason"], unblock["offense"], unblock["at"]) == (
        "unblock",
        "released",
        1,
        "2026-01-05T12:00:00Z",
    )
    assert out[4]["event"] == "released"


def test_nothing_happens_after_the_last_line(tmp_path: Path) -> None:
    code, out, _ = _simulate(tmp_path, _lines(*BURST))
    assert code == 0 and "unblock" not in [o["type"] for o in out]


def test_explain_prints_the_evidence_beside_each_block(tmp_path: Path) -> None:
    _, out, _ = _simulate(tmp_path, _lines(*BURST), "--explain")
    assert [e["message_id"] for e in out[0]["evidence"]] == ["m0", "m1", "m2", "m3", "m4"]
    assert out[0]["evidence"][0]["scanned_at"] == "2026-01-05T10:00:00Z"
    _, plain, _ = _simulate(tmp_path, _lines(*BURST))
    assert "evidence" not in plain[0]


def test_compare_shows_what_a_policy_change_would_change(tmp_path: Path) -> None:
    strict = tmp_path / "strict.yaml"
    strict.write_text("threshold: 3\nfirst_block: 2h\n")
    bob = [_spam(f"b{i}", f"2026-01-05T10:0{i}:00Z", "bob@example.com") for i in range(3)]
    scenario = tmp_path / "s.jsonl"
    scenario.write_text(_lines(*BURST, *bob))
    result = CliRunner().invoke(simulate, [str(scenario), "--compare", str(strict)])
    assert result.exit_code == 0
    text = result.stdout
    assert "t1 bob@example.com: A no blocks, B 1 block(s), highest offense 1" in text
    assert "only B: offense 1 at 2026-01-05T10:04:00Z, until 2026-01-05T12:04:00Z" in text
    assert "t1 alice@example.com" in text  # blocked by both, but earlier and longer under B
    assert "2 mailbox(es) differ" in text


def test_bad_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    config = tmp_path / "policy.yaml"
    config.write_text("treshold: 5\n")
    code, _, err = _simulate(tmp_path, _lines(*BURST), "--config", str(config))
    assert code == 2 and "treshold: unknown setting" in err


@pytest.mark.parametrize("arguments", [["--help"], ["simulate", "--help"]])
def test_console_script_runs_without_kafka_imports(arguments: list[str]) -> None:
    probe = (
        "import sys; from processor.cli import main\n"
        "try:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "loaded = {'faust', 'confluent_kafka', 'aiokafka'} & set(sys.modules)\n"
        "print('LOADED', sorted(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, *arguments], capture_output=True, text=True, check=True
    )
    assert "LOADED []" in result.stdout


def test_console_script_simulate_end_to_end(tmp_path: Path) -> None:
    scenario = tmp_path / "s.jsonl"
    scenario.write_text(_lines(*BURST))
    result = subprocess.run(
        [sys.executable, "-c", "from processor.cli import main; main()", "simulate", str(scenario)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[0])["type"] == "block"


# -- hostile input: every line is used or reported, never a traceback ----------------

BOB = [_spam(f"b{i}", f"2026-01-05T10:1{i}:00Z", "bob@example.com") for i in range(5)]
VALID_DIRECTORY = {
    "type": "directory",
    "tenant_id": "t1",
    "mailbox": "carol@example.com",
    "owner_id": "u-carol",
    "devices": ["d1"],
    "at": "2026-01-05T09:00:00Z",
}
VALID_RELEASE = {
    "type": "release",
    "tenant_id": "t1",
    "mailbox": "carol@example.com",
    "actor": "support-1",
    "reason": "asked",
    "at": "2026-01-05T10:05:00Z",
}
HOSTILE_LINES: dict[str, tuple[bytes, str]] = {
    "integer of 5000 digits": (
        json.dumps({**BURST[0], "message_id": "x"})
        .replace('"2026-01-05T10:00:00Z"', "1" + "0" * 4999)
        .encode(),
        "a number with too many digits",
    ),
    "arrays nested 100,000 deep": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "lone surrogate in a mailbox": (
        json.dumps({**BURST[0], "message_id": "x", "mailbox": "a\ud800@example.com"}).encode(),
        "mailbox: 'a\\ud800@example.com' holds a lone surrogate, not text",
    ),
    "one invalid UTF-8 byte": (
        json.dumps({**BURST[0], "message_id": "x"}).encode().replace(b"x", b"\xff"),
        "not UTF-8: byte 0xff",
    ),
    "a block that would end after year 9999": (
        json.dumps({"type": "tick", "at": "9999-12-31T23:00:00Z"}).encode(),
        "at: '9999-12-31T23:00:00Z' is outside 1970-01-01 .. 9899-12-30T23:59:59.999Z",
    ),
    "message_id": (
        json.dumps({**BURST[0], "message_id": "m" * 999}).encode(),
        "field_too_long: message_id is 999 characters long, at most 998",
    ),
    "mailbox": (
        json.dumps({**BURST[0], "mailbox": "a" * 309 + "@example.com"}).encode(),
        "field_too_long: mailbox is 321 characters long, at most 320",
    ),
    "tenant_id": (
        json.dumps({**BURST[0], "tenant_id": "t" * 257}).encode(),
        "field_too_long: tenant_id is 257 characters long, at most 256",
    ),
    "owner_id": (
        json.dumps({**VALID_DIRECTORY, "owner_id": "o" * 257}).encode(),
        "field_too_long: owner_id is 257 characters long, at most 256",
    ),
    "device id": (
        json.dumps({**VALID_DIRECTORY, "devices": ["d1", "d" * 257]}).encode(),
        "field_too_long: devices[] is 257 characters long, at most 256",
    ),
    "device count": (
        json.dumps({**VALID_DIRECTORY, "devices": [f"d{i}" for i in range(65)]}).encode(),
        "field_too_long: devices lists 65 device ids, at most 64",
    ),
    "actor": (
        json.dumps({**VALID_RELEASE, "actor": "a" * 201}).encode(),
        "field_too_long: actor is 201 characters long, at most 200",
    ),
    "reason": (
        json.dumps({**VALID_RELEASE, "reason": "r" * 2001}).encode(),
        "field_too_long: reason is 2001 characters long, at most 2000",
    ),
}


def _simulate_bytes(tmp_path: Path, data: bytes, *args: str) -> tuple[int, list[dict], str]:
    scenario = tmp_path / "scenario.jsonl"
    scenario.write_bytes(data)
    result = CliRunner().invoke(simulate, [str(scenario), *args])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    out = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    return result.exit_code, out, result.stderr


@pytest.mark.parametrize("case", sorted(HOSTILE_LINES))
def test_a_hostile_line_is_reported_and_skipped_and_the_rest_is_kept(
    tmp_path: Path, case: str
) -> None:
    #   lines 1-5 alice's burst (BLOCK), line 6 the hostile line, lines 7-11 bob's burst
    line, reason = HOSTILE_LINES[case]
    data = _lines(*BURST).encode() + line + b"\n" + _lines(*BOB).encode()
    code, out, err = _simulate_bytes(tmp_path, data)
    assert code == 1
    assert err.startswith("line 6: ") and reason in err, err[:300]
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    blocked = [o["mailbox"] for o in out if o["type"] == "block"]
    assert blocked == ["alice@example.com", "bob@example.com"]


def test_the_longest_block_allowed_from_the_latest_time_allowed_ends_in_9999(
    tmp_path: Path,
) -> None:
    #   The latest input time, 9899-12-30T23:59:59.999Z, and a first block of 36525 d (the
    #   longest duration a policy may set): the block ends exactly at the last millisecond
    #   of 9999, which can still be written.
    config = tmp_path / "policy.yaml"
    config.write_text("first_block: 36525d\npermanent_on_offense: 2\n")
    last = "9899-12-30T23:59:59.999Z"
    burst = [_spam(f"m{i}", last) for i in range(5)]
    code, out, err = _simulate(tmp_path, _lines(*burst), "--config", str(config))
    assert (code, err) == (0, "")
    assert (out[0]["at"], out[0]["until"]) == (last, "9999-12-31T23:59:59.999Z")


@pytest.mark.parametrize(
    ("policy", "named"),
    [
        (b"growth_factor: .inf\n", "growth_factor: inf must be a finite number >= 1"),
        (b"first_block: 36526d\n", "first_block: '36526d' is longer than 36525d"),
        (b"growth_factor: 1000\n", "growth_factor: the block of offense 5 would last"),
        (b"threshold: 3\n# caf\xe9\n", "not UTF-8 text (byte 0xe9 at offset 18)"),
        (b"threshold: 3\nwindow: 1m\nthreshold: 4\n", "threshold: set twice (again on line 3)"),
        (b"threshold: 1" + b"0" * 5000 + b"\n", "a number with too many digits"),
        (b"[" * 100_000, "nested too deeply"),
    ],
)
def test_a_hostile_policy_file_is_a_clear_error(tmp_path: Path, policy: bytes, named: str) -> None:
    config = tmp_path / "policy.yaml"
    config.write_bytes(policy)
    code, out, err = _simulate_bytes(tmp_path, _lines(*BURST).encode(), "--config", str(config))
    assert code == 2 and out == []
    assert named in " ".join(err.split()) and "Traceback" not in err, err


def test_decisions_are_written_as_each_line_is_decided(tmp_path: Path) -> None:
    #   The command writes a line's decisions before it reads the next line: a reader of
    #   its output sees alice's BLOCK while the scenario is still being written.
    process = subprocess.Popen(
        [sys.executable, "-c", "from processor.cli import main; main()", "simulate", "-"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    process.stdin.write(_lines(*BURST).encode())
    process.stdin.flush()
    first = json.loads(process.stdout.readline())  # blocks until the BLOCK is written
    assert (first["type"], first["mailbox"]) == ("block", "alice@example.com")
    process.stdin.write(_lines(*BOB).encode())
    process.stdin.close()
    rest = process.stdout.read().decode().splitlines()
    assert process.wait(30) == 0
    assert [json.loads(line)["mailbox"] for line in rest if '"block"' in line] == [
        "bob@example.com"
    ]


def test_console_script_prints_no_traceback_for_any_hostile_line(tmp_path: Path) -> None:
    scenario = tmp_path / "hostile.jsonl"
    scenario.write_bytes(b"\n".join(line for line, _ in HOSTILE_LINES.values()) + b"\n")
    result = subprocess.run(
        [sys.executable, "-c", "from processor.cli import main; main()", "simulate", str(scenario)],
        capture_output=True,
    )
    assert result.returncode == 1
    errors = result.stderr.decode().splitlines()
    assert [e.split(":")[0] for e in errors] == [f"line {n}" for n in range(1, 14)]
    assert "Traceback" not in result.stderr.decode()
