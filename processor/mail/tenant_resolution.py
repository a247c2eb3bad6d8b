"""Which tenants a sender's mailbox may belong to, for the gateway.

Two sources, in this order:

1. The operator's domain -> tenant map (`TenantMap`, `--tenants FILE`). It is the
   same file `sendguard ingest` uses to stamp the tenant on the verdicts that lead to
   a block, so when it names the sender's domain, the gateway looks up exactly the
   `(tenant_id, mailbox)` the block was decided for. It wins outright: an entry in
   the file is the MTA operator's explicit statement.
2. The directory (`directory.mailboxes`, followed like the worker follows it), for
   domains the map does not name: every tenant whose directory lists the mailbox.
   A mailbox listed by several tenants is checked under each, and a block under any
   of them holds (the address is one mailbox on this MTA, whoever lists it).

A mailbox neither names is not sendguard's to enforce: the gateway answers DUNNO
and counts it (`sendguard_gateway_tenant_lookups_total{source="none"}`).

Pure: no I/O; the directory index is filled by the gateway's follower.
"""

from __future__ import annotations

from typing import Final, Literal

from processor.mail.tenants import TenantMap
from processor.policy.events import normalise_mailbox

Source = Literal["map", "directory", "none"]
SOURCES: Final[tuple[Source, ...]] = ("map", "directory", "none")

_NONE: Final[tuple[str, ...]] = ()


class DirectoryIndex:
    """mailbox -> the tenants whose directory lists it (from `directory.mailboxes`).

    Only presence matters to the gateway, so a newer entry for a key changes
    nothing and a tombstone removes it.
    """

    def __init__(self) -> None:
        self._tenants: dict[str, tuple[str, ...]] = {}
        self.entries = 0

    def put(self, tenant_id: str, mailbox: str) -> None:
        mailbox = normalise_mailbox(mailbox)
        known = self._tenants.get(mailbox, _NONE)
        if tenant_id not in known:
            self._tenants[mailbox] = (*known, tenant_id)
            self.entries += 1

    def forget(self, tenant_id: str, mailbox: str) -> None:
        mailbox = normalise_mailbox(mailbox)
        known = self._tenants.get(mailbox, _NONE)
        if tenant_id in known:
            rest = tuple(t for t in known if t != tenant_id)
            if rest:
                self._tenants[mailbox] = rest
            else:
                del self._tenants[mailbox]
            self.entries -= 1

    def tenants_of(self, mailbox: str) -> tuple[str, ...]:
        """The tenants listing the normalised `mailbox` (empty if none)."""
        return self._tenants.get(mailbox, _NONE)


class TenantResolver:
    """The map first, then the directory (see the module docstring)."""

    def __init__(self, tenant_map: TenantMap | None, directory: DirectoryIndex | None) -> None:
        self._map = tenant_map.by_domain if tenant_map is not None else {}
        self._directory = directory

    def tenants_of(self, mailbox: str) -> tuple[Source, tuple[str, ...]]:
        """(where the answer came from, the tenants) of a normalised mailbox."""
        _, at, domain = mailbox.rpartition("@")
        if at and domain:
            tenant = self._map.get(domain)
            if tenant is not None:
                return "map", (tenant,)
        if self._directory is not None:
            tenants = self._directory.tenants_of(mailbox)
            if tenants:
                return "directory", tenants
        return "none", _NONE
