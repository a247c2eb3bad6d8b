"""`decision_id` is uuid5 spelt out for speed: it must equal the standard library's
for every input, or replays and consumers would see new ids for old decisions."""

from __future__ import annotations

import random
import uuid

from processor.policy import MailboxKey
from processor.policy.decisions import _ID_NAMESPACE, decision_id


def _uuid5(key: MailboxKey, sequence: int, action: str) -> str:
    name = f"{key.tenant_id}\x1f{key.mailbox}\x1f{sequence}\x1f{action}"
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def test_a_known_id_is_unchanged() -> None:
    # Ids already written to the topics must come out the same after any rewrite.
    key = MailboxKey("t1", "alice@example.com")
    assert decision_id(key, 1, "block") == "3d923499-2fb3-582b-b397-1756095096db"
    assert uuid.UUID(decision_id(key, 1, "block")).version == 5


def test_equal_to_uuid5_for_any_characters_and_sequence() -> None:
    rng = random.Random(20260105)
    alphabet = "aZ9@.-_\x1f\x00é\u4e2d\U0001f600 "
    for _ in range(5_000):
        key = MailboxKey(
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40))),
            "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80))),
        )
        sequence = rng.choice((0, 1, 6, rng.randint(0, 2**63)))
        action = rng.choice(("block", "alert", "report", "scan:device-é", "", "unblock"))
        assert decision_id(key, sequence, action) == _uuid5(key, sequence, action)
