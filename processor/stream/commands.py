"""`sendguard worker`: the live processor (edge stage + lockout agent + timers)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from processor.codec.wire import CodecConfig
from processor.ops.auth import Tokens
from processor.policy import PolicyConfigError
from processor.policy_file import load_policy
from processor.stream.connection import (
    connection_from_options,
    connection_options,
    schema_registry_option,
    topic_prefix_option,
)
from processor.stream.settings import STORES, WorkerSettings
from processor.stream.topics import TopicNames

log = logging.getLogger(__name__)


@click.command()
@connection_options
@schema_registry_option
@topic_prefix_option
@click.option(
    "--policy",
    "policy_path",
    type=click.Path(dir_okay=False, exists=True),
    envvar="SENDGUARD_POLICY",
    show_envvar=True,
    help="Policy file (YAML); the defaults of POLICY.md when omitted.",
)
@click.option(
    "--store",
    type=click.Choice(sorted(STORES)),
    envvar="SENDGUARD_STORE",
    show_envvar=True,
    default="rocksdb",
    show_default=True,
    help="Table store: rocksdb (on disk, fast restart) or memory (rebuilt from the changelog).",
)
@click.option(
    "--web-port",
    envvar="SENDGUARD_WEB_PORT",
    show_envvar=True,
    default=6066,
    show_default=True,
    type=int,
)
@click.option(
    "--web-host",
    envvar="SENDGUARD_WEB_HOST",
    show_envvar=True,
    default="127.0.0.1",
    show_default=True,
)
@click.option(
    "--data-dir",
    envvar="SENDGUARD_DATA_DIR",
    show_envvar=True,
    default="sendguard-data",
    show_default=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the table store lives.",
)
@click.option(
    "--app-id",
    envvar="SENDGUARD_APP_ID",
    show_envvar=True,
    default="sendguard",
    show_default=True,
    help="Faust app id: the consumer groups and the internal topics are named after it.",
)
@click.option(
    "--partitions",
    envvar="SENDGUARD_PARTITIONS",
    show_envvar=True,
    default=6,
    show_default=True,
    type=click.IntRange(1),
    help="Partitions of the internal topic and the changelog, when created.",
)
@click.option(
    "--replication-factor",
    envvar="SENDGUARD_REPLICATION_FACTOR",
    show_envvar=True,
    default=1,
    show_default=True,
    type=click.IntRange(1),
    help="Of the internal topics, when created.",
)
@click.option(
    "--instance-id",
    envvar="SENDGUARD_INSTANCE_ID",
    show_envvar=True,
    help="Stable id of this worker (static group membership: restarts without a rebalance).",
)
@click.option(
    "--edge/--no-edge",
    default=True,
    show_default=True,
    help="Run the edge stage in this worker (--no-edge: run the lockout agent only).",
)
@click.option(
    "--loglevel", envvar="SENDGUARD_LOGLEVEL", show_envvar=True, default="info", show_default=True
)
@click.option(
    "--admin-token",
    envvar="SENDGUARD_ADMIN_TOKEN",
    show_envvar=True,
    help="Bearer token of the admin API (mailbox state, blocks, /status); unset: disabled. "
    "Prefer the variable: a flag is visible in the process list.",
)
@click.option(
    "--support-token",
    envvar="SENDGUARD_SUPPORT_TOKEN",
    show_envvar=True,
    help="Bearer token of support releases (POST .../release); unset: disabled.",
)
def worker(**options: Any) -> None:
    """Run the live worker until interrupted (SIGINT/SIGTERM)."""
    connection = connection_from_options(options)
    try:
        policy = load_policy(options["policy_path"])
    except PolicyConfigError as error:
        raise click.BadParameter(str(error), param_hint="--policy") from None
    settings = WorkerSettings(
        connection=connection,
        names=TopicNames(prefix=options["topic_prefix"], app_id=options["app_id"]),
        policy=policy,
        codec=CodecConfig(schema_registry_url=options["schema_registry"] or None),
        store=options["store"],
        web_host=options["web_host"],
        web_port=options["web_port"],
        data_dir=options["data_dir"],
        partitions=options["partitions"],
        replication_factor=options["replication_factor"],
        instance_id=options["instance_id"] or None,
    )
    from processor.ops.auth import Tokens

    tokens = Tokens(admin=options["admin_token"] or None, support=options["support_token"] or None)
    run_worker(settings, edge=options["edge"], loglevel=options["loglevel"], tokens=tokens)


def run_worker(
    settings: WorkerSettings,
    *,
    edge: bool = True,
    loglevel: str = "info",
    tokens: Tokens | None = None,
) -> None:
    """Build and run everything; returns when the worker stops."""
    import faust
    from prometheus_client import CollectorRegistry

    from processor.codec.wire import Codec
    from processor.ops.logging import configure_logging, log_decisions
    from processor.ops.metrics import Metrics
    from processor.ops.recent import RecentEvents
    from processor.stream.agents import define_lockout_agent
    from processor.stream.app import create_app
    from processor.stream.delivery import Delivery
    from processor.stream.edge import EdgeConfig
    from processor.stream.edge_process import EdgeSupervisor
    from processor.stream.lookups import LookupReader, Lookups
    from processor.stream.outputs import Outputs
    from processor.stream.runtime import Runtime
    from processor.stream.tables import define_state_table
    from processor.stream.timers import define_timers
    from processor.stream.topics import ensure_internal_topic
    from processor.stream.web import WebContext, define_web

    configure_logging(loglevel)
    names, client_config = settings.names, settings.connection.confluent()
    try:
        partitions = ensure_internal_topic(
            client_config, names.mailbox_events, settings.partitions, settings.replication_factor
        )
    except RuntimeError as error:
        raise click.ClickException(str(error)) from None
    if partitions != settings.partitions:
        log.warning(
            "%s has %d partitions; using them (not --partitions %d)",
            names.mailbox_events,
            partitions,
            settings.partitions,
        )
    (settings.data_dir / names.app_id).mkdir(parents=True, exist_ok=True)
    codec = Codec.from_config(settings.codec)
    lookups = Lookups()
    reader = LookupReader(client_config, codec, names.directory, names.settings, lookups)
    try:
        reader.catch_up()
    except (RuntimeError, TimeoutError) as error:
        raise click.ClickException(str(error)) from None
    log.info(
        "directory: %d mailbox(es), settings: %d tenant(s)",
        len(lookups.directory),
        len(lookups.settings),
    )
    reader.start()

    app = create_app(_with_partitions(settings, partitions))
    table = define_state_table(app, partitions)
    metrics = Metrics(CollectorRegistry())
    delivery = Delivery(client_config, on_retry=metrics.delivery_retry)
    rt = Runtime(
        app=app,
        table=table,
        policy=settings.policy,
        names=names,
        partitions=partitions,
        outputs=Outputs(codec, names),
        lookups=lookups,
        metrics=metrics,
        delivery=delivery,
    )
    supervisor = None
    if edge:
        supervisor = EdgeSupervisor(
            EdgeConfig(
                client_config=client_config,
                group_id=names.edge_group,
                verdicts_topic=names.verdicts,
                support_topic=names.support_actions,
                internal_topic=names.mailbox_events,
                internal_partitions=partitions,
                dead_letter_topic=names.dead_letter,
                codec_config=settings.codec,
                batch_size=settings.edge_batch_size,
                session_timeout_s=settings.session_timeout_s,
                instance_id=settings.instance_id,
            ),
            rt.add_edge_counts,
        )
    define_lockout_agent(app, rt)
    define_timers(app, rt, supervisor, settings.expiry_interval_s)
    rt.on_decisions.append(log_decisions)
    define_web(app, WebContext(rt, tokens or Tokens(), codec, RecentEvents()))
    if supervisor is not None:
        supervisor.start()
    try:
        # The web port and host are app settings (create_app), not worker options.
        # override_logging=False: keep configure_logging's format (JSON off a terminal).
        faust.Worker(app, loglevel=loglevel, override_logging=False).execute_from_commandline()
    finally:
        if supervisor is not None:
            supervisor.stop()
        reader.stop()
        delivery.close()


def _with_partitions(settings: WorkerSettings, partitions: int) -> WorkerSettings:
    from dataclasses import replace

    return replace(settings, partitions=partitions)
