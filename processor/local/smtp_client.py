"""Sending one message over SMTP as the mail loop's users do, and what the server said.

XCLIENT (Postfix allows it from loopback in `mailstack.Postfix`) lets one local client
be an authenticated user (`LOGIN=`, what a mail program on a tenant's submission port
is) or an outside server (`ADDR=`, what the internet is).
"""

from __future__ import annotations

import smtplib
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from processor.local.errors import ServiceStartError
from processor.local.service_tools import HOST

CLIENT_NAME = "client.sendguard.test"


def new_message(sender: str, recipient: str, subject: str, body: str) -> EmailMessage:
    """A new message with a Date and a fresh Message-ID of the sender's domain."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Date"] = formatdate()
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "sendguard.test")
    message.set_content(body)
    return message


@dataclass(frozen=True)
class Sent:
    """What the server answered: 250 accepted, 4xx deferred, 5xx refused; at which step."""

    code: int
    text: str
    step: str  # "data" when accepted, else the SMTP command that was refused

    @property
    def accepted(self) -> bool:
        return self.code == 250

    def __str__(self) -> str:
        return f"{self.code} {self.text} (at {self.step})"


def send(
    port: int,
    sender: str,
    recipient: str,
    *,
    subject: str = "lunch",
    body: str = "Shall we meet at noon?",
    login: str | None = None,
    client_ip: str | None = None,
    message: EmailMessage | None = None,
) -> Sent:
    """One message to the server on 127.0.0.1:`port`; XCLIENT LOGIN= authenticates it,
    ADDR= makes it an outside one. `message` sends that exact message again (a retry),
    else a new one is built. A refusal is an answer, not an error; raises
    ServiceStartError if the server refuses XCLIENT, and OSError/smtplib errors when it
    cannot be reached or breaks the protocol."""
    message = message if message is not None else new_message(sender, recipient, subject, body)
    with smtplib.SMTP(HOST, port, timeout=30) as smtp:
        smtp.ehlo(CLIENT_NAME)
        attributes = [f"LOGIN={login}"] if login else []
        attributes += [f"ADDR={client_ip}"] if client_ip else []
        if attributes:
            code, text = smtp.docmd("XCLIENT", " ".join(attributes))
            if code != 220:
                raise ServiceStartError(f"XCLIENT refused: {code} {text!r}")
            smtp.ehlo(CLIENT_NAME)
        try:
            smtp.send_message(message, sender, [recipient])
        except smtplib.SMTPRecipientsRefused as refused:
            code, text = refused.recipients[recipient]
            return Sent(code, _text(text), "rcpt")
        except smtplib.SMTPSenderRefused as refused:
            return Sent(refused.smtp_code, _text(refused.smtp_error), "mail")
        except smtplib.SMTPDataError as refused:
            return Sent(refused.smtp_code, _text(refused.smtp_error), "data")
    return Sent(250, "accepted", "data")


def _text(reply: bytes | str) -> str:
    return reply.decode(errors="replace") if isinstance(reply, bytes) else reply
