"""The gateway's in-memory state: command order, timed ends, tombstones, freshness (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from processor.codec.errors import DecodeError
from processor.mail.blocklist import Blocklist, ControlCommand, command_from_record
from processor.mail.gateway_state import GatewayState, Update
from processor.mail.tenant_resolution import DirectoryIndex, TenantResolver
from processor.mail.tenants import TenantMap

HOUR = 3_600_000
T0 = 1_767_607_200_000  # 2026-01-05T10:00:00Z


def record(action: str = "BLOCK", sequence: int = 1, **overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "command_id": f"cmd-{sequence}-{action}",
        "action": action,
        "tenant_id": "acme",
        "mailbox": "Alice@Acme.example",
        "at": T0,
        "offense": sequence,
        "permanent": False,
        "until": T0 + HOUR if action == "BLOCK" else None,
        "reason": None if action == "BLOCK" else "expired",
        "actor": None,
        "note": None,
        "block_sequence": sequence,
    }
    base.update(overrides)
    return base


def command(action: str = "BLOCK", sequence: int = 1, **overrides: Any) -> ControlCommand:
    return command_from_record(record(action, sequence, **overrides))


# -- records -------------------------------------------------------------------------


def test_a_record_becomes_a_command_with_its_mailbox_normalised() -> None:
    block = command()
    assert block.mailbox == "alice@acme.example"
    assert block.until_ms == T0 + HOUR and not block.permanent

    permanent = command(permanent=True, until=T0 + 5)
    assert permanent.permanent and permanent.until_ms is None  # a stray until is dropped


@pytest.mark.parametrize(
    "overrides",
    [
        {"action": "PAUSE"},
        {"tenant_id": " "},
        {"mailbox": ""},
        {"command_id": 5},
        {"block_sequence": -1},
        {"until": None},  # timed BLOCK without an end
        {"at": -5},
        {"until": 10**20},
        {"permanent": "yes"},
    ],
)
def test_records_the_gateway_cannot_enforce_are_invalid(overrides: dict[str, Any]) -> None:
    with pytest.raises(DecodeError) as raised:
        command_from_record(record(**overrides))
    assert raised.value.reason == "invalid_record"


def test_a_record_missing_a_field_is_invalid() -> None:
    rec = record()
    del rec["block_sequence"]
    with pytest.raises(DecodeError, match="block_sequence"):
        command_from_record(rec)


# -- the blocklist -----------------------------------------------------------------------


def test_a_timed_block_holds_until_exactly_its_until() -> None:
    blocks = Blocklist()
    assert blocks.apply(command()) == "applied"

    assert blocks.block_of("acme", "alice@acme.example", T0) is not None
    assert blocks.block_of("acme", "alice@acme.example", T0 + HOUR - 1) is not None
    assert blocks.block_of("acme", "alice@acme.example", T0 + HOUR) is None  # no UNBLOCK needed
    assert blocks.block_of("other", "alice@acme.example", T0) is None


def test_a_permanent_block_holds_until_an_unblock() -> None:
    blocks = Blocklist()
    blocks.apply(command(sequence=6, permanent=True, until=None))
    assert blocks.block_of("acme", "alice@acme.example", T0 + 10**12) is not None

    assert blocks.apply(command("UNBLOCK", 6, reason="released")) == "applied"
    assert blocks.block_of("acme", "alice@acme.example", T0) is None


def test_repeated_commands_are_harmless() -> None:
    blocks = Blocklist()
    blocks.apply(command())
    blocks.apply(command("UNBLOCK", 1))
    assert blocks.apply(command("UNBLOCK", 1)) == "duplicate"
    assert blocks.apply(command()) == "outdated"  # a replayed BLOCK after its UNBLOCK
    assert blocks.block_of("acme", "alice@acme.example", T0) is None


def test_an_older_block_never_overrides_a_newer_one() -> None:
    blocks = Blocklist()
    blocks.apply(command(sequence=3, until=T0 + 4 * HOUR))
    assert blocks.apply(command(sequence=2, until=T0 + 2 * HOUR)) == "outdated"
    assert blocks.apply(command("UNBLOCK", 2)) == "outdated"

    block = blocks.block_of("acme", "alice@acme.example", T0 + 3 * HOUR)
    assert block is not None and block.block_sequence == 3


def test_a_tombstone_forgets_the_mailbox() -> None:
    blocks = Blocklist()
    blocks.apply(command(permanent=True))
    assert blocks.forget("acme", "ALICE@acme.example ")
    assert blocks.block_of("acme", "alice@acme.example", T0) is None
    assert blocks.counts(T0) == (0, 0)
    assert not blocks.forget("acme", "alice@acme.example")


def test_counts_follow_the_clock_and_replacements() -> None:
    blocks = Blocklist()
    blocks.apply(command(mailbox="a@x"))  # ends T0 + 1 h
    blocks.apply(command(mailbox="b@x", until=T0 + 2 * HOUR))
    blocks.apply(command(mailbox="c@x", permanent=True))
    assert blocks.counts(T0) == (2, 1)

    blocks.apply(command("UNBLOCK", 1, mailbox="b@x"))
    assert blocks.counts(T0) == (1, 1)
    assert blocks.counts(T0 + HOUR) == (0, 1)
    # A later block of a mailbox whose earlier end is still in the heap counts once.
    blocks.apply(command(sequence=2, mailbox="a@x", until=T0 + 5 * HOUR))
    assert blocks.counts(T0 + 3 * HOUR) == (1, 1)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 4), st.sampled_from(["BLOCK", "UNBLOCK"])), max_size=12),
    st.randoms(use_true_random=False),
)
def test_any_delivery_order_ends_in_the_newest_command(
    steps: list[tuple[int, str]], rng: Any
) -> None:
    # One position, one command (the worker's ids are deterministic); sequence 4 is
    # permanent, the others end an hour apart.
    commands = [
        command(action, seq, permanent=action == "BLOCK" and seq == 4, until=T0 + (seq + 1) * HOUR)
        for seq, action in steps
    ]
    in_order, shuffled = Blocklist(), Blocklist()
    for c in sorted(commands, key=lambda c: c.order):
        in_order.apply(c)
    rng.shuffle(commands)
    for c in commands + commands[:3]:  # and some repeated
        shuffled.apply(c)

    for now in (T0, T0 + 2 * HOUR, T0 + 10 * HOUR):
        assert shuffled.block_of("acme", "alice@acme.example", now) == in_order.block_of(
            "acme", "alice@acme.example", now
        )
        assert shuffled.counts(now) == in_order.counts(now)


# -- tenants ----------------------------------------------------------------------------


def test_the_map_wins_and_the_directory_fills_in() -> None:
    directory = DirectoryIndex()
    directory.put("globex", "bob@acme.example")  # the map says acme.example is acme's
    directory.put("initech", "Carol@Initech.example")
    directory.put("umbrella", "carol@initech.example")
    resolver = TenantResolver(TenantMap.from_mapping({"Acme.example": "acme"}), directory)

    assert resolver.tenants_of("bob@acme.example") == ("map", ("acme",))
    assert resolver.tenants_of("carol@initech.example") == ("directory", ("initech", "umbrella"))
    assert resolver.tenants_of("dave@nowhere.example") == ("none", ())
    assert resolver.tenants_of("no-at-sign") == ("none", ())

    directory.forget("initech", "carol@initech.example")
    directory.forget("initech", "carol@initech.example")  # twice is harmless
    assert resolver.tenants_of("carol@initech.example") == ("directory", ("umbrella",))
    assert directory.entries == 2


def test_without_a_map_or_a_directory_nothing_resolves() -> None:
    assert TenantResolver(None, None).tenants_of("a@b") == ("none", ())


# -- freshness ----------------------------------------------------------------------------


def test_state_age_and_staleness() -> None:
    results: list[str] = []
    state = GatewayState(started_at=100.0, stale_after_s=30.0, on_command=results.append)
    assert state.stale(101.0) and state.age_s(110.0) == 10.0  # never caught up

    state.apply([Update("command", "acme", "alice@acme.example", command())])
    state.apply([Update("command", "acme", "alice@acme.example", command())])
    state.mark_caught_up(120.0)
    assert results == ["applied", "duplicate"]
    assert not state.stale(150.0) and state.age_s(150.0) == 30.0
    assert state.stale(150.5)

    state.mark_caught_up(110.0)  # an older mark changes nothing
    assert state.caught_up_at == 120.0


def test_updates_reach_the_blocklist_and_the_directory() -> None:
    state = GatewayState(0.0, 60.0)
    state.apply(
        [
            Update("command", "acme", "alice@acme.example", command(permanent=True)),
            Update("directory", "acme", "alice@acme.example"),
            Update("forget_mailbox", "acme", "alice@acme.example"),
            Update("directory", "acme", "bob@acme.example"),
            Update("forget_directory", "acme", "alice@acme.example"),
        ]
    )
    assert state.blocklist.block_of("acme", "alice@acme.example", T0) is None
    assert state.directory.tenants_of("bob@acme.example") == ("acme",)
    assert state.directory.tenants_of("alice@acme.example") == ()
    assert state.records == 5
