"""Refused bearer tokens are audit events (``auth:failure``) over HTTP, aggregated per source
and interval so that a flood of forged tokens adds a bounded number of events whose counts add
up; nothing about a token is stored; and an unwritable log never turns the 401 into anything
else."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.support.apps import make_app
from tests.support.audit import stored

pytestmark = pytest.mark.idp

SOURCE = "127.0.0.1"


@pytest.fixture
def app(tmp_path: Path, idp: Any) -> Iterator[Flask]:
    # The flood here is about the audit trail; the rate limit on it is tested in test_limits.
    app = make_app(tmp_path, idp.url, seed=False, RATELIMIT_AUTH_FAILURES="1000/minute")
    yield app
    app.extensions["sovereign"].close()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


def failures(app: Flask) -> list[dict[str, Any]]:
    return [e for e in stored(app) if e["action"] == "auth:failure"]


def forge(real: str, i: int) -> str:
    """A real token with its signature changed (so it cannot verify)."""
    head, body, _sig = real.split(".")
    return f"{head}.{body}.{'A' * 40}{i:06d}"


def test_a_flood_of_forged_tokens_is_a_bounded_number_of_events(
    app: Flask, client: FlaskClient, token: Callable[[str], str]
):
    real = token("auditor")
    n = 200
    sent = [forge(real, i) for i in range(n)]
    for forged in sent:
        r = client.get("/api/v1/requests", headers={"Authorization": f"Bearer {forged}"})
        assert r.status_code == 401
        assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
    assert len(failures(app)) == 1  # the first one at once; the rest are being counted
    app.extensions["sovereign"].auth_failures.flush(everything=True)

    events = failures(app)
    assert len(events) == 2
    assert sum(e["details"]["count"] for e in events) == n
    assert {(e["source"], e["actor"], e["target"], e["outcome"]) for e in events} == {
        (SOURCE, "anonymous", "api", "deny")
    }
    assert {e["details"]["error"] for e in events} == {"invalid-token"}
    assert events[0]["reason"].startswith("Authentication failed: ")
    # Nothing about any token: not the token, not its signature, not even its header.
    everything = json.dumps(stored(app))
    assert real.split(".")[0][:16] not in everything
    assert not any(t.split(".")[2][:16] in everything for t in sent)


def test_a_missing_token_is_counted_apart(app: Flask, client: FlaskClient):
    for _ in range(3):
        assert client.get("/api/v1/requests").status_code == 401
    client.get("/api/v1/requests", headers={"Authorization": "Basic dXNlcjpwYXNz"})
    app.extensions["sovereign"].auth_failures.flush(everything=True)
    events = failures(app)
    assert {e["details"]["error"] for e in events} == {"missing-token"}
    assert sum(e["details"]["count"] for e in events) == 4


def test_an_unwritable_log_still_answers_401(app: Flask, client: FlaskClient):
    engine = sa.create_engine(app.config["DATABASE_URL"])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"
        )
    engine.dispose()
    r = client.get("/api/v1/requests", headers={"Authorization": "Bearer not.a.token"})
    assert r.status_code == 401
    assert r.mimetype == "application/problem+json"


def test_no_header_field_of_a_token_reaches_the_log(app: Flask, client: FlaskClient):
    marker = "evil-marker-in-the-header"
    header = base64.urlsafe_b64encode(json.dumps({"alg": marker, "kid": marker}).encode())
    forged = f"{header.decode().rstrip('=')}.e30.c2ln"
    r = client.get("/api/v1/requests", headers={"Authorization": f"Bearer {forged}"})
    assert r.status_code == 401
    app.extensions["sovereign"].auth_failures.flush(everything=True)
    (event,) = failures(app)
    assert event["reason"] == "Authentication failed: algorithm (unregistered) is not accepted"
    assert marker not in json.dumps(stored(app))
