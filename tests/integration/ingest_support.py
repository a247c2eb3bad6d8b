"""`sendguard ingest` as a process, for the tests that POST to it or point rspamd at it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from processor.local import sendguard_services as services


class IngestProcess(services.IngestProcess):
    """`sendguard ingest` (processor.local.sendguard_services), posted to as rspamd does."""

    def post(self, body: bytes, timeout_s: float = 10) -> tuple[int, dict[str, Any]]:
        """(status, JSON answer) of one POST, as rspamd sends it."""
        request = urllib.request.Request(
            self.url, data=body, headers={"Content-Type": "text/plain"}, method="POST"
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")
