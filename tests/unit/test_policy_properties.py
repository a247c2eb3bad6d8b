"""Property tests of the policy core against docs/policy.md.

The centre is a stateful comparison: hypothesis drives `Engine` and a deliberately
naive, literal model of the specification (`naive_policy.NaivePolicy`) with the
same random inputs and asserts the same decisions, in the same order, after every
step. At the end of every run the same inputs are replayed through a fresh engine
(ids must repeat) and through `simulate.run` as scenario lines (same decisions).
Spec choices the model makes where the rules are silent are listed in naive_policy.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from processor.policy import (
    Block,
    Direction,
    DirectoryEntry,
    Engine,
    MailboxKey,
    Outcome,
    PolicyConfig,
    Release,
    TenantSettings,
    Tick,
    Unblock,
    Verdict,
    VerdictKind,
    forgettable,
)
from processor.simulate import run
from tests.unit.naive_policy import NaivePolicy, canonical, canonical_order

BASE_MS = 1_767_607_200_000  # 2026-01-05T10:00:00Z
TENANTS = ["t1", "t1", "t1", "T1", "t2"]  # compared as given: t1 and T1 differ
MAILBOXES = [
    "a@x.com",
    " A@X.com ",
    "a@X.COM\t",
    "a@x.com",
    "b@x.com",
    "B@x.com",
    "c@y.org",
    " C@Y.ORG",
]
MESSAGE_IDS = [f"m{i}" for i in range(6)]
OWNERS = ["o1", "o2"]
DEVICES = ["d1", "d2", "d3"]
ALLOWLISTS = [[], [], ["@y.org"], [" B@X.com "]]
MAX_LATENESS = [300, 1_000, 3_000, 10_000, 86_400_000]  # ms; the default (1 d) last
KINDS = [
    ("OUTBOUND", "SPAM"),
    ("OUTBOUND", "VIRUS"),
    ("OUTBOUND", "SPAM"),
    ("OUTBOUND", "VIRUS"),
    ("OUTBOUND", "CLEAN"),
    ("INBOUND", "SPAM"),
    ("INBOUND", "VIRUS"),
    ("INBOUND", "CLEAN"),
]


def iso(ms: int) -> str:
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{ms % 1000:03d}Z" if ms % 1000 else f"{text}Z"


def records(engine: Engine) -> dict[MailboxKey, dict]:
    return {key: state.to_record() for key, state in engine.states.items()}


def outcome_name(outcome: Outcome) -> str:
    return outcome.value


# -- properties over one run's output (also used by the stateful test) ---------------
def check_output_properties(config: PolicyConfig, decisions: list) -> None:
    blocks = [d for d in decisions if isinstance(d, Block)]
    ids = [b.command_id for b in blocks]
    assert len(ids) == len(set(ids)), "BLOCK command ids repeat"
    all_ids = [
        getattr(d, name)
        for d in decisions
        for name in ("command_id", "request_id", "alert_id", "report_id")
        if hasattr(d, name)
    ]
    assert len(all_ids) == len(set(all_ids)), "two different decisions share an id"
    in_force: dict[MailboxKey, Block] = {}
    last_offense: dict[MailboxKey, int] = defaultdict(int)
    last_unblock_at = None
    for d in decisions:
        if isinstance(d, Block):
            assert d.key not in in_force, f"block of {d.key} while another is in force"
            if d.permanent:
                assert d.until_ms is None and d.offense >= config.permanent_on_offense
            else:
                assert d.offense < config.permanent_on_offense
                expected = config.first_block_ms * int(config.growth_factor) ** (d.offense - 1)
                assert d.until_ms - d.at_ms == expected
            assert d.offense == last_offense[d.key] + 1
            last_offense[d.key] = d.offense
            in_force[d.key] = d
        elif isinstance(d, Unblock):
            block = in_force.pop(d.key)
            assert d.offense == block.offense
            if d.reason == "expired":
                assert not block.permanent and d.at_ms == block.until_ms
            else:
                assert block.permanent
                last_offense[d.key] = 0
            if last_unblock_at is not None:
                assert d.at_ms >= last_unblock_at, "unblocks out of time order"
            last_unblock_at = d.at_ms


class PolicyComparison(RuleBasedStateMachine):
    """Engine vs the naive model, step by step."""

    @initialize(
        threshold=st.integers(1, 5),
        window_ms=st.sampled_from([1_000, 2_000, 5_000]),
        first_block_ms=st.sampled_from([500, 1_000, 3_000, 7_000]),
        growth=st.integers(1, 3),
        permanent_on=st.integers(1, 6),
        default_ss=st.booleans(),
        allowlist=st.sampled_from(ALLOWLISTS),
        max_lateness_ms=st.sampled_from(MAX_LATENESS),
    )
    def setup(
        self,
        threshold,
        window_ms,
        first_block_ms,
        growth,
        permanent_on,
        default_ss,
        allowlist,
        max_lateness_ms,
    ):
        mapping = {
            "threshold": threshold,
            "window": f"{window_ms}ms",
            "first_block": f"{first_block_ms}ms",
            "growth_factor": growth,
            "permanent_on_offense": permanent_on,
            "default_synchronized_security": default_ss,
            "allowlist": allowlist,
            "max_lateness": f"{max_lateness_ms}ms",
        }
        self.config = PolicyConfig.from_mapping(mapping)
        self.engine = Engine(self.config)
        self.model = NaivePolicy(
            threshold=threshold,
            window_ms=window_ms,
            first_block_ms=first_block_ms,
            growth_factor=growth,
            permanent_on_offense=permanent_on,
            default_synchronized_security=default_ss,
            allowlist=allowlist,
            max_lateness_ms=max_lateness_ms,
        )
        self.inputs: list = []  # every engine input, in order, for the replay
        self.lines: list[str] = []  # the same inputs as a scenario
        self.output: list = []
        self.refused_lines: list[int] = []
        self.sent_verdicts: list[tuple] = []

    # -- helpers ----------------------------------------------------------------
    def _time(self, data) -> int:
        now = self.model.now if self.model.now is not None else BASE_MS
        w = self.config.window_ms
        longest = self.config.first_block_ms * int(self.config.growth_factor) ** 5
        lateness = self.config.max_lateness_ms
        modes = ["forward"] * 4 + ["back", "backlog", "jump"]
        mode = data.draw(st.sampled_from(modes), label="mode")
        if mode == "forward":
            low, high = now, now + w // 3
        elif mode == "back":  # out of order, possibly late
            low, high = now - 3 * w, now
        elif mode == "backlog":  # around the max_lateness boundary (rules 1 and 6)
            low, high = now - lateness - 2 * w, now - lateness + w
        else:  # a jump that lets blocks expire and states become forgettable
            low, high = now, now + max(longest, lateness + 3 * w)
        low = max(0, low)
        return data.draw(st.integers(low, high), label="at")

    def _stamp(self, data, ms: int):
        return iso(ms) if data.draw(st.booleans(), label="iso") else ms

    def _case(self, data, value: str) -> str:
        return data.draw(st.sampled_from([value, value.lower(), value.title()]), label="case")

    def _compare(self, step: str, expected: list[tuple], actual: list) -> None:
        got = canonical_order([canonical(d) for d in actual])
        want = canonical_order(expected)
        assert got == want, f"{step}\n model:  {want}\n engine: {got}"
        for d in got:
            event(f"{d[0]} {d[4] if d[0] in ('unblock', 'block') else d[1]}")
        self.output.extend(actual)

    # -- rules -------------------------------------------------------------------
    def _verdict(self, data, tenant, mailbox, message_id, direction, kind, t):
        key = MailboxKey.of(tenant, mailbox)
        verdict = Verdict(key, message_id, Direction(direction), VerdictKind(kind), t)
        before = records(self.engine)
        outcome, decisions = self.engine.verdict(verdict)
        want_outcome, expected = self.model.verdict(tenant, mailbox, message_id, direction, kind, t)
        step = f"verdict {tenant!r} {mailbox!r} {message_id} {direction} {kind} t={t}"
        self._compare(step, expected, decisions)
        # rule 11 (allowlist): an allowlisted would-be block is a trigger too
        assert outcome_name(outcome) == want_outcome, f"{step}: {outcome} != {want_outcome}"
        event(f"outcome {want_outcome}")
        if want_outcome == "not_qualifying":
            # clean or inbound mail changes no state (except blocks that fell due)
            after = records(self.engine)
            expired = {d.key for d in decisions if isinstance(d, Unblock)}
            assert {k: v for k, v in before.items() if k not in expired} == {
                k: v for k, v in after.items() if k not in expired
            }, step
        self.inputs.append(verdict)
        self.lines.append(
            json.dumps(
                {
                    "type": self._case(data, "verdict"),
                    "tenant_id": tenant,
                    "message_id": message_id,
                    "mailbox": mailbox,
                    "direction": self._case(data, direction),
                    "verdict": self._case(data, kind),
                    "scanned_at": self._stamp(data, t),
                }
            )
        )
        self.sent_verdicts.append((tenant, mailbox, message_id, direction, kind, t))

    @rule(
        data=st.data(),
        tenant=st.sampled_from(TENANTS[:4]),
        mailbox=st.sampled_from(MAILBOXES),
        message_id=st.sampled_from(MESSAGE_IDS),
        kind=st.sampled_from(KINDS),
    )
    def verdict(self, data, tenant, mailbox, message_id, kind):
        self._verdict(data, tenant, mailbox, message_id, kind[0], kind[1], self._time(data))

    @rule(
        data=st.data(),
        tenant=st.sampled_from(TENANTS),
        mailbox=st.sampled_from(MAILBOXES),
        kind=st.sampled_from(KINDS[:2]),
    )
    def fresh_verdict(self, data, tenant, mailbox, kind):
        """A qualifying verdict with a message id never used before."""
        message_id = f"f{len(self.lines)}"
        self._verdict(data, tenant, mailbox, message_id, kind[0], kind[1], self._time(data))

    @rule(
        data=st.data(),
        tenant=st.sampled_from(TENANTS[:4]),
        mailbox=st.sampled_from(MAILBOXES),
    )
    def burst(self, data, tenant, mailbox):
        """`threshold` fresh qualifying verdicts in quick succession: usually a trigger."""
        for _ in range(self.config.threshold):
            now = self.model.now if self.model.now is not None else BASE_MS
            at = data.draw(st.integers(now, now + self.config.window_ms // 10), label="at")
            message_id = f"f{len(self.lines)}"
            self._verdict(data, tenant, mailbox, message_id, "OUTBOUND", "SPAM", at)

    @rule(data=st.data())
    def replayed_verdict(self, data):
        """The scanner retries, or the processor replays: an earlier verdict verbatim."""
        if not self.sent_verdicts:
            return
        previous = data.draw(st.sampled_from(self.sent_verdicts), label="replay")
        self._verdict(data, *previous)

    @rule(
        data=st.data(),
        tenant=st.sampled_from(TENANTS[:4]),
        mailbox=st.sampled_from(MAILBOXES),
        owner=st.sampled_from(OWNERS),
        devices=st.lists(st.sampled_from(DEVICES), unique=True, max_size=3),
    )
    def directory(self, data, tenant, mailbox, owner, devices):
        seen = sorted(self.model.mailboxes)
        if seen and data.draw(st.booleans(), label="known mailbox"):
            tenant, mailbox = data.draw(st.sampled_from(seen), label="key")
        at = self._time(data)
        entry = DirectoryEntry(MailboxKey.of(tenant, mailbox), owner, tuple(devices), at)
        decisions = self.engine.directory(entry)
        expected = self.model.directory(tenant, mailbox, owner, devices, at)
        self._compare(f"directory {entry}", expected, decisions)
        self.inputs.append(entry)
        self.lines.append(
            json.dumps(
                {
                    "type": "directory",
                    "tenant_id": tenant,
                    "mailbox": mailbox,
                    "owner_id": owner,
                    "devices": devices,
                    "at": self._stamp(data, at),
                }
            )
        )

    @rule(data=st.data(), tenant=st.sampled_from(TENANTS[:4]), on=st.booleans())
    def settings_change(self, data, tenant, on):
        at = self._time(data)
        entry = TenantSettings(tenant, on, at)
        decisions = self.engine.settings(entry)
        expected = self.model.settings(tenant, on, at)
        self._compare(f"settings {entry}", expected, decisions)
        self.inputs.append(entry)
        self.lines.append(
            json.dumps(
                {
                    "type": "settings",
                    "tenant_id": tenant,
                    "synchronized_security": on,
                    "at": self._stamp(data, at),
                }
            )
        )

    @rule(data=st.data())
    def release(self, data):
        permanent = self.model.permanent_keys()
        if permanent and data.draw(st.booleans(), label="valid release"):
            tenant, mailbox = data.draw(st.sampled_from(permanent), label="key")
            mailbox = data.draw(st.sampled_from([mailbox, f" {mailbox.upper()} "]), label="mb")
        else:
            tenant = data.draw(st.sampled_from(TENANTS), label="tenant")
            mailbox = data.draw(st.sampled_from(MAILBOXES), label="mailbox")
        at = self._time(data)
        request = Release(MailboxKey.of(tenant, mailbox), "support-1", "ticket 42", at)
        decisions, refused = self.engine.release(request)
        expected, want_refused = self.model.release(tenant, mailbox, at)
        step = f"release {request}"
        self._compare(step, expected, decisions)
        assert (refused is not None) == want_refused, f"{step}: refused={refused}"
        event(f"release refused={want_refused}")
        self.inputs.append(request)
        self.lines.append(
            json.dumps(
                {
                    "type": "release",
                    "tenant_id": tenant,
                    "mailbox": mailbox,
                    "actor": "support-1",
                    "reason": "ticket 42",
                    "at": self._stamp(data, at),
                }
            )
        )
        if want_refused:
            self.refused_lines.append(len(self.lines))

    @rule(data=st.data())
    def tick(self, data):
        at = self._time(data)
        decisions = self.engine.tick(at)
        expected = self.model.tick(at)
        self._compare(f"tick {at}", expected, decisions)
        self.inputs.append(Tick(at))
        self.lines.append(json.dumps({"type": "tick", "at": self._stamp(data, at)}))

    @rule()
    def forget(self):
        """Rule 6: the engine forgets what it may; the model never forgets, and every
        later step still compares equal (forgetting never changes a decision)."""
        now = self.engine.now_ms
        allowed = {
            key
            for key, state in self.engine.states.items()
            if now is not None and forgettable(self.config, state, now)
        }
        before = set(self.engine.states)
        assert self.engine.forget() == len(allowed)
        assert set(self.engine.states) == before - allowed
        event(f"forgot {min(len(allowed), 3)}+ state(s)")

    @invariant()
    def output_properties(self):
        if hasattr(self, "config"):
            check_output_properties(self.config, self.output)

    def teardown(self):
        if not hasattr(self, "config"):
            return
        # replaying the same input gives the same output, ids included
        again = Engine(self.config)
        replayed: list = []
        for item in self.inputs:
            replayed.extend(again.apply(item)[0])
        assert replayed == self.output
        # `sendguard simulate` over the same inputs as scenario lines: same decisions
        simulation = run(list(self.lines), self.config)
        assert [n for n, _ in simulation.rejected] == self.refused_lines, simulation.rejected
        assert simulation.decisions == self.output


PolicyComparison.TestCase.settings = settings(
    max_examples=int(os.environ.get("POLICY_EXAMPLES", "150")),
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    report_multiple_bugs=False,
)
TestPolicyComparison = PolicyComparison.TestCase


# -- simulate never crashes: every line is used or rejected with its number ----------
VALID_LINES = [
    {
        "type": "verdict",
        "tenant_id": "t1",
        "message_id": "m1",
        "mailbox": " A@X.com",
        "direction": "outbound",
        "verdict": "Spam",
        "scanned_at": "2026-01-05T10:00:00.5Z",
    },
    {
        "type": "verdict",
        "tenant_id": "t1",
        "message_id": "m2",
        "mailbox": "a@x.com",
        "direction": "INBOUND",
        "verdict": "clean",
        "scanned_at": BASE_MS,
    },
    {
        "type": "directory",
        "tenant_id": "t1",
        "mailbox": "a@x.com",
        "owner_id": "o1",
        "devices": ["d1"],
        "at": BASE_MS,
    },
    {"type": "settings", "tenant_id": "t1", "synchronized_security": False, "at": BASE_MS},
    {"type": "tick", "at": "2026-01-05T11:00:00Z"},
]
FIELDS = [
    "type",
    "tenant_id",
    "message_id",
    "mailbox",
    "direction",
    "verdict",
    "scanned_at",
    "owner_id",
    "devices",
    "at",
    "synchronized_security",
    "actor",
    "reason",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "verdict",
            "directory",
            "settings",
            "release",
            "tick",
            "OUTBOUND",
            "spam",
            "2026-01-05T10:00:00Z",
        ]
    ),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
mutated = st.builds(
    lambda base, drop, changes: json.dumps(
        {k: v for k, v in {**base, **changes}.items() if k not in drop}
    ),
    st.sampled_from(VALID_LINES),
    st.sets(st.sampled_from(FIELDS), max_size=2),
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=2),
)
any_line = st.one_of(
    st.text(max_size=40),
    st.builds(json.dumps, json_values),
    mutated,
    st.sampled_from([json.dumps(v) for v in VALID_LINES]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(any_line, max_size=25))
def test_simulate_never_crashes_and_accounts_for_every_line(lines):
    simulation = run(list(lines), PolicyConfig(threshold=2, window_ms=1_000))
    numbers = [n for n, _ in simulation.rejected]
    assert numbers == sorted(set(numbers))
    assert all(1 <= n <= len(lines) for n in numbers)
    assert all(isinstance(reason, str) and reason for _, reason in simulation.rejected)
    valid = {json.dumps(v) for v in VALID_LINES}
    for number, line in enumerate(lines, start=1):
        if line in valid:
            assert number not in numbers, (number, line, simulation.rejected)
        if not line.strip():
            # Choice: a blank line is skipped silently (the spec does not say); not asserted.
            continue
        try:
            parsed = json.loads(line)
        except ValueError:
            assert number in numbers, f"line {number} is not JSON but was not rejected: {line!r}"
            continue
        if not isinstance(parsed, dict) or not isinstance(parsed.get("type"), str):
            assert number in numbers, f"line {number} has no usable type: {line!r}"
        elif parsed["type"].lower() not in {"verdict", "directory", "settings", "release", "tick"}:
            assert number in numbers, f"line {number} has an unknown type: {line!r}"


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(MAILBOXES),
            st.sampled_from(MESSAGE_IDS),
            st.sampled_from(KINDS),
            st.integers(0, 20_000),
        ),
        max_size=40,
    ),
    st.sampled_from(KINDS[4:]),
    st.integers(-3_000, 3_000),
)
def test_clean_or_inbound_verdicts_change_no_state(history, kind, offset):
    engine = Engine(PolicyConfig(threshold=2, window_ms=2_000, first_block_ms=1_000))
    now = BASE_MS
    for mailbox, message_id, (direction, verdict), dt in history:
        now += dt // 10
        engine.verdict(
            Verdict(
                MailboxKey.of("t1", mailbox),
                message_id,
                Direction(direction),
                VerdictKind(verdict),
                now,
            )
        )
    # move the clock first, so only the verdict itself could change anything
    at = now + offset
    engine.tick(at)
    before = records(engine)
    outcome, decisions = engine.verdict(
        Verdict(MailboxKey.of("t1", "a@x.com"), "m0", Direction(kind[0]), VerdictKind(kind[1]), at)
    )
    assert outcome is Outcome.NOT_QUALIFYING
    assert decisions == []
    assert records(engine) == before


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(MAX_LATENESS[:4]),
    st.lists(
        st.tuples(
            st.sampled_from(MAILBOXES[4:]),
            st.sampled_from(MESSAGE_IDS),
            st.integers(-6_000, 2_000),  # relative to the clock: out of order, late, ahead
            st.integers(0, 4_000),  # how far the clock moves first
        ),
        max_size=60,
    ),
)
def test_forgetting_never_changes_a_decision(max_lateness_ms, steps):
    """Rule 6: an engine that forgets everything it may after every input decides and
    classifies exactly like one that never forgets."""
    config = PolicyConfig(
        threshold=3, window_ms=1_000, first_block_ms=500, max_lateness_ms=max_lateness_ms
    )
    keeping, forgetting = Engine(config), Engine(config)
    now = BASE_MS
    for mailbox, message_id, offset, advance in steps:
        now += advance
        assert keeping.tick(now) == forgetting.tick(now)
        at = max(0, now + offset)
        verdict = Verdict(
            MailboxKey.of("t1", mailbox), message_id, Direction.OUTBOUND, VerdictKind.SPAM, at
        )
        assert keeping.verdict(verdict) == forgetting.verdict(verdict)
        forgetting.forget()
        event("some forgotten" if len(forgetting.states) < len(keeping.states) else "none")


ILL_TYPED = [
    ("verdict", "scanned_at", True),
    ("verdict", "scanned_at", 1.5),
    ("verdict", "scanned_at", "yesterday"),
    ("verdict", "direction", "SIDEWAYS"),
    ("verdict", "verdict", "MAYBE"),
    ("verdict", "mailbox", 7),
    ("verdict", "message_id", None),
    ("directory", "devices", "d1"),
    ("directory", "devices", [1, 2]),
    ("settings", "synchronized_security", "yes"),
    ("settings", "synchronized_security", 1),
    ("tick", "at", None),
]


def test_ill_typed_fields_are_rejected_with_their_line_number():
    by_type = {v["type"]: v for v in VALID_LINES}
    lines = [json.dumps({**by_type[t], field: value}) for t, field, value in ILL_TYPED]
    simulation = run(lines, PolicyConfig())
    rejected = [n for n, _ in simulation.rejected]
    missing = [ILL_TYPED[n - 1] for n in range(1, len(lines) + 1) if n not in rejected]
    assert missing == []


def test_duplicate_at_the_pruning_boundary():
    """Regression: an entry exactly at H - 2*window was dropped, so a retry counted twice.

    Minimised from the stateful comparison.

    threshold 2, window 5 s. m2 is counted at 0 s, x at 10 s (H = 10 s), then m2 is
    delivered again with scanned_at 5.001 s (not late: 5.001 > H - window = 5 s).
    The entry of m2 at 0 s is not *older* than H - 2*window = 0 s, so it is still in
    the window state and the retry is a duplicate (rule 2): no block.
    """
    engine = Engine(PolicyConfig(threshold=2, window_ms=5_000))
    key = MailboxKey.of("t1", "a@x.com")
    for message_id, at in [("m2", 0), ("x", 10_000)]:
        engine.verdict(Verdict(key, message_id, Direction.OUTBOUND, VerdictKind.SPAM, BASE_MS + at))
    outcome, decisions = engine.verdict(
        Verdict(key, "m2", Direction.OUTBOUND, VerdictKind.SPAM, BASE_MS + 5_001)
    )
    assert (outcome, decisions) == (Outcome.DUPLICATE, [])
