"""The largest record the worker can ever write, per topic, against the producer limit.

What passes the edge is bounded by `processor.limits`, and the policy bounds how much
of it one record gathers: an alert carries the `threshold` message ids of its window,
and a mailbox's stored state at most `max_window_entries(policy)` of them. So the
largest record of every kind is known before the worker starts: each is built here
with every field at its limit, in the characters its encoding makes longest (4 bytes
in Avro's UTF-8, 6 for a control character in JSON, 12 for an astral one in the
table's ASCII JSON), and measured with the encoder the worker uses.
`check_record_bounds` refuses a policy whose largest record would not fit, rather
than let a mailbox's state become unstorable in the middle of an attack.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from processor.codec import records
from processor.codec.command_signing import CommandKeys
from processor.codec.wire import Codec
from processor.limits import (
    DEAD_LETTER_KEEP_BYTES,
    MAX_ACTION_ID,
    MAX_ACTOR,
    MAX_DEAD_LETTER_DETAIL,
    MAX_DEVICE_ID,
    MAX_DEVICES,
    MAX_MAILBOX,
    MAX_MESSAGE_ID,
    MAX_OUTPUT_RECORD_BYTES,
    MAX_OWNER_ID,
    MAX_REASON,
    MAX_TENANT_ID,
)
from processor.policy import (
    Alert,
    Block,
    Decision,
    Direction,
    Evidence,
    MailboxKey,
    MailboxState,
    PolicyConfig,
    Release,
    ScanRequest,
    Verdict,
    VerdictKind,
    release,
)
from processor.policy.decisions import decision_id
from processor.policy.events import MAX_TIMESTAMP_MS
from processor.policy.window import SlidingWindow
from processor.stream import events
from processor.stream.handling import encode_stored
from processor.stream.outputs import Outputs
from processor.stream.topics import TopicNames

#: Characters that cost most in one of the encodings (see the module doc).
WORST_CHARACTERS = ("\U0010ffff", "\x01")
_MAX_TIME = MAX_TIMESTAMP_MS
_MAX_LONG = 2**63 - 1
_LONGEST_KEY_ID = "k" * 64


@dataclass(frozen=True, slots=True)
class RecordSize:
    """The largest record of one kind: what it is, and its key + value bytes."""

    what: str
    size: int


def max_window_entries(policy: PolicyConfig) -> int:
    """The most message ids a mailbox's stored window can hold: 3 × (threshold - 1).

    Window entries lie in [H - 2·window, H] (older ones are dropped, later ones do
    not exist by the definition of H), and every interval (x - window, x] holds at
    most threshold - 1 of them, as the threshold-th would have triggered and cleared
    the window. Three such intervals cover the 2·window + 1 milliseconds.
    `tests/unit/test_bounds.py` checks this against the policy engine.
    """
    return 3 * (policy.threshold - 1)


def worst_case_sizes(policy: PolicyConfig, codec: Codec, names: TopicNames) -> list[RecordSize]:
    """The largest record of every kind the worker writes (key + value bytes each)."""
    sizes: dict[str, int] = {}
    for char in WORST_CHARACTERS:
        for what, size in _records(policy, codec, names, char):
            sizes[what] = max(size, sizes.get(what, 0))
    return [RecordSize(what, size) for what, size in sorted(sizes.items())]


def check_record_bounds(policy: PolicyConfig, codec: Codec, names: TopicNames) -> None:
    """ValueError naming the record and the largest threshold that fits, when the
    largest record of some kind under `policy` would exceed MAX_OUTPUT_RECORD_BYTES."""
    over = _over(policy, codec, names)
    if not over:
        return
    worst = max(over, key=lambda r: r.size)
    fits = largest_threshold(policy, codec, names)
    advice = (
        f"; the largest threshold that fits is {fits}"
        if fits
        else "; no threshold fits (check the topic names' length)"
    )
    raise ValueError(
        f"policy threshold {policy.threshold}: the largest {worst.what} record would be "
        f"{worst.size:,} bytes, more than the {MAX_OUTPUT_RECORD_BYTES:,} bytes a record "
        f"may take (every field at its limit, processor/limits.py){advice}"
    )


def largest_threshold(policy: PolicyConfig, codec: Codec, names: TopicNames) -> int:
    """The largest threshold whose records all fit (0 when none does)."""
    low, high = 0, 1
    while not _over(dataclasses.replace(policy, threshold=high), codec, names):
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        if _over(dataclasses.replace(policy, threshold=middle), codec, names):
            high = middle
        else:
            low = middle
    return low


def _over(policy: PolicyConfig, codec: Codec, names: TopicNames) -> list[RecordSize]:
    return [r for r in worst_case_sizes(policy, codec, names) if r.size > MAX_OUTPUT_RECORD_BYTES]


def _records(
    policy: PolicyConfig, codec: Codec, names: TopicNames, char: str
) -> list[tuple[str, int]]:
    def text(limit: int) -> str:
        return char * limit

    key = MailboxKey(text(MAX_TENANT_ID), text(MAX_MAILBOX))
    key_bytes = events.encode_key(key)
    at = _MAX_TIME
    verdict = Verdict(key, text(MAX_MESSAGE_ID), Direction.OUTBOUND, VerdictKind.VIRUS, at)
    wanted = Release(key, text(MAX_ACTOR), text(MAX_REASON), at, text(MAX_ACTION_ID))
    # A pack holds events up to MAX_PACK_BYTES; one larger event would go alone.
    largest = max(len(events.encode_entry(verdict)), len(events.encode_entry(wanted)))
    alone = len(events.pack_value(at, [b"x" * largest]))
    found: list[tuple[str, int]] = [
        ("internal pack", max(events.MAX_PACK_BYTES, alone)),
        ("state table", len(key_bytes) + len(_table_value(policy, key_bytes, char))),
    ]
    # Signed under the longest key id a key may have.
    signer = CommandKeys(((_LONGEST_KEY_ID, b"s" * 32),))
    outputs = Outputs(codec, names, control_keys=signer)
    for decision in _decisions(policy, key, char):
        out = outputs.encode(decision)
        found.append((f"{type(decision).__name__} ({out.topic})", out.size))
    dead = records.dead_letter_record(
        "internal_error",
        text(MAX_DEAD_LETTER_DETAIL),
        source_topic=names.verdicts,
        source_partition=2**31 - 1,
        source_offset=_MAX_LONG,
        key=b"k" * DEAD_LETTER_KEEP_BYTES,
        value=b"v" * DEAD_LETTER_KEEP_BYTES,
        at_ms=at,
    )
    dead_key = records.bounded_copy(b"k" * DEAD_LETTER_KEEP_BYTES) or b""
    found.append(("DeadLetter", len(dead_key) + len(codec.encode("DeadLetter", dead))))
    return found


def _table_value(policy: PolicyConfig, key_bytes: bytes, char: str) -> bytes:
    """The state table's value (as the agent stores it) with the fullest window."""
    state = MailboxState()
    state.offenses = state.sequence = state.allowlist_hits = 2**31 - 1
    state.blocked_at_ms = state.blocked_until_ms = state.high_water_ms = _MAX_TIME
    state.counts_from_ms = _MAX_TIME
    message_id = char * MAX_MESSAGE_ID
    state.window = SlidingWindow([(_MAX_TIME, message_id)] * max_window_entries(policy))
    value = {
        "state": state.to_record(),
        "pos": [_MAX_LONG, events.MAX_PACK_EVENTS],
        "clock": _MAX_TIME,
    }
    return encode_stored(key_bytes, value)


def _decisions(policy: PolicyConfig, key: MailboxKey, char: str) -> list[Decision]:
    """The largest decision of each kind: every text at its limit, the fullest alert,
    and the policy's own unblock and refusal texts for a release."""

    def text(limit: int) -> str:
        return char * limit

    sequence, at = 2**31 - 1, _MAX_TIME
    evidence = tuple(Evidence(text(MAX_MESSAGE_ID), at) for _ in range(policy.threshold))
    devices = tuple(text(MAX_DEVICE_ID) for _ in range(MAX_DEVICES))
    owner = text(MAX_OWNER_ID)
    block_id: Callable[[str], str] = lambda action: decision_id(key, sequence, action)  # noqa: E731
    decisions: list[Decision] = [
        Block(key, at, sequence, False, at, sequence, block_id("block"), evidence),
        ScanRequest(key, owner, devices[0], at, sequence, block_id("scan")),
        Alert(
            key, at, "blocked", sequence, False, at, owner, devices, True, evidence, block_id("a")
        ),
    ]
    wanted = Release(key, text(MAX_ACTOR), text(MAX_REASON), at, text(MAX_ACTION_ID))
    permanent = MailboxState()
    permanent.offenses = permanent.sequence = sequence
    permanent.permanent, permanent.blocked_at_ms = True, at
    released, _ = release(permanent, wanted, at)
    timed = MailboxState()
    timed.offenses = timed.sequence = sequence
    timed.blocked_at_ms = timed.blocked_until_ms = at
    _, refused = release(timed, wanted, 0)
    assert refused is not None
    return [*decisions, *released, refused.report]
