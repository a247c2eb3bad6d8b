"""The audit trail of the release API: every attempt, whoever made it, whatever came of it.

Each request to `POST .../release` ends in exactly one `ReleaseAttempt` (source
address, the authenticated person or None, tenant, mailbox, reason, HTTP status
and outcome), written by the worker that received it from the client (a worker
that only served a forwarded request writes none, so nothing is counted twice):

- to `mail.reports` as a `release_attempt` report: the durable trail, read by the
  same report connectors as every block and release, kept by Kafka's retention
  rather than by one host's log rotation, and linked by `action_id` to the
  SupportAction (and to a refusal's report id) the attempt caused. The policy's
  own `released` / `release_refused` reports still follow from the agent; the
  attempt report records the request, those record what the policy did.
- to the JSON log (`sendguard.audit`, one INFO line): what an operator on the host
  greps, and the record that remains when the Kafka write fails.

Attempts by an authenticated person are always written in full, and the answer
waits for the report's delivery. Attempts without valid credentials (401, 403)
are what a flood from anywhere consists of, so they share a token bucket
(`UNAUTHENTICATED_BURST`, then `UNAUTHENTICATED_PER_S`) per worker: within it they
are written like the others (without delaying the 401), beyond it they are only
counted (`sendguard_release_attempts_total{outcome}` counts every attempt, and
`sendguard_audit_suppressed_total` those not written one by one), with one log
line a minute saying how many were not. A flood can thus write a few records a
second, never fill a topic or a disk.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, Protocol

from processor.ops.logging import AUDIT_LOGGER

#: Attempt outcomes, by the HTTP status answered (metrics label, report field).
OUTCOME_OF_STATUS: Final = {
    200: "released",
    202: "pending",
    400: "invalid_request",
    401: "unauthenticated",
    403: "forbidden",
    409: "refused",
    413: "invalid_request",
}
OUTCOMES: Final = (*OUTCOME_OF_STATUS.values(), "unavailable")
UNAUTHENTICATED_BURST = 30
UNAUTHENTICATED_PER_S = 1.0
SUMMARY_EVERY_S = 60.0

log = logging.getLogger(AUDIT_LOGGER)


def outcome_of(status: int) -> str:
    """The outcome named by an HTTP status; any other (5xx ...) is unavailable."""
    return OUTCOME_OF_STATUS.get(status, "unavailable")


@dataclass(frozen=True, slots=True)
class ReleaseAttempt:
    """One request to the release API, as audited (fields already within their limits)."""

    attempt_id: str
    at_ms: int
    source: str | None
    tenant_id: str
    mailbox: str
    #: The authenticated person, None when the request was not authenticated.
    actor: str | None
    reason: str | None
    status: int

    @property
    def outcome(self) -> str:
        return outcome_of(self.status)

    def log_fields(self) -> dict[str, Any]:
        return {
            "event": "release_attempt",
            "attempt_id": self.attempt_id,
            "source": self.source,
            "tenant_id": self.tenant_id,
            "mailbox": self.mailbox,
            "actor": self.actor,
            "outcome": self.outcome,
            "status": self.status,
        }


class TokenBucket:
    """`burst` tokens, refilled at `per_s`; `take` spends one if there is one."""

    def __init__(
        self, per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_s, self.burst, self._clock = per_s, burst, clock
        self._tokens, self._at = float(burst), clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
        self._at = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class AuditMetrics(Protocol):
    def release_attempt(self, outcome: str) -> None: ...

    def audit_suppressed(self) -> None: ...


class ReleaseAudit:
    """Writes each attempt (`record`) to the log and, through `write`, to mail.reports."""

    def __init__(
        self,
        write: Callable[[ReleaseAttempt], Awaitable[None]],
        metrics: AuditMetrics,
        *,
        bucket: TokenBucket | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._write = write
        self._metrics = metrics
        self._bucket = bucket or TokenBucket(UNAUTHENTICATED_PER_S, UNAUTHENTICATED_BURST, clock)
        self._clock = clock
        self._suppressed = 0
        self._next_summary = clock()
        self._background: set[asyncio.Task[None]] = set()

    async def record(self, attempt: ReleaseAttempt) -> None:
        """Count, log and write `attempt`. An authenticated attempt returns once its
        report is delivered (or its failure logged); an unauthenticated one returns
        at once (its write runs in the background) or is only counted when the
        bucket is empty. Never raises."""
        self._metrics.release_attempt(attempt.outcome)
        if attempt.actor is None and not self._bucket.take():
            self._suppress()
            return
        fields = attempt.log_fields()
        log.info(
            "release attempt %s: %s / %s by %s from %s (HTTP %d, attempt %s)",
            attempt.outcome,
            attempt.tenant_id,
            attempt.mailbox,
            attempt.actor or "nobody authenticated",
            attempt.source,
            attempt.status,
            attempt.attempt_id,
            extra=fields,
        )
        if attempt.actor is not None:
            await self._write_logged(attempt)
            return
        task = asyncio.ensure_future(self._write_logged(attempt))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _write_logged(self, attempt: ReleaseAttempt) -> None:
        try:
            await self._write(attempt)
        except Exception as error:  # the log line above is then the only record
            log.error(
                "release attempt %s not written to mail.reports: %s",
                attempt.attempt_id,
                error,
                extra=attempt.log_fields(),
            )

    def _suppress(self) -> None:
        self._metrics.audit_suppressed()
        self._suppressed += 1
        now = self._clock()
        if now >= self._next_summary:
            log.warning(
                "%d unauthenticated release attempt(s) not audited one by one "
                "(more than %d, then %.0f a second): counted in "
                "sendguard_release_attempts_total",
                self._suppressed,
                UNAUTHENTICATED_BURST,
                UNAUTHENTICATED_PER_S,
                extra={"event": "release_attempts_suppressed", "count": self._suppressed},
            )
            self._suppressed = 0
            self._next_summary = now + SUMMARY_EVERY_S

    async def drain(self) -> None:
        """Wait for the background writes (tests, shutdown)."""
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
