"""The fleet over HTTP: hosts, GPUs, enclaves, placement previews, two-person actions and the
kill switch, with real tokens from the dev IdP, real SQLite, the real libvirt test driver over
the bundled simulated hosts, and the reconciler run in-process between calls."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from enclaves.hosts import bundled_host_path
from sovereign.api import fleet_schemas as f
from sovereign.cli_hosts import cli_context
from sovereign.services.reconciler import Reconciler
from tests.support.apps import make_app
from tests.support.fleet import ensure_site
from tests.support.hostfiles import other_machine

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]

BODY: dict[str, Any] = {
    "tenant": "defence",
    "label": {"level": "SECRET", "compartments": ["NATO"]},
    "resources": {
        "vcpus": 8,
        "memory_mib": 16384,
        "gpus": 2,
        "gpu_model": "H100-SXM5-80GB",
        "disk_gib": 50,
    },
    "image": "debian-12-cuda",
    "purpose": "fleet api",
    "lease_hours": 8,
}
CIVIL: dict[str, Any] = {
    **BODY,
    "tenant": "research",
    "label": {"level": "UNCLASSIFIED", "compartments": []},
    "image": "ubuntu-24.04-research",
}
ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}


@pytest.fixture
def app(tmp_path: Path, idp: Any) -> Iterator[Flask]:
    app = make_app(tmp_path, idp.url)
    services = app.extensions["sovereign"]
    for name, label in (("secret-h100x8", ALL), ("civilian-h100x4", CIVIL["label"])):
        copy = tmp_path / f"{name}.xml"
        shutil.copy(bundled_host_path(name), copy)
        ensure_site(services, f"hall-{name[:3]}")
        services.hosts.add(
            cli_context(),
            name=name,
            uri=f"test://{copy}",
            site=f"hall-{name[:3]}",
            accreditation=services.scheme.parse(label),
        )
    for site in ("s", "x", "hall-c"):
        ensure_site(services, site)
    yield app
    services.close()


@pytest.fixture
def reconcile(app: Flask) -> Callable[[], None]:
    reconciler: Reconciler = app.extensions["sovereign"].reconciler(worker="test")

    def run() -> None:
        for _ in range(10):
            if not reconciler.run_once().busy:
                return

    run()  # sanitize the new hosts' GPUs
    return run


Call = Callable[..., Any]


@pytest.fixture
def call(app: Flask, token: Callable[[str], str]) -> Call:
    client: FlaskClient = app.test_client()

    def do(user: str | None, method: str, path: str, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if user:
            headers["Authorization"] = f"Bearer {token(user)}"
        return client.open(path, method=method, headers=headers, **kw)

    return do


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return dict(response.get_json())


def approved(call: Call, body: dict[str, Any] = BODY) -> str:
    r = call(
        "analyst-research" if body is CIVIL else "analyst-defence",
        "POST",
        "/api/v1/requests",
        json=body,
    )
    assert r.status_code == 201, r.get_json()
    rid = str(r.get_json()["id"])
    for officer in ("officer-1",) if body is CIVIL else ("officer-1", "officer-2"):
        assert call(officer, "POST", f"/api/v1/requests/{rid}/approve").status_code == 200
    return rid


def test_hosts_and_gpus_are_listed_for_operators_officers_and_auditors(
    call: Call, reconcile: Callable[[], None]
):
    for user in ("operator", "officer-1", "auditor"):
        hosts = f.HostList.model_validate(call(user, "GET", "/api/v1/hosts").get_json())
        assert [h.name for h in hosts.items] == ["civilian-h100x4", "secret-h100x8"]
    gpus = f.GpuList.model_validate(call("operator", "GET", "/api/v1/gpus").get_json())
    assert len(gpus.items) == 12
    assert {g.state for g in gpus.items} == {"free"}
    only = call("officer-1", "GET", "/api/v1/gpus?host=civilian-h100x4").get_json()
    assert len(only["items"]) == 4
    problem(call("analyst-defence", "GET", "/api/v1/hosts"), 403)
    problem(call(None, "GET", "/api/v1/hosts"), 401)
    problem(call("operator", "GET", "/api/v1/hosts/nope"), 404)


def test_request_to_running_to_terminated_over_http(call: Call, reconcile: Callable[[], None]):
    rid = approved(call)
    preview = call("officer-1", "GET", f"/api/v1/requests/{rid}/placement").get_json()
    assert preview["host"] == "secret-h100x8"
    assert "does not dominate" in preview["rejected"]["civilian-h100x4"]
    # The requester sees the request, so a refusal reveals nothing: 403; a stranger gets 404.
    problem(call("analyst-defence", "GET", f"/api/v1/requests/{rid}/placement"), 403)
    problem(call("analyst-research", "GET", f"/api/v1/requests/{rid}/placement"), 404)
    reconcile()
    enclave = f.EnclaveOut.model_validate(
        call("analyst-defence", "GET", f"/api/v1/enclaves/{rid}").get_json()
    )
    assert enclave.state == "running"
    assert enclave.host == "secret-h100x8"
    assert len(enclave.gpus) == 2
    assert enclave.step == "provision:start"
    listed = call("analyst-defence", "GET", "/api/v1/enclaves").get_json()["items"]
    assert [e["id"] for e in listed] == [rid]
    assert call("analyst-research", "GET", "/api/v1/enclaves").get_json()["items"] == []
    problem(call("analyst-research", "GET", f"/api/v1/enclaves/{rid}"), 404)
    gpus = call("officer-1", "GET", "/api/v1/gpus?host=secret-h100x8").get_json()["items"]
    held = [g for g in gpus if g["state"] == "allocated"]
    assert {g["address"] for g in held} == set(enclave.gpus)
    assert all(g["last_label"] == {"level": "SECRET", "compartments": ["NATO"]} for g in held)
    console = call("analyst-defence", "GET", f"/api/v1/enclaves/{rid}/console")
    assert console.status_code == 200
    assert console.mimetype == "text/plain"

    problem(call("analyst-research", "POST", f"/api/v1/enclaves/{rid}/terminate"), 404)
    r = call(
        "analyst-defence", "POST", f"/api/v1/enclaves/{rid}/terminate", json={"reason": "finished"}
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["state"] == "terminating"
    problem(call("analyst-defence", "POST", f"/api/v1/enclaves/{rid}/terminate"), 409)
    reconcile()
    assert call("analyst-defence", "GET", f"/api/v1/enclaves/{rid}").get_json()["state"] == (
        "terminated"
    )
    states = {g["state"] for g in call("operator", "GET", "/api/v1/gpus").get_json()["items"]}
    assert states == {"free"}


def test_classified_kill_switch_needs_a_second_officer(call: Call, reconcile: Callable[[], None]):
    a, b = approved(call), approved(call)
    civil = approved(call, CIVIL)
    reconcile()
    body = {"label": {"level": "SECRET", "compartments": ["NATO"]}, "reason": "breach"}
    r = call("officer-1", "POST", "/api/v1/kill-switch", json=body)
    assert r.status_code == 200, r.get_json()
    result = f.KillOut.model_validate(r.get_json())
    assert result.ended == []
    assert not result.partial  # a label the officer is cleared for: nothing left out
    assert result.proposal is not None
    assert result.proposal.status == "1 of 2 officers: officer-1"
    pending = call("officer-2", "GET", "/api/v1/actions").get_json()["items"]
    assert [p["id"] for p in pending] == [str(result.proposal.id)]
    confirm = f"/api/v1/actions/{result.proposal.id}/confirm"
    body_ = problem(call("officer-1", "POST", confirm), 403)
    assert "two-person" in body_["detail"]
    problem(call("analyst-defence", "POST", confirm), 404)  # officers' business only
    r = call("officer-2", "POST", confirm)
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["status"] == "2 of 2 officers: officer-1, officer-2"
    reconcile()
    for rid, state in ((a, "terminated"), (b, "terminated"), (civil, "running")):
        got = call("officer-1", "GET", f"/api/v1/enclaves/{rid}").get_json()["state"]
        assert got == state


def test_accreditation_change_over_http_takes_two_officers(call: Call):
    body = {"accreditation": ALL, "reason": "hall B now accredited"}
    r = call("officer-1", "POST", "/api/v1/hosts/civilian-h100x4/accreditation", json=body)
    assert r.status_code == 202, r.get_json()
    action = r.get_json()
    problem(call("operator", "POST", "/api/v1/hosts/civilian-h100x4/accreditation", json=body), 403)
    r = call("officer-2", "POST", f"/api/v1/actions/{action['id']}/confirm")
    assert r.status_code == 200
    host = call("operator", "GET", "/api/v1/hosts/civilian-h100x4").get_json()
    assert host["accreditation"] == ALL


def test_host_state_changes(call: Call):
    path = "/api/v1/hosts/civilian-h100x4/state"
    r = call("operator", "POST", path, json={"state": "draining", "reason": "firmware"})
    assert r.status_code == 200
    assert r.get_json()["state"] == "draining"
    problem(call("operator", "POST", path, json={"state": "active"}), 403)
    # Analysts may not know which hosts exist: the answer a missing host gets.
    problem(
        call("analyst-research", "POST", path, json={"state": "quarantined", "reason": "x"}), 404
    )
    r = call("officer-1", "POST", path, json={"state": "active"})
    assert r.status_code == 200
    assert r.get_json()["state"] == "active"


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/api/v1/kill-switch", {"reason": "no scope"}),
        ("POST", "/api/v1/kill-switch", {"tenant": "defence"}),
        ("POST", "/api/v1/kill-switch", {"tenant": "x", "reason": "r", "extra": 1}),
        ("POST", "/api/v1/kill-switch", {"label": {"level": "COSMIC"}, "reason": "r"}),
        ("POST", "/api/v1/hosts", {"name": "h", "uri": "not a uri", "site": "s"}),
        ("POST", "/api/v1/hosts", {"name": "../h", "uri": "test:///x", "site": "s"}),
        ("POST", "/api/v1/hosts/secret-h100x8/state", {"state": "exploded"}),
        ("POST", "/api/v1/hosts/secret-h100x8/state", {"state": "draining", "reason": ""}),
        ("POST", "/api/v1/hosts/secret-h100x8/accreditation", {"accreditation": ALL}),
        ("GET", "/api/v1/gpus?host=a%20b", None),
        ("GET", "/api/v1/enclaves?state=bogus", None),
        ("POST", "/api/v1/enclaves/not-a-uuid/terminate", None),
    ],
)
def test_bad_input_gets_a_problem_and_changes_nothing(
    call: Call, method: str, path: str, body: Any
):
    r = (
        call("officer-1", method, path, json=body)
        if body is not None
        else call("officer-1", method, path)
    )
    assert r.status_code in (400, 404, 422), r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    hosts = call("officer-1", "GET", "/api/v1/hosts").get_json()["items"]
    assert {h["state"] for h in hosts} == {"active"}
    assert len(hosts) == 2


def test_operator_adds_a_host_at_the_lowest_level_only(call: Call, tmp_path: Path):
    copy = other_machine(tmp_path, "civilian-h100x4", "extra")
    body = {"name": "extra", "uri": f"test://{copy}", "site": "hall-c"}
    r = call("operator", "POST", "/api/v1/hosts", json=body)
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["accreditation"] == {"level": "UNCLASSIFIED", "compartments": []}
    problem(call("operator", "POST", "/api/v1/hosts", json=body), 409)
    problem(call("auditor", "POST", "/api/v1/hosts", json={**body, "name": "other"}), 403)
    unreachable = {"name": "gone", "uri": "qemu+tls://192.0.2.1/system", "site": "x"}
    r = call("operator", "POST", "/api/v1/hosts", json=unreachable)
    assert r.status_code == 503


# -- sites and relocation --------------------------------------------------------------------


def test_sites_are_listed_for_readers_and_added_by_operators(call: Call):
    body = {"name": "pt-lis-1", "country": "PT", "operator": "Lisboa (demo)"}
    r = call("operator", "POST", "/api/v1/sites", json=body)
    assert r.status_code == 201, r.get_json()
    assert f.SiteOut.model_validate(r.get_json()).country == "PT"
    for user in ("operator", "officer-1", "auditor"):
        sites = f.SiteList.model_validate(call(user, "GET", "/api/v1/sites").get_json())
        assert {s.name: s.country for s in sites.items}["pt-lis-1"] == "PT"
    problem(call("analyst-defence", "GET", "/api/v1/sites"), 403)
    problem(call(None, "GET", "/api/v1/sites"), 401)
    problem(call("operator", "POST", "/api/v1/sites", json=body), 409)
    problem(call("auditor", "POST", "/api/v1/sites", json={**body, "name": "x-2"}), 403)
    bad = problem(call("operator", "POST", "/api/v1/sites", json={**body, "country": "XX"}), 422)
    assert "unknown country 'XX' (ISO 3166-1 alpha-2" in bad["detail"]
    problem(call("operator", "POST", "/api/v1/sites", json={**body, "country": "pt"}), 422)
    problem(call("operator", "POST", "/api/v1/sites", json={**body, "name": "Bad"}), 422)
    problem(call("operator", "POST", "/api/v1/sites", json={**body, "extra": 1}), 422)


def test_hosts_show_their_country_and_stand_at_a_known_site(call: Call, tmp_path: Path):
    hosts = call("operator", "GET", "/api/v1/hosts").get_json()["items"]
    assert {h["name"]: h["country"] for h in hosts} == {
        "civilian-h100x4": "ES",
        "secret-h100x8": "ES",
    }
    copy = other_machine(tmp_path, "civilian-h100x4", "extra")
    body = {"name": "extra", "uri": f"test://{copy}", "site": "nowhere"}
    assert (
        "unknown site 'nowhere'"
        in problem(call("operator", "POST", "/api/v1/hosts", json=body), 422)["detail"]
    )


def _confirm_details(app: Flask, action_id: str) -> dict[str, Any]:
    services = app.extensions["sovereign"]
    services.audit.log.sequence()
    from audit import AuditQuery

    with services.uow(readonly=True) as uow:
        stored = uow.audit.query(AuditQuery(limit=10_000))
    found = [
        e.event
        for e in stored
        if e.event.action == "action:confirm"
        and e.event.target == f"action/{action_id}"
        and e.event.outcome == "allow"
    ]
    assert len(found) == 1
    return dict(found[0].details)


def test_relocation_takes_two_officers_and_moves_the_country(app: Flask, call: Call):
    site = {"name": "pt-lis-1", "country": "PT", "operator": "Lisboa (demo)"}
    assert call("operator", "POST", "/api/v1/sites", json=site).status_code == 201
    path = "/api/v1/hosts/civilian-h100x4/relocation"
    body = {"site": "pt-lis-1", "reason": "moved to Lisbon"}
    problem(call("operator", "POST", path, json=body), 403)
    problem(call("officer-1", "POST", path, json={"site": "nowhere", "reason": "x"}), 422)
    problem(call("officer-1", "POST", path, json={"site": "hall-civ", "reason": "x"}), 409)
    problem(call("officer-1", "POST", path, json={"site": "pt-lis-1"}), 422)
    r = call("officer-1", "POST", path, json=body)
    assert r.status_code == 202, r.get_json()
    action = r.get_json()
    assert action["kind"] == "host:relocate"
    assert action["params"] == {"host": "civilian-h100x4", "site": "pt-lis-1"}
    problem(call("officer-1", "POST", f"/api/v1/actions/{action['id']}/confirm"), 403)
    assert call("operator", "GET", "/api/v1/hosts/civilian-h100x4").get_json()["country"] == "ES"
    r = call("officer-2", "POST", f"/api/v1/actions/{action['id']}/confirm")
    assert r.status_code == 200, r.get_json()
    host = call("operator", "GET", "/api/v1/hosts/civilian-h100x4").get_json()
    assert (host["site"], host["country"]) == ("pt-lis-1", "PT")
    details = _confirm_details(app, action["id"])
    assert {k: details[k] for k in ("from_site", "from_country", "to_site", "to_country")} == {
        "from_site": "hall-civ",
        "from_country": "ES",
        "to_site": "pt-lis-1",
        "to_country": "PT",
    }


def test_a_host_carrying_live_enclaves_is_not_relocated(call: Call, reconcile: Callable[[], None]):
    site = {"name": "pt-lis-1", "country": "PT", "operator": "Lisboa (demo)"}
    assert call("operator", "POST", "/api/v1/sites", json=site).status_code == 201
    path = "/api/v1/hosts/civilian-h100x4/relocation"
    body = {"site": "pt-lis-1", "reason": "moved to Lisbon"}
    # Proposed while the host is empty; an enclave lands on it before the confirmation.
    r = call("officer-1", "POST", path, json=body)
    assert r.status_code == 202, r.get_json()
    action = r.get_json()
    rid = approved(call, CIVIL)
    reconcile()
    enclave = call("officer-1", "GET", f"/api/v1/enclaves/{rid}").get_json()
    assert enclave["state"] == "running" and enclave["host"] == "civilian-h100x4"
    assert (enclave["site"], enclave["country"]) == ("hall-civ", "ES")
    refused = problem(call("officer-2", "POST", f"/api/v1/actions/{action['id']}/confirm"), 409)
    assert "live enclaves" in refused["detail"]
    assert "live enclaves" in problem(call("officer-1", "POST", path, json=body), 409)["detail"]
    host = call("operator", "GET", "/api/v1/hosts/civilian-h100x4").get_json()
    assert (host["site"], host["country"]) == ("hall-civ", "ES")
