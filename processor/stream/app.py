"""The Faust app, built from `WorkerSettings`, and nothing else (topics, tables,
agents, timers and views are defined on it by their own modules)."""

from __future__ import annotations

import faust

from processor.stream import aiokafka_fixes, faust_fixes
from processor.stream.settings import WorkerSettings

#: Table changes waiting for the changelog producer before the stream stops taking
#: records (Faust's default is 100). The agent writes the states of a whole batch
#: at once, often a few thousand; with 100 the next record waited after every
#: batch until all but 100 were handed to the producer one by one, and the agent
#: sat idle meanwhile (half its time under load). With room for a batch the buffer
#: drains while the agent awaits the next batch's deliveries. Nothing is lost by
#: buffering: offsets are committed only after the buffer is empty (faust_fixes).
CHANGELOG_BUFFER_MESSAGES = 20_000


def create_app(settings: WorkerSettings) -> faust.App:
    faust_fixes.install()
    aiokafka_fixes.install()
    make_room_for_a_batch_of_changes()
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


def make_room_for_a_batch_of_changes() -> None:
    """Let `CHANGELOG_BUFFER_MESSAGES` table changes wait for the changelog before
    the stream waits for them. Class-wide: one app per worker process, and Faust
    makes its producer (and the buffer) lazily."""
    from faust.transport.producer import ProducerBuffer

    ProducerBuffer.max_messages = CHANGELOG_BUFFER_MESSAGES
