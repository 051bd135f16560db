"""Sites through the services on every real database: adding one (operators), reading them
(operators, officers, auditors), the audit trail, and hosts that must stand at a known site and
take its country."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sovereign.adapters.memory_hypervisor import MemoryHost, MemoryHypervisor
from sovereign.errors import ConflictError, InvalidInputError, NotFoundError, PolicyDeniedError
from tests.support.factories import ANALYST_DEFENCE, AUDITOR, OFFICER_1, OPERATOR, ctx
from tests.support.fleet import SYSTEM, UNCLASSIFIED, Fleet, gpus, make_fleet


@pytest.fixture
def fleet(database_url: str, tmp_path: Path) -> Iterator[Fleet]:
    made = make_fleet(
        database_url,
        folder=tmp_path,
        hypervisor=MemoryHypervisor(),
        hosts={"civil-1": ("mem://civil-1", UNCLASSIFIED, MemoryHost(gpus=gpus(2)))},
    )
    yield made
    made.services.close()


def test_an_operator_adds_a_site_and_readers_list_it(fleet: Fleet) -> None:
    sites = fleet.services.sites
    made = sites.add(ctx(OPERATOR), name="pt-lis-1", country="PT", operator="Lisboa (demo)")
    assert (made.name, made.country, made.operator) == ("pt-lis-1", "PT", "Lisboa (demo)")
    for reader in (OPERATOR, OFFICER_1, AUDITOR):
        assert [s.name for s in sites.list(ctx(reader))] == ["pt-lis-1", "site-civil-1"]
        assert sites.get(ctx(reader), "pt-lis-1") == made
    added = [e for e in fleet.events("site:add") if e.target == "site/pt-lis-1"]
    assert len(added) == 1
    assert added[0].outcome == "allow" and added[0].actor == "user:operator"
    assert added[0].details["country"] == "PT"
    assert added[0].details["operator"] == "Lisboa (demo)"


def test_others_may_neither_add_nor_read_sites(fleet: Fleet) -> None:
    sites = fleet.services.sites
    with pytest.raises(PolicyDeniedError):
        sites.add(ctx(ANALYST_DEFENCE), name="x-1", country="ES", operator="x")
    with pytest.raises(PolicyDeniedError):
        sites.add(ctx(AUDITOR), name="x-1", country="ES", operator="x")
    with pytest.raises(PolicyDeniedError):
        sites.list(ctx(ANALYST_DEFENCE))
    with pytest.raises(NotFoundError):
        sites.get(ctx(ANALYST_DEFENCE), "site-civil-1")
    denied = [e for e in fleet.events("site:") if e.outcome == "deny"]
    assert [e.action for e in denied] == ["site:add", "site:add", "site:list", "site:read"]
    assert [s.name for s in sites.list(SYSTEM)] == ["site-civil-1"]


@pytest.mark.parametrize(
    ("name", "country", "operator", "message"),
    [
        ("ok-1", "XX", "op", "unknown country 'XX' (ISO 3166-1 alpha-2"),
        ("ok-1", "es", "op", "unknown country 'es'"),
        ("Bad Name", "ES", "op", "invalid site name"),
        ("ok-1", "ES", "", "operator is required"),
        ("ok-1", "ES", "a\nb", "control characters"),
    ],
)
def test_bad_input_is_refused_and_audited(
    fleet: Fleet, name: str, country: str, operator: str, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(")):
        fleet.services.sites.add(ctx(OPERATOR), name=name, country=country, operator=operator)
    assert [e.outcome for e in fleet.events("site:add")] == [
        "allow",
        "deny",
    ]  # the fixture's, then this


def test_a_duplicate_site_is_a_conflict(fleet: Fleet) -> None:
    with pytest.raises(ConflictError, match="exists"):
        fleet.services.sites.add(ctx(OPERATOR), name="site-civil-1", country="PT", operator="x")
    assert fleet.services.sites.get(SYSTEM, "site-civil-1").country == "ES"


def test_a_host_stands_at_a_known_site_and_takes_its_country(fleet: Fleet) -> None:
    fleet.hypervisor.add_host("mem://civil-2", MemoryHost(gpus=gpus(1, 0x5A)))
    hosts = fleet.services.hosts
    with pytest.raises(InvalidInputError, match="unknown site 'nowhere'"):
        hosts.add(
            ctx(OPERATOR),
            name="civil-2",
            uri="mem://civil-2",
            site="nowhere",
            accreditation=fleet.services.scheme.lowest,
        )
    fleet.services.sites.add(ctx(OPERATOR), name="pt-lis-1", country="PT", operator="Lisboa")
    host = hosts.add(
        ctx(OPERATOR),
        name="civil-2",
        uri="mem://civil-2",
        site="pt-lis-1",
        accreditation=fleet.services.scheme.lowest,
    )
    assert (host.site, host.country) == ("pt-lis-1", "PT")
    assert hosts.get(SYSTEM, "civil-2").country == "PT"
    assert hosts.get(SYSTEM, "civil-1").country == "ES"
    added = [e for e in fleet.events("host:add") if e.target == "host/civil-2"]
    assert [e.outcome for e in added] == ["deny", "allow"]
    assert added[1].details["site"] == "pt-lis-1" and added[1].details["country"] == "PT"
