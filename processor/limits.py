"""The longest value sendguard accepts in each field that comes from outside.

Attackers write much of sendguard's input (a compromised mailbox chooses its
message ids; anyone with a scanner's credentials chooses everything), so every
field has a limit. One table for every reader: `simulate`'s scenario lines use it
now; the live edge stage, the API and the tools are meant to use the same numbers.
Lengths are counted in characters (Unicode code points, as Python's `len` counts a
`str`) after decoding. Whole-record and request-size limits are not here; each
reader sets its own.

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
"""

from __future__ import annotations

MAX_TENANT_ID = 256
MAX_MAILBOX = 320
MAX_MESSAGE_ID = 998
MAX_OWNER_ID = 256
MAX_DEVICE_ID = 256
MAX_DEVICES = 64
MAX_ACTOR = 200
MAX_REASON = 2000
