"""`sendguard status` and `sendguard release`: the worker's API from a terminal.

Standard library HTTP (urllib): two small JSON requests do not justify a client
library, and `sendguard --help` stays fast. Any worker of the group will do: the
API forwards a mailbox's requests to the worker that owns it. Tenant and mailbox
are percent-encoded as whole path segments, so `/`, `?`, `#` or `%` in them are
data, never path.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

import click

from processor.ops.auth import ADMIN_ENV, SUPPORT_ENV

DEFAULT_URL = "http://127.0.0.1:6066"


def mailbox_path(tenant: str, mailbox: str) -> str:
    quote = urllib.parse.quote
    return f"/api/mailboxes/{quote(tenant, safe='')}/{quote(mailbox.strip(), safe='')}"


def call(
    method: str, url: str, token: str | None, body: dict[str, Any] | None = None
) -> tuple[int, dict[str, Any]]:
    """(HTTP status, JSON body) of one request. Raises click.ClickException when the
    worker cannot be reached or does not answer JSON."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        # A release waits for the worker's report (up to 15 s); leave it room.
        with urllib.request.urlopen(request, timeout=30) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise click.ClickException(f"cannot reach the worker at {url}: {reason}") from None
    try:
        document = json.loads(raw)
    except ValueError:
        raise click.ClickException(f"{url} answered {status} without JSON: {raw[:200]!r}") from None
    return status, document if isinstance(document, dict) else {"value": document}


def describe_block(document: dict[str, Any]) -> str:
    block = document.get("block")
    if not block:
        return "none"
    if block["permanent"]:
        return f"PERMANENT (offense {block['offense']}, since {block['since']}; needs a release)"
    return f"timed, offense {block['offense']}, since {block['since']}, until {block['until']}"


def describe_status(document: dict[str, Any]) -> str:
    penalty = document["next_penalty"]
    next_text = (
        f"offense {penalty['offense']}: permanent"
        if penalty["permanent"]
        else f"offense {penalty['offense']}: {penalty['duration']} block"
    )
    window = document["window"]
    entries = ", ".join(f"{e['message_id']} ({e['scanned_at']})" for e in window["entries"][-5:])
    lines = [
        f"{document['tenant_id']} / {document['mailbox']}"
        + ("" if document["known"] else "  (never seen: no state)"),
        f"  offenses:      {document['offenses']}",
        f"  block:         {describe_block(document)}",
        f"  next penalty:  {next_text}",
        f"  window:        {window['in_window']} of {window['threshold']} within "
        f"{window['length']}" + (f": {entries}" if entries else ""),
    ]
    for event in document.get("recent_events", [])[:5]:
        lines.append(f"  recent:        {event['at']} {event['kind']} {event['detail']}")
    return "\n".join(lines)


def _fail(status: int, document: dict[str, Any]) -> None:
    message = document.get("error") or document.get("reason") or json.dumps(document)
    click.echo(f"error {status}: {message}", err=True)
    sys.exit(1)


_url = click.option(
    "--url",
    envvar="SENDGUARD_URL",
    show_envvar=True,
    default=DEFAULT_URL,
    show_default=True,
    help="Base URL of any worker's web server.",
)
_json = click.option("--json", "as_json", is_flag=True, help="Print the API's JSON answer.")


@click.command()
@click.argument("tenant")
@click.argument("mailbox")
@_url
@click.option(
    "--token", envvar=ADMIN_ENV, show_envvar=True, help="Admin token (the worker's admin token)."
)
@_json
def status(tenant: str, mailbox: str, url: str, token: str | None, as_json: bool) -> None:
    """Show MAILBOX's state: offenses, block, next penalty, counted window."""
    code, document = call("GET", url.rstrip("/") + mailbox_path(tenant, mailbox), token)
    if code != 200:
        _fail(code, document)
    click.echo(json.dumps(document, indent=2) if as_json else describe_status(document))


@click.command()
@click.argument("tenant")
@click.argument("mailbox")
@click.option("--reason", required=True, help="Why (recorded in mail.reports).")
@_url
@click.option(
    "--token",
    envvar=SUPPORT_ENV,
    show_envvar=True,
    help="Your personal support token (not the admin token): it says who releases.",
)
@_json
def release(
    tenant: str,
    mailbox: str,
    reason: str,
    url: str,
    token: str | None,
    as_json: bool,
) -> None:
    """Release a PERMANENTLY blocked MAILBOX (audited). Timed blocks cannot be released.

    The release is recorded under the person your token belongs to.
    Exit status: 0 released, 1 refused or failed, 2 sent but not confirmed in time.
    """
    target = url.rstrip("/") + mailbox_path(tenant, mailbox) + "/release"
    code, document = call("POST", target, token, {"reason": reason})
    if as_json:
        click.echo(json.dumps(document, indent=2))
    if code == 200:
        if not as_json:
            click.echo(
                f"released {document['tenant_id']} / {document['mailbox']} "
                f"(was offense {document['offense']}) by {document['actor']}: "
                "offenses reset to 0"
            )
        return
    if code == 202:
        if not as_json:
            click.echo(f"sent, not confirmed yet: {document.get('detail')}", err=True)
        sys.exit(2)
    if code == 409:
        refusal = document.get("reason") or document.get("refusal")
        click.echo(f"refused: {refusal}", err=True)
        sys.exit(1)
    _fail(code, document)
