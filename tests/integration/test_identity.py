"""Bearer-token verification against the dev IdP over HTTP: every way a token can be wrong.

Tokens are minted with the IdP's own signing key where the test needs a *validly signed* token
that is wrong in one claim, so each rejection is for exactly the reason named.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from devstack.idp import DEMO_PASSWORD, password_token, start_dev_idp
from sovereign.adapters.keycloak import KeycloakIdentityProvider
from sovereign.domain.identity import Role
from sovereign.domain.labels import LabelScheme
from sovereign.errors import AuthenticationError, DependencyUnavailableError

pytestmark = pytest.mark.idp
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    handle, _ = start_dev_idp(environment="testing", signing_key=KEY)
    yield handle
    handle.stop()


@pytest.fixture
def verifier(server: Any) -> KeycloakIdentityProvider:
    return KeycloakIdentityProvider(
        server_url=server.url,
        realm="sovereign",
        client_id="sovereign",
        audience="sovereign",
        scheme=LabelScheme(),
        trust_dev_idp=True,
    )


@pytest.fixture(scope="module")
def real_token(server: Any) -> str:
    return password_token(server.url, "analyst-defence", DEMO_PASSWORD)


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})


def kid_of(token: str) -> str:
    return str(jwt.get_unverified_header(token)["kid"])


def mint(
    real: str, key: Any = KEY, alg: str = "RS256", kid: str | None = None, **changes: Any
) -> str:
    claims = {**claims_of(real), **changes}
    for name, value in list(claims.items()):
        if value is None:
            del claims[name]
    return jwt.encode(claims, key, algorithm=alg, headers={"kid": kid or kid_of(real)})


def test_real_token_maps_to_principal(verifier: KeycloakIdentityProvider, real_token: str):
    p = verifier.authenticate(real_token)
    assert p.username == "analyst-defence"
    assert p.roles == frozenset({Role.ANALYST})
    assert p.tenants == frozenset({"defence"})
    assert p.clearance == LabelScheme().label("SECRET", ["NATO"])
    assert p.subject == claims_of(real_token)["sub"]


def test_minted_copy_verifies(verifier: KeycloakIdentityProvider, real_token: str):
    # Guards the tests below: a re-signed unchanged token is accepted, so each rejection
    # is caused by the one change it makes.
    assert verifier.authenticate(mint(real_token)).username == "analyst-defence"


def test_alg_none_is_refused(verifier: KeycloakIdentityProvider, real_token: str):
    header = base64.urlsafe_b64encode(
        json.dumps({"alg": "none", "kid": kid_of(real_token)}).encode()
    )
    body = real_token.split(".")[1]
    token = header.decode().rstrip("=") + "." + body + "."
    with pytest.raises(AuthenticationError, match="algorithm 'none'"):
        verifier.authenticate(token)


def test_hs256_signed_with_the_public_key_is_refused(
    verifier: KeycloakIdentityProvider, real_token: str
):
    public_pem = KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # PyJWT refuses to HMAC with a PEM key, which is the attack; forge the signature by hand.
    import hashlib
    import hmac

    header = base64.urlsafe_b64encode(
        json.dumps({"alg": "HS256", "kid": kid_of(real_token)}).encode()
    ).rstrip(b"=")
    body = real_token.split(".")[1].encode()
    sig = base64.urlsafe_b64encode(
        hmac.new(public_pem, header + b"." + body, hashlib.sha256).digest()
    ).rstrip(b"=")
    with pytest.raises(AuthenticationError, match="algorithm 'HS256'"):
        verifier.authenticate((header + b"." + body + b"." + sig).decode())


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        # Times are taken when the test runs, not at collection: a long test before it (the
        # deployment scenario runs for half an hour) would otherwise make "+600 s" the past.
        ({"exp": lambda: int(time.time()) - 120}, "expired"),
        ({"iss": "http://127.0.0.1:1/realms/sovereign"}, "another issuer"),
        ({"aud": ["account"]}, "not for this service"),
        ({"nbf": lambda: int(time.time()) + 600}, "not valid yet"),
        ({"typ": "ID"}, "not an access token"),
        ({"exp": None}, "does not verify"),
        ({"clearance": "COSMIC"}, "clearance claim not understood"),
    ],
)
def test_wrong_claims_are_refused(
    verifier: KeycloakIdentityProvider, real_token: str, changes, reason
):
    claims = {name: value() if callable(value) else value for name, value in changes.items()}
    with pytest.raises(AuthenticationError, match=reason):
        verifier.authenticate(mint(real_token, **claims))


def test_leeway_tolerates_small_skew(verifier: KeycloakIdentityProvider, real_token: str):
    assert verifier.authenticate(mint(real_token, exp=int(time.time()) - 5))


def test_tampered_payload_is_refused(verifier: KeycloakIdentityProvider, real_token: str):
    head, _body, sig = real_token.split(".")
    claims = claims_of(real_token)
    claims["realm_access"] = {"roles": ["security-officer"]}
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    with pytest.raises(AuthenticationError, match="does not verify"):
        verifier.authenticate(f"{head}.{forged}.{sig}")


def test_unknown_kid_is_refused_after_one_refresh(
    verifier: KeycloakIdentityProvider, real_token: str
):
    verifier.authenticate(real_token)  # keys cached
    rogue = mint(real_token, key=OTHER_KEY, kid="rogue")
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.authenticate(rogue)
    # Same kid as the realm's but the wrong key: the signature check catches it.
    with pytest.raises(AuthenticationError, match="does not verify"):
        verifier.authenticate(mint(real_token, key=OTHER_KEY))


def test_jwks_is_refreshed_on_unknown_kid_but_rate_limited(server: Any, real_token: str):
    now = [1000.0]
    verifier = KeycloakIdentityProvider(
        server_url=server.url,
        realm="sovereign",
        client_id="sovereign",
        audience="sovereign",
        scheme=LabelScheme(),
        trust_dev_idp=True,
        clock=lambda: now[0],
    )
    fetches = []
    real_certs = verifier._oidc.certs
    verifier._oidc.certs = lambda: fetches.append(1) or real_certs()
    rogue = mint(real_token, key=OTHER_KEY, kid="rogue")
    with pytest.raises(AuthenticationError):
        verifier.authenticate(rogue)
    assert len(fetches) == 1
    for _ in range(5):  # a flood of unknown kids does not hammer the IdP
        with pytest.raises(AuthenticationError):
            verifier.authenticate(rogue)
    assert len(fetches) == 1
    # The realm rotated its key since we cached (simulated by an outdated cache): once the
    # refresh interval has passed, an unknown kid triggers one refresh and then verifies.
    verifier._keys = {}
    now[0] += 11
    assert verifier.authenticate(real_token).username == "analyst-defence"
    assert len(fetches) == 2


def test_a_malformed_key_or_key_set_never_becomes_a_server_error(server: Any, real_token: str):
    verifier = KeycloakIdentityProvider(
        server_url=server.url,
        realm="sovereign",
        client_id="sovereign",
        audience="sovereign",
        scheme=LabelScheme(),
        trust_dev_idp=True,
    )
    real = verifier._oidc.certs()
    broken = {"kid": "broken", "kty": "RSA", "use": "sig", "n": "not-base64!", "e": "AQAB"}
    # One unreadable key is skipped; the realm's good key still verifies.
    verifier._oidc.certs = lambda: {"keys": [broken, *real["keys"]]}
    assert verifier.authenticate(real_token).username == "analyst-defence"
    # A key set that is no JWKS (a proxy's page) is an unavailable IdP, not a crash.
    verifier._keys, verifier._fetched_at = {}, float("-inf")
    verifier._verified.clear()  # the good token is cached as verified until it expires
    verifier._oidc.certs = lambda: b"<html>gateway</html>"
    with pytest.raises(DependencyUnavailableError, match="not a JWKS"):
        verifier.authenticate(real_token)


def test_verified_tokens_are_cached_until_they_expire(
    verifier: KeycloakIdentityProvider, real_token: str, monkeypatch: pytest.MonkeyPatch
):
    verifier.authenticate(real_token)
    # With the keys gone (and no refresh allowed yet) only the cache can answer.
    verifier._keys = {}
    assert verifier.authenticate(real_token).username == "analyst-defence"
    other = mint(real_token, jti="another")
    with pytest.raises(AuthenticationError, match="unknown key"):
        verifier.authenticate(other)  # a different token is never served from the cache
    later = time.time() + 3600
    monkeypatch.setattr("sovereign.adapters.keycloak.time.time", lambda: later)
    with pytest.raises(AuthenticationError):
        verifier.authenticate(real_token)  # past exp the cache lets go and verification runs


def test_garbage_is_refused(verifier: KeycloakIdentityProvider):
    for token in ("", "abc", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30.c2ln"):
        with pytest.raises(AuthenticationError):
            verifier.authenticate(token)


def test_unreachable_idp_is_a_dependency_error():
    dead = KeycloakIdentityProvider(
        server_url="http://127.0.0.1:9",
        realm="sovereign",
        client_id="sovereign",
        audience="sovereign",
        scheme=LabelScheme(),
        timeout_s=1,
    )
    with pytest.raises(DependencyUnavailableError, match="identity provider"):
        dead.authenticate("a.b.c")
    with pytest.raises(DependencyUnavailableError):
        dead.ping()


def test_production_refuses_the_dev_idp(server: Any, real_token: str):
    strict = KeycloakIdentityProvider(
        server_url=server.url,
        realm="sovereign",
        client_id="sovereign",
        audience="sovereign",
        scheme=LabelScheme(),
        trust_dev_idp=False,
    )
    with pytest.raises(DependencyUnavailableError, match="development stand-in"):
        strict.authenticate(real_token)
