"""GPU hand-over certificates and a quarantined GPU's two-person return over HTTP: real tokens
from the dev IdP (with an auditor and an officer cleared below SECRET), real SQLite and audit
log, the libvirt test driver's bundled hosts, and hand-overs recorded as the sanitization phase
records them (:mod:`tests.support.handover`)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from audit import AuditQuery
from audit.note import parse_verifier_key
from audit.proof import verify_proof
from devstack.idp import DEMO_PASSWORD, DEMO_USERS, password_token, start_dev_idp
from enclaves.hosts import bundled_host_path
from sovereign.api import fleet_schemas as f
from sovereign.cli_hosts import cli_context
from tests.support.apps import make_app
from tests.support.fleet import ensure_site
from tests.support.handover import handed_over
from tests.support.users import LOW_CLEARANCE_USERS

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]

HOST = "secret-h100x8"
GPU = "0000:18:00.0"
OTHER = "0000:2a:00.0"
URL = f"/api/v1/gpus/{HOST}/{GPU}/certificates"
SECRET_NATO = {"level": "SECRET", "compartments": ["NATO"]}
ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}


@pytest.fixture(scope="module")
def low_idp() -> Iterator[Any]:
    handle, _app = start_dev_idp(environment="testing", users=(*DEMO_USERS, *LOW_CLEARANCE_USERS))
    yield handle
    handle.stop()


@pytest.fixture
def app(tmp_path: Path, low_idp: Any) -> Iterator[Flask]:
    app = make_app(tmp_path, low_idp.url)
    services = app.extensions["sovereign"]
    copy = tmp_path / f"{HOST}.xml"
    shutil.copy(bundled_host_path(HOST), copy)
    ensure_site(services, "hall-a")
    services.hosts.add(
        cli_context(),
        name=HOST,
        uri=f"test://{copy}",
        site="hall-a",
        accreditation=services.scheme.parse(ALL),
    )
    yield app
    services.close()


Call = Callable[..., Any]


@pytest.fixture
def call(app: Flask, low_idp: Any) -> Call:
    client: FlaskClient = app.test_client()
    tokens: dict[str, str] = {}

    def do(user: str | None, method: str, path: str, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if user:
            if user not in tokens:
                tokens[user] = password_token(low_idp.url, user, DEMO_PASSWORD)
            headers["Authorization"] = f"Bearer {tokens[user]}"
        return client.open(path, method=method, headers=headers, **kw)

    return do


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return dict(response.get_json())


def certificates(call: Call, user: str, url: str = URL) -> f.CertificateList:
    r = call(user, "GET", url)
    assert r.status_code == 200, r.get_data(as_text=True)
    return f.CertificateList.model_validate(r.get_json())


def gpu_state(app: Flask, address: str) -> str:
    with app.extensions["sovereign"].uow(readonly=True) as uow:
        return next(g.state for g in uow.gpus.list(HOST) if g.address == address)


def test_officers_and_auditors_read_certificates_up_to_their_clearance(app: Flask, call: Call):
    services = app.extensions["sovereign"]
    unlabelled = handed_over(services, HOST, GPU)
    secret = handed_over(services, HOST, GPU, label=SECRET_NATO, mismatches=4096)

    for user in ("officer-1", "auditor"):
        got = certificates(call, user)
        # Newest first: the failed SECRET//NATO hand-over, then the clean one of a new GPU.
        assert [c.verdict for c in got.items] == ["failed", "clean"]
        newest, oldest = got.items
        assert newest.certificate == secret
        assert oldest.certificate == unlabelled
        assert newest.to == "quarantined" and oldest.to == "free"
        assert newest.reason == "4096 bytes did not read back as written"
        assert newest.label is not None and newest.label.level == "SECRET"
        assert newest.simulated is True
        assert oldest.coverage == 1.0 and oldest.gb_per_s == 6.4
        assert newest.seq > oldest.seq
        assert newest.proof == f"/audit/proof/{newest.seq}"
        assert got.next_cursor is None

    for user in ("auditor-low", "officer-restricted"):
        # Only the certificate whose previous label they are cleared for (none: unlabelled).
        got = certificates(call, user)
        assert [c.certificate for c in got.items] == [unlabelled]


def test_the_seq_of_a_certificate_names_its_event_whose_proof_carries_it(app: Flask, call: Call):
    services = app.extensions["sovereign"]
    written = handed_over(services, HOST, GPU, label=SECRET_NATO)
    (cert,) = certificates(call, "auditor").items
    proof = call("auditor", "GET", f"/api/v1{cert.proof}")
    assert proof.status_code == 200, proof.get_data(as_text=True)
    keys = [parse_verifier_key(k) for k in services.audit.public_keys()]
    verified = verify_proof(proof.get_data(as_text=True), keys)
    assert verified.index == cert.seq
    entry = json.loads(verified.entry)
    assert entry["action"] == "gpu:handover"
    assert entry["target"] == f"gpu/{HOST}/{GPU}"
    assert entry["details"]["certificate"] == written == cert.certificate
    # The auditor cleared below SECRET gets neither the certificate nor its proof.
    assert certificates(call, "auditor-low").items == []
    problem(call("auditor-low", "GET", f"/api/v1{cert.proof}"), 404)


def test_pages_follow_the_cursor(app: Flask, call: Call):
    services = app.extensions["sovereign"]
    made = [handed_over(services, HOST, GPU, sequence=False) for _ in range(5)]
    services.audit.log.sequence()
    seen: list[dict[str, Any]] = []
    url = f"{URL}?limit=2"
    pages = 0
    while True:
        got = certificates(call, "auditor", url)
        pages += 1
        assert len(got.items) <= 2
        seen += [c.certificate for c in got.items]
        if got.next_cursor is None:
            break
        url = f"{URL}?limit=2&cursor={got.next_cursor}"
    assert pages == 3
    assert seen == list(reversed(made))


def test_other_gpus_certificates_are_not_listed(app: Flask, call: Call):
    services = app.extensions["sovereign"]
    mine = handed_over(services, HOST, GPU)
    handed_over(services, HOST, OTHER)
    assert [c.certificate for c in certificates(call, "officer-1").items] == [mine]
    assert [c.address for c in certificates(call, "officer-1").items] == [GPU]


@pytest.mark.parametrize("user", ["analyst-defence", "analyst-research", "operator"])
def test_analysts_and_operators_are_refused_and_the_refusal_is_audited(
    app: Flask, call: Call, user: str
):
    handed_over(app.extensions["sovereign"], HOST, GPU)
    body = problem(call(user, "GET", URL), 403)
    assert "officer or auditor" in body["detail"]
    # The same answer for a GPU that does not exist: a refusal tells nothing about the fleet.
    missing = problem(call(user, "GET", f"/api/v1/gpus/{HOST}/0000:99:00.0/certificates"), 403)
    assert missing["detail"] == body["detail"]
    services = app.extensions["sovereign"]
    services.audit.log.sequence()
    with services.uow(readonly=True) as uow:
        refusals = uow.audit.query(AuditQuery(action="gpu:certificates", limit=10))
    assert len(refusals) == 2
    assert {e.event.outcome.value for e in refusals} == {"deny"}


def test_unknown_gpus_and_hosts_answer_404_like_each_other(app: Flask, call: Call):
    unknown_gpu = problem(
        call("auditor", "GET", f"/api/v1/gpus/{HOST}/0000:99:00.0/certificates"), 404
    )
    unknown_host = problem(call("auditor", "GET", f"/api/v1/gpus/nowhere/{GPU}/certificates"), 404)
    assert unknown_gpu["title"] == unknown_host["title"]
    # Something that is no PCI address or host name names nothing: 404 as well.
    for path in (
        f"/api/v1/gpus/{HOST}/18:00.0/certificates",
        f"/api/v1/gpus/{HOST}/0000:18:00.9/certificates",
        f"/api/v1/gpus/{HOST}/0000:18:00.0%0a/certificates",
        f"/api/v1/gpus/-bad-/{GPU}/certificates",
    ):
        r = call("auditor", "GET", path)
        assert r.status_code in (400, 404), path
        assert r.mimetype == "application/problem+json", path


def test_an_upper_case_address_names_the_same_gpu(app: Flask, call: Call):
    cert = handed_over(app.extensions["sovereign"], HOST, "0000:2a:00.0")
    got = certificates(call, "auditor", f"/api/v1/gpus/{HOST}/0000:2A:00.0/certificates")
    assert [c.certificate for c in got.items] == [cert]


@pytest.mark.parametrize(
    "query",
    ["limit=0", "limit=201", "limit=x", "cursor=abc", "cursor=1234567890123456789", "color=red"],
)
def test_bad_queries_are_422_problems(app: Flask, call: Call, query: str):
    body = problem(call("auditor", "GET", f"{URL}?{query}"), 422)
    assert body["status"] == 422


def test_without_a_token_401(app: Flask, call: Call):
    problem(call(None, "GET", URL), 401)


def test_the_endpoints_are_in_the_openapi_document(app: Flask, call: Call):
    doc = call(None, "GET", "/api/openapi.json").get_json()
    listing = doc["paths"]["/api/v1/gpus/{host}/{address}/certificates"]["get"]
    address = next(p for p in listing["parameters"] if p["name"] == "address")
    assert address["schema"]["pattern"].startswith("^[0-9a-fA-F]{4}:")
    assert "auditors" in listing["description"]
    assert "/api/v1/gpus/{host}/{address}/return" in doc["paths"]


# -- the two-person return of a quarantined GPU -----------------------------------------------


def quarantined(app: Flask) -> None:
    handed_over(app.extensions["sovereign"], HOST, GPU, label=SECRET_NATO, canary_hits=3)
    assert gpu_state(app, GPU) == "quarantined"


def test_two_officers_return_a_quarantined_gpu_which_goes_dirty_audited(app: Flask, call: Call):
    quarantined(app)
    url = f"/api/v1/gpus/{HOST}/{GPU}/return"
    r = call("officer-1", "POST", url, json={"reason": "canary hits traced to a test job"})
    assert r.status_code == 202, r.get_data(as_text=True)
    proposal = f.ActionOut.model_validate(r.get_json())
    assert proposal.kind == "gpu:return"
    assert proposal.params == {"host": HOST, "address": GPU}
    assert proposal.label.level == "SECRET" and proposal.label.compartments == ["NATO"]
    assert gpu_state(app, GPU) == "quarantined"

    # The proposer cannot confirm it.
    same = problem(call("officer-1", "POST", f"/api/v1/actions/{proposal.id}/confirm"), 403)
    assert "two-person rule" in same["detail"]
    assert gpu_state(app, GPU) == "quarantined"

    # An officer cleared below the GPU's last label does not even see the proposal.
    problem(call("officer-restricted", "POST", f"/api/v1/actions/{proposal.id}/confirm"), 404)

    r = call("officer-2", "POST", f"/api/v1/actions/{proposal.id}/confirm")
    assert r.status_code == 200, r.get_data(as_text=True)
    assert f.ActionOut.model_validate(r.get_json()).state == "confirmed"
    assert gpu_state(app, GPU) == "dirty"

    services = app.extensions["sovereign"]
    services.audit.log.sequence()
    with services.uow(readonly=True) as uow:
        (moved,) = uow.audit.query(AuditQuery(action="gpu:returned", limit=10))
    assert moved.event.target == f"gpu/{HOST}/{GPU}"
    assert moved.event.outcome.value == "allow"
    assert moved.event.actor == "user:officer-2"
    assert moved.event.details["from"] == "quarantined"
    assert moved.event.details["to"] == "dirty"
    assert moved.event.details["proposer"] == "officer-1"
    assert moved.event.reason == "canary hits traced to a test job"
    assert moved.event.label == SECRET_NATO

    # Done once: a second proposal is refused, the GPU is no longer quarantined.
    again = problem(call("officer-1", "POST", url, json={"reason": "again"}), 409)
    assert "dirty" in again["detail"]

    # Dirty, it is handed over again by the reconciler: free only with a new clean certificate.
    reconciler = services.reconciler(worker="return")
    for _ in range(20):
        if not reconciler.run_once().busy:
            break
    assert gpu_state(app, GPU) == "free"
    services.audit.log.sequence()
    newest, failed = certificates(call, "officer-1").items
    assert (newest.verdict, failed.verdict) == ("clean", "failed")
    assert newest.seq > moved.seq > failed.seq
    assert newest.certificate["previous_label"] == "SECRET//NATO"


def test_only_quarantined_gpus_may_be_proposed(app: Flask, call: Call):
    handed_over(app.extensions["sovereign"], HOST, GPU)  # clean: free
    body = problem(
        call("officer-1", "POST", f"/api/v1/gpus/{HOST}/{GPU}/return", json={"reason": "x"}),
        409,
    )
    assert "free" in body["detail"]


def test_a_return_needs_an_officer_cleared_for_the_last_label(app: Flask, call: Call):
    quarantined(app)
    url = f"/api/v1/gpus/{HOST}/{GPU}/return"
    for user in ("auditor", "operator"):
        problem(call(user, "POST", url, json={"reason": "please"}), 403)
    # An analyst may not know which GPUs exist: the answer an unknown GPU gets.
    problem(call("analyst-defence", "POST", url, json={"reason": "please"}), 404)
    low = problem(call("officer-restricted", "POST", url, json={"reason": "please"}), 403)
    # Refused without naming the label the officer is not cleared for.
    assert "NATO" not in low["detail"] and "SECRET" not in low["detail"]
    assert gpu_state(app, GPU) == "quarantined"


@pytest.mark.parametrize(
    "body", [{}, {"reason": ""}, {"reason": 3}, {"reason": "x", "extra": 1}, {"reason": "a\x00"}]
)
def test_bad_return_bodies_are_422(app: Flask, call: Call, body: dict[str, Any]):
    quarantined(app)
    problem(call("officer-1", "POST", f"/api/v1/gpus/{HOST}/{GPU}/return", json=body), 422)
    assert gpu_state(app, GPU) == "quarantined"


def test_returning_an_unknown_gpu_is_404(app: Flask, call: Call):
    problem(
        call("officer-1", "POST", f"/api/v1/gpus/{HOST}/0000:99:00.0/return", json={"reason": "x"}),
        404,
    )


# -- end to end: the reconciler's own hand-over ----------------------------------------------


def test_the_reconcilers_hand_over_of_a_test_driver_gpu_is_listed_simulated(app: Flask, call: Call):
    """The new host's GPUs start dirty; the reconciler hands them over with the scrub program
    on simulated device memory, and the certificate reads back through the API, its proof
    verifying offline."""
    services = app.extensions["sovereign"]
    reconciler = services.reconciler(worker="e2e")
    for _ in range(20):
        if not reconciler.run_once().busy:
            break
    assert gpu_state(app, GPU) == "free"
    services.audit.log.sequence()
    (cert,) = certificates(call, "auditor").items
    assert cert.verdict == "clean" and cert.to == "free"
    assert cert.simulated is True and cert.certificate["simulated"] is True
    assert cert.coverage is not None and cert.coverage >= 0.99
    assert cert.certificate["previous_label"] is None and cert.label is None
    assert cert.certificate["scrub"]["mismatches"] == 0
    assert cert.certificate["gpu"]["address"] == GPU
    # Unlabelled (the GPU never had a tenant): every reader cleared for anything sees it.
    assert [c.seq for c in certificates(call, "auditor-low").items] == [cert.seq]
    proof = call("auditor", "GET", f"/api/v1{cert.proof}").get_data(as_text=True)
    keys = [parse_verifier_key(k) for k in services.audit.public_keys()]
    entry = json.loads(verify_proof(proof, keys).entry)
    details = entry["details"]
    assert (details["from"], details["to"]) == ("sanitizing", "free")
    assert details["certificate"] == cert.certificate


def test_after_a_tenant_the_certificates_carry_its_label_and_follow_clearance(
    app: Flask, call: Call
):
    """A SECRET//NATO enclave runs on two GPUs and ends; the reconciler hands them over and
    the certificates name the previous enclave and label: cleared readers see them, others
    do not."""
    services = app.extensions["sovereign"]
    reconciler = services.reconciler(worker="e2e")

    def settle() -> None:
        for _ in range(30):
            if not reconciler.run_once().busy:
                return

    settle()
    body = {
        "tenant": "defence",
        "label": SECRET_NATO,
        "resources": {
            "vcpus": 4,
            "memory_mib": 8192,
            "gpus": 2,
            "gpu_model": "H100-SXM5-80GB",
            "disk_gib": 20,
        },
        "image": "debian-12-cuda",
        "purpose": "certificates",
        "lease_hours": 1,
    }
    r = call("analyst-defence", "POST", "/api/v1/requests", json=body)
    assert r.status_code == 201, r.get_data(as_text=True)
    rid = r.get_json()["id"]
    for officer in ("officer-1", "officer-2"):
        assert call(officer, "POST", f"/api/v1/requests/{rid}/approve").status_code == 200
    settle()
    enclave = call("officer-1", "GET", f"/api/v1/enclaves/{rid}").get_json()
    assert enclave["state"] == "running", enclave
    used = enclave["gpus"]
    assert len(used) == 2
    r = call("officer-1", "POST", f"/api/v1/enclaves/{rid}/terminate", json={"reason": "done"})
    assert r.status_code == 200, r.get_data(as_text=True)
    settle()
    services.audit.log.sequence()
    for address in used:
        assert gpu_state(app, address) == "free"
        url = f"/api/v1/gpus/{HOST}/{address}/certificates"
        newest, first = certificates(call, "auditor", url).items
        assert newest.certificate["previous_label"] == "SECRET//NATO"
        assert newest.certificate["previous_enclave"] == rid
        assert newest.label is not None and newest.label.compartments == ["NATO"]
        assert newest.verdict == "clean" and newest.simulated
        assert first.certificate["previous_label"] is None
        # Below SECRET//NATO: only the first hand-over, of a GPU nobody had used.
        assert [c.seq for c in certificates(call, "auditor-low", url).items] == [first.seq]
