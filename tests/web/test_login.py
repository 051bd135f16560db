"""Signing in and out of the console: OIDC code flow with PKCE against the dev IdP over HTTP,
state and nonce, session cookies, idle timeout, token refresh, CSRF and logout at the IdP."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from flask import Flask
from keycloak import KeycloakOpenID

from devstack.idp import CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET
from sovereign.web.console import safe_next
from tests.web.conftest import (
    CALLBACK,
    ORIGIN,
    Users,
    at_idp,
    banners,
    csrf,
    make_app,
    query_of,
    session_of,
    sign_in,
    text,
)

pytestmark = pytest.mark.idp


def test_visitors_see_a_sign_in_link_and_an_unclassified_banner(app: Flask):
    page = app.test_client().get("/")
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert 'href="/auth/login"' in html
    assert banners(html) == ["UNCLASSIFIED", "UNCLASSIFIED"]
    # No session is created for a visitor who only looks.
    assert "Set-Cookie" not in page.headers


def test_pages_need_a_sign_in_and_come_back_after_it(app: Flask):
    client = app.test_client()
    page = client.get("/requests/new?x=1")
    assert page.status_code == 302
    assert urlsplit(page.headers["Location"]).path == "/auth/login"
    assert query_of(page.headers["Location"])["next"] == ["/requests/new?x=1"]


def test_login_sends_an_authorization_code_request_with_pkce_state_and_nonce(
    app: Flask, console_idp: Any
):
    started = app.test_client().get("/auth/login")
    assert started.status_code == 302
    url = started.headers["Location"]
    assert url.startswith(f"{console_idp.url}/realms/sovereign/protocol/openid-connect/auth?")
    q = query_of(url)
    assert q["response_type"] == ["code"]
    assert q["client_id"] == [CONSOLE_CLIENT_ID]
    assert q["redirect_uri"] == [CALLBACK]
    assert q["code_challenge_method"] == ["S256"]
    assert len(q["code_challenge"][0]) == 43  # base64url of a SHA-256
    assert len(q["state"][0]) >= 43 and len(q["nonce"][0]) >= 43
    assert q["state"] != q["nonce"]
    assert "openid" in q["scope"][0].split()
    assert "prompt" not in q


def test_sign_in_sets_a_new_httponly_samesite_cookie_and_shows_the_user(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    before = started.headers["Set-Cookie"]
    assert "HttpOnly" in before and "SameSite=Lax" in before and "Path=/" in before
    done = client.get(at_idp(started.headers["Location"], "officer-1"))
    assert done.status_code == 302
    assert done.headers["Location"] == "/"
    after = done.headers["Set-Cookie"]
    assert "HttpOnly" in after and "SameSite=Lax" in after
    # A new session id at sign-in: a cookie planted before it is worth nothing after it.
    assert before.split(";")[0] != after.split(";")[0]
    assert "Secure" not in after  # testing runs over http; production insists (test_config)
    home = client.get("/").get_data(as_text=True)
    assert "Signed in as officer-1" in home
    assert "Approval queue" in home
    assert "Request an enclave" not in home


def test_a_planted_session_cookie_is_dead_after_sign_in(app: Flask):
    attacker = app.test_client()
    attacker.get("/auth/login")
    planted = attacker.get_cookie("sovereign-console")
    assert planted is not None
    victim = app.test_client()
    victim.set_cookie("sovereign-console", planted.value)
    # The victim signs in with the attacker's pre-login session (session fixation attempt).
    victim_started = victim.get("/auth/login")
    victim.get(at_idp(victim_started.headers["Location"], "officer-1"))
    attacker.set_cookie("sovereign-console", planted.value)
    assert attacker.get("/queue").status_code == 302  # back to sign-in, not officer-1's queue


def test_callback_refuses_an_unknown_state(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    callback = at_idp(started.headers["Location"], "officer-1")
    forged = callback.replace("state=", "state=x")
    page = client.get(forged)
    assert page.status_code == 400
    assert "was not started from this browser" in page.get_data(as_text=True)
    assert client.get("/queue").status_code == 302


def test_callback_from_another_browser_is_refused(app: Flask):
    """Login CSRF: a code and state minted for one browser cannot sign another one in."""
    mine = app.test_client()
    started = mine.get("/auth/login")
    callback = at_idp(started.headers["Location"], "auditor")
    other = app.test_client()
    assert other.get(callback).status_code == 400
    assert other.get("/audit").status_code == 302


def test_a_callback_is_single_use(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    callback = at_idp(started.headers["Location"], "officer-1")
    assert client.get(callback).status_code == 302
    again = client.get(callback)
    assert again.status_code == 400


def test_an_id_token_with_another_nonce_is_refused(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    session = session_of(app, client)
    (pending,) = session.logins.values()
    pending.nonce = "not-the-one-sent"
    page = client.get(at_idp(started.headers["Location"], "officer-1"))
    assert page.status_code == 401
    assert "nonce does not match" in page.get_data(as_text=True)
    assert not session_of(app, client).signed_in


def test_a_wrong_pkce_verifier_is_refused_by_the_idp(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    (pending,) = session_of(app, client).logins.values()
    pending.code_verifier = "x" * 64
    page = client.get(at_idp(started.headers["Location"], "officer-1"))
    assert page.status_code == 401
    assert "could not be completed" in page.get_data(as_text=True)


def test_an_idp_error_is_shown(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    state = query_of(started.headers["Location"])["state"][0]
    page = client.get(f"/auth/callback?error=access_denied&state={state}")
    assert page.status_code == 400
    assert "did not sign you in: access_denied" in page.get_data(as_text=True)


def test_a_slow_sign_in_is_refused(app: Flask):
    client = app.test_client()
    started = client.get("/auth/login")
    (pending,) = session_of(app, client).logins.values()
    pending.started_at -= 3600
    page = client.get(at_idp(started.headers["Location"], "officer-1"))
    assert page.status_code == 400
    assert "took too long" in page.get_data(as_text=True)


#: Targets that leave the console, or would split the Location header (CR/LF, control
#: characters), or are not plain URI characters.
BAD_TARGETS = [
    "//evil.example/x",
    "https://evil.example/",
    "/\\evil",
    "/requests page",
    "/r\u00e9quests",
    "/requests#top",
]


#: Targets holding a control character: the URL itself is refused (400) before any view reads
#: it, so no sign-in starts and no header can be split; ``safe_next`` refuses them as well.
CONTROL_TARGETS = [
    "/requests\r\nSet-Cookie: planted=1",
    "/requests\nLocation: https://evil.example/",
    "/requests\r",
    "/requests\x00",
    "/requests\t",
]


@pytest.mark.parametrize("target", CONTROL_TARGETS)
def test_a_next_with_a_control_character_is_refused_before_any_view(users: Users, target: str):
    for client in (users.app.test_client(), users("officer-1")):
        refused = client.get("/auth/login", query_string={"next": target})
        assert refused.status_code == 400, text(refused)
        assert "Location" not in refused.headers
        assert "planted" not in refused.headers.get("Set-Cookie", "")
        assert safe_next(target) == "/"


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_next_never_leaves_the_console(app: Flask, target: str):
    client = app.test_client()
    done = sign_in(client, "officer-1", next_url=target)
    assert done.status_code == 302, text(done)
    assert done.headers["Location"] == "/"


@pytest.mark.parametrize("target", BAD_TARGETS)
def test_next_never_leaves_the_console_when_already_signed_in(users: Users, target: str):
    done = users("officer-1").get("/auth/login", query_string={"next": target})
    assert done.status_code == 302, text(done)
    assert done.headers["Location"] == "/"


def test_a_local_next_with_a_query_is_kept(app: Flask):
    target = "/requests?state=pending&tenant=defence"
    done = sign_in(app.test_client(), "officer-1", next_url=target)
    assert done.headers["Location"] == target


def test_the_callback_checks_next_again(app: Flask):
    # A sign-in begun before the stricter check (or a session store written by other code)
    # may hold any target; the callback sends the browser only to a safe one.
    client = app.test_client()
    started = client.get("/auth/login")
    (pending,) = session_of(app, client).logins.values()
    pending.next_url = "/requests\r\nSet-Cookie: planted=1"
    done = client.get(at_idp(started.headers["Location"], "officer-1"))
    assert done.status_code == 302, text(done)
    assert done.headers["Location"] == "/"


def test_an_idle_session_ends(app: Flask, users: Users):
    client = users("officer-1")
    assert client.get("/queue").status_code == 200
    store = app.extensions["sovereign.console"].store
    store.clock = lambda: time.time() + app.config["CONSOLE_IDLE_TIMEOUT_S"] + 1
    page = client.get("/queue")
    assert page.status_code == 302
    assert urlsplit(page.headers["Location"]).path == "/auth/login"


def test_a_session_ends_after_its_absolute_lifetime_even_when_busy(app: Flask, users: Users):
    client = users("officer-1")
    session = session_of(app, client)
    session.created_at -= app.config["CONSOLE_SESSION_MAX_S"] + 1
    assert client.get("/queue").status_code == 302


def test_an_expired_access_token_is_refreshed(app: Flask, users: Users):
    client = users("officer-1")
    session = session_of(app, client)
    old_refresh = session.refresh_token
    session.access_token = "expired-or-garbage"
    assert client.get("/queue").status_code == 200
    assert session.access_token != "expired-or-garbage"
    assert session.refresh_token != old_refresh  # the IdP rotates refresh tokens


def test_a_revoked_idp_session_signs_the_console_out(app: Flask, users: Users, console_idp: Any):
    client = users("officer-1")
    session = session_of(app, client)
    KeycloakOpenID(
        server_url=console_idp.url,
        realm_name="sovereign",
        client_id=CONSOLE_CLIENT_ID,
        client_secret_key=CONSOLE_CLIENT_SECRET,
    ).logout(session.refresh_token)
    session.access_token = "expired-or-garbage"
    page = client.get("/queue")
    assert page.status_code == 302
    assert urlsplit(page.headers["Location"]).path == "/auth/login"


def test_logout_needs_the_csrf_token(app: Flask, users: Users):
    client = users("officer-1")
    page = client.post("/auth/logout")
    assert page.status_code == 400
    assert "security token" in page.get_data(as_text=True)
    assert client.get("/queue").status_code == 200  # still signed in


def test_logout_ends_the_idp_session_too(app: Flask, users: Users, console_idp: Any):
    client = users("officer-1")
    session = session_of(app, client)
    access, refresh = session.access_token, session.refresh_token
    confirm = client.get("/auth/logout")
    assert confirm.status_code == 200
    out = client.post("/auth/logout", data={"csrf_token": csrf(client, "/auth/logout")})
    assert out.status_code == 302
    target = out.headers["Location"]
    assert target.startswith(f"{console_idp.url}/realms/sovereign/protocol/openid-connect/logout?")
    q = query_of(target)
    assert q["post_logout_redirect_uri"] == [f"{ORIGIN}/"]
    assert q["id_token_hint"]
    # The IdP session is over: its tokens are inactive and the refresh token is refused.
    idp = KeycloakOpenID(
        server_url=console_idp.url,
        realm_name="sovereign",
        client_id=CONSOLE_CLIENT_ID,
        client_secret_key=CONSOLE_CLIENT_SECRET,
    )
    assert idp.introspect(access) == {"active": False}
    assert idp.introspect(refresh) == {"active": False}
    # The browser goes through the IdP's end-session endpoint and comes back signed out.
    back = requests.get(target, allow_redirects=False, timeout=10)
    assert back.status_code == 302
    assert back.headers["Location"] == f"{ORIGIN}/?state=signed-out"
    landing = client.get("/?state=signed-out").get_data(as_text=True)
    assert "You are signed out" in landing
    assert client.get("/queue").status_code == 302


def test_pages_carry_security_headers(app: Flask, users: Users, console_idp: Any):
    page = users("auditor").get("/audit")
    csp = page.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert f"form-action 'self' {console_idp.url}" in csp
    assert "script-src" not in csp  # no scripts at all
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Cache-Control"] == "no-store"


def test_a_secure_console_uses_a_host_prefixed_secure_cookie(tmp_path: Path, console_idp: Any):
    app = make_app(tmp_path, console_idp.url, CONSOLE_COOKIE_SECURE=True)
    try:
        started = app.test_client().get("/auth/login", base_url="https://localhost")
        cookie = started.headers["Set-Cookie"]
        assert cookie.startswith("__Host-sovereign-console=")
        assert "Secure" in cookie and "HttpOnly" in cookie and "Path=/" in cookie
        assert "Domain" not in cookie
    finally:
        app.extensions["sovereign"].close()


def test_the_banner_stylesheet_colours_each_level(app: Flask):
    css = app.test_client().get("/console-banner.css")
    assert css.mimetype == "text/css"
    text = css.get_data(as_text=True)
    assert ".classification-0 { background: #007a33;" in text
    assert ".classification-3 { background: #c8102e;" in text


def test_id_tokens_get_the_api_checks_plus_type_audience_and_nonce(app: Flask, console_idp: Any):
    from devstack.idp import CLI_CLIENT_ID, DEMO_PASSWORD
    from sovereign.errors import AuthenticationError

    identity = app.extensions["sovereign"].identity

    def tokens(client_id: str, secret: str | None = None) -> dict[str, Any]:
        return KeycloakOpenID(
            server_url=console_idp.url,
            realm_name="sovereign",
            client_id=client_id,
            client_secret_key=secret,
        ).token("officer-1", DEMO_PASSWORD)

    console = tokens(CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET)
    verify = identity.verify_id_token
    with pytest.raises(AuthenticationError, match="nonce does not match"):
        verify(console["id_token"], client_id=CONSOLE_CLIENT_ID, nonce="n")  # none was sent
    with pytest.raises(AuthenticationError, match="not an ID token"):
        verify(console["access_token"], client_id=CONSOLE_CLIENT_ID, nonce="n")
    with pytest.raises(AuthenticationError, match="not for this service"):
        verify(tokens(CLI_CLIENT_ID)["id_token"], client_id=CONSOLE_CLIENT_ID, nonce="n")
    header, payload, _signature = console["id_token"].split(".")
    with pytest.raises(AuthenticationError, match="does not verify"):
        verify(f"{header}.{payload}.AAAA", client_id=CONSOLE_CLIENT_ID, nonce="n")
    # And an ID token is never a bearer token for the API or the console's pages.
    with pytest.raises(AuthenticationError, match="not an access token"):
        identity.authenticate(console["id_token"])
