"""`simulate`'s line parser against anything: an event within every limit, or a
ScenarioError with a short reason — never another exception (hypothesis fuzzing)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import event, given, settings
from hypothesis import strategies as st

from processor import limits
from processor.policy import DirectoryEntry, Release, TenantSettings, Tick, Verdict
from processor.policy.events import MAX_INPUT_TIMESTAMP_MS
from processor.scenario import Event, ScenarioError, parse_line

# Any code point, lone surrogates included, and JSON's own punctuation more often.
ANY_CHARACTER = (
    st.characters()
    | st.characters(categories=["Cs"])
    | st.sampled_from(list('{}[]":,\\ 0123456789eE.-+tfnu'))
)
VALID: dict[str, dict[str, Any]] = {
    "verdict": {
        "type": "verdict",
        "tenant_id": "t1",
        "message_id": "<a@b>",
        "mailbox": "a@x.com",
        "direction": "OUTBOUND",
        "verdict": "SPAM",
        "scanned_at": "2026-01-05T10:00:00Z",
    },
    "directory": {
        "type": "directory",
        "tenant_id": "t1",
        "mailbox": "a@x.com",
        "owner_id": "o1",
        "devices": ["d1"],
        "at": 1_767_607_200_000,
    },
    "settings": {"type": "settings", "tenant_id": "t1", "synchronized_security": True, "at": 0},
    "release": {
        "type": "release",
        "tenant_id": "t1",
        "mailbox": "a@x.com",
        "actor": "s",
        "reason": "r",
        "at": "2026-01-05T10:00:00+01:00",
    },
    "tick": {"type": "tick", "at": "9899-12-30T23:59:59.999Z"},
}


def _long_text(limit: int) -> st.SearchStrategy[str]:
    """Strings around a limit: just within it, just over it, and far over it."""
    return st.builds(
        lambda n, c: c * n,
        st.sampled_from([limit - 1, limit, limit + 1, 10 * limit]),
        st.sampled_from(["a", "é", "\U0001f600", " "]),
    )


HOSTILE_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.integers(MAX_INPUT_TIMESTAMP_MS - 2, MAX_INPUT_TIMESTAMP_MS + 2),
    st.floats(),
    st.text(ANY_CHARACTER, max_size=30),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+05:00",
            "9999-12-31T23:59:59-05:00",
            "9899-12-30T23:59:59.999Z",
            "9899-12-31T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "2026-02-30T10:00:00Z",
            "outbound",
            "VIRUS",
            "a\ud800@x.com",
        ]
    ),
    _long_text(limits.MAX_MESSAGE_ID),
    _long_text(limits.MAX_MAILBOX),
    _long_text(limits.MAX_TENANT_ID),
    _long_text(limits.MAX_REASON),
    st.lists(st.text(ANY_CHARACTER, max_size=5), max_size=70),
    st.builds(lambda n: [f"d{i}" for i in range(n)], st.integers(60, 70)),
)
FIELDS = sorted({name for line in VALID.values() for name in line})
mutated_lines = st.builds(
    lambda base, changes, drop: json.dumps(
        {k: v for k, v in {**VALID[base], **changes}.items() if k not in drop}
    ),
    st.sampled_from(sorted(VALID)),
    st.dictionaries(st.sampled_from(FIELDS), HOSTILE_VALUES, max_size=2),
    st.sets(st.sampled_from(["type", "at", "mailbox", "devices"]), max_size=1),
)
# Numbers and nesting beyond what Python reads by default.
extreme_json = st.one_of(
    st.builds(lambda n: "[" * n + "]" * n, st.integers(1, 200_000)),
    st.builds(lambda n: '{"a":' * n + "1" + "}" * n, st.integers(1, 50_000)),
    st.builds(
        lambda n: json.dumps({**VALID["tick"], "at": 0}).replace("0}", "1" + "0" * n + "}"),
        st.integers(1, 6_000),
    ),
    st.builds(lambda s: json.dumps({**VALID["verdict"], "scanned_at": s}), st.floats()),
)


def _with_bytes(text: str, tail: bytes) -> bytes:
    """A line as a file holds it, surrogates encoded as they are (not UTF-8), bytes added."""
    return text.encode("utf-8", "surrogatepass") + tail


any_line = st.one_of(
    st.sampled_from([json.dumps(line) for line in VALID.values()]),
    st.text(ANY_CHARACTER, max_size=200),
    st.binary(max_size=200),
    st.builds(_with_bytes, mutated_lines, st.binary(max_size=8)),
    mutated_lines,
    extreme_json,
)


def _strings(item: Event) -> list[tuple[str, str, int]]:
    """(name, value, limit) of every string an event carries."""
    if isinstance(item, Tick):
        return []
    if isinstance(item, TenantSettings):
        return [("tenant_id", item.tenant_id, limits.MAX_TENANT_ID)]
    found = [
        ("tenant_id", item.key.tenant_id, limits.MAX_TENANT_ID),
        ("mailbox", item.key.mailbox, limits.MAX_MAILBOX),
    ]
    if isinstance(item, Verdict):
        found.append(("message_id", item.message_id, limits.MAX_MESSAGE_ID))
    elif isinstance(item, DirectoryEntry):
        found.append(("owner_id", item.owner_id, limits.MAX_OWNER_ID))
        found += [("device", device, limits.MAX_DEVICE_ID) for device in item.devices]
    elif isinstance(item, Release):
        found += [
            ("actor", item.actor, limits.MAX_ACTOR),
            ("reason", item.reason, limits.MAX_REASON),
        ]
    return found


@settings(max_examples=1_000, deadline=None)
@given(any_line)
def test_any_line_is_an_event_within_every_limit_or_a_scenario_error(line: str | bytes) -> None:
    try:
        item = parse_line(line)
    except ScenarioError as error:
        reason = str(error)
        assert reason and len(reason) < 400, reason  # refused values are quoted cut short
        event(f"rejected: {reason.split(':')[0][:20]}")
        return
    event(f"parsed: {type(item).__name__}")
    at = item.scanned_at_ms if isinstance(item, Verdict) else item.at_ms
    assert 0 <= at <= MAX_INPUT_TIMESTAMP_MS
    for name, value, limit in _strings(item):
        assert len(value) <= limit, name
        value.encode("utf-8")  # text that can be written out again (no lone surrogates)
    if isinstance(item, DirectoryEntry):
        assert len(item.devices) <= limits.MAX_DEVICES
