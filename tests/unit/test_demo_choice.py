"""Which demo `sendguard demo` plays: the mail loop where it can run, else the classic
scenario after one line saying why (processor/demo/choice.py)."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from processor.demo import run as demo_run
from processor.demo.choice import choose_demo
from processor.demo.run import DemoResult, demo
from processor.demo.show import DemoRecords
from processor.local import mailstack
from processor.local.mailstack import mail_packages_missing


def test_with_the_packages_and_root_it_is_the_mail_loop_without_a_note() -> None:
    assert choose_demo(None, [], is_root=True) == choose_demo(True, [], is_root=True)
    choice = choose_demo(None, [], is_root=True)
    assert choice.mail and choice.note is None


@pytest.mark.parametrize("requested", [None, True])
def test_missing_packages_mean_the_classic_demo_and_a_note_saying_how(
    requested: bool | None,
) -> None:
    choice = choose_demo(requested, ["rspamd", "postfix"], is_root=True)
    assert not choice.mail
    assert choice.note is not None and "\n" not in choice.note
    assert choice.note.startswith("note: rspamd and postfix are not installed")
    assert "classic demo" in choice.note
    assert "SENDGUARD_SETUP_MAIL=1 bash scripts/setup.sh" in choice.note

    one = choose_demo(requested, ["postfix"], is_root=True).note
    assert one is not None and one.startswith("note: postfix is not installed")


def test_without_root_it_is_the_classic_demo_and_says_why() -> None:
    choice = choose_demo(None, [], is_root=False)
    assert not choice.mail
    assert choice.note is not None and "root" in choice.note and "\n" not in choice.note


def test_no_mail_is_the_classic_demo_without_a_note() -> None:
    for missing in ([], ["rspamd"]):
        for root in (True, False):
            choice = choose_demo(False, missing, is_root=root)
            assert not choice.mail and choice.note is None


def _program(directory: Path, name: str) -> None:
    path = directory / name
    path.write_text("#!/bin/sh\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def test_the_packages_are_found_by_their_programs_on_the_search_path(tmp_path: Path) -> None:
    assert mail_packages_missing(str(tmp_path)) == ["rspamd", "postfix"]
    _program(tmp_path, "postfix")
    assert mail_packages_missing(str(tmp_path)) == ["rspamd"]
    _program(tmp_path, "rspamd")
    assert mail_packages_missing(str(tmp_path)) == []
    (tmp_path / "rspamd").chmod(0o644)  # not executable: not installed
    assert mail_packages_missing(str(tmp_path)) == ["rspamd"]


def test_the_command_plays_the_classic_demo_after_the_note_when_packages_are_missing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    played: list[str] = []

    def classic(options: Any, out: Any, *, color: bool = False) -> DemoResult:
        played.append("classic")
        records = DemoRecords()
        block = {"tenant_id": "t", "mailbox": "m", "offense": 1, "action": "BLOCK"}
        records.commands += [block, {**block, "action": "UNBLOCK"}]
        records.reports.append({"event": "released"})
        return DemoResult(records, [], {}, 1.0)

    def mail_loop(*args: Any, **kwargs: Any) -> None:
        played.append("mail")

    monkeypatch.setattr(mailstack, "mail_packages_missing", lambda: ["rspamd", "postfix"])
    monkeypatch.setattr(demo_run, "run_demo", classic)
    monkeypatch.setattr("processor.demo.mail_run.run_mail_demo", mail_loop)

    for args in ([], ["--mail"]):
        played.clear()
        result = CliRunner().invoke(demo, args)
        assert result.exit_code == 0, result.output
        assert played == ["classic"]
        first, *_ = result.output.splitlines()
        assert first.startswith("note: rspamd and postfix are not installed, so this is the")
