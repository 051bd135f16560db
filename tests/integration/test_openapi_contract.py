"""The API's contract, checked from the outside.

The OpenAPI document is held to an independent validator (openapi-spec-validator, OpenAPI 3.1),
so client generators can read it. Then schemathesis reads that document and sends every
operation requests it generates from it, valid and invalid ones, in-process over WSGI with
real bearer tokens of the demo users; every answer must be a documented status with its
documented media type and schema, and none may be a server error.

The run is bounded and derandomized (the same requests each time), so it belongs to the normal
suite; the fleet runs on the in-memory hypervisor, so no request reaches a real libvirt URI.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from schemathesis import GenerationMode

from sovereign.adapters.memory_hypervisor import MemoryHost, MemoryHypervisor
from sovereign.api import v1
from sovereign.api.ops import TITLE, VERSION
from sovereign.api.routing import openapi
from tests.support.apps import make_app

pytestmark = pytest.mark.idp

#: Every demo role, so requests get past authentication into each service's own checks.
USERS = ("analyst-defence", "analyst-research", "officer-1", "officer-2", "auditor", "operator")
#: Examples per operation: enough to reach each parameter's edges, few enough for two cores.
EXAMPLES_PER_OPERATION = 30
SECRET_REQUEST: dict[str, Any] = {
    "tenant": "defence",
    "label": {"level": "SECRET", "compartments": ["NATO"]},
    "resources": {
        "vcpus": 4,
        "memory_mib": 8192,
        "gpus": 1,
        "gpu_model": "H100-SXM5-80GB",
        "disk_gib": 50,
    },
    "image": "debian-12-cuda",
    "purpose": "fuzzing target",
    "lease_hours": 2,
}
CIVIL_REQUEST: dict[str, Any] = {
    **SECRET_REQUEST,
    "tenant": "research",
    "label": {"level": "UNCLASSIFIED", "compartments": []},
    "image": "ubuntu-24.04-research",
}


class AnswerEveryUri(MemoryHypervisor):
    """An in-memory hypervisor at every URI (with no GPUs until a test adds some): hosts that
    the fuzzer registers answer, so the run measures the control plane, not reachability. An
    unreachable hypervisor is a 503 by design, tested where hosts are."""

    def _host(self, uri: str) -> MemoryHost:
        self.hosts.setdefault(uri, MemoryHost())
        return super()._host(uri)


@pytest.fixture
def app(tmp_path: Path, idp: Any) -> Iterator[Flask]:
    app = make_app(tmp_path, idp.url, backends={"hypervisor": AnswerEveryUri()})
    yield app
    app.extensions["sovereign"].close()


def test_the_document_is_valid_openapi_3_1(app: Flask):
    doc = app.test_client().get("/api/openapi.json").get_json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)  # raises OpenAPIValidationError, naming the first problem


def test_every_reference_in_the_document_resolves(app: Flask):
    doc = app.test_client().get("/api/openapi.json").get_json()
    refs = set(_refs(doc))
    assert refs
    for ref in refs:
        assert ref.startswith("#/components/schemas/"), ref
        assert ref.removeprefix("#/components/schemas/") in doc["components"]["schemas"], ref


def test_query_parameters_are_plain_schemas_not_json_null(app: Flask):
    doc = app.test_client().get("/api/openapi.json").get_json()
    params = doc["paths"]["/api/v1/requests"]["get"]["parameters"]
    state = next(p for p in params if p["name"] == "state")
    assert state == {
        "name": "state",
        "in": "query",
        "required": False,
        "schema": {"$ref": "#/components/schemas/RequestState"},
    }
    assert "pending" in doc["components"]["schemas"]["RequestState"]["enum"]
    for ops in doc["paths"].values():
        for op in ops.values():
            for param in op["parameters"]:
                assert "null" not in str(param["schema"]), param


def test_integer_path_parameters_are_bounded_as_routed(app: Flask):
    doc = app.test_client().get("/api/openapi.json").get_json()
    (seq,) = doc["paths"]["/api/v1/audit/proof/{seq}"]["get"]["parameters"]
    assert seq["schema"] == {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# -- the API against its own document ---------------------------------------------------------


#: The checks' settings. A request the schema allows may still break a rule no JSON schema
#: states (a label level the scheme does not know, a tenant the caller is not in, from > to, a
#: cursor the server did not make, a reason an action requires): that is 422 here, by design.
#: Every other check runs with its defaults; "not a server error" allows no 5xx at all.
CONFIG = {
    "checks": {
        "positive_data_acceptance": {
            "expected-statuses": ["2xx", "401", "403", "404", "409", "422"],
        },
    },
}

#: The document the app serves at /api/openapi.json (a test below holds them equal), loaded
#: at import so that schemathesis makes one test per operation.
DOCUMENT = openapi(v1.api, v1.PREFIX, title=TITLE, version=VERSION)
schema = schemathesis.openapi.from_dict(DOCUMENT, config=schemathesis.Config.from_dict(CONFIG))


def test_the_fuzzed_document_is_the_served_one(app: Flask):
    assert app.test_client().get("/api/openapi.json").get_json() == DOCUMENT


@pytest.fixture
def known(app: Flask, token: Callable[[str], str]) -> dict[str, list[str]]:
    """Objects that exist, by path parameter name: a pending SECRET request, an approved
    UNCLASSIFIED one (an enclave is the request it came from) and a registered host, so that
    generated requests reach them, not only 404."""
    client = app.test_client()

    def post(user: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = client.post(path, json=body, headers={"Authorization": f"Bearer {token(user)}"})
        assert r.status_code < 300, r.get_json()
        found: dict[str, Any] = r.get_json()
        return found

    secret = post("analyst-defence", "/api/v1/requests", SECRET_REQUEST)["id"]
    civil = post("analyst-research", "/api/v1/requests", CIVIL_REQUEST)["id"]
    post("officer-1", f"/api/v1/requests/{civil}/approve", {})
    post("operator", "/api/v1/sites", {"name": "a", "country": "ES", "operator": "A"})
    post("operator", "/api/v1/hosts", {"name": "civil-1", "uri": "mem://civil-1", "site": "a"})
    ids = [secret, civil]
    return {"request_id": ids, "enclave_id": ids, "name": ["civil-1"]}


@schema.parametrize()
@schema.given(user=st.sampled_from(USERS), pick=st.integers(min_value=0, max_value=3))
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    # One app per operation, shared by its examples on purpose: what one request creates, the
    # next may find.
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.filter_too_much,
        HealthCheck.function_scoped_fixture,
    ],
)
def test_the_api_keeps_to_its_document(
    case: Any,
    user: str,
    pick: int,
    app: Flask,
    token: Callable[[str], str],
    known: dict[str, list[str]],
) -> None:
    # About half the time, a valid path parameter names an object that exists (an invalid one
    # is left as generated: the request must stay invalid).
    positive = case.meta is None or case.meta.generation.mode is GenerationMode.POSITIVE
    for name, values in known.items():
        if positive and name in (case.path_parameters or {}) and pick < len(values):
            case.path_parameters[name] = values[pick]
    # The worker sequences the audit log every ~0.5 s; here each call does it first.
    app.extensions["sovereign"].audit.log.sequence()
    # Send over WSGI to this test's app: the checks' own follow-up requests (without the token,
    # with an undocumented method) go there too.
    case.operation.schema.app = app
    case.call_and_validate(app=app, headers={"Authorization": f"Bearer {token(user)}"})
