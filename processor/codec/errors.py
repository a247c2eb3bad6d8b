"""The one error of decoding and validating input records, and the dead-letter reasons."""

from __future__ import annotations

from typing import Literal

DecodeReason = Literal[
    "not_avro",
    "unknown_schema",
    "confluent_without_registry",
    "registry_unavailable",
    "bad_body",
    "wrong_schema",
    "invalid_record",
    "unauthenticated_action",
    "unauthenticated_command",
    "field_too_long",
    "record_too_large",
]

# Every reason of the worker's dead letters, so metrics can pre-create one labelled
# counter per reason at zero. Not `unauthenticated_command`: only a gateway skips a
# record for it (processor.codec.command_signing), and counts it as well.
DECODE_REASONS: tuple[DecodeReason, ...] = (
    "not_avro",
    "unknown_schema",
    "confluent_without_registry",
    "registry_unavailable",
    "bad_body",
    "wrong_schema",
    "invalid_record",
    # A support action unsigned, forged, or outside its time window
    # (processor.codec.action_signing).
    "unauthenticated_action",
    "field_too_long",
    "record_too_large",
)

#: Reasons of the edge stage's dead letters beyond the decode reasons:
#: `produce_failed` a forward of the record was refused for a reason tied to that
#: record (too large for the topic, refused by the broker); `internal_error` handling
#: the record raised something unexpected (a bug: dead-lettered so that it cannot
#: stop the stream, and logged with its traceback).
EDGE_REASONS: tuple[str, ...] = ("produce_failed", "internal_error")

#: Every reason a dead letter can carry (also the metrics label values).
DEAD_LETTER_REASONS: tuple[str, ...] = DECODE_REASONS + EDGE_REASONS


class DecodeError(Exception):
    """An input record cannot be used.

    `reason` is a short stable code (one of `DECODE_REASONS`, fit for a Prometheus
    label and the dead-letter record); `detail` is for humans and names the
    offending field when there is one. `registry_unavailable` is the only transient
    reason: the same bytes may decode once the schema registry answers again.
    """

    def __init__(self, reason: DecodeReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason: DecodeReason = reason
        self.detail = detail


class EncodeError(Exception):
    """A record does not fit its schema (a bug in the caller, not bad input)."""
