"""The HTML status page tells when it cannot show every worker's blocks."""

from __future__ import annotations

from processor.ops.status_page import render_status_page


def test_the_status_page_says_whose_blocks_are_missing() -> None:
    page = render_status_page(
        [],
        [],
        generated_at="2026-01-05T10:00:00Z",
        worker="http://w1:6066",
        unavailable=[{"worker": "http://w2:6066", "error": "<timeout>"}],
    )
    assert "Blocks of the worker at http://w2:6066 are missing: &lt;timeout&gt;" in page
    whole = render_status_page([], [], generated_at="x", worker="http://w1:6066")
    assert "missing" not in whole.split("<body>")[1]
