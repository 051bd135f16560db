"""The dev IdP over real HTTP, driven by python-keycloak unmodified (and plain requests).

Expected claims are spelled out here rather than read back from ``DEMO_USERS``, so a change to
the demo data or the token shape fails a test instead of silently agreeing with itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from keycloak import KeycloakOpenID
from keycloak.exceptions import (
    KeycloakAuthenticationError,
    KeycloakError,
    KeycloakGetError,
    KeycloakPostError,
)
from keycloak.pkce_utils import generate_code_challenge, generate_code_verifier

from devstack.idp import (
    DevIdpRefusedError,
    ServerHandle,
    create_idp_app,
    password_token,
    serve_in_thread,
    start_dev_idp,
)

pytestmark = pytest.mark.idp

REALM = "sovereign"
PASSWORD = "sovereign"
CLI = "sovereign-cli"
CONSOLE = "sovereign"
CONSOLE_SECRET = "sovereign-dev-secret"
CALLBACK = "http://127.0.0.1:8700/auth/callback"
SIGNED_OUT = "http://127.0.0.1:8700/"
SUBJECT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:sovereign:devidp:subject")
ALL_COMPARTMENTS = ["CRYPTO", "EU", "NATO"]

# username -> (roles, groups, clearance or None, compartments)
EXPECTED_USERS: dict[str, tuple[list[str], list[str], str | None, list[str]]] = {
    "analyst-research": (["analyst"], ["/tenants/research"], "UNCLASSIFIED", []),
    "analyst-defence": (["analyst"], ["/tenants/defence"], "SECRET", ["NATO"]),
    "officer-1": (["security-officer"], [], "SECRET", ALL_COMPARTMENTS),
    "officer-2": (["security-officer"], [], "SECRET", ALL_COMPARTMENTS),
    "auditor": (["auditor"], [], "SECRET", ALL_COMPARTMENTS),
    "operator": (["operator"], [], None, []),
}


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def idp() -> Iterator[ServerHandle]:
    handle, _app = start_dev_idp(environment="testing")
    with handle:
        yield handle


@pytest.fixture(scope="module")
def issuer(idp: ServerHandle) -> str:
    return f"{idp.url}/realms/{REALM}"


@pytest.fixture
def cli(idp: ServerHandle) -> KeycloakOpenID:
    return KeycloakOpenID(server_url=idp.url, realm_name=REALM, client_id=CLI)


@pytest.fixture
def console(idp: ServerHandle) -> KeycloakOpenID:
    return KeycloakOpenID(
        server_url=idp.url, realm_name=REALM, client_id=CONSOLE, client_secret_key=CONSOLE_SECRET
    )


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def jwks(idp: ServerHandle) -> jwt.PyJWKSet:
    with requests.get(f"{idp.url}/realms/{REALM}/protocol/openid-connect/certs", timeout=10) as r:
        r.raise_for_status()
        return jwt.PyJWKSet.from_dict(r.json())


def verify(token: str, jwks: jwt.PyJWKSet, *, audience: str, issuer: str) -> dict[str, Any]:
    """Verify like a Keycloak resource server: RS256 only, kid from the JWKS, aud, iss, exp."""
    kid = jwt.get_unverified_header(token)["kid"]
    claims: dict[str, Any] = jwt.decode(
        token,
        jwks[kid].key,
        algorithms=["RS256"],
        audience=audience,
        issuer=issuer,
        options={"require": ["exp", "iat", "iss", "aud", "sub"]},
    )
    return claims


def rfc7638_thumbprint(jwk: dict[str, Any]) -> str:
    canonical = json.dumps({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]}, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def oauth_error(error: KeycloakError) -> str:
    """The RFC 6749 ``error`` code of a failed python-keycloak call."""
    assert error.response_body is not None
    body: dict[str, str] = json.loads(error.response_body)
    return body["error"]


def half_hash(value: str) -> str:
    digest = hashlib.sha256(value.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest[:16]).rstrip(b"=").decode()


class LoginForm(HTMLParser):
    """Collects what a user (or a screen reader) would see on the login page."""

    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}
        self.inputs: dict[str, dict[str, str | None]] = {}
        self.labels: dict[str, str] = {}
        self.title = ""
        self.alerts: list[str] = []
        self._in: str | None = None
        self._label_for: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"] or ""] = a.get("value") or ""
        elif tag == "input":
            self.inputs[a.get("name") or ""] = a
        elif tag == "label":
            self._label_for = a.get("for")
            self._in = "label"
        elif tag == "title":
            self._in = "title"
        elif a.get("role") == "alert":
            self._in = "alert"

    def handle_endtag(self, tag: str) -> None:
        self._in = None

    def handle_data(self, data: str) -> None:
        if self._in == "title":
            self.title += data
        elif self._in == "label" and self._label_for:
            self.labels[self._label_for] = data.strip()
        elif self._in == "alert":
            self.alerts.append(data.strip())


def parse_form(html: str) -> LoginForm:
    form = LoginForm()
    form.feed(html)
    return form


def start_login(http: requests.Session, url: str) -> tuple[LoginForm, requests.Response]:
    response = http.get(url, allow_redirects=False, timeout=10)
    return parse_form(response.text), response


def submit_login(
    http: requests.Session, page_url: str, form: LoginForm, username: str, password: str
) -> requests.Response:
    assert form.action is not None
    return http.post(
        urljoin(page_url, form.action),
        data={**form.hidden, "username": username, "password": password},
        allow_redirects=False,
        timeout=10,
    )


def code_from(response: requests.Response, redirect_uri: str) -> dict[str, list[str]]:
    assert response.status_code == 302, response.text
    location = response.headers["Location"]
    assert location.startswith(redirect_uri + "?"), location
    return parse_qs(urlsplit(location).query)


def authorize_with_pkce(
    cli: KeycloakOpenID,
    http: requests.Session,
    *,
    username: str = "analyst-defence",
    verifier: str | None = None,
) -> tuple[str, str, str]:
    """Run the browser half of the code flow; return (code, verifier, nonce)."""
    verifier = verifier or generate_code_verifier()
    challenge, method = generate_code_challenge(verifier)
    state, nonce = uuid.uuid4().hex, uuid.uuid4().hex
    url = cli.auth_url(
        redirect_uri=CALLBACK,
        scope="openid",
        state=state,
        nonce=nonce,
        code_challenge=challenge,
        code_challenge_method=method,
    )
    form, _ = start_login(http, url)
    params = code_from(submit_login(http, url, form, username, PASSWORD), CALLBACK)
    assert params["state"] == [state]
    return params["code"][0], verifier, nonce


# --------------------------------------------------------------------------- discovery


def test_well_known_is_keycloak_shaped(cli: KeycloakOpenID, idp: ServerHandle) -> None:
    doc = cli.well_known()
    base = f"{idp.url}/realms/{REALM}"
    oidc = f"{base}/protocol/openid-connect"
    assert doc["issuer"] == base
    assert doc["authorization_endpoint"] == f"{oidc}/auth"
    assert doc["token_endpoint"] == f"{oidc}/token"
    assert doc["jwks_uri"] == f"{oidc}/certs"
    assert doc["userinfo_endpoint"] == f"{oidc}/userinfo"
    assert doc["introspection_endpoint"] == f"{oidc}/token/introspect"
    assert doc["end_session_endpoint"] == f"{oidc}/logout"
    assert set(doc["grant_types_supported"]) == {"authorization_code", "password", "refresh_token"}
    assert doc["response_types_supported"] == ["code"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    assert doc["id_token_signing_alg_values_supported"] == ["RS256"]
    assert doc["subject_types_supported"] == ["public"]
    assert doc["sovereign_dev_idp"] is True  # lets production refuse the stand-in


def test_certs_expose_one_rs256_key_with_thumbprint_kid(cli: KeycloakOpenID) -> None:
    keys = cli.certs()["keys"]
    assert len(keys) == 1
    (key,) = keys
    assert key["kty"] == "RSA"
    assert key["alg"] == "RS256"
    assert key["use"] == "sig"
    assert key["kid"] == rfc7638_thumbprint(key)
    assert not {"d", "p", "q", "dp", "dq", "qi"} & key.keys(), "private members leaked"


def test_public_key_matches_jwks(cli: KeycloakOpenID, jwks: jwt.PyJWKSet) -> None:
    der = base64.b64decode(cli.public_key())
    realm_key = serialization.load_der_public_key(der)
    assert isinstance(realm_key, rsa.RSAPublicKey)
    jwks_key = jwks.keys[0].key
    assert isinstance(jwks_key, rsa.RSAPublicKey)
    assert realm_key.public_numbers() == jwks_key.public_numbers()


def test_unknown_realm_is_404_like_keycloak(idp: ServerHandle, http: requests.Session) -> None:
    response = http.get(f"{idp.url}/realms/nope/.well-known/openid-configuration", timeout=10)
    assert response.status_code == 404
    assert response.json() == {"error": "Realm does not exist"}
    other = KeycloakOpenID(server_url=idp.url, realm_name="nope", client_id=CLI)
    with pytest.raises(KeycloakGetError) as excinfo:
        other.well_known()
    assert excinfo.value.response_code == 404


def test_same_key_gives_same_kid() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    kids = []
    for _ in range(2):
        app = create_idp_app(
            environment="testing", issuer_base="http://127.0.0.1:1", signing_key=key
        )
        body = app.test_client().get(f"/realms/{REALM}/protocol/openid-connect/certs").json
        assert body is not None
        kids.append(body["keys"][0]["kid"])
    assert kids[0] == kids[1]


# --------------------------------------------------------------------------- password grant


@pytest.mark.parametrize("username", sorted(EXPECTED_USERS))
def test_password_grant_claims(
    username: str, cli: KeycloakOpenID, jwks: jwt.PyJWKSet, issuer: str
) -> None:
    roles, groups, clearance, compartments = EXPECTED_USERS[username]
    token = cli.token(username, PASSWORD)
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 300
    assert set(token["scope"].split()) >= {"openid", "profile", "email"}

    header = jwt.get_unverified_header(token["access_token"])
    assert header["typ"] == "JWT"
    assert header["alg"] == "RS256"
    assert header["kid"] == jwks.keys[0].key_id

    claims = verify(token["access_token"], jwks, audience="sovereign", issuer=issuer)
    assert claims["aud"] == ["sovereign", "account"]
    assert claims["azp"] == CLI
    assert claims["typ"] == "Bearer"
    assert claims["sub"] == str(uuid.uuid5(SUBJECT_NAMESPACE, username))
    assert claims["preferred_username"] == username
    assert claims["email"] == f"{username}@sovereign.test"
    assert claims["name"]
    assert claims["exp"] - claims["iat"] == 300
    assert abs(claims["auth_time"] - time.time()) < 60
    assert claims["sid"] == token["session_state"]
    assert uuid.UUID(claims["jti"])
    assert set(claims["scope"].split()) >= {"openid", "profile", "email"}
    assert claims["realm_access"] == {"roles": roles}
    assert claims["groups"] == groups
    assert claims["compartments"] == compartments
    if clearance is None:
        assert "clearance" not in claims
    else:
        assert claims["clearance"] == clearance


def test_subject_is_stable_across_logins(cli: KeycloakOpenID) -> None:
    first = jwt.decode(
        cli.token("auditor", PASSWORD)["access_token"], options={"verify_signature": False}
    )
    second = jwt.decode(
        cli.token("auditor", PASSWORD)["access_token"], options={"verify_signature": False}
    )
    assert first["sub"] == second["sub"]
    assert first["sid"] != second["sid"]
    assert first["jti"] != second["jti"]


def test_password_token_helper(idp: ServerHandle, jwks: jwt.PyJWKSet, issuer: str) -> None:
    access = password_token(idp.url, "operator", PASSWORD)
    assert verify(access, jwks, audience="sovereign", issuer=issuer)["preferred_username"] == (
        "operator"
    )


@pytest.mark.parametrize(("username", "password"), [("officer-1", "wrong"), ("nobody", PASSWORD)])
def test_wrong_credentials_are_refused(cli: KeycloakOpenID, username: str, password: str) -> None:
    with pytest.raises(KeycloakAuthenticationError) as excinfo:
        cli.token(username, password)
    assert excinfo.value.response_code == 401
    assert oauth_error(excinfo.value) == "invalid_grant"


def test_password_grant_id_token(cli: KeycloakOpenID, jwks: jwt.PyJWKSet, issuer: str) -> None:
    token = cli.token("analyst-research", PASSWORD)
    id_claims = verify(token["id_token"], jwks, audience=CLI, issuer=issuer)
    assert id_claims["aud"] == CLI
    assert id_claims["typ"] == "ID"
    assert id_claims["at_hash"] == half_hash(token["access_token"])
    assert id_claims["groups"] == ["/tenants/research"]


def test_confidential_client_secret_post_and_basic(
    console: KeycloakOpenID, idp: ServerHandle, http: requests.Session, issuer: str
) -> None:
    posted = console.token("officer-2", PASSWORD)  # python-keycloak uses client_secret_post
    assert jwt.decode(posted["access_token"], options={"verify_signature": False})["azp"] == CONSOLE
    basic = http.post(
        f"{issuer}/protocol/openid-connect/token",
        data={"grant_type": "password", "username": "officer-2", "password": PASSWORD},
        auth=(CONSOLE, CONSOLE_SECRET),
        timeout=10,
    )
    assert basic.status_code == 200, basic.text
    assert basic.json()["access_token"]


def test_confidential_client_wrong_secret_is_refused(idp: ServerHandle) -> None:
    wrong = KeycloakOpenID(
        server_url=idp.url, realm_name=REALM, client_id=CONSOLE, client_secret_key="nope"
    )
    with pytest.raises((KeycloakAuthenticationError, KeycloakPostError)) as excinfo:
        wrong.token("officer-2", PASSWORD)
    assert oauth_error(excinfo.value) == "invalid_client"


def test_confidential_client_needs_its_secret(idp: ServerHandle) -> None:
    bare = KeycloakOpenID(server_url=idp.url, realm_name=REALM, client_id=CONSOLE)
    with pytest.raises((KeycloakAuthenticationError, KeycloakPostError)) as excinfo:
        bare.token("officer-2", PASSWORD)
    assert oauth_error(excinfo.value) == "invalid_client"


# --------------------------------------------------------------------------- userinfo


def test_userinfo(cli: KeycloakOpenID) -> None:
    token = cli.token("analyst-defence", PASSWORD)
    info = cli.userinfo(token["access_token"])
    assert isinstance(info, dict)
    assert info["sub"] == str(uuid.uuid5(SUBJECT_NAMESPACE, "analyst-defence"))
    assert info["preferred_username"] == "analyst-defence"
    assert info["clearance"] == "SECRET"
    assert info["compartments"] == ["NATO"]
    assert info["groups"] == ["/tenants/defence"]


def test_userinfo_refuses_garbage_and_id_tokens(cli: KeycloakOpenID) -> None:
    with pytest.raises(KeycloakAuthenticationError):
        cli.userinfo("not-a-token")
    id_token = cli.token("analyst-defence", PASSWORD)["id_token"]
    with pytest.raises(KeycloakAuthenticationError):
        cli.userinfo(id_token)


def test_userinfo_needs_openid_scope(cli: KeycloakOpenID) -> None:
    token = cli.token("analyst-defence", PASSWORD, scope="profile")
    assert "openid" not in token["scope"].split()
    assert "id_token" not in token
    with pytest.raises(KeycloakGetError) as excinfo:
        cli.userinfo(token["access_token"])
    assert excinfo.value.response_code == 403


# --------------------------------------------------------------------------- introspection


def test_introspect_active_access_token(cli: KeycloakOpenID, console: KeycloakOpenID) -> None:
    access = cli.token("auditor", PASSWORD)["access_token"]
    result = console.introspect(access)
    assert result["active"] is True
    assert result["username"] == "auditor"
    assert result["client_id"] == CLI
    assert result["token_type"] == "Bearer"
    assert result["realm_access"] == {"roles": ["auditor"]}
    assert result["clearance"] == "SECRET"


def test_introspect_refresh_token(cli: KeycloakOpenID, console: KeycloakOpenID) -> None:
    refresh = cli.token("auditor", PASSWORD)["refresh_token"]
    result = console.introspect(refresh)
    assert result["active"] is True
    assert result["typ"] == "Refresh"
    assert result["username"] == "auditor"


@pytest.mark.parametrize("garbage", ["garbage", "a.b.c", ""])
def test_introspect_garbage_is_inactive(console: KeycloakOpenID, garbage: str) -> None:
    assert console.introspect(garbage) == {"active": False}


def test_introspect_foreign_signature_is_inactive(
    cli: KeycloakOpenID, console: KeycloakOpenID
) -> None:
    genuine = jwt.decode(
        cli.token("auditor", PASSWORD)["access_token"], options={"verify_signature": False}
    )
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = jwt.encode(genuine, other_key, algorithm="RS256", headers={"typ": "JWT"})
    assert console.introspect(forged) == {"active": False}


def test_public_client_cannot_introspect(cli: KeycloakOpenID) -> None:
    access = cli.token("auditor", PASSWORD)["access_token"]
    with pytest.raises(KeycloakAuthenticationError):
        cli.introspect(access)


def test_expired_tokens_are_inactive() -> None:
    # Two realms, one clock: access tokens live 1 s in the first, refresh tokens 1 s in the
    # second. Both expiry checks are whole seconds, so 2.1 s is past either.
    short_access, _ = start_dev_idp(environment="testing", access_token_ttl=1)
    short_refresh, _ = start_dev_idp(environment="testing", refresh_token_ttl=1)
    with short_access, short_refresh:
        cli = KeycloakOpenID(server_url=short_access.url, realm_name=REALM, client_id=CLI)
        console = KeycloakOpenID(
            server_url=short_access.url,
            realm_name=REALM,
            client_id=CONSOLE,
            client_secret_key=CONSOLE_SECRET,
        )
        cli_2 = KeycloakOpenID(server_url=short_refresh.url, realm_name=REALM, client_id=CLI)
        token = cli.token("operator", PASSWORD)
        assert token["expires_in"] == 1
        token_2 = cli_2.token("operator", PASSWORD)
        assert token_2["refresh_expires_in"] == 1
        time.sleep(2.1)
        assert console.introspect(token["access_token"]) == {"active": False}
        with pytest.raises(KeycloakAuthenticationError):
            cli.userinfo(token["access_token"])
        # Here the refresh token outlives the access token...
        assert cli.refresh_token(token["refresh_token"])["access_token"]
        # ...and here it does not.
        with pytest.raises(KeycloakPostError) as excinfo:
            cli_2.refresh_token(token_2["refresh_token"])
        assert oauth_error(excinfo.value) == "invalid_grant"


# --------------------------------------------------------------------------- refresh, logout


def test_refresh_token_rotates(cli: KeycloakOpenID, jwks: jwt.PyJWKSet, issuer: str) -> None:
    first = cli.token("officer-1", PASSWORD)
    second = cli.refresh_token(first["refresh_token"])
    old = verify(first["access_token"], jwks, audience="sovereign", issuer=issuer)
    new = verify(second["access_token"], jwks, audience="sovereign", issuer=issuer)
    assert new["jti"] != old["jti"]
    assert new["sid"] == old["sid"]
    assert new["auth_time"] == old["auth_time"]
    assert second["refresh_token"] != first["refresh_token"]
    assert verify(second["id_token"], jwks, audience=CLI, issuer=issuer)["sid"] == old["sid"]
    with pytest.raises(KeycloakPostError) as excinfo:
        cli.refresh_token(first["refresh_token"])
    assert excinfo.value.response_code == 400


def test_refresh_token_is_bound_to_its_client(cli: KeycloakOpenID, console: KeycloakOpenID) -> None:
    refresh = cli.token("officer-1", PASSWORD)["refresh_token"]
    with pytest.raises(KeycloakPostError):
        console.refresh_token(refresh)


def test_logout_revokes_refresh_token_and_session(
    cli: KeycloakOpenID, console: KeycloakOpenID
) -> None:
    token = cli.token("officer-2", PASSWORD)
    assert console.introspect(token["access_token"])["active"] is True
    assert cli.logout(token["refresh_token"]) == {}
    with pytest.raises(KeycloakPostError) as excinfo:
        cli.refresh_token(token["refresh_token"])
    assert excinfo.value.response_code == 400
    assert console.introspect(token["access_token"]) == {"active": False}
    assert console.introspect(token["refresh_token"]) == {"active": False}
    with pytest.raises(KeycloakPostError):
        cli.logout(token["refresh_token"])


def test_logout_needs_the_refresh_tokens_own_client(
    cli: KeycloakOpenID, console: KeycloakOpenID
) -> None:
    refresh = cli.token("officer-2", PASSWORD)["refresh_token"]
    with pytest.raises(KeycloakPostError) as excinfo:
        console.logout(refresh)
    assert oauth_error(excinfo.value) == "invalid_grant"
    assert cli.refresh_token(refresh)["access_token"]


def test_logout_leaves_other_sessions_alone(cli: KeycloakOpenID) -> None:
    kept = cli.token("officer-2", PASSWORD)
    ended = cli.token("officer-2", PASSWORD)
    cli.logout(ended["refresh_token"])
    assert cli.refresh_token(kept["refresh_token"])["access_token"]


# --------------------------------------------------------------------------- code flow


def test_login_page_is_accessible(cli: KeycloakOpenID, http: requests.Session) -> None:
    challenge, method = generate_code_challenge(generate_code_verifier())
    url = cli.auth_url(
        redirect_uri=CALLBACK,
        scope="openid",
        state="s-1",
        nonce="n-1",
        code_challenge=challenge,
        code_challenge_method=method,
    )
    form, response = start_login(http, url)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/html")
    assert response.headers["Cache-Control"] == "no-store"
    assert form.title == f"Sign in to {REALM}"
    assert form.labels == {"username": "Username", "password": "Password"}
    assert form.inputs["username"]["id"] == "username"
    assert form.inputs["password"]["type"] == "password"
    assert form.hidden["client_id"] == CLI
    assert form.hidden["redirect_uri"] == CALLBACK
    assert form.hidden["state"] == "s-1"
    assert form.hidden["nonce"] == "n-1"
    assert form.hidden["code_challenge"] == challenge
    assert form.action == urlsplit(url).path
    assert 'lang="en"' in response.text


def test_login_page_escapes_parameters(cli: KeycloakOpenID, http: requests.Session) -> None:
    challenge, method = generate_code_challenge(generate_code_verifier())
    url = cli.auth_url(
        redirect_uri=CALLBACK,
        state='"><script>alert(1)</script>',
        code_challenge=challenge,
        code_challenge_method=method,
    )
    form, response = start_login(http, url)
    assert response.status_code == 200
    assert "<script>" not in response.text
    assert form.hidden["state"] == '"><script>alert(1)</script>'


def test_authorization_code_flow_with_pkce(
    cli: KeycloakOpenID, http: requests.Session, jwks: jwt.PyJWKSet, issuer: str
) -> None:
    code, verifier, nonce = authorize_with_pkce(cli, http)
    time.sleep(1.1)  # so that auth_time (the login) and iat (the exchange) differ
    token = cli.token(
        grant_type="authorization_code",
        code=code,
        redirect_uri=CALLBACK,
        code_verifier=verifier,
    )
    access = verify(token["access_token"], jwks, audience="sovereign", issuer=issuer)
    assert access["preferred_username"] == "analyst-defence"
    assert access["azp"] == CLI
    assert access["compartments"] == ["NATO"]
    id_claims = verify(token["id_token"], jwks, audience=CLI, issuer=issuer)
    assert id_claims["nonce"] == nonce
    assert id_claims["aud"] == CLI
    assert id_claims["sub"] == access["sub"]
    assert id_claims["sid"] == access["sid"]
    assert id_claims["auth_time"] == access["auth_time"]
    assert access["auth_time"] < access["iat"]
    assert id_claims["at_hash"] == half_hash(token["access_token"])
    assert jwt.get_unverified_header(token["id_token"])["kid"] == jwks.keys[0].key_id
    assert token["refresh_token"]


def test_authorization_code_is_single_use(cli: KeycloakOpenID, http: requests.Session) -> None:
    code, verifier, _ = authorize_with_pkce(cli, http)

    def exchange() -> dict[str, Any]:
        return cli.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=CALLBACK,
            code_verifier=verifier,
        )

    assert exchange()["access_token"]
    with pytest.raises(KeycloakPostError) as excinfo:
        exchange()
    assert oauth_error(excinfo.value) == "invalid_grant"


def test_code_is_bound_to_its_client(
    cli: KeycloakOpenID, console: KeycloakOpenID, http: requests.Session
) -> None:
    code, verifier, _ = authorize_with_pkce(cli, http)
    with pytest.raises(KeycloakPostError) as excinfo:
        console.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=CALLBACK,
            code_verifier=verifier,
        )
    assert oauth_error(excinfo.value) == "invalid_grant"


def test_pkce_wrong_verifier_is_refused(cli: KeycloakOpenID, http: requests.Session) -> None:
    code, verifier, _ = authorize_with_pkce(cli, http)
    wrong = generate_code_verifier()
    assert wrong != verifier
    with pytest.raises(KeycloakPostError) as excinfo:
        cli.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri=CALLBACK,
            code_verifier=wrong,
        )
    assert oauth_error(excinfo.value) == "invalid_grant"


def test_pkce_missing_verifier_is_refused(cli: KeycloakOpenID, http: requests.Session) -> None:
    code, _, _ = authorize_with_pkce(cli, http)
    with pytest.raises(KeycloakPostError) as excinfo:
        cli.token(grant_type="authorization_code", code=code, redirect_uri=CALLBACK)
    assert oauth_error(excinfo.value) == "invalid_request"


def test_code_exchange_needs_the_same_redirect_uri(
    cli: KeycloakOpenID, http: requests.Session
) -> None:
    code, verifier, _ = authorize_with_pkce(cli, http)
    with pytest.raises(KeycloakPostError):
        cli.token(
            grant_type="authorization_code",
            code=code,
            redirect_uri="http://localhost:8700/auth/callback",
            code_verifier=verifier,
        )


@pytest.mark.parametrize(
    ("extra", "why"),
    [
        ({}, "public clients must use PKCE"),
        ({"code_challenge": "x" * 43, "code_challenge_method": "plain"}, "only S256"),
        ({"code_challenge": "x" * 43}, "absent method means plain"),
    ],
)
def test_public_client_needs_s256_challenge(
    issuer: str, http: requests.Session, extra: dict[str, str], why: str
) -> None:
    params = {
        "client_id": CLI,
        "response_type": "code",
        "redirect_uri": CALLBACK,
        "scope": "openid",
        "state": "st",
        **extra,
    }
    response = http.get(
        f"{issuer}/protocol/openid-connect/auth", params=params, allow_redirects=False, timeout=10
    )
    query = code_from(response, CALLBACK)
    assert query["error"] == ["invalid_request"], why
    assert query["state"] == ["st"]
    assert "code" not in query


def test_unregistered_redirect_uri_is_not_followed(issuer: str, http: requests.Session) -> None:
    response = http.get(
        f"{issuer}/protocol/openid-connect/auth",
        params={
            "client_id": CLI,
            "response_type": "code",
            "redirect_uri": "http://127.0.0.1:8700/evil",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 400
    assert "Location" not in response.headers


def test_wrong_password_rerenders_the_form(cli: KeycloakOpenID, http: requests.Session) -> None:
    challenge, method = generate_code_challenge(generate_code_verifier())
    url = cli.auth_url(
        redirect_uri=CALLBACK, state="s", code_challenge=challenge, code_challenge_method=method
    )
    form, _ = start_login(http, url)
    response = submit_login(http, url, form, "officer-1", "wrong")
    assert response.status_code == 401
    assert "Location" not in response.headers
    again = parse_form(response.text)
    assert again.alerts == ["Invalid username or password."]
    assert again.hidden == form.hidden
    assert "wrong" not in response.text


def test_confidential_code_flow_with_basic_auth(
    idp: ServerHandle, issuer: str, http: requests.Session, jwks: jwt.PyJWKSet
) -> None:
    console = KeycloakOpenID(
        server_url=idp.url, realm_name=REALM, client_id=CONSOLE, client_secret_key=CONSOLE_SECRET
    )
    # The realm definition requires PKCE (S256) of the confidential console client too.
    verifier = generate_code_verifier()
    challenge, method = generate_code_challenge(verifier)
    url = console.auth_url(
        redirect_uri=CALLBACK,
        scope="openid",
        state="c",
        nonce="n",
        code_challenge=challenge,
        code_challenge_method=method,
    )
    form, _ = start_login(http, url)
    code = code_from(submit_login(http, url, form, "officer-1", PASSWORD), CALLBACK)["code"][0]
    response = http.post(
        f"{issuer}/protocol/openid-connect/token",
        data={
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": CALLBACK,
            "code_verifier": verifier,
        },
        auth=(CONSOLE, CONSOLE_SECRET),
        timeout=10,
    )
    assert response.status_code == 200, response.text
    id_claims = verify(response.json()["id_token"], jwks, audience=CONSOLE, issuer=issuer)
    assert id_claims["nonce"] == "n"


def test_rp_initiated_logout_redirects_and_ends_session(
    cli: KeycloakOpenID, console: KeycloakOpenID, issuer: str, http: requests.Session
) -> None:
    token = cli.token("analyst-research", PASSWORD)
    response = http.get(
        f"{issuer}/protocol/openid-connect/logout",
        params={
            "id_token_hint": token["id_token"],
            "post_logout_redirect_uri": SIGNED_OUT,
            "state": "bye",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 302
    assert response.headers["Location"] == f"{SIGNED_OUT}?state=bye"
    assert console.introspect(token["access_token"]) == {"active": False}


def test_rp_initiated_logout_refuses_unregistered_redirect(
    cli: KeycloakOpenID, console: KeycloakOpenID, issuer: str, http: requests.Session
) -> None:
    token = cli.token("analyst-research", PASSWORD)
    response = http.get(
        f"{issuer}/protocol/openid-connect/logout",
        params={
            "id_token_hint": token["id_token"],
            "post_logout_redirect_uri": "http://127.0.0.1:8700/elsewhere",
        },
        allow_redirects=False,
        timeout=10,
    )
    assert response.status_code == 400
    assert "Location" not in response.headers
    assert console.introspect(token["access_token"])["active"] is True


def test_extra_redirect_uris_are_registered_for_the_console() -> None:
    extra = "http://127.0.0.1:9999/auth/callback"
    handle, _app = start_dev_idp(environment="testing", extra_redirect_uris=[extra])
    with handle, requests.Session() as http:
        console = KeycloakOpenID(
            server_url=handle.url,
            realm_name=REALM,
            client_id=CONSOLE,
            client_secret_key=CONSOLE_SECRET,
        )
        challenge, method = generate_code_challenge(generate_code_verifier())
        url = console.auth_url(
            redirect_uri=extra, state="x", code_challenge=challenge, code_challenge_method=method
        )
        form, _ = start_login(http, url)
        assert code_from(submit_login(http, url, form, "operator", PASSWORD), extra)["code"]


# --------------------------------------------------------------------------- lifecycle


@pytest.mark.parametrize("environment", ["production", "staging", "", "Development"])
def test_creation_refused_outside_development(environment: str) -> None:
    with pytest.raises(DevIdpRefusedError):
        create_idp_app(environment=environment, issuer_base="http://127.0.0.1:1")
    with pytest.raises(DevIdpRefusedError):
        start_dev_idp(environment=environment)


def test_plain_http_issuer_must_be_loopback() -> None:
    # Authlib only accepts http on loopback (RFC 8252 section 7.3); refuse at startup.
    with pytest.raises(ValueError, match="https"):
        create_idp_app(environment="testing", issuer_base="http://idp.example:8080")
    assert create_idp_app(environment="testing", issuer_base="https://idp.example")


def test_creation_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="devstack.idp"):
        create_idp_app(environment="development", issuer_base="http://127.0.0.1:1")
    assert any(
        r.levelno == logging.WARNING and "never use in production" in r.getMessage()
        for r in caplog.records
    )


def test_serve_in_thread_stops_cleanly(http: requests.Session) -> None:
    app = create_idp_app(environment="testing", issuer_base="http://127.0.0.1:1")
    handle = serve_in_thread(app)
    assert handle.port > 0
    assert handle.url == f"http://127.0.0.1:{handle.port}"
    response = http.get(f"{handle.url}/realms/{REALM}/protocol/openid-connect/certs", timeout=10)
    assert response.status_code == 200
    handle.stop()
    handle.stop()
    http.close()
    with pytest.raises(requests.ConnectionError), requests.Session() as fresh:
        fresh.get(f"{handle.url}/realms/{REALM}", timeout=2)
