"""Which tenant an address belongs to: the domain -> tenant map of an MTA's operator.

An MTA knows addresses, not tenants; sendguard's records are keyed by
`(tenant_id, mailbox)`. Both ends of the mail loop (`sendguard ingest`, which turns
rspamd results into verdicts, and `sendguard gateway`, which answers Postfix) map a
sender's domain to its tenant with the same file, so they always agree:

    # tenants.yaml: mail domain -> tenant id
    acme.example: acme
    mail.acme.example: acme
    globex.example: globex

Domains are compared lower-cased and exactly (a subdomain is its own entry: a
tenant owning `acme.example` does not own every host name under it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from processor.policy.events import normalise_mailbox

#: RFC 1035: a domain name is at most 253 characters in its text form.
MAX_DOMAIN = 253


class TenantMapError(ValueError):
    """The map file is unreadable or has a bad entry (the message names it)."""


@dataclass(frozen=True, slots=True)
class TenantMap:
    """Mail domain (lower-case) -> tenant id."""

    by_domain: Mapping[str, str] = field(default_factory=dict)

    def tenant_of(self, address: str) -> str | None:
        """The tenant of `address` (`user@domain`, any case), or None if its domain is unknown."""
        _, at, domain = normalise_mailbox(address).rpartition("@")
        if not at or not domain:
            return None
        return self.by_domain.get(domain)

    @classmethod
    def from_mapping(cls, raw: object, where: str = "tenant map") -> TenantMap:
        """Validate a parsed map. Raises TenantMapError naming the bad entry."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise TenantMapError(f"{where}: expected a mapping of mail domain to tenant id")
        by_domain: dict[str, str] = {}
        for domain, tenant in raw.items():
            if not isinstance(domain, str) or not domain.strip() or "@" in domain:
                raise TenantMapError(f"{where}: {domain!r} is not a mail domain")
            name = domain.strip().lower()
            if len(name) > MAX_DOMAIN:
                raise TenantMapError(f"{where}: {name[:40]!r}... is longer than {MAX_DOMAIN}")
            if not isinstance(tenant, str) or not tenant.strip():
                raise TenantMapError(f"{where}: tenant of {name!r} must be a non-empty string")
            if name in by_domain and by_domain[name] != tenant:
                raise TenantMapError(f"{where}: {name!r} is mapped twice")
            by_domain[name] = tenant
        return cls(by_domain)

    @classmethod
    def load(cls, path: str | Path) -> TenantMap:
        """The map in a YAML file. Raises TenantMapError."""
        import yaml

        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise TenantMapError(f"{path}: cannot read the tenant map: {error}") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise TenantMapError(f"{path}: not valid YAML: {error}") from None
        return cls.from_mapping(raw, str(path))
