"""Who may reach PostgreSQL: pg_hba (role postgresql) and the firewall (role hardening), as
rendered for the Iberian estate and the CI one."""

from __future__ import annotations

from pathlib import Path

from tests.unit.deploy.test_sovereign_role_config import Role

CP_ES = "cp1.es.sovereign.example"


def _hostssl(text: str) -> list[list[str]]:
    return [line.split() for line in text.splitlines() if line.startswith("hostssl")]


def test_keycloak_reaches_only_its_own_database(tmp_path: Path) -> None:
    role = Role(["es", "pt"], CP_ES, tmp_path, role="postgresql")
    assert _hostssl(role.render("pg_hba.conf.j2")) == [
        ["hostssl", "sovereign", "sovereign_owner,sovereign_app", "10.10.0.10/32", "scram-sha-256"],
        ["hostssl", "keycloak", "keycloak", "10.10.0.10/32", "scram-sha-256"],
    ]


def test_without_keycloak_hosts_only_the_control_plane_connects(tmp_path: Path) -> None:
    role = Role(["ci"], "ci-node.sovereign.test", tmp_path, role="postgresql")
    assert _hostssl(role.render("pg_hba.conf.j2")) == [
        ["hostssl", "sovereign", "sovereign_owner,sovereign_app", "127.0.0.1/32", "scram-sha-256"]
    ]


def test_the_firewall_opens_postgresql_to_the_control_plane_and_keycloak_only(
    tmp_path: Path,
) -> None:
    database = Role(["es", "pt"], CP_ES, tmp_path, role="hardening").render("nftables.conf.j2")
    assert "ip saddr { 10.10.0.10 } tcp dport 5432 accept" in database
    hypervisor = Role(["es", "pt"], "hv1.pt.sovereign.example", tmp_path, role="hardening")
    rendered = hypervisor.render("nftables.conf.j2")
    assert "5432" not in rendered
    assert "ip saddr { 10.10.0.10 } tcp dport 16514 accept" in rendered
