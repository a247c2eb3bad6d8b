"""Structured logs: JSON lines off a terminal, and exactly one INFO line per BLOCK/UNBLOCK."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from processor.ops.logging import configure_logging, json_wanted, log_decisions
from processor.policy import (
    Decision,
    DirectoryEntry,
    Engine,
    MailboxKey,
    PolicyConfig,
    Release,
    Verdict,
)
from processor.policy.events import Direction, VerdictKind

KEY = MailboxKey.of("t1", "A@Example.com")
T0 = 1_767_600_000_000  # 2026-01-05T08:00:00Z


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Root logging into a non-terminal buffer, as in a container; restored afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    configure_logging("info", stream=stream)
    yield stream
    root.handlers[:], root.level = saved


def _decisions() -> list[Decision]:
    """A real policy run: block 1 (timed, scans, alert, report), its expiry, block 2
    (permanent), and a support release."""
    engine = Engine(PolicyConfig(first_block_ms=60_000, permanent_on_offense=2, window_ms=600_000))
    out: list[Decision] = []
    out += engine.directory(DirectoryEntry(KEY, "owner-1", ("laptop", "phone"), T0))
    n = 0
    for burst_at in (T0, T0 + 120_000):
        for _ in range(5):
            n += 1
            verdict = Verdict(KEY, f"msg-{n}", Direction.OUTBOUND, VerdictKind.SPAM, burst_at + n)
            out += engine.verdict(verdict)[1]
    decisions, refused = engine.release(Release(KEY, "helpdesk", "cleaned", T0 + 200_000))
    assert refused is None
    return out + decisions


def test_one_json_line_per_block_and_unblock(captured: io.StringIO) -> None:
    log_decisions(_decisions())
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    # Block 1, its expiry, block 2 (permanent), the release: four INFO lines, nothing
    # for the four scans, two alerts and four reports that came with them.
    assert [(r["event"], r["offense"]) for r in lines] == [
        ("block", 1),
        ("unblock", 1),
        ("block", 2),
        ("unblock", 2),
    ]
    first, expired, permanent, released = lines
    assert {first["level"], first["logger"]} == {"INFO", "sendguard.decisions"}
    assert (first["tenant_id"], first["mailbox"]) == ("t1", "a@example.com")
    assert first["until"] is not None and first["permanent"] is False
    assert first["message_ids"] == ["msg-1", "msg-2", "msg-3", "msg-4", "msg-5"]
    assert first["command_id"] in first["message"]
    assert expired["reason"] == "expired"
    assert permanent["permanent"] is True and permanent["until"] is None
    assert "permanent" in permanent["message"]
    assert (released["reason"], released["actor"]) == ("released", "helpdesk")
    for line in lines:
        assert line["time"].endswith("+00:00")


def test_debug_level_adds_the_rest(captured: io.StringIO) -> None:
    logging.getLogger().setLevel(logging.DEBUG)
    decisions = _decisions()
    log_decisions(decisions)
    assert len(captured.getvalue().splitlines()) == len(decisions)


def test_refused_release_is_one_info_line(captured: io.StringIO) -> None:
    engine = Engine(PolicyConfig())
    _, refused = engine.release(Release(KEY, "helpdesk", "please", T0))
    assert refused is not None
    log_decisions([refused.report])
    (line,) = [json.loads(text) for text in captured.getvalue().splitlines()]
    assert (line["event"], line["actor"]) == ("release_refused", "helpdesk")
    assert "not blocked" in line["message"]


def test_human_lines_on_a_terminal() -> None:
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = _Tty()
    try:
        assert not json_wanted(stream)
        configure_logging("info", stream=stream)
        logging.getLogger("x").info("hello %s", "there")
    finally:
        root.handlers[:], root.level = saved
    text = stream.getvalue()
    assert "INFO x: hello there" in text
    assert not text.startswith("{")
