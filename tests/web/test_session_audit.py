"""Console sessions in the audit log: sign-in, refused sign-ins, sign-out and expiry events,
one session reference from login to logout, no token, code or cookie in any event, and what
happens when the audit log cannot be written (no sign-in; sign-out still ends the session)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from keycloak import KeycloakOpenID

from devstack.idp import CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET
from sovereign.services.authfailures import MAX_REASON
from sovereign.services.sessions import SessionEnd
from sovereign.web.sessions import MemorySessionStore
from tests.support.audit import stored
from tests.web.conftest import (
    Users,
    at_idp,
    csrf,
    make_app,
    query_of,
    session_of,
    sign_in,
    text,
)

pytestmark = pytest.mark.idp

REF = re.compile(r"^[0-9a-f]{16}$")
#: The Flask test client's address.
SOURCE = "127.0.0.1"


def session_events(app: Flask, action: str | None = None) -> list[dict[str, Any]]:
    """The ``session:*`` events (of ``action`` if given), oldest first."""
    return [
        e
        for e in sorted(stored(app), key=lambda e: e["time"])
        if e["action"].startswith("session:") and action in (None, e["action"])
    ]


def cookie_of(app: Flask, client: FlaskClient) -> str:
    found = client.get_cookie(app.extensions["sovereign.console"].cookie_name)
    assert found is not None
    return found.value


def break_the_audit_log(app: Flask) -> None:
    """Make every audit insert fail, as a full disk or a revoked grant would."""
    engine = sa.create_engine(app.config["DATABASE_URL"])
    with engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log "
            "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"
        )
    engine.dispose()


def test_sign_in_and_sign_out_share_one_reference_and_store_no_secret(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    first_cookie = cookie_of(app, client)
    state = query_of(started.headers["Location"])["state"][0]
    callback = at_idp(started.headers["Location"], "officer-1")
    code = query_of(callback)["code"][0]
    assert client.get(callback).status_code == 302
    cookie = cookie_of(app, client)
    session = session_of(app, client)
    secrets = {
        "access token": session.access_token,
        "refresh token": session.refresh_token,
        "id token": session.id_token,
        "code": code,
        "state": state,
        "cookie before sign-in": first_cookie,
        "cookie": cookie,
        "csrf token": session.csrf_token,
    }
    key = hmac.new(app.config["SECRET_KEY"].encode(), cookie.encode(), hashlib.sha256).digest()
    secrets["session key"] = key.hex()
    out = client.post("/auth/logout", data={"csrf_token": csrf(client, "/auth/logout")})
    assert out.status_code == 302
    assert client.get("/queue").status_code == 302

    login, logout = session_events(app)
    assert (login["action"], login["outcome"]) == ("session:login", "allow")
    assert (logout["action"], logout["outcome"]) == ("session:logout", "allow")
    ref = login["details"]["session_ref"]
    assert REF.match(ref)
    assert ref == hashlib.sha256(key).hexdigest()[:16]  # a one-way reference to the key
    assert logout["details"]["session_ref"] == ref
    assert login["target"] == logout["target"] == f"session/{ref}"
    for event in (login, logout):
        assert event["actor"] == "user:officer-1"
        assert event["details"]["subject"] == session.subject
        assert event["details"]["username"] == "officer-1"
        assert event["source"] == SOURCE
        assert event["request_id"]
    assert isinstance(login["details"]["auth_time"], int)
    assert login["details"]["step_up"] is False
    assert "replaces" not in login["details"]

    everything = json.dumps(stored(app))
    for name, value in secrets.items():
        assert value, name
        assert value not in everything, f"the {name} is in the audit log"


def test_a_forged_state_is_a_denied_sign_in(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    forged = at_idp(started.headers["Location"], "officer-1").replace("state=", "state=x")
    assert client.get(forged).status_code == 400

    (denied,) = session_events(app)
    assert (denied["action"], denied["outcome"]) == ("session:login", "deny")
    assert denied["actor"] == "anonymous"
    assert denied["target"] == "session"
    assert denied["source"] == SOURCE
    assert denied["details"]["error"] == "unknown-state"
    assert "not started from this browser" in denied["reason"]
    # Nothing the visitor sent is stored: neither the forged state nor the code.
    everything = json.dumps(stored(app))
    assert query_of(forged)["state"][0] not in everything
    assert query_of(forged)["code"][0] not in everything


def test_an_id_token_with_another_nonce_is_a_denied_sign_in(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    (pending,) = session_of(app, client).logins.values()
    pending.nonce = "not-the-one-sent"
    assert client.get(at_idp(started.headers["Location"], "officer-1")).status_code == 401

    (denied,) = session_events(app)
    assert (denied["outcome"], denied["details"]["error"]) == ("deny", "not-verified")
    assert "nonce does not match" in denied["reason"]
    assert denied["actor"] == "anonymous"  # the unverified token names nobody


def test_an_idp_error_is_a_denied_sign_in_with_its_text_cut_short(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    state = query_of(started.headers["Location"])["state"][0]
    description = "line one line two" + "x" * 5000
    page = client.get(
        "/auth/callback",
        query_string={"error": "access_denied", "error_description": description, "state": state},
    )
    assert page.status_code == 400

    (denied,) = session_events(app)
    assert (denied["outcome"], denied["details"]["error"]) == ("deny", "idp-error")
    assert len(denied["reason"]) <= MAX_REASON
    assert denied["reason"].startswith("the identity provider refused: line one line two")


def test_an_idp_error_with_control_characters_is_refused_unrecorded(app: Flask):
    # RFC 6749 4.1.2.1 allows only printable ASCII in error_description: a callback URL with a
    # control character is crafted, and is refused at the boundary like any other URL.
    client = app.test_client()
    started = client.get("/auth/login")
    state = query_of(started.headers["Location"])["state"][0]
    page = client.get(
        "/auth/callback",
        query_string={
            "error": "access_denied",
            "error_description": "line one\nline two\x1b[31m",
            "state": state,
        },
    )
    assert page.status_code == 400
    assert "control character U+000A" in text(page)
    assert session_events(app) == []


def test_no_sign_in_without_an_audit_record(app: Flask):
    client = app.test_client()
    break_the_audit_log(app)
    page = sign_in(client, "officer-1")
    assert page.status_code == 503
    assert "Sign-in failed" in text(page)
    assert "audit log could not be written" in text(page)
    # No session at all: not on the server, and the browser is told to drop its cookie.
    assert len(app.extensions["sovereign.console"].store) == 0
    assert client.get_cookie(app.extensions["sovereign.console"].cookie_name) is None
    assert client.get("/queue").status_code == 302
    assert session_events(app) == []


def test_sign_out_ends_the_session_even_without_an_audit_record(
    app: Flask, users: Users, caplog: pytest.LogCaptureFixture
):
    client = users("officer-1")
    ref = session_of(app, client).ref
    break_the_audit_log(app)
    with caplog.at_level(logging.ERROR, logger="sovereign.services.sessions"):
        out = client.post("/auth/logout", data={"csrf_token": csrf(client, "/auth/logout")})
    assert out.status_code == 302
    assert client.get("/queue").status_code == 302
    lost = [r.getMessage() for r in caplog.records if "AUDIT EVENT LOST" in r.getMessage()]
    assert lost == [
        f"AUDIT EVENT LOST: session:logout session/{ref} by user:officer-1 (-): the session "
        "ended but the audit log could not record it"
    ]
    assert [e["action"] for e in session_events(app)] == ["session:login"]


def test_an_idle_session_ends_with_an_expiry_event(app: Flask, users: Users):
    client = users("officer-1")
    store = app.extensions["sovereign.console"].store
    store.clock = lambda: time.time() + app.config["CONSOLE_IDLE_TIMEOUT_S"] + 1
    assert client.get("/queue").status_code == 302

    login, expired = session_events(app)
    assert (expired["action"], expired["outcome"]) == ("session:expire", "allow")
    assert expired["reason"] == "idle"
    assert expired["actor"] == "system:console"
    assert expired["details"]["subject"] == login["details"]["subject"]
    assert expired["details"]["username"] == "officer-1"
    assert expired["details"]["session_ref"] == login["details"]["session_ref"]
    assert expired["target"] == login["target"]
    assert expired["source"] == SOURCE


def test_a_session_past_its_lifetime_ends_with_an_expiry_event(app: Flask, users: Users):
    client = users("officer-1")
    session_of(app, client).created_at -= app.config["CONSOLE_SESSION_MAX_S"] + 1
    assert client.get("/queue").status_code == 302
    (expired,) = session_events(app, "session:expire")
    assert expired["reason"] == "max-age"


def test_a_revoked_idp_session_ends_with_an_expiry_event(
    app: Flask, users: Users, console_idp: Any
):
    client = users("officer-1")
    session = session_of(app, client)
    KeycloakOpenID(
        server_url=console_idp.url,
        realm_name="sovereign",
        client_id=CONSOLE_CLIENT_ID,
        client_secret_key=CONSOLE_CLIENT_SECRET,
    ).logout(session.refresh_token)
    session.access_token = "expired-or-garbage"
    assert client.get("/queue").status_code == 302
    (expired,) = session_events(app, "session:expire")
    assert expired["reason"] == "idp-session-ended"
    assert expired["details"]["session_ref"] == session.ref


def test_a_step_up_names_the_reference_it_replaces(app: Flask, users: Users):
    client = users("officer-1")
    before = session_of(app, client).ref
    assert sign_in(client, "officer-1", step_up=True).status_code == 302
    after = session_of(app, client).ref
    assert after != before
    first, again = session_events(app, "session:login")
    assert first["details"]["session_ref"] == before
    assert again["details"] == {
        **again["details"],
        "session_ref": after,
        "step_up": True,
        "replaces": before,
    }


def test_an_evicted_signed_in_session_is_recorded_without_the_evicting_address(
    tmp_path: Path, console_idp: Any
):
    app = make_app(tmp_path, console_idp.url, CONSOLE_MAX_SESSIONS=1)
    try:
        client = app.test_client()
        assert sign_in(client, "officer-1").status_code == 302
        ref = session_of(app, client).ref
        app.test_client().get("/auth/login")  # a new visitor fills the table
        (evicted,) = session_events(app, "session:expire")
        assert (evicted["reason"], evicted["details"]["session_ref"]) == ("evicted", ref)
        assert evicted["source"] == "" and evicted["request_id"] == ""
    finally:
        app.extensions["sovereign"].close()


def test_the_store_reports_only_signed_in_sessions_and_gives_each_key_a_reference():
    now = [1000.0]
    ended: list[tuple[str, SessionEnd]] = []
    store = MemorySessionStore(
        "k" * 32,
        idle_timeout_s=10,
        max_age_s=100,
        clock=lambda: now[0],
        on_expire=lambda s, reason: ended.append((s.ref, reason)),
    )
    anonymous_cookie, anonymous = store.create()
    cookie, session = store.create()
    assert REF.match(session.ref) and session.ref != anonymous.ref
    old_ref = session.ref
    rotated = store.rotate(cookie)
    assert rotated is not None
    cookie, session = rotated
    assert REF.match(session.ref) and session.ref != old_ref
    session.access_token = "signed-in"
    now[0] += 11
    assert store.purge() == 2
    assert ended == [(session.ref, SessionEnd.IDLE)]
    assert store.get(cookie) is None and store.get(anonymous_cookie) is None
