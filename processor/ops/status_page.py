"""The HTML status page: current blocks and recent events, server-rendered.

No JavaScript at all: the page refreshes itself every few seconds with a meta tag,
so it works in any browser (and in `chromium --dump-dom`), and a strict Content
Security Policy (`default-src 'none'`) can forbid every script. Every value is
HTML-escaped: mailbox addresses and support reasons come from outside.
"""

from __future__ import annotations

from collections.abc import Iterable
from html import escape
from typing import Any

#: Headers of the status page: no caching of admin data, no framing, no referrer
#: (the page's address may briefly carry the token), no scripts.
PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#f7f8fa}
h1{font-size:20px;margin:0 0 .2em} h2{font-size:16px;margin:1.4em 0 .4em}
.meta{color:#5b6475;margin-bottom:1em}
.missing{color:#9b1c1c;font-weight:600}
table{border-collapse:collapse;background:#fff;min-width:60%}
th,td{border:1px solid #dde1e8;padding:4px 10px;text-align:left;white-space:nowrap}
th{background:#eef1f5} td.reason{white-space:normal}
.permanent{color:#fff;background:#b3261e;border-radius:3px;padding:0 6px}
.timed{color:#fff;background:#c77700;border-radius:3px;padding:0 6px}
.empty{color:#5b6475;font-style:italic}
"""


def _cell(value: object) -> str:
    return f"<td>{escape('' if value is None else str(value))}</td>"


def _blocks_table(blocks: list[dict[str, Any]]) -> str:
    if not blocks:
        return '<p class="empty" id="no-blocks">No mailbox is blocked.</p>'
    rows = []
    for b in blocks:
        badge = (
            '<span class="permanent">permanent</span>'
            if b.get("permanent")
            else '<span class="timed">timed</span>'
        )
        rows.append(
            '<tr class="block">'
            + _cell(b["tenant_id"])
            + f'<td class="mailbox">{escape(b["mailbox"])}</td>'
            + _cell(b.get("offense"))
            + f"<td>{badge}</td>"
            + _cell(b.get("since"))
            + _cell(b.get("until") or "until released by support")
            + "</tr>"
        )
    return (
        '<table id="blocks"><tr><th>tenant</th><th>mailbox</th><th>offense</th>'
        "<th>block</th><th>since</th><th>until</th></tr>" + "".join(rows) + "</table>"
    )


def _events_table(events: list[dict[str, Any]]) -> str:
    if not events:
        return '<p class="empty">No events yet.</p>'
    rows = []
    for e in events:
        detail = ", ".join(
            f"{k}={v}" for k, v in e["detail"].items() if v is not None and k != "evidence"
        )
        rows.append(
            "<tr>"
            + _cell(e["at"])
            + _cell(e["kind"])
            + _cell(e["tenant_id"])
            + _cell(e["mailbox"])
            + f'<td class="reason">{escape(detail)}</td>'
            + "</tr>"
        )
    return (
        '<table id="events"><tr><th>at</th><th>event</th><th>tenant</th><th>mailbox</th>'
        "<th>detail</th></tr>" + "".join(rows) + "</table>"
    )


def render_status_page(
    blocks: Iterable[dict[str, Any]],
    events: Iterable[dict[str, Any]],
    *,
    generated_at: str,
    worker: str,
    refresh_s: int = 5,
    unavailable: Iterable[dict[str, str]] = (),
) -> str:
    """The whole page. `blocks` as `processor.ops.status.block_row`, `events` as the API's;
    `unavailable` names the workers whose blocks are missing (they did not answer)."""
    block_list = sorted(blocks, key=lambda b: (b["tenant_id"], b["mailbox"]))
    event_list = list(events)
    permanent = sum(1 for b in block_list if b.get("permanent"))
    missing = "".join(
        f'<p class="missing">Blocks of the worker at {escape(w["worker"])} are missing: '
        f"{escape(w['error'])}</p>\n"
        for w in unavailable
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{int(refresh_s)}">
<title>sendguard status</title><style>{_STYLE}</style></head>
<body>
<h1>sendguard status</h1>
<div class="meta">worker {escape(worker)} · generated {escape(generated_at)} ·
refreshes every {int(refresh_s)} s</div>
<h2>Current blocks ({len(block_list)}: {len(block_list) - permanent} timed,
{permanent} permanent)</h2>
{missing}{_blocks_table(block_list)}
<h2>Recent events (this worker, newest first)</h2>
{_events_table(event_list)}
</body></html>
"""
