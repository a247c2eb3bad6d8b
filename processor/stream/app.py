"""The Faust app, built from `WorkerSettings`, and nothing else (topics, tables,
agents, timers and views are defined on it by their own modules)."""

from __future__ import annotations

import faust

from processor.stream import aiokafka_fixes, faust_fixes
from processor.stream.settings import WorkerSettings


def create_app(settings: WorkerSettings) -> faust.App:
    faust_fixes.install()
    aiokafka_fixes.install()
    connection = settings.connection
    return faust.App(
        settings.names.app_id,
        broker=[f"kafka://{server.strip()}" for server in connection.bootstrap.split(",")],
        broker_credentials=connection.faust_credentials(),
        store=settings.store_url,
        # One directory per app id: two apps must never share (or reuse) a store.
        datadir=str(settings.data_dir / settings.names.app_id),
        autodiscover=False,
        # The internal topic and the changelog must have the same partitions:
        # the table is written on the partition of the event being processed.
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        table_standby_replicas=settings.standby_replicas,
        # A new app id starts at the beginning of the internal topic, never its end:
        # events written before the first worker joined must not be skipped.
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_session_timeout=settings.session_timeout_s,
        broker_commit_interval=settings.commit_interval_s,
        consumer_group_instance_id=settings.instance_id,
        broker_heartbeat_interval=settings.session_timeout_s / 3,
        web_enabled=True,
        web_host=settings.web_host,
        web_port=settings.web_port,
        # Bind exactly the address asked for (Faust would bind every interface), and
        # tell the other workers the URL they reach this one at.
        web_bind=settings.web_host,
        canonical_url=settings.advertised_url or f"http://{settings.web_host}:{settings.web_port}",
        web_in_thread=False,
        # Faust's own /router and /table pages would show table contents to anyone:
        # the worker's data is served only by processor.stream.web, behind tokens.
        web_router_enabled=False,
        web_tables_enabled=False,
        web_stats_enabled=False,
        web_graph_enabled=False,
    )
