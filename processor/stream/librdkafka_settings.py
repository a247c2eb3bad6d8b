"""What the worker's confluent-kafka clients (edge stage, directory reader, admin)
add to the connection settings: a slower reconnect while the broker is down, and
librdkafka's log lines routed into Python logging.

Measured with the broker stopped: a librdkafka consumer tries to reconnect every
`reconnect.backoff.ms` / 2 (50 ms by default) and writes each failure straight to
stderr, as a raw `%3|…|FAIL|…` line in the middle of the JSON log, past any
filter: about 20 lines a second per client. With 1 s the attempts come every
0.5 s, and through `logger` every line becomes a JSON record of the `librdkafka`
logger that the log handler caps like any other (processor.ops.log_limit).
`reconnect.backoff.max.ms` keeps its default of 10 s: the longest a client waits
between attempts on one broker connection, so the worker notices a returned
broker within about 10 s at most, as before.

librdkafka hands its log lines to `logger` from inside the client's poll, consume
and flush calls, so a client that is never polled keeps them until it is.
"""

from __future__ import annotations

import logging
from typing import Any

#: The Python logger librdkafka's lines go to.
LOGGER = "librdkafka"


class LibrdkafkaLog:
    """A confluent-kafka `logger`: each librdkafka line as a record of `LOGGER`.

    confluent-kafka calls `log(level, "%s [%s] %s", facility, client, message)`.
    The facility (FAIL, METADATA, …) goes into the message template, so that the
    log limiter counts each facility's lines as their own kind. Picklable (the
    edge stage's settings are sent to its process).
    """

    def log(self, level: int, template: str, *args: Any) -> None:
        log = logging.getLogger(LOGGER)
        if len(args) == 3 and template == "%s [%s] %s":
            facility, client, message = args
            facility = str(facility).replace("%", "%%")
            log.log(level, f"%s {facility}: %s", client, message)
        else:
            log.log(level, template, *args)


def worker_client_settings() -> dict[str, Any]:
    """librdkafka settings for the worker's clients, on top of the connection's."""
    return {
        "reconnect.backoff.ms": 1000,
        "reconnect.backoff.max.ms": 10_000,
        "logger": LibrdkafkaLog(),
    }
