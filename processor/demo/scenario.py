"""The built-in scenario of `sendguard demo`: a few minutes of a mail platform, in 35 s.

Pure data (no Kafka, no clock): `build_scenario(t0_ms)` returns the steps with
absolute times, in the `simulate`/`produce` line format, so the same lines could be
fed to `sendguard simulate --config` with `DEMO_POLICY` and give the same blocks.

Demo policy: threshold 5 in a 20 s window; blocks of 5 s, then 10 s, then permanent
on the 3rd offense. Timeline (seconds after the start; clean mail all along):

     0   directory (8 mailboxes, 3 tenants) and settings: initech has Synchronized
         Security OFF, acme has it on, globex has no record (default: on)
     3   acme      j.doe@ phished: 6 spam in 1.5 s ─► BLOCK 1 (5 s), 2 device scans
     4.5 globex    newsletter@: 3 spam (below the threshold) ─► nothing
     5   initech   ops@: 5 viruses ─► BLOCK 1 (5 s), NO scans (Sync Security off)
     6.5 support   tries to release j.doe@ (timed block) ─► refused (409)
     8   globex    sales@: 5 spam ─► BLOCK 1 (5 s), 2 scans     ~9, ~11, ~14: UNBLOCKs
    16   globex    sales@ again ─► BLOCK 2 (10 s); a spam at 22 s is ignored (blocked)
    28.5 globex    newsletter@: 2 more spam, 24 s after the first ─► still nothing
    29   globex    sales@ a third time ─► BLOCK 3, PERMANENT
    32   support   releases sales@ (permanent) ─► UNBLOCK released, offenses reset
    34   end
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

#: The demo's policy file (short durations so everything happens within a minute).
DEMO_POLICY: dict[str, object] = {
    "threshold": 5,
    "window": "20s",
    "first_block": "5s",
    "growth_factor": 2,
    "permanent_on_offense": 3,
}

#: tenant -> mailbox -> (owner id, devices)
DIRECTORY: dict[str, dict[str, tuple[str, tuple[str, ...]]]] = {
    "acme": {
        "j.doe@acme.example": ("u-jdoe", ("LAPTOP-JDOE", "PHONE-JDOE")),
        "m.smith@acme.example": ("u-msmith", ("LAPTOP-MSMITH",)),
        "billing@acme.example": ("u-finance", ("DESKTOP-FIN1",)),
    },
    "globex": {
        "sales@globex.example": ("u-hank", ("LAPTOP-HANK", "TABLET-HANK")),
        "hr@globex.example": ("u-hr", ("LAPTOP-HR",)),
        "newsletter@globex.example": ("u-marketing", ()),
    },
    "initech": {
        "ops@initech.example": ("u-peter", ("LAPTOP-PETER",)),
        "b.lumbergh@initech.example": ("u-bill", ("LAPTOP-BILL",)),
    },
}
#: Explicit Synchronized Security settings (globex has none: the policy default applies).
SYNC_SECURITY = {"acme": True, "initech": False}

END_S = 34.0


@dataclass(frozen=True, slots=True)
class SupportRelease:
    """A support release made through the worker's API (not a scenario line)."""

    tenant_id: str
    mailbox: str
    actor: str
    reason: str


@dataclass(frozen=True, slots=True)
class Step:
    """What happens at `at_s` seconds: lines to produce, and/or a release to request."""

    at_s: float
    lines: tuple[str, ...] = ()
    caption: str | None = None
    release: SupportRelease | None = None


@dataclass(frozen=True, slots=True)
class Expectation:
    """What the demo must show at the end (the integration test checks the same)."""

    blocks: frozenset[tuple[str, str, int, bool]] = field(default_factory=frozenset)
    unblocks: frozenset[tuple[str, str, int, str]] = field(default_factory=frozenset)
    no_scans_for_tenants: frozenset[str] = field(default_factory=frozenset)


EXPECTED = Expectation(
    blocks=frozenset(
        {
            ("acme", "j.doe@acme.example", 1, False),
            ("initech", "ops@initech.example", 1, False),
            ("globex", "sales@globex.example", 1, False),
            ("globex", "sales@globex.example", 2, False),
            ("globex", "sales@globex.example", 3, True),
        }
    ),
    unblocks=frozenset(
        {
            ("acme", "j.doe@acme.example", 1, "expired"),
            ("initech", "ops@initech.example", 1, "expired"),
            ("globex", "sales@globex.example", 1, "expired"),
            ("globex", "sales@globex.example", 2, "expired"),
            ("globex", "sales@globex.example", 3, "released"),
        }
    ),
    no_scans_for_tenants=frozenset({"initech"}),
)


class _Lines:
    """Builds scenario lines with unique message ids."""

    def __init__(self, t0_ms: int) -> None:
        self.t0_ms = t0_ms
        self.sent = 0

    def ms(self, at_s: float) -> int:
        return self.t0_ms + round(at_s * 1000)

    def verdict(
        self,
        tenant: str,
        mailbox: str,
        at_s: float,
        verdict: str = "CLEAN",
        direction: str = "OUTBOUND",
    ) -> str:
        self.sent += 1
        domain = mailbox.rpartition("@")[2]
        return json.dumps(
            {
                "type": "verdict",
                "tenant_id": tenant,
                "mailbox": mailbox,
                "message_id": f"<{self.sent:06d}.demo@{domain}>",
                "direction": direction,
                "verdict": verdict,
                "scanned_at": self.ms(at_s),
            }
        )


def _burst(
    lines: _Lines, tenant: str, mailbox: str, at_s: float, n: int, kinds: tuple[str, ...]
) -> list[Step]:
    """`n` qualifying verdicts 0.3 s apart (the kinds cycle)."""
    return [
        Step(
            at_s + 0.3 * i, (lines.verdict(tenant, mailbox, at_s + 0.3 * i, kinds[i % len(kinds)]),)
        )
        for i in range(n)
    ]


def build_scenario(t0_ms: int, seed: int = 5) -> list[Step]:
    """Every step of the demo, sorted by time; times are `t0_ms` + the step's offset."""
    lines = _Lines(t0_ms)
    steps: list[Step] = []
    setup = [
        json.dumps(
            {
                "type": "directory",
                "tenant_id": tenant,
                "mailbox": mailbox,
                "owner_id": owner,
                "devices": list(devices),
                "at": t0_ms,
            }
        )
        for tenant, mailboxes in DIRECTORY.items()
        for mailbox, (owner, devices) in mailboxes.items()
    ]
    setup += [
        json.dumps({"type": "settings", "tenant_id": t, "synchronized_security": on, "at": t0_ms})
        for t, on in SYNC_SECURITY.items()
    ]
    steps.append(
        Step(
            0.0,
            tuple(setup),
            "directory: 8 mailboxes in 3 tenants; initech has Synchronized Security OFF",
        )
    )

    # Clean traffic all along: outbound clean mail from everyone, inbound mail to
    # everyone (inbound spam too: it never counts against the recipient).
    rng = random.Random(seed)
    everyone = [(t, m) for t, boxes in DIRECTORY.items() for m in boxes]
    at = 0.2
    while at < END_S:
        tenant, mailbox = rng.choice(everyone)
        roll = rng.random()
        if roll < 0.7:
            line = lines.verdict(tenant, mailbox, at)
        elif roll < 0.93:
            line = lines.verdict(tenant, mailbox, at, "CLEAN", "INBOUND")
        else:
            line = lines.verdict(tenant, mailbox, at, "SPAM", "INBOUND")
        steps.append(Step(at, (line,)))
        at = round(at + 0.15, 3)
    steps.append(Step(0.3, (), "clean mail flows all along (~7 verdicts/s, a few inbound spam)"))

    steps.append(
        Step(
            2.0,
            (lines.verdict("acme", "m.smith@acme.example", 2.0, "VIRUS"),),
            "acme: m.smith@ sends one infected attachment (1 of 5: no block)",
        )
    )
    steps.append(Step(3.0, (), "acme: j.doe@ is phished and bursts spam (6 in 1.5 s)"))
    steps += _burst(lines, "acme", "j.doe@acme.example", 3.0, 6, ("SPAM", "SPAM", "VIRUS"))
    steps.append(Step(4.5, (), "globex: newsletter@ sends 3 spam, spread out (below threshold)"))
    steps += [
        Step(s, (lines.verdict("globex", "newsletter@globex.example", s, "SPAM"),))
        for s in (4.5, 5.5, 6.5)
    ]
    steps.append(Step(5.0, (), "initech (Synchronized Security OFF): ops@ sends 5 viruses"))
    steps += _burst(lines, "initech", "ops@initech.example", 5.0, 5, ("VIRUS",))
    steps.append(
        Step(
            6.8,
            caption="support tries to release j.doe@ early (a timed block: must be refused)",
            release=SupportRelease(
                "acme", "j.doe@acme.example", "helpdesk:alice", "user asks to send again"
            ),
        )
    )
    # Each burst starts >= 1.5 s after the previous block ends: verdicts stamped
    # before a block's end never count (docs/policy.md, rule 4), whatever the agent's delay.
    for n, start in ((1, 8.0), (2, 16.0), (3, 29.0)):
        caption = f"globex: sales@ bursts spam again (offense {n} coming)"
        if n == 1:
            caption = "globex: sales@ is compromised and bursts spam"
        steps.append(Step(start, (), caption))
        steps += _burst(lines, "globex", "sales@globex.example", start, 5, ("SPAM", "VIRUS"))
    # Counted while blocked? No: ignored (metric only).
    steps.append(Step(22.0, (lines.verdict("globex", "sales@globex.example", 22.0, "SPAM"),)))
    steps.append(
        Step(28.5, (), "globex: newsletter@ sends 2 more spam, 24 s after its first (new window)")
    )
    steps += [
        Step(s, (lines.verdict("globex", "newsletter@globex.example", s, "SPAM"),))
        for s in (28.5, 29.0)
    ]
    steps.append(
        Step(
            32.0,
            caption="support releases sales@ (permanent block) after cleaning the laptop",
            release=SupportRelease(
                "globex",
                "sales@globex.example",
                "helpdesk:maria",
                "password reset, MFA enforced, LAPTOP-HANK reimaged",
            ),
        )
    )
    steps.append(Step(END_S, (), "scenario done; waiting for the last events"))
    return sorted(steps, key=lambda s: s.at_s)
