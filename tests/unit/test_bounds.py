"""The largest record the worker can write, per kind, against the producer limit:
the window bound holds for the policy engine, the default policy fits, a policy
whose state could not be stored is refused, and what the policy really produces
from input at every limit is never larger than the computed worst case."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from processor import limits
from processor.codec.wire import Codec
from processor.policy import (
    Direction,
    DirectoryEntry,
    MailboxKey,
    MailboxState,
    PolicyConfig,
    Release,
    Verdict,
    VerdictKind,
    release,
    step_verdict,
)
from processor.stream.bounds import (
    check_record_bounds,
    largest_threshold,
    max_window_entries,
    worst_case_sizes,
)
from processor.stream.outputs import Outputs
from processor.stream.topics import TopicNames

CODEC = Codec.from_config()
NAMES = TopicNames()
KEY = MailboxKey("t1", "a@x.com")
T0 = 1_767_607_200_000


class NoDirectory:
    def owner_of(self, key: MailboxKey) -> DirectoryEntry | None:
        return None

    def synchronized_security(self, tenant_id: str) -> bool | None:
        return None


@settings(max_examples=500, deadline=None)
@given(
    threshold=st.integers(2, 5),
    window=st.integers(1, 20),
    steps=st.lists(
        st.tuples(st.integers(0, 4), st.integers(-1, 1), st.integers(-30, 30)), max_size=60
    ),
)
@example(threshold=3, window=10, steps=[(k, 0, 0) for k in (0, 0, 1, 1, 2, 2)])
def test_a_stored_window_never_holds_more_than_the_bound(
    threshold: int, window: int, steps: list[tuple[int, int, int]]
) -> None:
    # Verdicts at and around multiples of the window (where the bound is reached:
    # threshold - 1 each at H - 2·window, H - window and H) and anywhere near them,
    # late, out of order or ahead: the window never outgrows 3 × (threshold - 1).
    policy = PolicyConfig(threshold=threshold, window_ms=window, first_block_ms=1)
    state = MailboxState()
    for i, (windows, edge, jitter) in enumerate(steps):
        at = T0 + windows * window + edge + (jitter if i % 3 == 0 else 0)
        verdict = Verdict(KEY, f"m{i}", Direction.OUTBOUND, VerdictKind.SPAM, at)
        step_verdict(policy, state, verdict, T0 + 10 * window, NoDirectory())
        assert len(state.window) <= max_window_entries(policy)


def test_the_window_bound_is_reached() -> None:
    # threshold - 1 verdicts at X, at X + window and at X + 2·window: no interval of
    # one window holds two groups, so none triggers, and all of them are kept.
    policy = PolicyConfig(threshold=5, window_ms=600_000)
    state = MailboxState()
    for i in range(12):
        at = T0 + (i // 4) * policy.window_ms
        verdict = Verdict(KEY, f"m{i}", Direction.OUTBOUND, VerdictKind.SPAM, at)
        step_verdict(policy, state, verdict, at, NoDirectory())
    assert len(state.window) == max_window_entries(policy) == 12


def test_every_record_of_the_default_policy_fits_the_producer_limit() -> None:
    sizes = {r.what: r.size for r in worst_case_sizes(PolicyConfig(), CODEC, NAMES)}
    assert set(sizes) == {
        "internal pack",
        "state table",
        "Block (mailbox.control)",
        "Unblock (mailbox.control)",
        "ScanRequest (endpoint.scan-requests)",
        "Alert (security.alerts)",
        "Report (mail.reports)",
        "DeadLetter",
    }
    assert max(sizes.values()) <= limits.MAX_OUTPUT_RECORD_BYTES
    check_record_bounds(PolicyConfig(), CODEC, NAMES)


def test_a_policy_whose_state_would_not_fit_is_refused_naming_the_largest_that_fits() -> None:
    fits = largest_threshold(PolicyConfig(), CODEC, NAMES)
    check_record_bounds(PolicyConfig(threshold=fits), CODEC, NAMES)
    with pytest.raises(ValueError) as raised:
        check_record_bounds(PolicyConfig(threshold=fits + 1), CODEC, NAMES)
    message = str(raised.value)
    assert f"policy threshold {fits + 1}" in message
    assert "state table" in message
    assert f"the largest threshold that fits is {fits}" in message
    assert 5 < fits < 1000


@pytest.mark.parametrize("char", ["\U0010ffff", "\x01", "é"])
def test_what_the_policy_produces_from_input_at_every_limit_is_within_the_worst_case(
    char: str,
) -> None:
    policy = PolicyConfig()
    worst = {r.what: r.size for r in worst_case_sizes(policy, CODEC, NAMES)}
    key = MailboxKey(char * limits.MAX_TENANT_ID, char * limits.MAX_MAILBOX)
    owner = DirectoryEntry(
        key,
        char * limits.MAX_OWNER_ID,
        tuple(f"{i:03d}" + char * (limits.MAX_DEVICE_ID - 3) for i in range(limits.MAX_DEVICES)),
        T0,
    )

    class Directory(NoDirectory):
        def owner_of(self, key: MailboxKey) -> DirectoryEntry | None:
            return owner

    state = MailboxState()
    produced = []
    for n in range(6):  # up to the permanent block
        for i in range(policy.threshold):
            message_id = f"{n}-{i}-" + char * (limits.MAX_MESSAGE_ID - 6)
            at = T0 + n * 100 * 3_600_000 + i
            verdict = Verdict(key, message_id, Direction.OUTBOUND, VerdictKind.SPAM, at)
            produced += step_verdict(policy, state, verdict, at, Directory())[1]
    wanted = Release(key, char * limits.MAX_ACTOR, char * limits.MAX_REASON, T0 + 10**9)
    produced += release(state, wanted, T0 + 10**9)[0]
    outputs = Outputs(CODEC, NAMES)
    kinds = set()
    for decision in produced:
        out = outputs.encode(decision)
        what = f"{type(decision).__name__} ({out.topic})"
        kinds.add(what)
        assert len(out.key) + len(out.value) <= worst[what], what
    assert len(kinds) == 5


def test_a_longer_topic_prefix_is_measured_too() -> None:
    long_names = dataclasses.replace(NAMES, prefix="p" * 200 + ".")
    plain = {r.what: r.size for r in worst_case_sizes(PolicyConfig(), CODEC, NAMES)}
    prefixed = {r.what: r.size for r in worst_case_sizes(PolicyConfig(), CODEC, long_names)}
    assert prefixed["DeadLetter"] > plain["DeadLetter"]  # it carries the source topic


def test_the_worker_refuses_to_start_with_such_a_policy(tmp_path: Path) -> None:
    # Refused before any Kafka client is made: the bootstrap address leads nowhere.
    policy = tmp_path / "policy.yaml"
    policy.write_text("threshold: 100\n")
    result = subprocess.run(
        [
            str(Path(sys.executable).with_name("sendguard")),
            "worker",
            "--policy",
            str(policy),
            "--bootstrap",
            "127.0.0.1:9",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "policy threshold 100" in result.stderr
    assert "the largest threshold that fits is" in result.stderr
