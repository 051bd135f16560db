"""Data residency on a real database (SQLite and PostgreSQL) over an in-memory fleet: the
country an enclave is pinned to at final approval, placement kept to it, and what the audit
events say about it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sovereign.adapters.memory_hypervisor import MemoryHost
from sovereign.domain.tenants import Resources
from sovereign.errors import DependencyUnavailableError, InvalidInputError, NotFoundError
from sovereign.services.keystores import KeyStores
from sovereign.services.requests import RequestDraft
from tests.support.factories import ANALYST_DEFENCE, ANALYST_RESEARCH, OFFICER_1, ctx
from tests.support.fleet import SYSTEM, UNCLASSIFIED, Fleet, gpus, make_fleet

SECRET_ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}


def set_country(fleet: Fleet, host: str, country: str) -> None:
    """Give ``host`` a country directly (what its site's country would give it)."""
    with fleet.services.uow() as uow:
        found = uow.hosts.get(host)
        assert found is not None
        found.country = country
        uow.hosts.update(found)
        uow.commit()


@pytest.fixture
def new_fleet(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """``new_fleet(es_gpus=4, pt_gpus=4)``: a secret host and a civilian host in Spain and a
    civilian host in Portugal."""
    made: list[Fleet] = []

    def make(es_gpus: int = 4, pt_gpus: int = 4, **options: Any) -> Fleet:
        hosts = {
            "secret-es": ("mem://secret-es", SECRET_ALL, MemoryHost(gpus=gpus(8))),
            "civil-es": ("mem://civil-es", UNCLASSIFIED, MemoryHost(gpus=gpus(es_gpus, 0x3A))),
            "civil-pt": ("mem://civil-pt", UNCLASSIFIED, MemoryHost(gpus=gpus(pt_gpus, 0x5A))),
        }
        fleet = make_fleet(database_url, folder=tmp_path, hosts=hosts, **options)
        made.append(fleet)
        set_country(fleet, "secret-es", "ES")
        set_country(fleet, "civil-es", "ES")
        set_country(fleet, "civil-pt", "PT")
        return fleet

    yield make
    for fleet in made:
        fleet.services.close()


def civil_request(
    fleet: Fleet, *, gpus: int = 1, residency: tuple[str, ...] | None = None
) -> uuid.UUID:
    draft = RequestDraft(
        tenant="research",
        label=UNCLASSIFIED,
        resources=Resources(vcpus=4, memory_mib=8192, gpus=gpus, disk_gib=20),
        gpu_model="H100-SXM5-80GB",
        image="ubuntu-24.04-research",
        purpose="test",
        lease_hours=4,
        residency=residency,
    )
    request = fleet.services.requests.create(ctx(ANALYST_RESEARCH), draft)
    fleet.approve_last(request.id)  # one officer approves an unclassified request
    return request.id


def pinned(fleet: Fleet, rid: uuid.UUID) -> str | None:
    with fleet.services.uow(readonly=True) as uow:
        request = uow.requests.get(rid)
    assert request is not None
    return request.country


def place_event(fleet: Fleet, rid: uuid.UUID, outcome: str = "allow") -> dict[str, Any]:
    (event,) = [
        e
        for e in fleet.events("enclave:place")
        if e.target == f"enclave/{rid}" and e.outcome.value == outcome
    ]
    return dict(event.details)


def test_a_narrowed_request_runs_in_its_country_and_the_events_say_where(new_fleet):
    fleet = new_fleet()
    rid = civil_request(fleet, residency=("PT",))
    assert pinned(fleet, rid) == "PT"
    fleet.reconciler().run_once()
    assert fleet.state(rid) == "running"
    details = place_event(fleet, rid)
    assert details["host"] == "civil-pt"
    assert details["site"] == "site-civil-pt"
    assert details["country"] == "PT"
    assert details["tenant"] == "research"
    assert details["classified"] is False
    assert details["residency"] == ["PT"]
    assert details["rejected"]["civil-es"] == "country ES not allowed for tenant research"
    (approved,) = [e for e in fleet.events("request:approve") if e.target == f"request/{rid}"]
    assert approved.details["country"] == "PT"
    # The enclave keeps the country it was placed in (usage counts it there for good).
    with fleet.services.uow(readonly=True) as uow:
        placed = uow.enclaves.get(rid)
    assert placed is not None and placed.country == "PT"


def test_the_first_allowed_country_with_room_is_chosen(new_fleet):
    # Spain comes first, but its civilian host has one GPU: two are wanted.
    fleet = new_fleet(es_gpus=1)
    set_country(fleet, "secret-es", "FR")  # (an empty secret host takes civilians too)
    rid = civil_request(fleet, gpus=2)
    assert pinned(fleet, rid) == "PT"
    fleet.reconciler().run_once()
    details = place_event(fleet, rid)
    assert (details["host"], details["country"]) == ("civil-pt", "PT")
    assert details["residency"] == ["ES", "PT"]
    # One that fits in Spain goes to Spain.
    other = civil_request(fleet, gpus=1)
    assert pinned(fleet, other) == "ES"


def test_with_no_room_anywhere_the_first_country_is_pinned_and_the_request_waits_there(
    new_fleet,
):
    fleet = new_fleet(es_gpus=1, pt_gpus=1)
    set_country(fleet, "secret-es", "FR")
    rid = civil_request(fleet, gpus=2)
    assert pinned(fleet, rid) == "ES"
    report = fleet.reconciler().run_once()
    assert report.unplaceable == 1
    reasons = place_event(fleet, rid, "deny")["reasons"]
    # Pinned to Spain: a Portuguese host that frees up later is never used.
    assert reasons["civil-pt"] == "country PT not allowed for tenant research"
    assert reasons["civil-es"].startswith("only 1 free H100-SXM5-80GB GPUs")


def test_a_classified_tenant_stays_in_its_country(new_fleet):
    fleet = new_fleet()
    set_country(fleet, "secret-es", "PT")  # the only secret host, abroad
    rid = fleet.request(gpus=2)
    assert pinned(fleet, rid) == "ES"
    fleet.reconciler().run_once()
    assert fleet.state(rid) == "approved"
    reasons = place_event(fleet, rid, "deny")["reasons"]
    assert reasons["secret-es"] == "country PT not allowed for tenant defence"


def test_a_request_may_only_narrow_its_tenants_residency(new_fleet):
    fleet = new_fleet()
    draft = RequestDraft(
        tenant="defence",
        label={"level": "SECRET", "compartments": ["NATO"]},
        resources=Resources(vcpus=4, memory_mib=8192, gpus=1, disk_gib=20),
        gpu_model="H100-SXM5-80GB",
        image="debian-12-cuda",
        purpose="test",
        lease_hours=4,
        residency=("ES", "PT"),
    )
    with pytest.raises(InvalidInputError, match="residency PT not allowed for tenant defence"):
        fleet.services.requests.create(ctx(ANALYST_DEFENCE), draft)
    (denied,) = [e for e in fleet.events("request:create") if e.outcome.value == "deny"]
    assert "PT" in denied.reason


PT_VAULT = {"PT": {"addr": "https://vault.pt.example:8200", "mount_prefix": "pt-"}}


def test_keys_live_in_the_vault_of_the_enclaves_country(new_fleet):
    fleet = new_fleet(VAULT_COUNTRIES=PT_VAULT)
    stores = fleet.services.keys.stores
    assert stores.countries == ("PT",)
    portugal = stores.for_country("PT").store
    spain = stores.for_country("ES").store
    assert portugal is not spain, "Spain has no Vault of its own: the default one"

    in_pt = civil_request(fleet, residency=("PT",))
    in_es = civil_request(fleet, residency=("ES",))
    with fleet.services.uow(readonly=True) as uow:
        pt_keys, es_keys = uow.keys.get(in_pt), uow.keys.get(in_es)
    assert pt_keys is not None and es_keys is not None
    assert (pt_keys.country, pt_keys.key.mount, pt_keys.vault) == ("PT", "pt-civilian", "PT")
    assert (es_keys.country, es_keys.key.mount, es_keys.vault) == (
        "ES",
        "sovereign-civilian",
        "default",
    )
    # Each store holds only its own country's key: the other cannot unwrap it.
    assert portugal.unwrap(pt_keys.luks, b"luks")
    with pytest.raises(NotFoundError):
        spain.unwrap(pt_keys.luks, b"luks")
    with pytest.raises(NotFoundError):
        portugal.unwrap(es_keys.luks, b"luks")
    created = {e.details["request"]: e.details for e in fleet.events("key:create")}
    assert (created[str(in_pt)]["country"], created[str(in_pt)]["vault_name"]) == ("PT", "PT")
    assert (created[str(in_es)]["country"], created[str(in_es)]["vault_name"]) == (
        "ES",
        "default",
    )

    # The enclave runs (its data keys unwrapped in Portugal) and is crypto-erased there.
    fleet.reconciler().run_once()
    assert fleet.state(in_pt) == "running"
    fleet.services.enclaves.terminate(ctx(ANALYST_RESEARCH), in_pt, "done")
    fleet.reconciler().run_once()
    assert fleet.state(in_pt) == "terminated"
    with pytest.raises(NotFoundError):
        portugal.unwrap(pt_keys.luks, b"luks")
    (destroyed,) = [
        e for e in fleet.events("key:destroy") if e.details.get("request") == str(in_pt)
    ]
    assert destroyed.details["country"] == "PT"
    assert destroyed.details["vault_name"] == "PT"
    assert destroyed.details["vault"], "Vault's own answer is kept"


def test_a_key_is_used_only_through_the_store_that_holds_it(new_fleet, monkeypatch):
    fleet = new_fleet(VAULT_COUNTRIES=PT_VAULT)
    in_pt = civil_request(fleet, residency=("PT",))
    keys = fleet.services.keys
    # Portugal's Vault drops out of the configuration: its keys are not looked for (and not
    # "found already deleted") in the default store; every use fails closed, naming it.
    monkeypatch.setattr(keys, "stores", KeyStores(keys.stores.default.store))
    with pytest.raises(DependencyUnavailableError, match="vault-PT"):
        keys.secrets(in_pt)
    with pytest.raises(DependencyUnavailableError, match="vault-PT"):
        keys.crypto_erase(SYSTEM, in_pt)
    with fleet.services.uow(readonly=True) as uow:
        still = uow.keys.get(in_pt)
    assert still is not None and still.destroyed_at is None
    monkeypatch.undo()
    assert keys.crypto_erase(SYSTEM, in_pt).destroyed_at is not None


def test_the_placement_preview_names_the_residency_rule(new_fleet):
    fleet = new_fleet()
    draft = RequestDraft(
        tenant="research",
        label=UNCLASSIFIED,
        resources=Resources(vcpus=4, memory_mib=8192, gpus=1, disk_gib=20),
        gpu_model="H100-SXM5-80GB",
        image="ubuntu-24.04-research",
        purpose="test",
        lease_hours=4,
        residency=("PT",),
    )
    request = fleet.services.requests.create(ctx(ANALYST_RESEARCH), draft)
    preview = fleet.services.enclaves.preview(fleet.signed_in(OFFICER_1), request.id)
    assert preview.host == "civil-pt"
    assert preview.reasons == {
        "civil-es": "country ES not allowed for tenant research",
        "secret-es": "country ES not allowed for tenant research",
    }
