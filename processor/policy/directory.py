"""Directory entries and tenant settings as the policy consults them when it blocks.

One rule for every holder (the engine of `simulate`, the live worker's lookups):
the entry or setting with the largest `at` wins, and one with the same `at` as the
current one replaces it (the later line or record wins), so the order in which
they arrive does not matter beyond that tie.
"""

from __future__ import annotations

from processor.policy.events import DirectoryEntry, MailboxKey, TenantSettings


class Directory:
    """The mailbox owners and tenant settings known now; a `PolicyContext`."""

    def __init__(self) -> None:
        self.owners: dict[MailboxKey, DirectoryEntry] = {}
        self.settings: dict[str, TenantSettings] = {}

    # -- PolicyContext -------------------------------------------------------------
    def owner_of(self, key: MailboxKey) -> DirectoryEntry | None:
        return self.owners.get(key)

    def synchronized_security(self, tenant_id: str) -> bool | None:
        settings = self.settings.get(tenant_id)
        return None if settings is None else settings.synchronized_security

    # -- updates ---------------------------------------------------------------------
    def put_directory(self, entry: DirectoryEntry) -> None:
        """Keep `entry` unless a newer one (larger `at`) is known for its mailbox."""
        known = self.owners.get(entry.key)
        if known is None or entry.at_ms >= known.at_ms:
            self.owners[entry.key] = entry

    def put_settings(self, settings: TenantSettings) -> None:
        """Keep `settings` unless newer ones (larger `at`) are known for the tenant."""
        known = self.settings.get(settings.tenant_id)
        if known is None or settings.at_ms >= known.at_ms:
            self.settings[settings.tenant_id] = settings

    def forget_directory(self, key: MailboxKey) -> None:
        """The mailbox has no owner any more (the directory service removed it)."""
        self.owners.pop(key, None)

    def forget_settings(self, tenant_id: str) -> None:
        """The tenant has no settings any more: the policy default applies again."""
        self.settings.pop(tenant_id, None)
