"""Console failures in the audit log: a form without the session's CSRF token is an
``auth:failure`` event, and a flood of forged sign-in callbacks adds a bounded number of
``session:login`` denials whose counts add up."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from tests.web.conftest import Users, at_idp
from tests.web.test_session_audit import SOURCE, stored

pytestmark = pytest.mark.idp


def of(app: Flask, action: str) -> list[dict[str, Any]]:
    return [e for e in sorted(stored(app), key=lambda e: e["time"]) if e["action"] == action]


def test_a_csrf_failure_is_recorded(app: Flask, users: Users):
    officer = users("officer-1")
    page = officer.post("/auth/logout", data={"csrf_token": "forged"})
    assert page.status_code == 400
    officer.post("/auth/logout", data={})
    app.extensions["sovereign"].auth_failures.flush(everything=True)
    events = of(app, "auth:failure")
    assert {(e["target"], e["details"]["error"], e["source"]) for e in events} == {
        ("console", "csrf", SOURCE)
    }
    assert sum(e["details"]["count"] for e in events) == 2
    assert "POST /auth/logout" in events[0]["reason"]
    assert "forged" not in str(events)


def test_a_flood_of_forged_callbacks_is_bounded(app: Flask):
    client = app.test_client()
    n = 50  # below RATELIMIT_AUTH_FAILURES (60/minute), which turns the rest away with 429
    for i in range(n):
        page = client.get("/auth/callback", query_string={"state": f"forged-{i}", "code": "x"})
        assert page.status_code == 400
    app.extensions["sovereign"].auth_failures.flush(everything=True)
    denied = of(app, "session:login")
    assert len(denied) == 2
    assert sum(e["details"]["count"] for e in denied) == n
    assert {(e["outcome"], e["details"]["error"]) for e in denied} == {("deny", "unknown-state")}


def test_a_refused_sign_in_is_still_recorded_at_once(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    forged = at_idp(started.headers["Location"], "officer-1").replace("state=", "state=x")
    assert client.get(forged).status_code == 400
    (denied,) = of(app, "session:login")  # no flush: the first of its kind is written at once
    assert denied["details"]["count"] == 1
