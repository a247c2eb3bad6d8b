"""The mail demo's cast, policy and words: pure data (no network, no clock).

The story, as `mail_run.MailStory.play` tells it (seconds after the mail loop is up):

     0   j.doe@ and m.smith@ (acme) send clean mail, logged in ─► 250, CLEAN verdicts
     1   j.doe@'s password is phished: 5 spam from his account ─► rspamd rejects each
         (554), 5 OUTBOUND SPAM verdicts ─► the worker's BLOCK (10 s) ─► the gateway
     2   j.doe@ sends a harmless message ─► Postfix asks the gateway ─► 554 5.7.1 at RCPT
         m.smith@ sends ─► 250
     3   an outside server forges m.smith@ as sender: 6 spam ─► rejected, INBOUND, no block
         m.smith@ sends again ─► 250; mail *to* j.doe@ from outside ─► 250
   ~12   the block ends by itself (gateway's clock, then the worker's UNBLOCK)
         j.doe@ sends again ─► 250
"""

from __future__ import annotations

from processor.local.mailstack import SPAM_MARKER

#: Short durations, so a block starts and ends within the demo: 5 spam or viruses
#: within a minute; the first block lasts 10 s (the demo shows its end).
MAIL_DEMO_POLICY: dict[str, object] = {
    "threshold": 5,
    "window": "1m",
    "first_block": "10s",
    "growth_factor": 2,
    "permanent_on_offense": 3,
}
POLICY_WORDS = "5 spam or viruses within 1 min block a mailbox; the first block lasts 10 s"

TENANT = "acme"
JDOE = "j.doe@acme.example"
COLLEAGUE = "m.smith@acme.example"
BILLING = "billing@acme.example"
PARTNER = "partner@example.net"
#: TEST-NET-3 (RFC 5737): an outside mail server, via XCLIENT ADDR=.
OUTSIDE_IP = "203.0.113.7"
SPAM_COUNT = 5
FORGED_COUNT = 6
#: Where the attacker's spam goes (any addresses outside the tenants).
SPAM_VICTIMS = tuple(f"{name}@example.org" for name in ("ann", "bob", "cho", "dee", "eve"))


def spam_subject(number: int, of: int) -> str:
    """The Subject of a spam message: carries the marker rspamd's rule scores 20."""
    return f"Invoice {number}/{of} overdue, pay today [{SPAM_MARKER}]"


def forged_subject(number: int) -> str:
    return f"Your mailbox is full ({number}) [{SPAM_MARKER}]"
