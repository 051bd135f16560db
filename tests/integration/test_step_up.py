"""Step-up through the API (RFC 9470): approving a classified request with a token whose
``auth_time`` is older than ``STEP_UP_MAX_AGE_S`` is answered 401 with the
``insufficient_user_authentication`` challenge, whether the token is the first one or a refreshed
one (a refresh keeps the original ``auth_time``). Real tokens from the dev IdP over HTTP; the
app's clock runs ahead of real time to age the sign-in (token expiry is still checked on real
time)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from flask import Flask
from flask.testing import FlaskClient
from keycloak import KeycloakOpenID

from devstack.idp import CLI_CLIENT_ID, DEMO_PASSWORD
from tests.integration.test_api import BODY, CIVIL
from tests.support.apps import AheadClock, make_app

pytestmark = pytest.mark.idp


@pytest.fixture
def clock() -> AheadClock:
    return AheadClock()


@pytest.fixture
def app(tmp_path: Path, idp: Any, clock: AheadClock) -> Iterator[Flask]:
    app = make_app(tmp_path, idp.url, clock=clock)
    yield app
    app.extensions["sovereign"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def file(client: FlaskClient, token: Callable[[str], str], body: dict[str, Any]) -> str:
    analyst = "analyst-research" if body is CIVIL else "analyst-defence"
    r = client.post("/api/v1/requests", json=body, headers=bearer(token(analyst)))
    assert r.status_code == 201, r.get_json()
    return str(r.get_json()["id"])


def assert_step_up_challenge(response: Any, max_age: int) -> dict[str, Any]:
    assert response.status_code == 401, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    challenge = response.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer ")
    assert 'error="insufficient_user_authentication"' in challenge
    assert f'max_age="{max_age}"' in challenge
    assert "error_description=" in challenge
    body: dict[str, Any] = response.get_json()
    assert body["type"] == "urn:sovereign:problem:step-up-required"
    assert body["max_age"] == max_age
    return body


def test_an_old_sign_in_cannot_approve_a_classified_request(
    app: Flask, client: FlaskClient, token: Callable[[str], str], clock: AheadClock
):
    rid = file(client, token, BODY)
    clock.ahead = timedelta(seconds=app.config["STEP_UP_MAX_AGE_S"] + 3600)
    refused = client.post(
        f"/api/v1/requests/{rid}/approve", json={}, headers=bearer(token("officer-1"))
    )
    body = assert_step_up_challenge(refused, app.config["STEP_UP_MAX_AGE_S"])
    assert "sign in again" in body["detail"]
    r = client.get(f"/api/v1/requests/{rid}", headers=bearer(token("officer-1")))
    assert r.get_json()["approvals_received"] == 0

    clock.ahead = timedelta()  # as if the officer had just typed the password again
    ok = client.post(f"/api/v1/requests/{rid}/approve", json={}, headers=bearer(token("officer-1")))
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["approvals_received"] == 1


def test_an_old_sign_in_still_approves_unclassified_requests(
    client: FlaskClient, token: Callable[[str], str], clock: AheadClock
):
    rid = file(client, token, CIVIL)
    clock.ahead = timedelta(hours=5)
    ok = client.post(f"/api/v1/requests/{rid}/approve", json={}, headers=bearer(token("officer-1")))
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["state"] == "approved"


def test_a_refreshed_token_keeps_the_old_auth_time_and_is_refused(
    app: Flask, client: FlaskClient, idp: Any, token: Callable[[str], str], clock: AheadClock
):
    rid = file(client, token, BODY)
    oidc = KeycloakOpenID(server_url=idp.url + "/", realm_name="sovereign", client_id=CLI_CLIENT_ID)
    first = oidc.token("officer-1", DEMO_PASSWORD)
    refreshed = oidc.refresh_token(first["refresh_token"])
    claims = [
        jwt.decode(t["access_token"], options={"verify_signature": False})
        for t in (first, refreshed)
    ]
    assert refreshed["access_token"] != first["access_token"]
    assert claims[1]["auth_time"] == claims[0]["auth_time"]

    clock.ahead = timedelta(seconds=app.config["STEP_UP_MAX_AGE_S"] + 1)
    refused = client.post(
        f"/api/v1/requests/{rid}/approve", json={}, headers=bearer(refreshed["access_token"])
    )
    assert_step_up_challenge(refused, app.config["STEP_UP_MAX_AGE_S"])


def test_the_refusal_is_an_audit_event(
    app: Flask, client: FlaskClient, token: Callable[[str], str], clock: AheadClock
):
    rid = file(client, token, BODY)
    clock.ahead = timedelta(hours=2)
    client.post(f"/api/v1/requests/{rid}/approve", json={}, headers=bearer(token("officer-1")))
    clock.ahead = timedelta()
    app.extensions["sovereign"].audit.log.sequence()
    events = client.get(
        f"/api/v1/audit/events?target=request/{rid}&action=request:approve",
        headers=bearer(token("auditor")),
    ).get_json()["items"]
    assert [(e["outcome"], e["details"]["error"]) for e in events] == [("deny", "step-up-required")]


def test_the_old_console_key_is_an_alias(tmp_path: Path, idp: Any):
    app = make_app(tmp_path, idp.url, seed=False, CONSOLE_STEP_UP_S=120)
    try:
        assert app.config["STEP_UP_MAX_AGE_S"] == 120
        assert app.extensions["sovereign"].policy.step_up_max_age_s == 120
    finally:
        app.extensions["sovereign"].close()
