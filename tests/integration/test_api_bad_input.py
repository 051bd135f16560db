"""Bad input through the REST API is a 4xx problem, never a 500: numbers too big for the
database, cursors not made by the server, times without an offset, bodies nested deeper than
the parser's stack, tokens whose claims have the wrong JSON type.

Each case here was once answered 500 (issue 10); the app-level handler for unexpected errors
turns a crash into a 500 problem, so "not 500" is the assertion that matters.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from audit.event import MAX_TARGET
from devstack.idp import DEMO_PASSWORD, password_token, start_dev_idp
from tests.support.apps import make_app
from tests.support.audit import stored

pytestmark = pytest.mark.idp

#: The dev IdP's signing key, so a test can sign a token whose claims are wrong in type only.
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def keyed_idp() -> Iterator[Any]:
    handle, _ = start_dev_idp(environment="testing", signing_key=KEY)
    yield handle
    handle.stop()


@pytest.fixture
def app(tmp_path: Path, keyed_idp: Any) -> Iterator[Flask]:
    app = make_app(tmp_path, keyed_idp.url)
    yield app
    app.extensions["sovereign"].close()


@pytest.fixture(scope="module")
def tokens(keyed_idp: Any) -> Callable[[str], str]:
    cache: dict[str, str] = {}

    def get(username: str) -> str:
        if username not in cache:
            cache[username] = password_token(keyed_idp.url, username, DEMO_PASSWORD)
        return cache[username]

    return get


@pytest.fixture
def get(app: Flask, tokens: Callable[[str], str]) -> Callable[[str, str], Any]:
    """``get(user, path)`` with that user's bearer token, after sequencing the log."""
    client = app.test_client()

    def do(user: str, path: str) -> Any:
        app.extensions["sovereign"].audit.log.sequence()
        return client.get(path, headers={"Authorization": f"Bearer {tokens(user)}"})

    return do


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body: dict[str, Any] = response.get_json()
    assert body["status"] == status
    return body


def cursor_of(stamp: str, ident: uuid.UUID) -> str:
    """A list cursor as the server makes them, with ``stamp`` as its time."""
    raw = json.dumps([stamp, str(ident)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# -- numbers the database cannot bind ---------------------------------------------------------


@pytest.mark.parametrize(
    "seq",
    [
        str(2**63),  # one past the largest signed 64-bit integer
        str(2**64),  # 18446744073709551616, from the issue
        "9" * 5000,  # more digits than Python converts to int by default
    ],
)
def test_a_proof_of_a_sequence_number_beyond_64_bits_is_not_found(get: Any, seq: str):
    problem(get("auditor", f"/api/v1/audit/proof/{seq}"), 404)


def test_the_largest_64_bit_sequence_number_is_an_unknown_event(get: Any):
    problem(get("auditor", f"/api/v1/audit/proof/{2**63 - 1}"), 404)


@pytest.mark.parametrize("cursor", ["9999999999999999999", str(2**63)])
def test_an_audit_cursor_beyond_64_bits_is_invalid(get: Any, cursor: str):
    body = problem(get("auditor", f"/api/v1/audit/events?cursor={cursor}"), 422)
    assert body["errors"][0]["loc"] == ["cursor"]


def test_an_18_digit_audit_cursor_is_a_page(get: Any):
    r = get("auditor", "/api/v1/audit/events?cursor=999999999999999999")
    assert r.status_code == 200, r.get_json()


@pytest.mark.parametrize("to", [str(2**63), "9" * 40])
def test_a_tree_size_beyond_64_bits_is_invalid(get: Any, to: str):
    problem(get("auditor", f"/api/v1/audit/consistency?from=1&to={to}"), 422)


# -- cursors the server did not make -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/api/v1/requests", "/api/v1/enclaves"])
@pytest.mark.parametrize(
    "stamp",
    [
        "2026-01-01T00:00:00",  # no offset: cannot be compared with the stored times
        "0001-01-01T00:00:00+01:00",  # before year 1 once in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 once in UTC
    ],
)
def test_a_list_cursor_with_a_time_the_server_never_writes_is_invalid(
    get: Any, path: str, stamp: str
):
    body = problem(get("officer-1", f"{path}?cursor={cursor_of(stamp, uuid.uuid4())}"), 422)
    assert "cursor" in body["detail"]


def test_a_list_cursor_with_an_aware_time_pages(get: Any):
    cursor = cursor_of("2026-01-01T00:00:00+00:00", uuid.uuid4())
    r = get("officer-1", f"/api/v1/requests?cursor={cursor}")
    assert r.status_code == 200, r.get_json()


# -- date-time query parameters are what the document says: RFC 3339 with an offset ------------


@pytest.mark.parametrize(
    "value",
    [
        "0.5",  # pydantic's lax mode read numbers as seconds since 1970
        "1700000000",
        "2026-01-01T00:00:00",  # no offset
        "2026-01-01",  # a date alone
        "2026-01-01 00:00:00Z",  # not RFC 3339's T
        "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # after year 9999 in UTC
        "2026-13-01T00:00:00Z",
    ],
)
@pytest.mark.parametrize("name", ["since", "until"])
def test_a_time_filter_must_be_an_rfc3339_date_time_with_an_offset(get: Any, name: str, value: str):
    body = problem(get("auditor", f"/api/v1/audit/events?{name}={value}"), 422)
    assert body["errors"][0]["loc"] == [name]


@pytest.mark.parametrize(
    "value", ["2026-01-01T00:00:00Z", "2026-01-01t00:00:00.5%2B02:00", "9999-12-31T23:59:59Z"]
)
def test_an_rfc3339_time_filter_is_accepted(get: Any, value: str):
    r = get("auditor", f"/api/v1/audit/events?until={value}")
    assert r.status_code == 200, r.get_json()


def test_the_document_says_what_a_time_filter_accepts(app: Flask):
    doc = app.test_client().get("/api/openapi.json").get_json()
    params = doc["paths"]["/api/v1/audit/events"]["get"]["parameters"]
    until = next(p for p in params if p["name"] == "until")
    assert until["schema"]["type"] == "string"
    assert until["schema"]["format"] == "date-time"
    assert "offset" in until["schema"]["description"]


# -- bodies ------------------------------------------------------------------------------------


@pytest.mark.parametrize("opening", ["[", '{"a":'])
def test_a_deeply_nested_body_under_the_size_limit_is_a_bad_request(
    app: Flask, tokens: Callable[[str], str], opening: str
):
    closing = "]" if opening == "[" else "}"
    body = opening * 5000 + "1" + closing * 5000
    assert len(body) < app.config["MAX_CONTENT_LENGTH"]
    r = app.test_client().post(
        "/api/v1/requests",
        data=body,
        content_type="application/json",
        headers={"Authorization": f"Bearer {tokens('analyst-defence')}"},
    )
    assert "too deeply" in problem(r, 400)["detail"]


# -- tokens ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "claims",
    [
        {"realm_access": ["analyst"]},
        {"realm_access": "analyst"},
        {"realm_access": {"roles": "analyst"}},
        {"realm_access": {"roles": [["analyst"]]}},
        {"groups": "/tenants/defence"},
        {"groups": [{"name": "/tenants/defence"}]},
        {"clearance": {"level": "SECRET"}},
        {"compartments": [["NATO"]]},
    ],
)
def test_a_signed_token_with_claims_of_the_wrong_type_is_unauthorized(
    app: Flask, tokens: Callable[[str], str], claims: dict[str, Any]
):
    real = tokens("analyst-defence")
    payload = {**jwt.decode(real, options={"verify_signature": False}), **claims}
    kid = jwt.get_unverified_header(real)["kid"]
    forged = jwt.encode(payload, KEY, algorithm="RS256", headers={"kid": kid})
    r = app.test_client().get("/api/v1/me", headers={"Authorization": f"Bearer {forged}"})
    problem(r, 401)


# -- names that cannot name anything -----------------------------------------------------------


@pytest.mark.parametrize("name", ["A" * 65, "A" * 300, "-starts-with-a-dash", "has space"])
def test_a_host_name_no_host_can_have_is_not_found_and_records_nothing(
    app: Flask, get: Any, name: str
):
    # An over-long target would not fit the audit log's target column: on PostgreSQL the
    # sequencer's copy of the batch would fail on every run and the log would stall.
    before = len(stored(app))
    problem(get("operator", f"/api/v1/hosts/{name}"), 404)
    events = stored(app)
    assert len(events) == before
    assert all(len(e["target"]) <= MAX_TARGET for e in events)
