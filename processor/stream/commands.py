"""`sendguard worker`: the live processor (edge stage + lockout agent + timers)."""

from __future__ import annotations

import ipaddress
import logging
import urllib.parse
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from processor.codec.wire import CodecConfig
from processor.credentials import CredentialError, read_secret, require_strong
from processor.ops.auth import ADMIN_ENV
from processor.ops.peer_auth import SECRET_ENV, SECRET_FILE_ENV
from processor.ops.support_tokens import TOKENS_FILE_ENV
from processor.policy import PolicyConfigError
from processor.policy_file import load_policy
from processor.stream.connection import (
    connection_from_options,
    connection_options,
    schema_registry_option,
    topic_prefix_option,
)
from processor.stream.secret_options import (
    action_keys_from,
    action_keys_options,
    control_keys_from,
    control_keys_options,
)
from processor.stream.settings import STORES, WorkerSettings
from processor.stream.topics import TopicNames

if TYPE_CHECKING:
    from processor.ops.access import Access

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
    help="Policy file (YAML); the defaults of docs/policy.md when omitted.",
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
    help="Address the web server binds (0.0.0.0 or :: for every interface: then "
    "--advertised-url is required).",
)
@click.option(
    "--advertised-url",
    envvar="SENDGUARD_ADVERTISED_URL",
    show_envvar=True,
    help="URL other workers reach this one at, e.g. http://worker-2.internal:6066 "
    "(default: http://WEB_HOST:WEB_PORT).",
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
    "At least 128 bits (22 base64url characters). Prefer the variable: a flag is visible "
    "in the process list.",
)
@click.option(
    "--support-tokens-file",
    envvar=TOKENS_FILE_ENV,
    show_envvar=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Personal support tokens: `<sha256 of token> <actor>` per line (sendguard "
    "support-token makes them), read again when it changes. Unset: releases disabled.",
)
@action_keys_options
@control_keys_options
@click.option(
    "--peer-secret",
    envvar=SECRET_ENV,
    show_envvar=True,
    help="Secret shared by the workers of a group, to authenticate requests they forward "
    "to each other (at least 128 bits). Unset: requests for another worker's mailboxes "
    "are answered 503.",
)
@click.option(
    "--peer-secret-file",
    envvar=SECRET_FILE_ENV,
    show_envvar=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="File holding the peer secret (instead of --peer-secret).",
)
def worker(**options: Any) -> None:
    """Run the live worker until interrupted (SIGINT/SIGTERM)."""
    connection = connection_from_options(options)
    try:
        policy = load_policy(options["policy_path"])
    except PolicyConfigError as error:
        raise click.BadParameter(str(error), param_hint="--policy") from None
    try:
        advertised = advertised_url(
            options["web_host"], options["web_port"], options["advertised_url"]
        )
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--advertised-url") from None
    settings = WorkerSettings(
        connection=connection,
        names=TopicNames(prefix=options["topic_prefix"], app_id=options["app_id"]),
        policy=policy,
        codec=CodecConfig(schema_registry_url=options["schema_registry"] or None),
        store=options["store"],
        web_host=options["web_host"],
        web_port=options["web_port"],
        advertised_url=advertised,
        data_dir=options["data_dir"],
        partitions=options["partitions"],
        replication_factor=options["replication_factor"],
        instance_id=options["instance_id"] or None,
        action_keys=action_keys_from(options),
        control_keys=control_keys_from(options),
    )
    run_worker(
        settings, edge=options["edge"], loglevel=options["loglevel"], access=access_from(options)
    )


def advertised_url(web_host: str, web_port: int, given: str | None) -> str:
    """The URL other workers reach this one at: `given`, or http://WEB_HOST:WEB_PORT.

    Raises ValueError when `given` is not an http(s) URL of a host (with no path,
    query or user), or when none is given and the worker binds every interface
    (no other worker can reach "0.0.0.0").
    """
    if not given:
        if _is_wildcard(web_host):
            raise ValueError(
                f"--web-host {web_host} binds every interface: set SENDGUARD_ADVERTISED_URL "
                "to the URL other workers (and Prometheus) reach this one at"
            )
        host = f"[{web_host}]" if ":" in web_host else web_host
        return f"http://{host}:{web_port}"
    url = urllib.parse.urlsplit(given.strip())
    try:
        url.port  # noqa: B018 (a bad port raises here)
    except ValueError:
        raise ValueError(f"{given!r} has a bad port") from None
    if (
        url.scheme not in ("http", "https")
        or not url.hostname
        or url.path not in ("", "/")
        or url.query
        or url.fragment
        or url.username
        or _is_wildcard(url.hostname)
    ):
        raise ValueError(
            f"{given!r} must be http(s)://HOST[:PORT] with a host other workers can reach (no path)"
        )
    return f"{url.scheme}://{url.netloc}"


def _is_wildcard(host: str) -> bool:
    try:
        return host in ("", "*") or ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False  # a host name


def access_from(options: dict[str, Any]) -> Access:
    """The API's credentials, each checked now: a weak token or secret, or an unusable
    token file, stops the start-up with a message saying which and why."""
    from processor.ops.access import Access
    from processor.ops.peer_auth import PeerAuth
    from processor.ops.support_tokens import SupportTokens, TokenFileError

    try:
        admin = options["admin_token"] or None
        if admin is not None:
            require_strong(ADMIN_ENV, admin)
        secret = read_secret(
            options["peer_secret"], options["peer_secret_file"], SECRET_ENV, SECRET_FILE_ENV
        )
        if secret is not None:
            require_strong(SECRET_ENV, secret)
        path = options["support_tokens_file"]
        support = SupportTokens(path) if path is not None else None
    except (CredentialError, TokenFileError) as error:
        raise click.UsageError(str(error)) from None
    if support is not None and not len(support):
        log.warning("%s lists nobody: every release is refused", path)
    return Access(
        admin_token=admin,
        support_tokens=support,
        peers=PeerAuth(secret) if secret is not None else None,
    )


def run_worker(
    settings: WorkerSettings,
    *,
    edge: bool = True,
    loglevel: str = "info",
    access: Access | None = None,
) -> None:
    """Build and run everything; returns when the worker stops."""
    import faust
    from prometheus_client import CollectorRegistry

    from processor.codec.wire import Codec
    from processor.ops.access import Access
    from processor.ops.logging import configure_logging, log_decisions
    from processor.ops.metrics import Metrics
    from processor.ops.recent import RecentEvents
    from processor.stream.agents import define_lockout_agent
    from processor.stream.app import create_app
    from processor.stream.bounds import check_record_bounds
    from processor.stream.delivery import Delivery
    from processor.stream.edge import EdgeConfig
    from processor.stream.edge_health import EdgeHealth, InputLagMonitor
    from processor.stream.edge_process import EdgeSupervisor
    from processor.stream.heap import settle_heap
    from processor.stream.librdkafka_settings import worker_client_settings
    from processor.stream.lookups import LookupReader, Lookups
    from processor.stream.outputs import Outputs
    from processor.stream.runtime import Runtime
    from processor.stream.tables import define_state_table
    from processor.stream.timers import define_timers
    from processor.stream.topics import ensure_internal_topic
    from processor.stream.web import WebContext, define_web

    configure_logging(loglevel)
    names = settings.names
    # Slower reconnects and librdkafka's lines in our (capped) log: see librdkafka_settings.
    client_config = {**settings.connection.confluent(), **worker_client_settings()}
    codec = Codec.from_config(settings.codec)
    try:
        # Nothing that passes the edge may make a record this worker writes too large.
        check_record_bounds(settings.policy, codec, names)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
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
    if not settings.control_keys:
        log.warning(
            "no control keys (SENDGUARD_CONTROL_KEYS): commands on %s are unsigned, so a "
            "gateway cannot tell them from forged ones",
            names.control,
        )
    (settings.data_dir / names.app_id).mkdir(parents=True, exist_ok=True)
    lookups = Lookups()
    reader = LookupReader(client_config, codec, names.directory, names.settings, lookups)
    try:
        reader.catch_up()
    except (RuntimeError, TimeoutError) as error:
        raise click.ClickException(str(error)) from None
    log.info(
        "directory: %d mailbox(es), settings: %d tenant(s)",
        len(lookups.owners),
        len(lookups.settings),
    )
    reader.start()
    settle_heap()

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
        outputs=Outputs(codec, names, control_keys=settings.control_keys),
        lookups=lookups,
        metrics=metrics,
        delivery=delivery,
    )
    supervisor = monitor = health = None
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
                action_keys=settings.action_keys,
            ),
            rt.add_edge_counts,
        )
        monitor = InputLagMonitor(
            client_config, names.edge_group, [names.verdicts, names.support_actions]
        )
        health = EdgeHealth(supervisor, monitor, metrics)
    define_lockout_agent(app, rt)
    define_timers(app, rt, health, settings.expiry_interval_s)
    rt.on_decisions.append(log_decisions)
    web = WebContext(
        rt, access or Access(), codec, RecentEvents(), action_keys=settings.action_keys
    )
    if health is not None:
        web.edge_problem = lambda: health.problem
    define_web(app, web)
    if supervisor is not None and monitor is not None:
        supervisor.start()
        monitor.start()
    try:
        # The web port and host are app settings (create_app), not worker options.
        # override_logging=False: keep configure_logging's format (JSON off a terminal).
        faust.Worker(app, loglevel=loglevel, override_logging=False).execute_from_commandline()
    finally:
        if supervisor is not None:
            supervisor.stop()
        if monitor is not None:
            monitor.stop()
        reader.stop()
        delivery.close()


def _with_partitions(settings: WorkerSettings, partitions: int) -> WorkerSettings:
    from dataclasses import replace

    return replace(settings, partitions=partitions)
