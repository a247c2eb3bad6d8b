"""The benchmarks' verdict workload model, and the machine they run on.

`generate` draws a stream of policy `Verdict`s from a seeded model (the model is
fixed; nothing in it is tuned towards any target):

* Tenants of Zipf-like sizes own the mailboxes; mailboxes' mail volume is log-normal
  (a few very busy ones), a small share are bulk senders (newsletters, ticketing) with
  a higher false-positive rate.
* Most traffic is clean: 35 % outbound, 65 % inbound; inbound carries spam/virus
  verdicts (15 %, never qualifying); outbound is occasionally flagged (scattered
  single false positives: 0.2 %, bulk senders 2 %).
* A few percent of mailboxes are compromised (2 %, or as many as it takes to make
  `qualifying` of the stream qualifying when that is given). Their bot runs
  campaigns: short probes (1-4 messages), slow drips (minutes apart: counted, rarely
  5 in a window) and bursts (seconds apart). The gateway enforces a block a moment
  after the threshold is reached, so 0-5 in-flight messages are still scanned; after
  a block expires many bots resume, and so escalate (1 h, 2 h, 4 h, ...).
* Scanner retries duplicate 0.3 % of verdicts (same message id, seconds to minutes
  later); 2 % arrive out of order (up to a minute late) and 0.1 % come from a backlog
  (10-45 min late).
* Stream order is arrival order.

Used by `core_bench` (the policy core alone) and `e2e_bench` (the live worker).
"""

from __future__ import annotations

import collections
import math
import os
import platform
import random
import sys
from dataclasses import dataclass

from processor.policy import (
    Direction,
    DirectoryEntry,
    MailboxKey,
    TenantSettings,
    Verdict,
    VerdictKind,
)

SECOND = 1_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
#: 2026-01-05T08:00:00Z: the start of the benchmark's event time.
T0_MS = 1_767_600_000_000

# -- workload model (fixed; see the module docstring) -------------------------
COMPROMISED_SHARE = 0.02
BULK_SENDER_SHARE = 0.005
OUTBOUND_SHARE = 0.35
INBOUND_FLAGGED = 0.15  # of inbound: spam or virus, never qualifying
OUTBOUND_FALSE_POSITIVE = 0.002
BULK_FALSE_POSITIVE = 0.02
DUPLICATE_SHARE = 0.003
REORDERED_SHARE = 0.02
BACKLOG_SHARE = 0.001
DIRECTORY_KNOWN = 0.9
SYNC_SECURITY_OFF_TENANTS = 0.1

# The gateway/bot model uses the default policy's numbers: it models how a real
# gateway stops a bot once the processor blocks it, not what the engine decides.
_THRESHOLD = 5
_WINDOW_MS = 10 * MINUTE
_FIRST_BLOCK_MS = HOUR

_FIRST = ("anna", "ben", "chen", "dana", "emil", "fatima", "gus", "hana", "ivan", "jo")
_LAST = ("smith", "mueller", "garcia", "nguyen", "kowalski", "rossi", "tanaka", "okafor")

# (arrival_ms, scanned_at_ms, mailbox index, outbound?, kind, message id)
_Raw = tuple[int, int, int, bool, VerdictKind, str]


@dataclass
class Workload:
    stream: list[Verdict]
    tenants: list[str]
    directory: list[DirectoryEntry]
    settings: list[TenantSettings]
    mailboxes: int
    compromised: int
    bulk_senders: int
    qualifying: int
    duplicates: int
    reordered: int
    backlog: int
    span_ms: int


def _message_id(rng: random.Random, domain: str) -> str:
    """An RFC 5322-looking Message-ID (real ones are typically 40-80 characters)."""
    return f"<{rng.getrandbits(80):020x}.{rng.getrandbits(32):08x}@mail.{domain}>"


def _bot_times(rng: random.Random, start: float, end: float) -> list[float]:
    """Event times (ms) of one compromised mailbox's spam, gateway blocks included."""
    times: list[float] = []
    t = start
    offense = 0
    while t < end:
        style = rng.random()
        if style < 0.25:  # probe: a few messages, below the threshold
            n, gap = rng.randint(1, 4), rng.uniform(5, 120) * SECOND
        elif style < 0.40:  # slow drip: minutes apart
            n, gap = rng.randint(5, 40), math.exp(rng.uniform(math.log(3), math.log(15))) * MINUTE
        else:  # burst: seconds apart, as many as it can get out
            n = int(math.exp(rng.uniform(math.log(5), math.log(400))))
            gap = math.exp(rng.uniform(math.log(1), math.log(60))) * SECOND
        recent: collections.deque[float] = collections.deque()
        until: float | None = None
        blocked = False
        for i in range(n):
            if i:
                t += rng.expovariate(1 / gap)
            if t >= end:
                break
            times.append(t)
            recent.append(t)
            while recent[0] <= t - _WINDOW_MS:
                recent.popleft()
            if len(recent) >= _THRESHOLD:
                blocked = True
                offense += 1
                # The gateway applies the BLOCK a moment later: in-flight mail is scanned.
                times.extend(
                    t + rng.uniform(0.05, 3) * SECOND for _ in range(rng.choice((0, 0, 1, 1, 2, 5)))
                )
                until = None if offense >= 6 else t + _FIRST_BLOCK_MS * 2 ** (offense - 1)
                break
        if blocked:
            if until is None or rng.random() >= 0.6:
                break  # permanent, or the bot gives up
            t = until + rng.uniform(0, 30) * MINUTE  # retries; first accepted after expiry
        elif rng.random() < 0.3:
            t += rng.uniform(10, 90) * MINUTE  # another campaign later
        else:
            break
    return times


def _expected_false_positive_share() -> float:
    """Qualifying share of the non-bot traffic (outbound false positives), by the model.

    Bulk senders are BULK_SENDER_SHARE of mailboxes with 20 times the activity.
    """
    bulk_traffic = BULK_SENDER_SHARE * 20 / (BULK_SENDER_SHARE * 20 + 1 - BULK_SENDER_SHARE)
    return OUTBOUND_SHARE * (
        bulk_traffic * BULK_FALSE_POSITIVE + (1 - bulk_traffic) * OUTBOUND_FALSE_POSITIVE
    )


def generate(
    verdicts: int,
    mailboxes: int,
    seed: int,
    hours: float,
    *,
    t0_ms: int = T0_MS,
    qualifying: float | None = None,
) -> Workload:
    """`verdicts` verdicts over `mailboxes` mailboxes, event times in [t0, t0 + hours).

    `qualifying` None: COMPROMISED_SHARE of the mailboxes are compromised and the
    qualifying share follows from the model. Otherwise compromised mailboxes are
    added (in random order) until their bots' verdicts plus the expected false
    positives make that share of the stream; the share reached is in the result.
    """
    rng = random.Random(seed)
    span = int(hours * HOUR)
    n_tenants = max(3, mailboxes // 1000)
    tenants = [f"{rng.getrandbits(128):032x}" for _ in range(n_tenants)]
    domains = [f"tenant{i}.example" for i in range(n_tenants)]
    tenant_weights = [1 / (rank + 1) ** 0.8 for rank in range(n_tenants)]
    owner = rng.choices(range(n_tenants), weights=tenant_weights, k=mailboxes)
    # How scanners spell the address: sometimes mixed case (normalised by MailboxKey.of).
    spelled = []
    for i in range(mailboxes):
        local = f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{i}"
        if rng.random() < 0.2:
            local = local.title()
        spelled.append(f"{local}@{domains[owner[i]]}")

    kinds = rng.random
    raw: list[_Raw] = []

    def bot(m: int) -> None:
        virus_share = rng.choice((0.0, 0.05, 0.5))
        for t in _bot_times(rng, rng.uniform(0, span), span):
            kind = VerdictKind.VIRUS if kinds() < virus_share else VerdictKind.SPAM
            at = t0_ms + int(t)
            raw.append((at, at, m, True, kind, _message_id(rng, domains[owner[m]])))

    if qualifying is None:
        compromised = rng.sample(range(mailboxes), int(mailboxes * COMPROMISED_SHARE))
        compromised_set = set(compromised)
        bulk = set(
            rng.sample(
                [m for m in range(mailboxes) if m not in compromised_set],
                int(mailboxes * BULK_SENDER_SHARE),
            )
        )
        for m in compromised:
            bot(m)
    else:
        fp = _expected_false_positive_share()
        wanted = max(0, round(verdicts * (qualifying - fp) / (1 - fp)))
        compromised = []
        for m in rng.sample(range(mailboxes), mailboxes):
            if len(raw) >= wanted:
                break
            compromised.append(m)
            bot(m)
        del raw[wanted:]
        compromised_set = set(compromised)
        bulk = set(
            rng.sample(
                [m for m in range(mailboxes) if m not in compromised_set],
                min(int(mailboxes * BULK_SENDER_SHARE), mailboxes - len(compromised)),
            )
        )
    raw = raw[: int(verdicts * (1 - DUPLICATE_SHARE))]

    n_duplicates = int(verdicts * DUPLICATE_SHARE)
    n_clean = verdicts - len(raw) - n_duplicates
    activity = [rng.lognormvariate(0, 1) * (20 if m in bulk else 1) for m in range(mailboxes)]
    senders = rng.choices(range(mailboxes), weights=activity, k=n_clean)
    for m in senders:
        at = t0_ms + int(rng.random() * span)
        if kinds() < OUTBOUND_SHARE:
            fp = BULK_FALSE_POSITIVE if m in bulk else OUTBOUND_FALSE_POSITIVE
            kind = VerdictKind.SPAM if kinds() < fp else VerdictKind.CLEAN
            outbound = True
        else:
            flag = kinds()
            kind = (
                VerdictKind.CLEAN
                if flag >= INBOUND_FLAGGED
                else VerdictKind.VIRUS
                if flag < INBOUND_FLAGGED / 15
                else VerdictKind.SPAM
            )
            outbound = False
        raw.append((at, at, m, outbound, kind, _message_id(rng, domains[owner[m]])))

    # Arrival disorder: reordering within a minute, a backlog, scanner retries.
    reordered = backlog = 0
    for i, (arrival, at, m, outbound, kind, mid) in enumerate(raw):
        u = kinds()
        if u < REORDERED_SHARE:
            raw[i] = (arrival + int(rng.uniform(0.2, 60) * SECOND), at, m, outbound, kind, mid)
            reordered += 1
        elif u < REORDERED_SHARE + BACKLOG_SHARE:
            raw[i] = (arrival + int(rng.uniform(10, 45) * MINUTE), at, m, outbound, kind, mid)
            backlog += 1
    for arrival, at, m, outbound, kind, mid in rng.sample(raw, n_duplicates):
        raw.append((arrival + int(rng.uniform(1, 300) * SECOND), at, m, outbound, kind, mid))
    raw.sort(key=lambda r: r[0])  # stable: ties keep generation order

    stream = [
        Verdict(
            key=MailboxKey.of(tenants[owner[m]], spelled[m]),
            message_id=mid,
            direction=Direction.OUTBOUND if outbound else Direction.INBOUND,
            verdict=kind,
            scanned_at_ms=at,
        )
        for _, at, m, outbound, kind, mid in raw
    ]
    directory = [
        DirectoryEntry(
            key=MailboxKey.of(tenants[owner[m]], spelled[m]),
            owner_id=f"user-{m}",
            devices=tuple(f"device-{m}-{d}" for d in range(rng.randint(1, 3))),
            at_ms=t0_ms - 24 * HOUR,
        )
        for m in range(mailboxes)
        if rng.random() < DIRECTORY_KNOWN
    ]
    settings = [
        TenantSettings(tenant, synchronized_security=False, at_ms=t0_ms - 24 * HOUR)
        for tenant in tenants
        if rng.random() < SYNC_SECURITY_OFF_TENANTS
    ]
    return Workload(
        stream=stream,
        tenants=tenants,
        directory=directory,
        settings=settings,
        mailboxes=mailboxes,
        compromised=len(compromised),
        bulk_senders=len(bulk),
        qualifying=sum(1 for v in stream if v.qualifies),
        duplicates=n_duplicates,
        reordered=reordered,
        backlog=backlog,
        span_ms=span,
    )


# -- the machine ---------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def python_version() -> str:
    return f"{platform.python_implementation()} {sys.version.split()[0]} ({platform.platform()})"
