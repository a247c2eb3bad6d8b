"""`sendguard kafka up|down|status`: the local single-node broker from the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from processor.local.artifacts import KAFKA_VERSION, default_cache_dir
from processor.local.broker import BrokerConfig, LocalBroker, default_data_dir
from processor.local.errors import LocalBrokerError

F = TypeVar("F", bound=Callable[..., Any])

# `status` exits with this when no broker runs, like `systemctl status`, so scripts can
# test `sendguard kafka status >/dev/null` without parsing the output.
EXIT_NOT_RUNNING = 3

_DEFAULTS = BrokerConfig()


def _data_dir_option(command: F) -> F:
    return click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=default_data_dir(),
        envvar="SENDGUARD_KAFKA_DATA_DIR",
        show_default=True,
        show_envvar=True,
        help="Directory holding the broker's config, data, log and PID file.",
    )(command)


def _port_option(command: F) -> F:
    return click.option(
        "--port",
        type=click.IntRange(1, 65535),
        default=_DEFAULTS.port,
        envvar="SENDGUARD_KAFKA_PORT",
        show_default=True,
        show_envvar=True,
        help="Kafka (PLAINTEXT) port on 127.0.0.1; clients bootstrap from here.",
    )(command)


def _echo_progress(message: str) -> None:
    click.echo(message, err=True)


@click.group(name="kafka")
def kafka() -> None:
    """Run a local single-node Apache Kafka (KRaft) broker on 127.0.0.1.

    The broker's jars are downloaded with Maven on first use into the cache dir;
    Java 17+ and Maven must be installed.
    """


@kafka.command()
@_port_option
@click.option(
    "--controller-port",
    type=click.IntRange(1, 65535),
    default=_DEFAULTS.controller_port,
    envvar="SENDGUARD_KAFKA_CONTROLLER_PORT",
    show_default=True,
    show_envvar=True,
    help="KRaft controller port on 127.0.0.1.",
)
@_data_dir_option
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=default_cache_dir(),
    envvar="SENDGUARD_CACHE_DIR",
    show_default=True,
    show_envvar=True,
    help=f"Where the Kafka {KAFKA_VERSION} jars are cached (under kafka/<version>/libs).",
)
@click.option(
    "--heap",
    default=_DEFAULTS.heap,
    envvar="SENDGUARD_KAFKA_HEAP",
    show_default=True,
    show_envvar=True,
    help="Maximum JVM heap (-Xmx) of the broker.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=1),
    default=_DEFAULTS.start_timeout_s,
    envvar="SENDGUARD_KAFKA_START_TIMEOUT",
    show_default=True,
    show_envvar=True,
    help="Seconds to wait for the broker to accept connections.",
)
def up(
    port: int, controller_port: int, data_dir: Path, cache_dir: Path, heap: str, timeout_s: float
) -> None:
    """Start the broker (a no-op if it already runs) and wait until it is ready."""
    config = BrokerConfig(
        port=port,
        controller_port=controller_port,
        data_dir=data_dir,
        cache_dir=cache_dir,
        heap=heap,
        start_timeout_s=timeout_s,
    )
    try:
        broker = LocalBroker(config, progress=_echo_progress)
        broker.up()
    except LocalBrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    _print_status(broker)


@kafka.command()
@_data_dir_option
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0),
    default=_DEFAULTS.stop_timeout_s,
    envvar="SENDGUARD_KAFKA_STOP_TIMEOUT",
    show_default=True,
    show_envvar=True,
    help="Seconds to wait after SIGTERM before sending SIGKILL.",
)
def down(data_dir: Path, timeout_s: float) -> None:
    """Stop the broker by its PID (a no-op if it does not run)."""
    broker = LocalBroker(
        BrokerConfig(data_dir=data_dir, stop_timeout_s=timeout_s), progress=_echo_progress
    )
    try:
        stopped = broker.down()
    except LocalBrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    if stopped:
        click.echo(f"Kafka stopped (data kept in {broker.data_dir}).")
    else:
        click.echo(f"Kafka is not running (data dir {broker.data_dir}); nothing to do.")


@kafka.command()
@_port_option
@_data_dir_option
def status(port: int, data_dir: Path) -> None:
    """Show whether the broker runs, its PID, address, data dir and log file.

    Exits with 3 when it does not run.
    """
    broker = LocalBroker(BrokerConfig(port=port, data_dir=data_dir))
    if not _print_status(broker):
        raise SystemExit(EXIT_NOT_RUNNING)


def _print_status(broker: LocalBroker) -> bool:
    current = broker.status()
    state = f"running (pid {current.pid})" if current.running else "not running"
    click.echo(f"kafka:     {state}")
    click.echo(f"version:   {current.kafka_version}")
    click.echo(f"bootstrap: {current.bootstrap}")
    click.echo(f"data dir:  {current.data_dir}")
    click.echo(f"log file:  {current.log_file}")
    return current.running
