"""`sendguard gateway`: the Postfix policy service (flags -> GatewaySettings).

Imports nothing heavy at import time (`sendguard gateway --help` imports this
module): the Kafka client, aiohttp and prometheus-client are imported when the
gateway runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from processor.codec.wire import CodecConfig
from processor.mail.gateway import DEFAULT_LISTEN, DEFAULT_WEB_PORT
from processor.mail.policy_answers import (
    DEFAULT_PERMANENT_TEXT,
    DEFAULT_STALE_AFTER_S,
    DEFAULT_TIMED_TEXT,
)
from processor.mail.policy_server import (
    DEFAULT_IDLE_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_READ_TIMEOUT_S,
)
from processor.stream.connection import (
    connection_from_options,
    connection_options,
    schema_registry_option,
    topic_prefix_option,
)
from processor.stream.secret_options import control_keys_from, control_keys_options
from processor.stream.topics import TopicNames


@click.command()
@click.option(
    "--listen",
    envvar="SENDGUARD_GATEWAY_LISTEN",
    show_envvar=True,
    default=DEFAULT_LISTEN,
    show_default=True,
    help="HOST:PORT of the policy service (Postfix: check_policy_service inet:HOST:PORT). "
    "Port 0 picks a free one (printed when serving).",
)
@click.option(
    "--tenants",
    "tenants_path",
    envvar="SENDGUARD_TENANTS",
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Mail domain -> tenant id map (YAML, the file `sendguard ingest` uses). "
    "It wins over the directory.",
)
@click.option(
    "--directory/--no-directory",
    "use_directory",
    envvar="SENDGUARD_GATEWAY_DIRECTORY",
    show_envvar=True,
    default=True,
    show_default=True,
    help="Also find tenants in directory.mailboxes, for domains the map does not name.",
)
@connection_options
@schema_registry_option
@topic_prefix_option
@control_keys_options
@click.option(
    "--block-action",
    envvar="SENDGUARD_GATEWAY_BLOCK_ACTION",
    show_envvar=True,
    type=click.Choice(["reject", "defer"]),
    default="reject",
    show_default=True,
    help="Answer for a blocked sender: REJECT (5xx, permanent) or DEFER (4xx, retried).",
)
@click.option(
    "--status-code",
    envvar="SENDGUARD_GATEWAY_STATUS_CODE",
    show_envvar=True,
    help="Enhanced status code of that answer.  [default: 5.7.1 for reject, 4.7.1 for defer]",
)
@click.option(
    "--timed-text",
    envvar="SENDGUARD_GATEWAY_TIMED_TEXT",
    show_envvar=True,
    default=DEFAULT_TIMED_TEXT,
    show_default=True,
    help="Text for a timed block; {until} becomes its end (UTC, ISO 8601).",
)
@click.option(
    "--permanent-text",
    envvar="SENDGUARD_GATEWAY_PERMANENT_TEXT",
    show_envvar=True,
    default=DEFAULT_PERMANENT_TEXT,
    show_default=True,
    help="Text for a permanent block.",
)
@click.option(
    "--stale-after",
    envvar="SENDGUARD_GATEWAY_STALE_AFTER",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_STALE_AFTER_S,
    show_default=True,
    help="Seconds without knowing the state is current (broker unreachable) before it is "
    "stale: /ready answers 503 and --when-stale applies.",
)
@click.option(
    "--when-stale",
    envvar="SENDGUARD_GATEWAY_WHEN_STALE",
    show_envvar=True,
    type=click.Choice(["keep-enforcing", "fail-open"]),
    default="keep-enforcing",
    show_default=True,
    help="With stale state: keep answering from it, or answer DUNNO to everyone.",
)
@click.option(
    "--max-connections",
    envvar="SENDGUARD_GATEWAY_MAX_CONNECTIONS",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Open policy connections at most; more are closed at once.",
)
@click.option(
    "--idle-timeout",
    envvar="SENDGUARD_GATEWAY_IDLE_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_IDLE_TIMEOUT_S,
    show_default=True,
    help="Seconds a connection may be silent between requests (Postfix's "
    "smtpd_policy_service_max_idle is 300).",
)
@click.option(
    "--read-timeout",
    envvar="SENDGUARD_GATEWAY_READ_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_READ_TIMEOUT_S,
    show_default=True,
    help="Seconds to finish a request once begun, or to read its answers.",
)
@click.option(
    "--web-host",
    envvar="SENDGUARD_GATEWAY_WEB_HOST",
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
)
@click.option(
    "--web-port",
    envvar="SENDGUARD_GATEWAY_WEB_PORT",
    show_envvar=True,
    type=click.IntRange(0, 65535),
    default=DEFAULT_WEB_PORT,
    show_default=True,
    help="Port of /health, /ready and /metrics (0: any free one, printed when serving).",
)
@click.option(
    "--loglevel", envvar="SENDGUARD_LOGLEVEL", show_envvar=True, default="info", show_default=True
)
def gateway(**options: Any) -> None:
    """Answer Postfix policy requests: REJECT mail from blocked mailboxes.

    Follows mailbox.control from the beginning, keeps every mailbox's current BLOCK
    or UNBLOCK in memory and answers each request from there. Starts serving once it
    has read the topic to its end.
    """
    from processor.mail.gateway import GatewaySettings, parse_listen, run_gateway
    from processor.mail.policy_answers import AnswerConfig
    from processor.mail.policy_server import ServerLimits
    from processor.mail.tenants import TenantMapError
    from processor.ops.logging import configure_logging

    connection = connection_from_options(options)
    try:
        host, port = parse_listen(options["listen"])
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--listen") from None
    if options["tenants_path"] is None and not options["use_directory"]:
        raise click.UsageError(
            "--no-directory needs --tenants: otherwise no sender has a tenant to check"
        )
    try:
        answers = AnswerConfig(
            block_action=options["block_action"],
            status=options["status_code"] or None,
            timed_text=options["timed_text"],
            permanent_text=options["permanent_text"],
            stale_after_s=options["stale_after"],
            when_stale=options["when_stale"],
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--status-code/--*-text") from None
    settings = GatewaySettings(
        connection=connection,
        names=TopicNames(prefix=options["topic_prefix"]),
        codec=CodecConfig(schema_registry_url=options["schema_registry"] or None),
        listen_host=host,
        listen_port=port,
        web_host=options["web_host"],
        web_port=options["web_port"],
        tenants_path=options["tenants_path"],
        use_directory=options["use_directory"],
        answers=answers,
        limits=ServerLimits(
            max_connections=options["max_connections"],
            idle_timeout_s=options["idle_timeout"],
            read_timeout_s=options["read_timeout"],
        ),
        control_keys=control_keys_from(options),
    )
    configure_logging(options["loglevel"])
    try:
        run_gateway(settings)
    except TenantMapError as error:
        raise click.BadParameter(str(error), param_hint="--tenants") from None
    except OSError as error:
        raise click.ClickException(f"cannot listen: {error}") from None
