"""Every limit sendguard applies to what comes from outside, in one place.

Attackers write much of sendguard's input (a compromised mailbox chooses its
message ids; anyone with a scanner's credentials chooses everything), so every
field has a limit and every record a maximum size. One table for every reader:
`simulate`'s scenario lines, the live edge stage and the directory/settings reader
(both through `processor.codec.records`), the API. Lengths are counted in characters
(Unicode code points, as Python's `len` counts a `str`) after decoding.

| field | constant | limit | why this number |
| --- | --- | --- | --- |
| tenant id | `MAX_TENANT_ID` | 256 | an opaque id (a UUID is 36); room to spare |
| mailbox | `MAX_MAILBOX` | 320 | RFC 5321: local part 64 + `@` + domain 255 |
| message id | `MAX_MESSAGE_ID` | 998 | RFC 5322: the longest header line |
| owner id | `MAX_OWNER_ID` | 256 | an opaque directory id |
| device id | `MAX_DEVICE_ID` | 256 | an opaque endpoint id |
| device count | `MAX_DEVICES` | 64 | devices of one owner (one scan request each) |
| actor | `MAX_ACTOR` | 200 | who made a support release (audited) |
| reason | `MAX_REASON` | 2000 | why, in the support engineer's words (audited) |
| action id | `MAX_ACTION_ID` | 256 | a support action's audit id (a UUID in practice) |

Live, a record over a limit is dead-lettered (`field_too_long`, `record_too_large`),
never forwarded - except a verdict's message id, which the sender writes: an
over-long one is replaced by its digest, so that no sender can escape counting with
it. What passes the edge is then small enough that no record sendguard writes can
exceed the producer's limit (`processor.stream.bounds` checks the worst case of each
at worker start-up).
"""

from __future__ import annotations

from typing import Final

#: A tenant id is an opaque identifier chosen by the platform, not by senders.
MAX_TENANT_ID: Final = 256
#: RFC 5321 4.5.3.1.3: a reverse-path or forward-path is at most 256 octets; 320 is the
#: 64-octet local part plus "@" plus the 255-octet domain, the usual upper bound. The
#: mailbox is the authenticated sending account (the scanner's contract), so no SMTP
#: sender can make it longer.
MAX_MAILBOX: Final = 320
#: RFC 5322 2.1.1: a line, and so a Message-ID header, is at most 998 characters. The
#: sender writes it, so a longer one is not refused (that would let a sender escape
#: counting): the verdict counts under `digest:` + the SHA-256 of the id instead
#: (`processor.codec.records.bounded_message_id`), which still tells retries apart.
MAX_MESSAGE_ID: Final = 998
MAX_OWNER_ID: Final = 256
MAX_DEVICE_ID: Final = 256
#: Devices of one mailbox owner in a directory entry (one scan request each per block).
MAX_DEVICES: Final = 64
#: Who released a block, and why: copied into every audit record of the release.
MAX_ACTOR: Final = 200
MAX_REASON: Final = 2000
#: A support action's audit id (a UUID in practice).
MAX_ACTION_ID: Final = 256

#: Largest input record value (or key) decoded, in bytes; larger ones are dead-lettered
#: undecoded (`record_too_large`). 1 MiB: every record a broker with default settings
#: accepts (message.max.bytes 1,048,588 per batch) is decoded, so no verdict a scanner
#: could write is dropped for its size alone; only a topic whose max.message.bytes an
#: operator raised can hold larger ones. Decoding at most 1 MiB bounds the work and the
#: memory one record can cost the edge.
MAX_RECORD_BYTES: Final = 1024 * 1024

#: The largest input record within the field limits is a DirectoryEntry of MAX_DEVICES
#: device ids of 4-byte characters, about 70 kB. A dead letter keeps the original key
#: and value whole up to this size (so any record that could have been valid can be
#: replayed from it), and only DEAD_LETTER_PREFIX_BYTES of a larger one, with the
#: original's size and SHA-256.
DEAD_LETTER_KEEP_BYTES: Final = 128 * 1024
DEAD_LETTER_PREFIX_BYTES: Final = 1024
#: A dead letter's human-readable detail is cut to this many characters.
MAX_DEAD_LETTER_DETAIL: Final = 1000

#: The smallest record-size limit on sendguard's write paths: librdkafka's
#: `message.max.bytes` (edge stage, API, tools) and Faust's `producer_max_request_size`
#: (lockout agent, table changelog) are both 1,000,000 by default, below the broker's
#: own default of 1,048,588.
PRODUCER_MAX_BYTES: Final = 1_000_000
#: What one record's key plus value may take of that: the rest is left for the record
#: batch's framing (61 bytes of batch header and a few varints per record).
MAX_OUTPUT_RECORD_BYTES: Final = PRODUCER_MAX_BYTES - 4096
