"""Rate limits over HTTP with low configured limits: per address on what needs no token and on
refused tokens, per principal on writes; a breach is 429 problem+json with Retry-After."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.integration.test_api import BODY, CIVIL
from tests.support.apps import AheadClock, make_app

pytestmark = pytest.mark.idp

ONE = {"REMOTE_ADDR": "198.51.100.1"}
TWO = {"REMOTE_ADDR": "198.51.100.2"}


@pytest.fixture
def limited(tmp_path: Path, idp: Any) -> Iterator[Callable[..., Flask]]:
    apps: list[Flask] = []

    def build(**limits: Any) -> Flask:
        app = make_app(tmp_path, idp.url, **limits)
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.extensions["sovereign"].close()


def assert_retry_after(response: Any, started: float, window_s: int = 60) -> None:
    """``Retry-After`` is the rest of the window opened by the first counted hit (at or after
    ``started``), in whole seconds: neither a constant nor the fallback of 1."""
    waited = time.time() - started
    assert window_s - waited - 1 <= int(response.headers["Retry-After"]) <= window_s


def assert_limited(response: Any, started: float) -> dict[str, Any]:
    assert response.status_code == 429, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    assert_retry_after(response, started)
    body: dict[str, Any] = response.get_json()
    assert body["type"] == "urn:sovereign:problem:rate-limited"
    assert body["status"] == 429
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_what_needs_no_token_is_limited_per_address(limited: Callable[..., Flask]):
    client: FlaskClient = limited(RATELIMIT_ANONYMOUS="3/minute").test_client()
    started = time.time()
    for _ in range(3):
        assert client.get("/api/v1/audit/public-key", environ_base=ONE).status_code == 200
    body = assert_limited(client.get("/api/v1/audit/public-key", environ_base=ONE), started)
    assert "3 per 1 minute" in body["detail"]
    assert client.get("/api/openapi.json", environ_base=ONE).status_code == 429
    assert client.get("/api/v1/audit/public-key", environ_base=TWO).status_code == 200
    for _ in range(10):  # probes are never limited
        assert client.get("/healthz", environ_base=ONE).status_code == 200


def test_refused_tokens_turn_an_address_away(
    limited: Callable[..., Flask], token: Callable[[str], str]
):
    client = limited(RATELIMIT_AUTH_FAILURES="3/minute").test_client()
    started = time.time()
    for i in range(3):
        r = client.get("/api/v1/requests", headers=bearer(f"forged.{i}.x"), environ_base=ONE)
        assert r.status_code == 401
    # Even a good token from that address waits for the window; other addresses do not.
    assert_limited(
        client.get("/api/v1/requests", headers=bearer(token("auditor")), environ_base=ONE),
        started,
    )
    ok = client.get("/api/v1/requests", headers=bearer(token("auditor")), environ_base=TWO)
    assert ok.status_code == 200
    # Good tokens never count: many calls from TWO stay allowed.
    for _ in range(5):
        assert (
            client.get(
                "/api/v1/tenants", headers=bearer(token("auditor")), environ_base=TWO
            ).status_code
            == 200
        )


def test_writes_are_limited_per_principal(
    limited: Callable[..., Flask], token: Callable[[str], str]
):
    client = limited(RATELIMIT_WRITES="2/minute").test_client()
    analyst = bearer(token("analyst-defence"))
    started = time.time()
    for _ in range(2):
        assert client.post("/api/v1/requests", json=BODY, headers=analyst).status_code == 201
    # The same principal from another address is the same principal.
    assert_limited(
        client.post("/api/v1/requests", json=BODY, headers=analyst, environ_base=TWO), started
    )
    assert client.get("/api/v1/requests", headers=analyst).status_code == 200  # reads are not
    other = bearer(token("analyst-research"))
    assert client.post("/api/v1/requests", json=CIVIL, headers=other).status_code == 201


def test_attestations_count_as_writes(limited: Callable[..., Flask], token: Callable[[str], str]):
    # Each re-verifies the whole log and records an event: one auditor cannot loop on them.
    client = limited(RATELIMIT_WRITES="2/minute").test_client()
    auditor = bearer(token("auditor"))
    started = time.time()
    assert client.get("/api/v1/audit/attestation", headers=auditor).status_code == 200
    assert client.get("/api/v1/audit/attestation/note", headers=auditor).status_code == 200
    assert_limited(client.get("/api/v1/audit/attestation", headers=auditor), started)
    assert client.get("/api/v1/audit/events", headers=auditor).status_code == 200  # plain reads


def test_limits_can_be_switched_off(limited: Callable[..., Flask]):
    client = limited(RATELIMIT_ENABLED=False, RATELIMIT_ANONYMOUS="1/minute").test_client()
    for _ in range(3):
        assert client.get("/api/v1/audit/public-key").status_code == 200


def test_step_up_challenges_do_not_count_as_refused_tokens(
    tmp_path: Path, idp: Any, token: Callable[[str], str]
):
    clock = AheadClock()
    app = make_app(tmp_path, idp.url, clock=clock, RATELIMIT_AUTH_FAILURES="2/minute")
    try:
        client = app.test_client()
        rid = client.post(
            "/api/v1/requests", json=BODY, headers=bearer(token("analyst-defence"))
        ).get_json()["id"]
        clock.ahead = timedelta(hours=1)
        officer = bearer(token("officer-1"))
        for _ in range(4):
            r = client.post(f"/api/v1/requests/{rid}/approve", json={}, headers=officer)
            assert r.status_code == 401
            assert "insufficient_user_authentication" in r.headers["WWW-Authenticate"]
    finally:
        app.extensions["sovereign"].close()
