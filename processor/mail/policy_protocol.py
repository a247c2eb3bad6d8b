"""Postfix's SMTP access policy delegation protocol, as pure functions on bytes (no I/O).

The protocol (http://www.postfix.org/SMTPD_POLICY_README.html): Postfix writes a
request as `name=value` lines, each ending in a newline, and an empty line ends it;
the server answers one `action=...` line and an empty line. A connection carries any
number of requests, one after the other.

    request=smtpd_access_policy          action=REJECT 5.7.1 blocked
    protocol_state=RCPT                  (empty line)
    sender=alice@acme.example
    sasl_username=alice@acme.example
    ...
    (empty line)

`RequestReader` turns the bytes of one connection, in whatever chunks they arrive,
into `PolicyRequest`s and `PolicyProtocolError`s, in order. Postfix writes bare
newlines; a `\\r` before a newline is tolerated (a person testing with telnet).

Every input is bounded by a named limit, so a client cannot make the server buffer
or scan without end:

* `MAX_LINE_BYTES` (4096): one `name=value` line. Postfix reads SMTP commands of at
  most 2048 bytes (`line_length_limit`), so an address it forwards is shorter.
* `MAX_ATTRIBUTES` (100): lines in one request. Postfix 3.x sends about 40.
* `MAX_REQUEST_BYTES` (32 KiB): one whole request.

A request over a limit is a *fatal* error: its end cannot be trusted, so the server
answers it and closes the connection (Postfix reconnects for its next request).
Every other error (bytes that are not UTF-8, a line without `=`, an attribute given
twice, no `request=` or an unknown one) ends with the request's empty line, so the
server answers it and goes on reading the connection.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

#: Longest `name=value` line, in bytes, without its newline.
MAX_LINE_BYTES: Final = 4096
#: Most `name=value` lines in one request.
MAX_ATTRIBUTES: Final = 100
#: Longest request, in bytes, its lines' newlines included and its empty line not.
MAX_REQUEST_BYTES: Final = 32 * 1024
#: Longest action text the server sends (`REJECT 5.7.1 ...`): an SMTP reply line is at
#: most 512 bytes (RFC 5321 4.5.3.1.5), and Postfix adds its code and a prefix to it.
MAX_ACTION_BYTES: Final = 400

#: The only request type of the protocol.
ACCESS_POLICY_REQUEST: Final = "smtpd_access_policy"

MalformedReason = Literal[
    "line_too_long",
    "too_many_attributes",
    "request_too_large",
    "not_utf8",
    "bad_line",
    "duplicate_attribute",
    "missing_request",
    "unknown_request",
]

#: Every reason, so a metric can pre-create one series per reason at zero.
MALFORMED_REASONS: Final[tuple[MalformedReason, ...]] = (
    "line_too_long",
    "too_many_attributes",
    "request_too_large",
    "not_utf8",
    "bad_line",
    "duplicate_attribute",
    "missing_request",
    "unknown_request",
)
#: The reasons after which the rest of the connection's bytes cannot be framed.
FATAL_REASONS: Final[frozenset[MalformedReason]] = frozenset(
    {"line_too_long", "too_many_attributes", "request_too_large"}
)


class PolicyProtocolError(Exception):
    """A request that breaks the protocol or one of its limits.

    `reason` is one of `MALFORMED_REASONS` (a metric label); `detail` is for the log
    and never quotes more than a few bytes of the input. `fatal` is true when the
    connection cannot be read any further (see the module docstring).
    """

    def __init__(self, reason: MalformedReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: MalformedReason = reason
        self.detail = detail

    @property
    def fatal(self) -> bool:
        return self.reason in FATAL_REASONS


class PolicyRequest:
    """One well-formed request: `request=smtpd_access_policy` and its other attributes.

    (A plain class, not a frozen dataclass: one is built per request, and a frozen
    dataclass's `__init__` costs several times more.)
    """

    __slots__ = ("attributes",)

    def __init__(self, attributes: Mapping[str, str]) -> None:
        self.attributes = attributes

    def __repr__(self) -> str:
        return f"PolicyRequest({dict(self.attributes)!r})"

    def get(self, name: str) -> str:
        """The attribute's value, or "" when Postfix did not send it (as Postfix does
        for an attribute with no value)."""
        return self.attributes.get(name, "")


def parse_request(block: bytes) -> PolicyRequest:
    """The request whose lines are `block` (each ending in a newline; no empty line).

    Raises PolicyProtocolError, and nothing else, for any bytes that are not such a
    request.
    """
    if len(block) > MAX_REQUEST_BYTES:
        raise PolicyProtocolError(
            "request_too_large", f"{len(block)} bytes; the limit is {MAX_REQUEST_BYTES}"
        )
    # Limits first, in the order RequestReader checks an unfinished request, so a
    # request's reason does not depend on how its bytes were chunked.
    lines_count = block.count(b"\n") + (0 if block.endswith(b"\n") or not block else 1)
    if lines_count > MAX_ATTRIBUTES:
        raise PolicyProtocolError(
            "too_many_attributes", f"{lines_count} lines; the limit is {MAX_ATTRIBUTES}"
        )
    # A request no longer than the line limit cannot hold a line over it: the common
    # case skips the second split.
    if len(block) > MAX_LINE_BYTES:
        longest = max(len(line.rstrip(b"\r")) for line in block.split(b"\n"))
        if longest > MAX_LINE_BYTES:
            raise PolicyProtocolError(
                "line_too_long", f"a line of {longest} bytes; the limit is {MAX_LINE_BYTES}"
            )
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError as error:
        raise PolicyProtocolError(
            "not_utf8",
            f"byte {error.start} is not UTF-8 ({block[error.start : error.start + 1]!r})",
        ) from None
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the text after the last newline
    attributes: dict[str, str] = {}
    # The hot path: one partition per line; the rare errors are located afterwards.
    for line in lines:
        name, equals, value = line.partition("=")
        if not equals or not name:
            number = next(n for n, bad in enumerate(lines, 1) if bad.partition("=")[0] in ("", bad))
            raise PolicyProtocolError("bad_line", f"line {number} is not name=value")
        attributes[name] = value
    if len(attributes) != len(lines):
        seen: set[str] = set()
        for number, line in enumerate(lines, 1):
            name = line.partition("=")[0]
            if name in seen:
                # Which of the two would Postfix have meant? Neither is safe to pick.
                raise PolicyProtocolError(
                    "duplicate_attribute", f"line {number} repeats {name[:40]!r}"
                )
            seen.add(name)
    kind = attributes.get("request")
    if kind is None:
        raise PolicyProtocolError("missing_request", "no request= attribute")
    if kind != ACCESS_POLICY_REQUEST:
        raise PolicyProtocolError(
            "unknown_request", f"request={kind[:40]!r} is not {ACCESS_POLICY_REQUEST}"
        )
    return PolicyRequest(attributes)


class RequestReader:
    """Frames one connection's bytes into requests.

    Feed it every chunk read from the connection; each `feed` returns the requests
    (and errors) completed so far, in order. Memory stays within one request's limit
    plus one chunk. After a fatal error the reader is closed: it returns nothing more,
    and the connection should be closed once the error is answered.
    """

    __slots__ = ("_buffer", "_closed", "_scanned")

    def __init__(self) -> None:
        self._buffer = b""
        # How far into the buffer no request end was found (so a request that trickles
        # in is not scanned again from its start with every chunk).
        self._scanned = 0
        self._closed = False

    @property
    def pending(self) -> bool:
        """True while part of a request has arrived but not its end."""
        return bool(self._buffer)

    @property
    def closed(self) -> bool:
        return self._closed

    def feed(self, data: bytes) -> list[PolicyRequest | PolicyProtocolError]:
        """The requests that `data` completes, each parsed or its error; never raises."""
        if self._closed:
            return []
        if (
            not self._buffer
            and data[-2:] == b"\n\n"
            and data[:1] != b"\n"
            and data.find(b"\n\n") == len(data) - 2
            and b"\r" not in data
        ):
            # The common case: exactly one whole request, as Postfix writes it.
            try:
                return [parse_request(data[:-1])]
            except PolicyProtocolError as error:
                if error.fatal:
                    self._closed = True
                return [error]
        buffer = self._buffer + data if self._buffer else data
        out: list[PolicyRequest | PolicyProtocolError] = []
        start = 0
        size = len(buffer)
        scan = self._scanned
        while start < size:
            block_end, next_start = _request_end(buffer, start, scan)
            scan = start  # later requests are searched from their own start
            if block_end < 0:
                break
            try:
                out.append(parse_request(buffer[start:block_end]))
            except PolicyProtocolError as error:
                out.append(error)
                if error.fatal:
                    return self._close(out)
            start = next_start
        rest = buffer[start:] if start else buffer
        if rest:
            problem = _partial_problem(rest)
            if problem is not None:
                out.append(problem)
                return self._close(out)
        self._buffer = rest
        # The last byte or two may begin a terminator that the next chunk completes.
        self._scanned = max(0, len(rest) - 2)
        return out

    def _close(
        self, out: list[PolicyRequest | PolicyProtocolError]
    ) -> list[PolicyRequest | PolicyProtocolError]:
        self._closed = True
        self._buffer = b""
        return out


def _request_end(buffer: bytes, start: int, scan_from: int) -> tuple[int, int]:
    """(end of the request's lines, start of what follows its empty line), or (-1, -1)
    when the request starting at `start` has not ended yet."""
    if buffer.startswith(b"\n", start):
        return start, start + 1
    if buffer.startswith(b"\r\n", start):
        return start, start + 2
    scan_from = max(start, scan_from)
    bare = buffer.find(b"\n\n", scan_from)
    crlf = buffer.find(b"\n\r\n", scan_from)
    if bare >= 0 and (crlf < 0 or bare < crlf):
        return bare + 1, bare + 2
    if crlf >= 0:
        return crlf + 1, crlf + 3
    return -1, -1


def _partial_problem(rest: bytes) -> PolicyProtocolError | None:
    """The limit that an unfinished request already breaks, if any."""
    if len(rest) > MAX_REQUEST_BYTES:
        return PolicyProtocolError(
            "request_too_large", f"over {MAX_REQUEST_BYTES} bytes without an empty line"
        )
    newlines = rest.count(b"\n")
    if newlines > MAX_ATTRIBUTES:
        return PolicyProtocolError(
            "too_many_attributes", f"over {MAX_ATTRIBUTES} lines without an empty line"
        )
    last_line = len(rest) - rest.rfind(b"\n") - 1
    # One byte of slack: a line at the limit may still get its "\r" before "\n".
    if last_line > MAX_LINE_BYTES + 1:
        return PolicyProtocolError(
            "line_too_long", f"over {MAX_LINE_BYTES} bytes without a newline"
        )
    return None


def format_reply(action: str) -> bytes:
    """The answer `action=<action>` and its empty line.

    Raises ValueError for an action that is empty, not printable ASCII (a newline in
    it would end the answer early and start another) or longer than MAX_ACTION_BYTES.
    """
    check_action(action)
    return b"action=" + action.encode("ascii") + b"\n\n"


def check_action(action: str) -> str:
    """`action` itself if it can be sent as an answer; ValueError naming why not."""
    if not action or not action.isascii() or not action.isprintable():
        raise ValueError(f"action {action[:60]!r} must be non-empty printable ASCII")
    if len(action) > MAX_ACTION_BYTES:
        raise ValueError(f"action is {len(action)} characters; the limit is {MAX_ACTION_BYTES}")
    return action


# -- the client side: for tests, the benchmark and anyone checking a gateway by hand --


def format_request(attributes: Mapping[str, str]) -> bytes:
    """A request as Postfix writes it. ValueError for a name or value that would break it."""
    lines = []
    for name, value in attributes.items():
        if not name or "=" in name or any(c in name + value for c in "\r\n"):
            raise ValueError(f"attribute {name[:40]!r} cannot be sent")
        lines.append(f"{name}={value}\n")
    return ("".join(lines) + "\n").encode("utf-8")


def parse_reply(data: bytes) -> str:
    """The action of one complete answer (`action=...` and its empty line).

    Raises PolicyProtocolError("bad_line") for anything else.
    """
    if not data.endswith(b"\n\n") or data.count(b"\n") != 2 or not data.startswith(b"action="):
        raise PolicyProtocolError("bad_line", f"not an answer: {data[:60]!r}")
    try:
        return data[len(b"action=") : -2].decode("ascii")
    except UnicodeDecodeError:
        raise PolicyProtocolError("bad_line", f"answer is not ASCII: {data[:60]!r}") from None
