from __future__ import annotations

from pathlib import Path

import pytest

from processor.mail.tenants import TenantMap, TenantMapError


def test_domain_of_an_address_names_its_tenant_in_any_case() -> None:
    tenants = TenantMap.from_mapping({"Acme.Example": "acme", "globex.example": "globex"})
    assert tenants.tenant_of("J.Doe@ACME.example") == "acme"
    assert tenants.tenant_of(" x@globex.example ") == "globex"


@pytest.mark.parametrize(
    "address", ["j.doe@sub.acme.example", "nobody@other.example", "no-at-sign", "user@", ""]
)
def test_unknown_domains_and_non_addresses_have_no_tenant(address: str) -> None:
    assert TenantMap.from_mapping({"acme.example": "acme"}).tenant_of(address) is None


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (["acme.example"], "expected a mapping"),
        ({"j@acme.example": "acme"}, "is not a mail domain"),
        ({"acme.example": ""}, "must be a non-empty string"),
        ({"acme.example": 7}, "must be a non-empty string"),
        ({"acme.example": "a", "ACME.example": "b"}, "mapped twice"),
        ({"x" * 254: "a"}, "longer than 253"),
    ],
)
def test_bad_maps_are_clear_errors(raw: object, message: str) -> None:
    with pytest.raises(TenantMapError, match=message):
        TenantMap.from_mapping(raw)


def test_load_reads_yaml_and_names_the_file_in_errors(tmp_path: Path) -> None:
    good = tmp_path / "tenants.yaml"
    good.write_text("acme.example: acme\n")
    assert TenantMap.load(good).tenant_of("a@acme.example") == "acme"
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe: x\n")
    with pytest.raises(TenantMapError, match=r"bad\.yaml"):
        TenantMap.load(bad)
