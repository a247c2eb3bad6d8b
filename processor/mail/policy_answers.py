"""What the gateway answers Postfix: the decision for one policy request.

For a well-formed request (pure: the clock and the state's age are passed in):

1. The mailbox is `sasl_username` when Postfix sent one (the authenticated login:
   what a compromised account sends as, whatever its MAIL FROM says), else `sender`;
   normalised (stripped, lower-cased, `<...>` removed). An empty sender (the null
   sender `<>` of bounces) is never blocked: DUNNO.
2. When the state is stale beyond `stale_after_s` and the policy is `fail-open`:
   DUNNO for everyone (see `StalePolicy`).
3. The mailbox's tenants (`TenantResolver`: the map, then the directory). None: DUNNO.
4. A BLOCK in force under any of them: REJECT (or DEFER, if configured) with a text
   saying until when, or that the block is permanent and to contact support.
   Otherwise DUNNO: "no opinion", so Postfix goes on with its other restrictions.

A malformed request is answered `DEFER 4.5.2 ...` naming the reason: the gateway
cannot tell whose mail it is, and a temporary failure neither lets a blocked sender
through (a crafted request must not be a way around a block) nor bounces mail for
good; Postfix never sends such requests itself.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final, Literal

from processor.mail.blocklist import Blocklist, ControlCommand
from processor.mail.policy_protocol import (
    PolicyProtocolError,
    PolicyRequest,
    check_action,
    format_reply,
)
from processor.mail.tenant_resolution import Source, TenantResolver

AnswerAction = Literal["dunno", "reject", "defer"]
ANSWER_ACTIONS: Final[tuple[AnswerAction, ...]] = ("dunno", "reject", "defer")

BlockAction = Literal["reject", "defer"]
BLOCK_ACTIONS: Final[tuple[BlockAction, ...]] = ("reject", "defer")

#: What to do when the state is older than `stale_after_s` (see the README):
#: `keep-enforcing` answers from the last known state (the default: timed blocks still
#: end on time by the local clock, so the only difference from a fresh state is a
#: block or a release made during the outage); `fail-open` answers DUNNO to everyone.
StalePolicy = Literal["keep-enforcing", "fail-open"]
STALE_POLICIES: Final[tuple[StalePolicy, ...]] = ("keep-enforcing", "fail-open")

DEFAULT_STATUS: Final[dict[BlockAction, str]] = {"reject": "5.7.1", "defer": "4.7.1"}
DEFAULT_TIMED_TEXT: Final = (
    "This mailbox is blocked from sending until {until} because it sent spam or viruses"
)
DEFAULT_PERMANENT_TEXT: Final = (
    "This mailbox is blocked from sending permanently because it sent spam or viruses "
    "repeatedly; contact support"
)
#: Seconds without knowing the state is current before it counts as stale: long
#: enough to ride out a broker's leader election or a rolling restart (tens of
#: seconds), short enough that an outage shows on /ready within minutes.
DEFAULT_STALE_AFTER_S: Final = 300.0

MALFORMED_STATUS: Final = "4.5.2"
#: Formatted reject answers kept (one per distinct block end).
REPLY_CACHE_SIZE: Final = 10_000
_STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
# The longest `until` a template can get, to check the rendered text's length once.
_LONGEST_UNTIL: Final = "9999-12-31T23:59:59.999Z"

DUNNO_REPLY: Final = format_reply("DUNNO")


def format_until(until_ms: int) -> str:
    """`2026-01-05T11:00:00Z` (milliseconds only when there are some)."""
    moment = datetime.fromtimestamp(until_ms / 1000, UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if until_ms % 1000:
        text += f".{until_ms % 1000:03d}"
    return text + "Z"


@dataclass(frozen=True, slots=True)
class AnswerConfig:
    """How blocked senders are answered, and what stale state does.

    Raises ValueError naming the problem: a status code that is not `X.Y.Z` of the
    action's class (5 for reject, 4 for defer), a text with a placeholder other than
    `{until}` or that is not printable ASCII, or an answer that would be too long.
    """

    block_action: BlockAction = "reject"
    #: Enhanced status code (RFC 3463); None: 5.7.1 for reject, 4.7.1 for defer.
    status: str | None = None
    timed_text: str = DEFAULT_TIMED_TEXT
    permanent_text: str = DEFAULT_PERMANENT_TEXT
    stale_after_s: float = DEFAULT_STALE_AFTER_S
    when_stale: StalePolicy = "keep-enforcing"

    def __post_init__(self) -> None:
        if self.block_action not in BLOCK_ACTIONS:
            raise ValueError(f"block action {self.block_action!r} is not reject or defer")
        if self.when_stale not in STALE_POLICIES:
            raise ValueError(f"stale policy {self.when_stale!r} is not one of {STALE_POLICIES}")
        if not self.stale_after_s > 0:
            raise ValueError("the stale threshold must be a positive number of seconds")
        status = self.status_code
        if not _STATUS.match(status):
            raise ValueError(f"status code {status!r} is not like 5.7.1")
        wanted = "5" if self.block_action == "reject" else "4"
        if status[0] != wanted:
            raise ValueError(f"{self.block_action} needs a {wanted}.x.x status code, not {status}")
        for name, template in (("timed", self.timed_text), ("permanent", self.permanent_text)):
            try:
                text = template.format(until=_LONGEST_UNTIL)
            except (KeyError, IndexError, ValueError) as error:
                raise ValueError(
                    f"{name} text: only the placeholder {{until}} is allowed ({error})"
                ) from None
            check_action(f"{self.verb} {status} {text}")

    @property
    def status_code(self) -> str:
        return self.status or DEFAULT_STATUS[self.block_action]

    @property
    def verb(self) -> str:
        return "REJECT" if self.block_action == "reject" else "DEFER"


Outcome = Literal["blocked", "not_blocked", "no_sender", "unknown_tenant", "stale_open"]


@dataclass(frozen=True, slots=True)
class Answer:
    """One answer: its action (a metric label), why, and the bytes to send."""

    action: AnswerAction
    outcome: Outcome
    reply: bytes
    #: Where the tenant came from (None when no lookup was made).
    source: Source | None = None
    #: The BLOCK that caused a reject or defer.
    block: ControlCommand | None = None
    mailbox: str = ""


def request_mailbox(request: PolicyRequest) -> str:
    """The normalised mailbox a request is judged by ("" for the null sender)."""
    login = request.get("sasl_username").strip()
    if login:
        return login.lower()
    sender = request.get("sender").strip()
    if sender.startswith("<") and sender.endswith(">"):
        sender = sender[1:-1].strip()
    return sender.lower()


class Answerer:
    """Answers requests from the in-memory state."""

    def __init__(
        self, config: AnswerConfig, blocklist: Blocklist, resolver: TenantResolver
    ) -> None:
        self.config = config
        self._blocklist = blocklist
        self._resolver = resolver
        self._action: AnswerAction = config.block_action
        self._prefix = f"{config.verb} {config.status_code} "
        self._no_sender = Answer("dunno", "no_sender", DUNNO_REPLY)
        self._stale_open = Answer("dunno", "stale_open", DUNNO_REPLY)
        self._stale_after_s = config.stale_after_s
        self._fail_open = config.when_stale == "fail-open"
        self._replies: dict[int | None, bytes] = {}

    def answer(self, request: PolicyRequest, now_ms: int, state_age_s: float) -> Answer:
        """The answer to a well-formed request at `now_ms`, the state being `state_age_s`
        seconds old."""
        mailbox = request_mailbox(request)
        if not mailbox:
            return self._no_sender
        if self._fail_open and state_age_s > self._stale_after_s:
            return self._stale_open
        source, tenants = self._resolver.tenants_of(mailbox)
        if not tenants:
            return Answer("dunno", "unknown_tenant", DUNNO_REPLY, source, None, mailbox)
        for tenant in tenants:
            block = self._blocklist.block_of(tenant, mailbox, now_ms)
            if block is not None:
                return Answer(self._action, "blocked", self._reply(block), source, block, mailbox)
        return Answer("dunno", "not_blocked", DUNNO_REPLY, source, None, mailbox)

    def _reply(self, block: ControlCommand) -> bytes:
        # A blocked sender usually retries many times (a spam run): its answer is
        # formatted once. Keyed by the end only, so the cache is at most one entry
        # per block end; cleared when it grows past REPLY_CACHE_SIZE.
        until = None if block.permanent else block.until_ms
        reply = self._replies.get(until)
        if reply is None:
            if until is None:
                text = self.config.permanent_text.format(until="")
            else:
                text = self.config.timed_text.format(until=format_until(until))
            if len(self._replies) >= REPLY_CACHE_SIZE:
                self._replies.clear()
            reply = self._replies[until] = format_reply(self._prefix + text)
        return reply


def malformed_reply(error: PolicyProtocolError) -> bytes:
    """`DEFER 4.5.2 ...` naming the reason (never echoing the request's bytes)."""
    return format_reply(f"DEFER {MALFORMED_STATUS} Malformed policy request ({error.reason})")
