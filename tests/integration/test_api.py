"""The REST API end to end in-process: real tokens from the dev IdP over HTTP, real SQLite,
the Flask test client. Every rule the issue names is exercised through HTTP here."""

from __future__ import annotations

import base64
import json
import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from audit.checkpoint import open_checkpoint
from audit.merkle import leaf_hash, verify_consistency
from audit.note import parse_verifier_key
from audit.proof import verify_proof
from sovereign.api import schemas, v1
from tests.support.apps import make_app
from tests.support.factories import DEFENCE, RESEARCH

pytestmark = pytest.mark.idp

BODY: dict[str, Any] = {
    "tenant": "defence",
    "label": {"level": "SECRET", "compartments": ["NATO"]},
    "resources": {
        "vcpus": 16,
        "memory_mib": 65536,
        "gpus": 2,
        "gpu_model": "H100-SXM5-80GB",
        "disk_gib": 200,
    },
    "image": "debian-12-cuda",
    "purpose": "fine-tune a translation model",
    "lease_hours": 24,
}
CIVIL: dict[str, Any] = {
    **BODY,
    "tenant": "research",
    "label": {"level": "UNCLASSIFIED", "compartments": []},
    "image": "ubuntu-24.04-research",
}


@pytest.fixture
def app(tmp_path: Path, idp: Any) -> Iterator[Flask]:
    app = make_app(tmp_path, idp.url)
    yield app
    app.extensions["sovereign"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


Call = Callable[..., Any]


@pytest.fixture
def call(client: FlaskClient, token: Callable[[str], str]) -> Call:
    """``call(user, method, path, json=...)`` with that user's real bearer token."""

    def do(user: str | None, method: str, path: str, **kw: Any) -> Any:
        if path.startswith("/api/v1/audit"):
            # The worker sequences every ~0.5 s; here we do it before reading the log.
            client.application.extensions["sovereign"].audit.log.sequence()
        headers = kw.pop("headers", {})
        if user:
            headers["Authorization"] = f"Bearer {token(user)}"
        return client.open(path, method=method, headers=headers, **kw)

    return do


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["status"] == status
    assert "Traceback" not in response.get_data(as_text=True)
    return body


def test_two_officers_approve_a_secret_request_and_it_is_all_recorded(call: Call):
    r = call("analyst-defence", "POST", "/api/v1/requests", json=BODY)
    assert r.status_code == 201, r.get_json()
    req = r.get_json()
    # What the API answers must match the schema the OpenAPI document publishes.
    schemas.RequestOut.model_validate(req)
    assert req["state"] == "pending"
    assert req["approvals_needed"] == 2
    path = f"/api/v1/requests/{req['id']}"

    r = call("officer-1", "POST", f"{path}/approve", json={"reason": "justified"})
    assert r.status_code == 200
    assert r.get_json()["state"] == "pending"
    assert r.get_json()["approvals_received"] == 1
    assert r.get_json()["approvals"][0]["officer_name"] == "officer-1"

    body = problem(call("analyst-defence", "POST", f"{path}/approve"), 403)
    assert "only security officers" in body["detail"]
    problem(call("officer-1", "POST", f"{path}/approve"), 409)

    r = call("officer-2", "POST", f"{path}/approve")  # no body: the reason is optional
    assert r.status_code == 200
    assert r.get_json()["state"] == "approved"
    assert {a["officer_name"] for a in r.get_json()["approvals"]} == {"officer-1", "officer-2"}

    events = call("auditor", "GET", f"/api/v1/audit/events?target=request/{req['id']}").get_json()
    schemas.AuditEventPage.model_validate(events)
    schemas.RequestPage.model_validate(call("auditor", "GET", "/api/v1/requests").get_json())
    seen = [(e["action"], e["outcome"], e["actor"]) for e in reversed(events["items"])]
    assert seen == [
        ("request:create", "allow", "user:analyst-defence"),
        ("request:approve", "allow", "user:officer-1"),
        ("request:approve", "deny", "user:analyst-defence"),
        ("request:approve", "deny", "user:officer-1"),
        ("request:approve", "allow", "user:officer-2"),
    ]
    assert all(e["label"] == {"level": "SECRET", "compartments": ["NATO"]} for e in events["items"])


def test_unclassified_needs_one_officer_and_reject_is_final(call: Call):
    rid = call("analyst-research", "POST", "/api/v1/requests", json=CIVIL).get_json()["id"]
    r = call("officer-1", "POST", f"/api/v1/requests/{rid}/approve", json={})
    assert r.get_json()["state"] == "approved"
    rid = call("analyst-research", "POST", "/api/v1/requests", json=CIVIL).get_json()["id"]
    body = problem(call("officer-1", "POST", f"/api/v1/requests/{rid}/reject", json={}), 422)
    assert body["errors"][0]["loc"] == ["reason"]
    r = call("officer-1", "POST", f"/api/v1/requests/{rid}/reject", json={"reason": "no budget"})
    assert r.get_json()["state"] == "rejected"
    assert r.get_json()["reason"] == "no budget"
    problem(call("officer-2", "POST", f"/api/v1/requests/{rid}/approve"), 409)


def test_only_requester_cancels(call: Call):
    rid = call("analyst-defence", "POST", "/api/v1/requests", json=BODY).get_json()["id"]
    problem(call("officer-1", "POST", f"/api/v1/requests/{rid}/cancel"), 403)
    r = call("analyst-defence", "POST", f"/api/v1/requests/{rid}/cancel", json={"reason": "oops"})
    assert r.get_json()["state"] == "cancelled"


def test_existence_does_not_leak(call: Call):
    rid = call("analyst-defence", "POST", "/api/v1/requests", json=BODY).get_json()["id"]
    for user in ("analyst-research", "operator"):
        body = problem(call(user, "GET", f"/api/v1/requests/{rid}"), 404)
        assert body["type"] == "urn:sovereign:problem:not-found"
    unknown = problem(call("auditor", "GET", f"/api/v1/requests/{uuid.uuid4()}"), 404)
    assert (unknown["title"], unknown["type"]) == (body["title"], body["type"])
    listed = call("analyst-research", "GET", "/api/v1/requests").get_json()["items"]
    assert rid not in {r["id"] for r in listed}
    assert call("auditor", "GET", f"/api/v1/requests/{rid}").status_code == 200


@pytest.mark.parametrize(
    ("user", "change", "status", "fragment"),
    [
        # Analysts know only their own tenants: another one is answered as an unknown one.
        ("analyst-research", {}, 422, "unknown tenant 'defence'"),
        (
            "analyst-defence",
            {"label": {"level": "SECRET", "compartments": ["EU"]}},
            403,
            "clearance",
        ),
        ("analyst-defence", {"label": {"level": "COSMIC"}}, 422, "unknown level 'COSMIC'"),
        ("analyst-defence", {"tenant": "ghost"}, 422, "unknown tenant"),
        ("analyst-defence", {"image": "ubuntu-24.04-research"}, 403, "may not run at SECRET"),
        ("analyst-defence", {"lease_hours": 5000}, 403, "exceeds the maximum"),
        ("officer-1", {}, 403, "only analysts"),
    ],
)
def test_request_rules(call: Call, user, change, status, fragment):
    body = problem(call(user, "POST", "/api/v1/requests", json={**BODY, **change}), status)
    assert fragment in body["detail"]


def test_quota_is_enforced_through_the_api(call: Call):
    big = {**BODY, "resources": {**BODY["resources"], "gpus": 5}}
    first = call("analyst-defence", "POST", "/api/v1/requests", json=big).get_json()["id"]
    second = call("analyst-defence", "POST", "/api/v1/requests", json=big).get_json()["id"]
    for officer in ("officer-1", "officer-2"):
        call(officer, "POST", f"/api/v1/requests/{first}/approve")
    body = problem(call("officer-1", "POST", f"/api/v1/requests/{second}/approve"), 409)
    assert body["type"] == "urn:sovereign:problem:quota-exceeded"
    problem(call("analyst-defence", "POST", "/api/v1/requests", json=big), 409)


def test_listing_filters_and_pages(call: Call):
    ids = [
        call("analyst-defence", "POST", "/api/v1/requests", json=BODY).get_json()["id"]
        for _ in range(5)
    ]
    call("analyst-research", "POST", "/api/v1/requests", json=CIVIL)
    call("analyst-defence", "POST", f"/api/v1/requests/{ids[0]}/cancel")
    got, cursor = [], None
    while True:
        q = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = call("analyst-defence", "GET", f"/api/v1/requests?{q}").get_json()
        got += [r["id"] for r in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert got == list(reversed(ids))
    cancelled = call("officer-1", "GET", "/api/v1/requests?state=cancelled").get_json()["items"]
    assert [r["id"] for r in cancelled] == [ids[0]]
    research = call("officer-1", "GET", "/api/v1/requests?tenant=research").get_json()["items"]
    assert [r["tenant"] for r in research] == ["research"]
    problem(call("officer-1", "GET", "/api/v1/requests?state=bogus"), 422)
    problem(call("officer-1", "GET", "/api/v1/requests?limit=1000"), 422)
    problem(call("officer-1", "GET", "/api/v1/requests?cursor=nonsense"), 422)
    problem(call("officer-1", "GET", "/api/v1/requests?colour=red"), 422)
    problem(call("operator", "GET", "/api/v1/requests"), 403)


def test_me_tenants_images(call: Call):
    me = call("analyst-defence", "GET", "/api/v1/me").get_json()
    assert me["username"] == "analyst-defence"
    assert me["roles"] == ["analyst"]
    assert me["clearance"] == {"level": "SECRET", "compartments": ["NATO"]}
    assert me["tenants"] == ["defence"]
    assert call("operator", "GET", "/api/v1/me").get_json()["clearance"] is None
    mine = call("analyst-research", "GET", "/api/v1/tenants").get_json()["items"]
    assert [t["name"] for t in mine] == ["research"]
    everyone = call("officer-1", "GET", "/api/v1/tenants").get_json()["items"]
    assert {t["name"]: t["kind"] for t in everyone} == {
        "defence": "classified",
        "research": "civilian",
    }
    assert everyone[0]["quota"]["gpus"] == DEFENCE.quota.gpus
    assert RESEARCH.max_label.level == "UNCLASSIFIED"
    images = call("analyst-research", "GET", "/api/v1/images").get_json()["items"]
    levels = {i["name"]: i["max_label"]["level"] for i in images}
    assert levels == {"debian-12-cuda": "SECRET", "ubuntu-24.04-research": "UNCLASSIFIED"}


def test_audit_events_need_the_right_role_and_filter(call: Call):
    call("analyst-defence", "POST", "/api/v1/requests", json=BODY)
    problem(call("analyst-defence", "GET", "/api/v1/audit/events"), 403)
    problem(call("operator", "GET", "/api/v1/audit/events"), 403)
    problem(call("operator", "GET", "/api/v1/requests"), 403)
    created = call("officer-1", "GET", "/api/v1/audit/events?action=request:create").get_json()
    assert [e["actor"] for e in created["items"]] == ["user:analyst-defence"]
    by_actor = call("auditor", "GET", "/api/v1/audit/events?actor=user:operator").get_json()
    assert {e["action"] for e in by_actor["items"]} == {"audit:read", "request:list"}
    since = call("auditor", "GET", "/api/v1/audit/events?since=2999-01-01T00:00:00Z").get_json()
    assert since["items"] == []
    first = call("auditor", "GET", "/api/v1/audit/events?limit=1").get_json()
    older = call("auditor", "GET", f"/api/v1/audit/events?cursor={first['next_cursor']}").get_json()
    assert first["items"][0]["seq"] > older["items"][0]["seq"]
    problem(call("auditor", "GET", "/api/v1/audit/events?since=yesterday"), 422)


# -- problem+json for everything ------------------------------------------------------------


def test_authentication_problems(call: Call):
    body = problem(call(None, "GET", "/api/v1/me"), 401)
    assert body["type"] == "urn:sovereign:problem:unauthenticated"
    r = call(None, "GET", "/api/v1/me", headers={"Authorization": "Bearer not-a-jwt"})
    problem(r, 401)
    assert r.headers["WWW-Authenticate"].startswith("Bearer")
    problem(call(None, "GET", "/api/v1/me", headers={"Authorization": "Basic dTpw"}), 401)


def test_http_level_problems(call: Call, client: FlaskClient, token: Callable[[str], str]):
    problem(client.get("/nowhere"), 404)
    r = client.delete("/api/v1/requests")
    problem(r, 405)
    assert "GET" in r.headers["Allow"]
    problem(call("analyst-defence", "GET", "/api/v1/requests/not-a-uuid"), 404)
    auth = {"Authorization": f"Bearer {token('analyst-defence')}"}
    body = problem(
        client.post("/api/v1/requests", data="{", headers=auth, content_type="application/json"),
        400,
    )
    assert "not valid JSON" in body["detail"]
    problem(
        client.post(
            "/api/v1/requests",
            data="tenant=x",
            headers=auth,
            content_type="application/x-www-form-urlencoded",
        ),
        415,
    )
    problem(
        client.post(
            "/api/v1/requests", data=b"[" * 70_000, headers=auth, content_type="application/json"
        ),
        413,
    )
    problem(client.post("/api/v1/requests", json=[1, 2], headers=auth), 422)
    unknown = problem(
        client.post("/api/v1/requests", json={**BODY, "admin": True}, headers=auth), 422
    )
    assert unknown["errors"] == [
        {"loc": ["admin"], "msg": "Extra inputs are not permitted", "type": "extra_forbidden"}
    ]
    wrong_type = problem(
        client.post("/api/v1/requests", json={**BODY, "lease_hours": "24"}, headers=auth), 422
    )
    assert wrong_type["errors"][0]["loc"] == ["lease_hours"]
    missing = problem(
        client.post("/api/v1/requests", json={"tenant": "defence"}, headers=auth), 422
    )
    assert {tuple(e["loc"]) for e in missing["errors"]} >= {("label",), ("resources",), ("image",)}


def test_request_ids_are_echoed_or_made(client: FlaskClient):
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["X-Request-ID"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-ID": "bad id; drop"})
    assert len(r.headers["X-Request-ID"]) == 32


# -- ops ------------------------------------------------------------------------------------


def test_openapi_is_generated_from_the_validating_schemas(client: FlaskClient):
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.")
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    registered = {
        (op.method, "/api/v1" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", op.rule))
        for op in v1.api.operations
    }
    assert documented == registered
    create = doc["paths"]["/api/v1/requests"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/RequestCreate"
    )
    schema = doc["components"]["schemas"]["RequestCreate"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) == {
        "tenant",
        "label",
        "resources",
        "image",
        "purpose",
        "lease_hours",
    }
    assert doc["components"]["schemas"]["ResourcesIn"]["properties"]["gpus"]["maximum"] == 64
    for ops in doc["paths"].values():
        for op in ops.values():
            for ref in _refs(op):
                assert ref.split("/")[-1] in doc["components"]["schemas"], ref


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_health_and_bare_readiness_are_open_the_detail_and_metrics_are_for_operators(
    client: FlaskClient, call: Call
):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready"}, "no dependency names without a token"
    detail = call("operator", "GET", "/readyz")
    assert detail.status_code == 200
    assert detail.get_json()["checks"] == {"database": "ok", "identity provider": "ok"}
    denied = call("analyst-defence", "GET", "/readyz")
    assert denied.status_code == 403
    assert "checks" not in denied.get_json()

    call("analyst-defence", "GET", "/api/v1/me")
    for invented in ("FOOA", "FOOB"):  # methods a client makes up share one label value
        client.open("/api/v1/me", method=invented)
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401
    assert anonymous.mimetype == "application/problem+json"
    assert "sovereign_http" not in anonymous.get_data(as_text=True)
    assert call("auditor", "GET", "/metrics").status_code == 403
    metrics = call("operator", "GET", "/metrics")
    assert metrics.status_code == 200
    text = metrics.get_data(as_text=True)
    assert (
        'sovereign_http_requests_total{endpoint="/api/v1/me",method="GET",status="200"} 1.0' in text
    )
    assert "sovereign_http_request_duration_seconds_bucket" in text
    assert "FOOA" not in text and "FOOB" not in text
    assert 'method="OTHER"' in text


def test_metrics_scrape_token_from_a_file_rotates_without_restart(tmp_path: Path, idp: Any):
    token_file = tmp_path / "metrics-token"
    token_file.write_text("a" * 40 + "\n")
    app = make_app(tmp_path, idp.url, seed=False, METRICS_TOKEN_FILE=str(token_file))
    client = app.test_client()
    try:
        scrape = client.get("/metrics", headers={"Authorization": "Bearer " + "a" * 40})
        assert scrape.status_code == 200
        assert "sovereign_http_requests_total" in scrape.get_data(as_text=True)
        ready = client.get("/readyz", headers={"Authorization": "Bearer " + "a" * 40})
        assert ready.get_json()["checks"]["database"] == "ok"
        wrong = client.get("/metrics", headers={"Authorization": "Bearer " + "b" * 40})
        assert wrong.status_code == 401
        token_file.write_text("b" * 40)
        assert (
            client.get("/metrics", headers={"Authorization": "Bearer " + "b" * 40}).status_code
            == 200
        )
        assert (
            client.get("/metrics", headers={"Authorization": "Bearer " + "a" * 40}).status_code
            == 401
        )
        token_file.write_text("short")  # too short to be a secret: accepts nothing
        assert client.get("/metrics", headers={"Authorization": "Bearer short"}).status_code == 401
    finally:
        app.extensions["sovereign"].close()


# -- the tamper-evident log through the API -------------------------------------------------


def test_checkpoint_proof_and_public_key_verify_offline(call: Call, client: FlaskClient):
    call("analyst-defence", "POST", "/api/v1/requests", json=BODY)
    first = call("auditor", "GET", "/api/v1/audit/checkpoint")
    assert first.status_code == 200
    assert first.mimetype == "text/plain"
    call("analyst-research", "POST", "/api/v1/requests", json=CIVIL)
    second = call("auditor", "GET", "/api/v1/audit/checkpoint").get_data(as_text=True)

    keys = client.get("/api/v1/audit/public-key")  # no token needed: the key is public
    assert keys.status_code == 200
    verifiers = [parse_verifier_key(k) for k in keys.get_data(as_text=True).split()]
    old = open_checkpoint(first.get_data(as_text=True), verifiers)
    new = open_checkpoint(second, verifiers)
    assert new.size > old.size

    events = call("auditor", "GET", "/api/v1/audit/events?action=request:create").get_json()
    for item in events["items"]:
        text = call("auditor", "GET", f"/api/v1/audit/proof/{item['seq']}").get_data(as_text=True)
        proven = verify_proof(text, verifiers)
        assert proven.index == item["seq"]
        assert json.loads(proven.entry)["id"] == str(item["id"])
        assert leaf_hash(proven.entry).hex() == item["leaf_hash"]

    c = call("auditor", "GET", f"/api/v1/audit/consistency?from={old.size}&to={new.size}")
    assert c.status_code == 200, c.get_json()
    body = c.get_json()
    path = [base64.b64decode(h) for h in body["proof"]]
    verify_consistency(old.size, new.size, old.root_hash, new.root_hash, path)
    assert open_checkpoint(body["new_checkpoint"], verifiers) == new


def test_proof_rules(call: Call):
    call("analyst-defence", "POST", "/api/v1/requests", json=BODY)
    seq = call("auditor", "GET", "/api/v1/audit/events?action=request:create").get_json()["items"][
        0
    ]["seq"]
    problem(call("analyst-defence", "GET", f"/api/v1/audit/proof/{seq}"), 403)
    problem(call("auditor", "GET", "/api/v1/audit/proof/999999"), 404)
    problem(call("auditor", "GET", "/api/v1/audit/proof/-1"), 404)
    problem(call("auditor", "GET", "/api/v1/audit/consistency?from=2&to=1"), 422)
    problem(call("auditor", "GET", "/api/v1/audit/consistency?from=1"), 422)
    problem(call("auditor", "GET", "/api/v1/audit/consistency?from=1&to=99999"), 404)
    problem(call(None, "GET", "/api/v1/audit/checkpoint"), 401)


def test_residency_on_tenants_and_requests(call: Call):
    tenants = call("officer-1", "GET", "/api/v1/tenants").get_json()["items"]
    assert {t["name"]: t["residency"] for t in tenants} == {
        "defence": ["ES"],
        "research": ["ES", "PT"],
    }
    # A request may narrow its tenant's residency, never widen it.
    body = problem(
        call("analyst-defence", "POST", "/api/v1/requests", json={**BODY, "residency": ["PT"]}),
        422,
    )
    assert "residency PT not allowed for tenant defence" in body["detail"]
    body = problem(
        call("analyst-research", "POST", "/api/v1/requests", json={**CIVIL, "residency": ["XX"]}),
        422,
    )
    assert "unknown country 'XX'" in body["detail"]
    for bad in ([], ["pt"], "PT", ["PRT"]):
        problem(
            call("analyst-research", "POST", "/api/v1/requests", json={**CIVIL, "residency": bad}),
            422,
        )
    narrowed = call(
        "analyst-research", "POST", "/api/v1/requests", json={**CIVIL, "residency": ["PT"]}
    ).get_json()
    assert (narrowed["residency"], narrowed["country"]) == (["PT"], None)
    plain = call("analyst-research", "POST", "/api/v1/requests", json=CIVIL).get_json()
    assert (plain["residency"], plain["country"]) == (["ES", "PT"], None)
    listed = call("officer-1", "GET", "/api/v1/requests").get_json()["items"]
    assert {r["id"]: r["residency"] for r in listed} == {
        narrowed["id"]: ["PT"],
        plain["id"]: ["ES", "PT"],
    }
    # Final approval pins the country (no host anywhere here: the first allowed one).
    r = call("officer-1", "POST", f"/api/v1/requests/{narrowed['id']}/approve")
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["state"], r.get_json()["country"]) == ("approved", "PT")
    events = call(
        "auditor", "GET", f"/api/v1/audit/events?target=request/{narrowed['id']}"
    ).get_json()["items"]
    by_action = {e["action"]: e["details"] for e in events if e["outcome"] == "allow"}
    assert by_action["request:create"]["residency"] == ["PT"]
    assert by_action["request:approve"]["country"] == "PT"
    created = call("auditor", "GET", "/api/v1/audit/events?action=tenant:create").get_json()
    details = {e["target"]: e["details"] for e in created["items"]}
    assert details["tenant/research"]["kind"] == "civilian"
    assert details["tenant/research"]["residency"] == ["ES", "PT"]
    assert details["tenant/defence"]["residency"] == ["ES"]
