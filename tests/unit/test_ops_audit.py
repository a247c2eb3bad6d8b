"""Every release attempt is audited; an unauthenticated flood only up to a rate."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator

import pytest

from processor.ops.audit import (
    UNAUTHENTICATED_BURST,
    ReleaseAttempt,
    ReleaseAudit,
    TokenBucket,
    outcome_of,
)
from processor.ops.logging import configure_logging


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Counts:
    def __init__(self) -> None:
        self.outcomes: list[str] = []
        self.suppressed = 0

    def release_attempt(self, outcome: str) -> None:
        self.outcomes.append(outcome)

    def audit_suppressed(self) -> None:
        self.suppressed += 1


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    handler = configure_logging("info", stream=stream, json_lines=True)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)


def attempt(n: int, status: int, actor: str | None) -> ReleaseAttempt:
    return ReleaseAttempt(
        attempt_id=f"a{n}",
        at_ms=1_767_607_200_000 + n,
        source="192.0.2.7",
        tenant_id="t1",
        mailbox="alice@example.com",
        actor=actor,
        reason="reimaged" if actor else None,
        status=status,
    )


def test_outcomes_by_status() -> None:
    assert [outcome_of(s) for s in (200, 202, 400, 401, 403, 409, 413, 502, 503)] == [
        "released",
        "pending",
        "invalid_request",
        "unauthenticated",
        "forbidden",
        "refused",
        "invalid_request",
        "unavailable",
        "unavailable",
    ]


def test_token_bucket_refills_at_its_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(2.0, 3, clock)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    clock.now += 0.5
    assert [bucket.take() for _ in range(2)] == [True, False]
    clock.now += 100
    assert sum(bucket.take() for _ in range(10)) == 3  # never more than the burst


def test_every_authenticated_attempt_is_written_and_logged(captured: io.StringIO) -> None:
    written: list[ReleaseAttempt] = []

    async def write(a: ReleaseAttempt) -> None:
        written.append(a)

    counts = Counts()
    audit = ReleaseAudit(write, counts, clock=Clock())

    async def scenario() -> None:
        for n in range(UNAUTHENTICATED_BURST * 2):
            await audit.record(attempt(n, 409, "helpdesk:maria"))

    asyncio.run(scenario())
    assert len(written) == UNAUTHENTICATED_BURST * 2 and counts.suppressed == 0
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert len(lines) == UNAUTHENTICATED_BURST * 2
    expected = {
        "event": "release_attempt",
        "attempt_id": "a0",
        "source": "192.0.2.7",
        "tenant_id": "t1",
        "mailbox": "alice@example.com",
        "actor": "helpdesk:maria",
        "outcome": "refused",
        "status": 409,
        "logger": "sendguard.audit",
    }
    assert {key: lines[0].get(key) for key in expected} == expected


def test_an_unauthenticated_flood_writes_a_burst_then_a_rate(captured: io.StringIO) -> None:
    written: list[ReleaseAttempt] = []

    async def write(a: ReleaseAttempt) -> None:
        written.append(a)

    counts, clock = Counts(), Clock()
    audit = ReleaseAudit(write, counts, clock=clock)

    async def flood(n: int, start: int) -> None:
        for i in range(n):
            await audit.record(attempt(start + i, 401, None))
        await audit.drain()

    asyncio.run(flood(1000, 0))
    assert len(written) == UNAUTHENTICATED_BURST
    assert counts.suppressed == 1000 - UNAUTHENTICATED_BURST
    assert counts.outcomes == ["unauthenticated"] * 1000  # every attempt is counted
    clock.now += 10  # ten seconds later: ten more may be written
    asyncio.run(flood(1000, 1000))
    assert len(written) == UNAUTHENTICATED_BURST + 10
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    individual = [line for line in lines if line.get("event") == "release_attempt"]
    summaries = [line for line in lines if line.get("event") == "release_attempts_suppressed"]
    assert len(individual) == UNAUTHENTICATED_BURST + 10
    assert len(summaries) == 1  # once a minute, not once per attempt
    assert summaries[0]["level"] == "WARNING"


def test_a_failed_write_is_logged_with_the_attempt(captured: io.StringIO) -> None:
    async def write(a: ReleaseAttempt) -> None:
        raise RuntimeError("broker down")

    audit = ReleaseAudit(write, Counts(), clock=Clock())
    asyncio.run(audit.record(attempt(1, 200, "helpdesk:maria")))
    lines = [json.loads(line) for line in captured.getvalue().splitlines()]
    assert [line["level"] for line in lines] == ["INFO", "ERROR"]
    assert "broker down" in lines[1]["message"] and lines[1]["attempt_id"] == "a1"
