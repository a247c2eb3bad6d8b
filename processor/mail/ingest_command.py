"""`sendguard ingest`: rspamd's metadata_exporter posts each scan result here; each
becomes a Verdict on mail.verdicts (or a dead letter)."""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path
from typing import Any

import click

from processor.stream.connection import (
    connection_from_options,
    connection_options,
    schema_registry_option,
    topic_prefix_option,
)

log = logging.getLogger("sendguard.ingest")


def parse_host_port(value: str, param_hint: str) -> tuple[str, int]:
    """`HOST:PORT` (`[v6]:PORT` too). Raises click.BadParameter."""
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{value!r} is not HOST:PORT", param_hint=param_hint)
    return host, int(port)


def _words(values: tuple[str, ...]) -> list[str]:
    # From the environment a multiple option arrives as one space-separated string.
    return [word for value in values for word in value.replace(",", " ").split()]


@click.command()
@connection_options
@schema_registry_option
@topic_prefix_option
@click.option(
    "--tenants",
    "tenants_path",
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    envvar="SENDGUARD_TENANTS",
    show_envvar=True,
    help="Mail domain -> tenant id map (YAML), shared with `sendguard gateway`; "
    "re-read when it changes.",
)
@click.option(
    "--listen",
    envvar="SENDGUARD_INGEST_LISTEN",
    show_envvar=True,
    default="127.0.0.1:6070",
    show_default=True,
    help="HOST:PORT for rspamd's POSTs (metadata_exporter url http://HOST:PORT/rspamd).",
)
# Not SENDGUARD_WEB_*: those are the worker's, and both may share one environment.
@click.option(
    "--web-host",
    envvar="SENDGUARD_INGEST_WEB_HOST",
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
)
@click.option(
    "--web-port",
    envvar="SENDGUARD_INGEST_WEB_PORT",
    show_envvar=True,
    type=int,
    default=6071,
    show_default=True,
    help="/health, /ready and /metrics.",
)
@click.option(
    "--local-network",
    "local_networks",
    multiple=True,
    envvar="SENDGUARD_LOCAL_NETWORKS",
    show_envvar=True,
    default=("127.0.0.0/8", "::1/128"),
    show_default=True,
    help="Client networks whose mail is outbound without authentication (repeat, or "
    "space-separated in the variable).",
)
@click.option(
    "--virus-symbol",
    "virus_symbols",
    multiple=True,
    envvar="SENDGUARD_VIRUS_SYMBOLS",
    show_envvar=True,
    default=("CLAM_VIRUS",),
    show_default=True,
    help="rspamd symbols that mean VIRUS, besides every symbol of the antivirus group.",
)
@click.option(
    "--spam-symbol",
    "spam_symbols",
    multiple=True,
    envvar="SENDGUARD_SPAM_SYMBOLS",
    show_envvar=True,
    default=("GTUBE",),
    show_default=True,
    help="rspamd symbols that mean SPAM whatever the action.",
)
@click.option(
    "--max-body",
    envvar="SENDGUARD_INGEST_MAX_BODY",
    show_envvar=True,
    type=click.IntRange(1024),
    default=1024 * 1024,
    show_default=True,
    help="Largest POST body in bytes; a larger one is dead-lettered and answered 413.",
)
@click.option(
    "--max-in-flight",
    envvar="SENDGUARD_INGEST_MAX_IN_FLIGHT",
    show_envvar=True,
    type=click.IntRange(1),
    default=1000,
    show_default=True,
    help="POSTs handled at once; more are answered 503.",
)
@click.option(
    "--max-pending",
    envvar="SENDGUARD_INGEST_MAX_PENDING",
    show_envvar=True,
    type=click.IntRange(1),
    default=10000,
    show_default=True,
    help="Records queued for the broker; when full, POSTs are answered 503.",
)
@click.option(
    "--ack-timeout",
    envvar="SENDGUARD_INGEST_ACK_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(0.1, 60),
    default=3.0,
    show_default=True,
    help="Seconds to wait for the broker's acknowledgement before answering 503 "
    "(rspamd 3.4 gives up after 5 s).",
)
@click.option(
    "--read-timeout",
    envvar="SENDGUARD_INGEST_READ_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(0.1, 60),
    default=5.0,
    show_default=True,
    help="Seconds a POST's body may take to arrive.",
)
@click.option(
    "--loglevel",
    envvar="SENDGUARD_LOGLEVEL",
    show_envvar=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    default="info",
    show_default=True,
)
def ingest(tenants_path: Path, **options: Any) -> None:
    """Turn rspamd scan results (metadata_exporter, json formatter) into verdicts.

    rspamd POSTs one JSON result per scanned message to http://LISTEN/rspamd; the
    answer is 200 once its verdict (or, when it cannot be mapped, its dead letter)
    is delivered to Kafka, and 503 when it could not be delivered in time, so that
    rspamd with `defer = true` has the MTA retry the message.
    """
    from prometheus_client import CollectorRegistry

    from processor.codec.wire import Codec, CodecConfig
    from processor.mail.delivery import KafkaDelivery
    from processor.mail.ingest import IngestServer, IngestSettings, serve
    from processor.mail.ingest_metrics import IngestMetrics
    from processor.mail.rspamd import MappingRules, parse_networks
    from processor.mail.tenants import TenantMap, TenantMapError
    from processor.ops.logging import configure_logging
    from processor.stream.topics import TopicNames

    configure_logging(options.pop("loglevel"))
    connection = connection_from_options(options)
    listen_host, listen_port = parse_host_port(options["listen"], "--listen")
    try:
        tenants = TenantMap.load(tenants_path)
    except TenantMapError as error:
        raise click.BadParameter(str(error), param_hint="--tenants") from None
    try:
        networks = parse_networks(_words(options["local_networks"]))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--local-network") from None
    rules = MappingRules(
        tenants,
        local_networks=networks,
        virus_symbols=frozenset(_words(options["virus_symbols"])),
        spam_symbols=frozenset(_words(options["spam_symbols"])),
    )
    names = TopicNames(prefix=options["topic_prefix"])
    settings = IngestSettings(
        verdicts_topic=names.verdicts,
        dead_letter_topic=names.dead_letter,
        listen_host=listen_host,
        listen_port=listen_port,
        web_host=options["web_host"],
        web_port=options["web_port"],
        max_body=options["max_body"],
        max_in_flight=options["max_in_flight"],
        ack_timeout_s=options["ack_timeout"],
        read_timeout_s=options["read_timeout"],
    )
    codec = Codec.from_config(CodecConfig(schema_registry_url=options["schema_registry"] or None))
    metrics = IngestMetrics(CollectorRegistry())
    delivery = KafkaDelivery(
        connection.confluent(),
        max_pending=options["max_pending"],
        # Longer than the ack timeout: a record whose answer was 503 may still arrive
        # (the retry then carries the same message id, counted once).
        delivery_timeout_s=30.0,
        on_result=metrics.delivery,
    )
    server = IngestServer(settings, rules, codec, delivery, metrics, tenants_path=tenants_path)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await serve(server, stop)

    try:
        asyncio.run(main())
    except OSError as error:
        raise click.ClickException(f"cannot listen: {error}") from None
    finally:
        delivery.close(10.0)
        log.info("stopped", extra={"event": "stopped"})
