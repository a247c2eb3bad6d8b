"""A decision Kafka refuses for good does not stall the agent or lose the state.

The alerts topic is set to accept only tiny records (`max.message.bytes`), so the
broker refuses every alert with MSG_SIZE_TOO_LARGE: the injected producer failure.
A refused record can never be delivered; the agent counts and logs it, stores the
state as decided, and goes on: the BLOCK before it, the report after it, the
UNBLOCK when the block ends and the next mailbox's BLOCK are all written.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
)
from worker_support import (
    Deployment,
    burst,
    control_summary,
    expected,
    expected_control,
    line_time,
    wait_for,
)

from processor import topics as contract
from processor.policy import Block


def _accept_only_tiny_records(bootstrap: str, topic: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    entry = ConfigEntry("max.message.bytes", "120", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource("topic", topic, incremental_configs=[entry])
    for future in admin.incremental_alter_configs([resource]).values():
        future.result(30)


def test_an_output_record_kafka_refuses_is_counted_and_the_agent_goes_on(
    bootstrap: str, tmp_path: Path
) -> None:
    deployment = Deployment.create(bootstrap, tmp_path)
    alerts = deployment.names.external(contract.SECURITY_ALERTS)
    _accept_only_tiny_records(bootstrap, alerts)
    worker = deployment.worker().start()
    try:
        worker.wait_ready()
        now = int(time.time() * 1000)
        # a@x is blocked (3 s) and unblocked; b@x is blocked 6 s after a.
        lines = burst("t1", "a@x.com", now, "a") + burst("t1", "b@x.com", now + 6_000, "b")
        lines.sort(key=line_time)
        want = expected(lines)
        required = expected_control(want.decisions)
        assert {action for _, _, action, _, _ in required} == {"BLOCK", "UNBLOCK"}
        assert deployment.produce(lines).wait(60) == 0

        def control_done() -> bool:
            got = control_summary(deployment.read(deployment.names.control, 1.0))
            return required <= got

        wait_for(control_done, 60, "both BLOCKs and the UNBLOCKs", diagnose=worker.log_tail)
        blocks = [d for d in want.decisions if isinstance(d, Block)]
        refused = worker.metrics()
        match = re.search(
            r'^sendguard_undeliverable_records_total\{reason="MSG_SIZE_TOO_LARGE",'
            r'topic="security.alerts"\} (\S+)$',
            refused,
            re.M,
        )
        assert match is not None and float(match.group(1)) == len(blocks), refused
        assert deployment.read(alerts) == []
        reports = {
            r["report_id"]
            for r in deployment.read(deployment.names.external(contract.MAIL_REPORTS))
        }
        assert {d.report_id for d in want.decisions if type(d).__name__ == "Report"} <= reports
        # The states were stored: both mailboxes have their offense in the changelog.
        state = deployment.table_state()
        assert state["t1", "a@x.com"]["offenses"] == 1
        assert state["t1", "b@x.com"]["offenses"] == 1
        assert "refused for good by Kafka" in worker.log.read_text()
        assert worker.alive() and worker.starts == 1
    finally:
        worker.stop()
