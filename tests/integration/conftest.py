"""Integration tests run against a real Kafka broker.

`bootstrap` is SENDGUARD_BOOTSTRAP when it is set (scripts/test.sh and .ci/run set it
after `sendguard kafka up`); otherwise the session starts the local broker itself, from
the same SENDGUARD_KAFKA_* environment as `sendguard kafka up`, and stops it at the end
if it was the one that started it. Every test in this folder is marked `integration`.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from processor.local import BrokerConfig, LocalBroker

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Marks by location, so `-m "not integration"` skips this folder without every test
    # having to remember the decorator.
    for item in items:
        if item.path.is_relative_to(HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def bootstrap() -> Iterator[str]:
    """The bootstrap address ("host:port") of a running Kafka broker."""
    given = os.environ.get("SENDGUARD_BOOTSTRAP")
    if given:
        yield given
        return
    broker = LocalBroker(BrokerConfig.from_env())
    started = broker.up()
    try:
        yield broker.status().bootstrap
    finally:
        if started:
            broker.down()


SEED_ENV = "SENDGUARD_TEST_SEED"


@pytest.fixture
def rng() -> random.Random:
    """The test's source of random choices (kill times, ...), seeded and replayable.

    The seed is printed, so a failing test's captured output shows it; run again
    with SENDGUARD_TEST_SEED=<seed> to make the same choices.
    """
    given = os.environ.get(SEED_ENV)
    seed = int(given) if given else random.SystemRandom().randrange(2**32)
    print(f"random choices seeded with {seed} (replay: {SEED_ENV}={seed})")
    return random.Random(seed)
