"""The local broker of `sendguard kafka`, driven through its Python API and its commands.

The session's broker (see conftest.py) is only inspected here; tests that stop and
start a broker use a scratch one with its own data dir and free ports.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from confluent_kafka.admin import AdminClient, NewTopic

from processor.local import (
    BrokerConfig,
    BrokerStartError,
    LocalBroker,
    MissingToolError,
    PortInUseError,
    find_java,
    port_is_free,
)
from processor.local.commands import EXIT_NOT_RUNNING, kafka


def free_ports(count: int) -> list[int]:
    # All sockets stay open until every port is chosen, so the ports are distinct.
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def scratch_config(tmp_path: Path, **overrides: object) -> BrokerConfig:
    port, controller_port = free_ports(2)
    settings: dict[str, object] = {
        "port": port,
        "controller_port": controller_port,
        "data_dir": tmp_path / "kafka",
        "heap": "512m",
        "start_timeout_s": 90.0,
        "stop_timeout_s": 20.0,
    }
    settings.update(overrides)
    return BrokerConfig(**settings)  # type: ignore[arg-type]


def topic_names(bootstrap: str) -> set[str]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    return set(admin.list_topics(timeout=10).topics)


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists() and "Z" not in _state(pid)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return "gone"


@pytest.fixture
def session_broker(bootstrap: str) -> LocalBroker:
    """The local broker serving `bootstrap`, as configured by the SENDGUARD_KAFKA_* env."""
    broker = LocalBroker(BrokerConfig.from_env())
    current = broker.status()
    if not current.running or current.bootstrap != bootstrap:
        pytest.skip(f"{bootstrap} is not the local broker of {current.data_dir}")
    return broker


@pytest.fixture
def scratch(tmp_path: Path) -> Iterator[LocalBroker]:
    broker = LocalBroker(scratch_config(tmp_path))
    try:
        yield broker
    finally:
        broker.down()  # whatever the test did, no broker outlives it


def test_status_reports_the_running_broker(session_broker: LocalBroker, bootstrap: str) -> None:
    current = session_broker.status()

    assert current.running
    assert current.pid is not None and process_exists(current.pid)
    assert current.bootstrap == bootstrap
    assert current.log_file.is_file()
    assert current.log_file.parent == current.data_dir
    metadata = AdminClient({"bootstrap.servers": current.bootstrap}).list_topics(timeout=10)
    assert list(metadata.brokers) == [1]


def test_status_command_prints_pid_address_and_paths(session_broker: LocalBroker) -> None:
    current = session_broker.status()

    result = CliRunner().invoke(kafka, ["status"])

    assert result.exit_code == 0, result.output
    assert f"running (pid {current.pid})" in result.output
    assert current.bootstrap in result.output
    assert str(current.data_dir) in result.output
    assert str(current.log_file) in result.output


def test_second_up_is_a_noop(session_broker: LocalBroker) -> None:
    pid_before = session_broker.status().pid
    messages: list[str] = []

    started = LocalBroker(session_broker.config, progress=messages.append).up()
    result = CliRunner().invoke(kafka, ["up"])

    assert started is False
    assert any("already running" in message for message in messages)
    assert result.exit_code == 0, result.output
    assert "already running" in result.output
    assert session_broker.status().pid == pid_before


def test_up_on_a_port_held_by_another_socket_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        held = holder.getsockname()[1]
        broker = LocalBroker(scratch_config(tmp_path, port=held))

        with pytest.raises(PortInUseError) as raised:
            broker.up()

    message = str(raised.value)
    assert f"127.0.0.1:{held}" in message
    assert "already in use by another process" in message
    assert not broker.pid_file.exists()
    assert not broker.status().running


@pytest.mark.timeout(300)
def test_down_then_up_keeps_cluster_id_and_topics(scratch: LocalBroker) -> None:
    assert scratch.up() is True
    first = scratch.status()
    assert first.running and first.pid is not None
    cluster_id = scratch.cluster_id_file.read_text()
    admin = AdminClient({"bootstrap.servers": first.bootstrap})
    admin.create_topics([NewTopic("survives-restart", 2, 1)])["survives-restart"].result(30)

    assert scratch.down() is True
    assert not scratch.pid_file.exists()
    assert not process_exists(first.pid)
    assert not scratch.status().running
    assert port_is_free(scratch.config.port)
    assert scratch.down() is False  # stopping a stopped broker changes nothing
    stopped = CliRunner().invoke(kafka, ["status", "--data-dir", str(scratch.data_dir)])
    assert stopped.exit_code == EXIT_NOT_RUNNING
    assert "not running" in stopped.output

    assert scratch.up() is True
    second = scratch.status()
    assert second.running and second.pid != first.pid
    assert scratch.cluster_id_file.read_text() == cluster_id  # not formatted again
    assert "survives-restart" in topic_names(second.bootstrap)


@pytest.mark.timeout(120)
def test_a_broker_that_dies_while_starting_points_at_its_log(tmp_path: Path) -> None:
    # A heap too small for the JVM to boot: the process exits at once.
    broker = LocalBroker(scratch_config(tmp_path, heap="1k"))

    with pytest.raises(BrokerStartError) as raised:
        broker.up()

    message = str(raised.value)
    assert str(broker.log_file) in message
    assert "heap" in message.lower()  # the tail of the log is part of the message
    assert not broker.pid_file.exists()


def test_missing_java_names_the_package_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    broker = LocalBroker(scratch_config(tmp_path))

    with pytest.raises(MissingToolError) as raised:
        broker.up()

    assert "install OpenJDK 17 (apt-get install openjdk-17-jre-headless)" in str(raised.value)
    assert not broker.pid_file.exists()


def test_missing_maven_names_the_package_when_the_jars_are_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    java_only = tmp_path / "bin"
    java_only.mkdir()
    (java_only / "java").symlink_to(os.path.realpath(find_java()))
    monkeypatch.setenv("PATH", str(java_only))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    broker = LocalBroker(scratch_config(tmp_path, cache_dir=tmp_path / "empty-cache"))

    with pytest.raises(MissingToolError) as raised:
        broker.up()

    assert "apt-get install maven" in str(raised.value)
