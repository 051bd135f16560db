"""The development identity provider: a Flask app that speaks Keycloak's OIDC dialect.

This module owns the IdP's Flask app factory, its Authlib authorization server and the
in-memory state behind it (user sessions, authorization codes, refresh tokens). The protocol
work is Authlib's: grants (RFC 6749), PKCE (RFC 7636), OpenID Connect ID tokens, introspection
(RFC 7662), UserInfo and RP-Initiated Logout. This module only supplies storage, Keycloak's URL
layout and Keycloak's token shape (RS256 JWTs with ``realm_access``, ``groups`` and Sovereign's
``clearance``/``compartments`` attributes).

It must never run outside development or testing: :func:`create_idp_app` refuses any other
environment. Nothing is persisted; a restart forgets every session and, unless a key is given,
rotates the signing key. There is no IdP session cookie, so every authorization request asks
for the password again; that is also how ``prompt=login`` and ``max_age`` are honoured.
Authlib only accepts http on loopback addresses (RFC 8252 section 7.3), so serve it on
127.0.0.1 or localhost, or behind https.
"""

from __future__ import annotations

import base64
import hmac
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Final

from authlib.common.security import generate_token
from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2 import OAuth2Error
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    TokenEndpoint,
    grants,
    list_to_scope,
    scope_to_list,
)
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc import rpinitiated
from authlib.oidc.core import OpenIDCode, OpenIDToken, UserInfo, UserInfoEndpoint
from authlib.oidc.discovery import OpenIDProviderMetadata
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import (
    Blueprint,
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    render_template_string,
    request,
)
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, RSAKey
from werkzeug.exceptions import HTTPException

from devstack.idp.bruteforce import BruteForceDetector, BruteForceSettings
from devstack.idp.users import (
    CONSOLE_CLIENT_ID,
    DEMO_CLIENTS,
    DEMO_USERS,
    DemoClient,
    DemoUser,
    with_extra_uris,
)

__all__ = ["ALLOWED_ENVIRONMENTS", "DevIdpRefusedError", "create_idp_app"]

# Authlib ships no type information, so mypy --strict sees its classes as Any; each subclass
# below carries ``type: ignore[misc]`` (disallow_subclassing_any) for that reason alone.

logger = logging.getLogger(__name__)

#: The only environments in which the dev IdP may be built.
ALLOWED_ENVIRONMENTS: Final = frozenset({"development", "testing"})

#: Tokens are signed with RS256 only, like a default Keycloak realm; the algorithm is pinned
#: on verification so that a token cannot choose its own (no "none", no HMAC confusion).
SIGNING_ALG: Final = "RS256"
RSA_KEY_BITS: Final = 2048

#: The IdP verifies only its own tokens, on its own clock, so it allows no clock skew.
ACCESS_TOKEN_LEEWAY_S: Final = 0

#: Keycloak's defaults: access token lifespan 5 min, SSO session idle 30 min, code 60 s.
DEFAULT_ACCESS_TOKEN_TTL: Final = 300
DEFAULT_REFRESH_TOKEN_TTL: Final = 1800
AUTHORIZATION_CODE_TTL: Final = 60

#: Keycloak adds the ``account`` client to the audience of every user token.
ACCOUNT_AUDIENCE: Final = "account"

SUPPORTED_SCOPES: Final = ("openid", "profile", "email", "roles")
#: Keycloak's default client scopes are granted whether or not they are requested.
DEFAULT_SCOPES: Final = ("profile", "email")
GRANT_TYPES: Final = ("authorization_code", "password", "refresh_token")
CONFIDENTIAL_AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")
#: Order matters to Authlib: Basic first, then form secret, then a bare client_id.
TOKEN_AUTH_METHODS: Final = [*CONFIDENTIAL_AUTH_METHODS, "none"]

_EXTENSION: Final = "devstack.idp"
_LOGIN_ERROR: Final = "Invalid username or password."


class DevIdpRefusedError(RuntimeError):
    """The dev IdP was asked for outside development or testing."""


def create_idp_app(
    *,
    environment: str,
    issuer_base: str,
    realm: str = "sovereign",
    users: Iterable[DemoUser] = DEMO_USERS,
    clients: Iterable[DemoClient] = DEMO_CLIENTS,
    signing_key: rsa.RSAPrivateKey | None = None,
    access_token_ttl: int = DEFAULT_ACCESS_TOKEN_TTL,
    refresh_token_ttl: int = DEFAULT_REFRESH_TOKEN_TTL,
    extra_redirect_uris: Sequence[str] = (),
    extra_post_logout_redirect_uris: Sequence[str] = (),
    brute_force: BruteForceSettings | None = BruteForceSettings(),  # noqa: B008 - frozen
) -> Flask:
    """Build the IdP app serving one realm under ``{issuer_base}/realms/{realm}``.

    ``brute_force`` turns on Keycloak's brute-force detection with those settings (Keycloak's
    defaults unless given); None turns it off.

    ``extra_redirect_uris`` and ``extra_post_logout_redirect_uris`` are added, as exact
    matches, to the confidential ``sovereign`` client (e.g. a console on a random port).

    :raises DevIdpRefusedError: if ``environment`` is not development or testing.
    :raises ValueError: if the issuer is neither https nor loopback http.
    """
    if environment not in ALLOWED_ENVIRONMENTS:
        raise DevIdpRefusedError(
            f"the development identity provider is refused in environment {environment!r}; "
            f"it runs only in {sorted(ALLOWED_ENVIRONMENTS)}"
        )
    registered = [
        with_extra_uris(c, extra_redirect_uris, extra_post_logout_redirect_uris)
        if c.client_id == CONSOLE_CLIENT_ID
        else c
        for c in clients
    ]
    state = _Realm(
        name=realm,
        issuer=f"{issuer_base.rstrip('/')}/realms/{realm}",
        private_key=signing_key or _generate_key(),
        users=users,
        clients=registered,
        access_token_ttl=access_token_ttl,
        refresh_token_ttl=refresh_token_ttl,
        brute_force=BruteForceDetector(brute_force) if brute_force is not None else None,
    )
    metadata = state.discovery_document()
    # Fail at startup, not at the first login, if Authlib would refuse the issuer.
    OpenIDProviderMetadata(metadata).validate(metadata_classes=[rpinitiated.OpenIDProviderMetadata])

    app = Flask(__name__)
    app.extensions[_EXTENSION] = _build_server(state)
    app.register_blueprint(_blueprint)
    app.register_error_handler(HTTPException, _http_error)
    logger.warning(
        "development identity provider: never use in production "
        "(realm %r, issuer %s, environment %s)",
        realm,
        state.issuer,
        environment,
    )
    return app


# --------------------------------------------------------------------------- keys


def _generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def _signing_jwk(private_key: rsa.RSAPrivateKey) -> RSAKey:
    key = RSAKey.import_key(private_key, {"alg": SIGNING_ALG, "use": "sig"})
    # RFC 7638 thumbprint: stable for a given key, so clients can cache the JWKS by kid.
    key.ensure_kid()
    return key


# --------------------------------------------------------------------------- state


def _now() -> int:
    return int(time.time())


@dataclass(eq=False)
class _UserSession:
    """A Keycloak user session; it is the ``user`` object Authlib passes around."""

    sid: str
    user: DemoUser
    auth_time: int
    ended: bool = False

    def get_user_id(self) -> str:
        return self.user.sub


class _Client:
    """Authlib's client model (``ClientMixin`` protocol) over a :class:`DemoClient`."""

    def __init__(self, demo: DemoClient) -> None:
        self.demo = demo
        self.client_id = demo.client_id
        # Read by Authlib's UserInfo and RP-Initiated Logout endpoints.
        self.client_metadata: dict[str, Any] = {
            "post_logout_redirect_uris": list(demo.post_logout_redirect_uris),
        }

    def get_client_id(self) -> str:
        return self.demo.client_id

    def get_default_redirect_uri(self) -> None:
        # Like Keycloak, redirect_uri is a required parameter of the authorization request.
        return None

    def get_allowed_scope(self, scope: str | None) -> str:
        requested = scope_to_list(scope) or []
        granted = [s for s in requested if s in SUPPORTED_SCOPES]
        return str(list_to_scope(list(dict.fromkeys([*granted, *DEFAULT_SCOPES]))))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        # Exact match only: no wildcards, so a code can never leave for an unlisted path.
        return redirect_uri in self.demo.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        secret = self.demo.secret
        return secret is not None and hmac.compare_digest(secret.encode(), client_secret.encode())

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # The introspection endpoint offers only secret-based methods, so public clients
        # cannot introspect, as in Keycloak.
        if self.demo.is_public:
            return method == "none"
        return method in CONFIDENTIAL_AUTH_METHODS

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in GRANT_TYPES


@dataclass(eq=False)
class _AuthorizationCode:
    """Authlib's OIDC authorization code model; single use, 60 seconds."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    session: _UserSession
    nonce: str | None
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at: int

    def get_redirect_uri(self) -> str:
        return self.redirect_uri

    def get_scope(self) -> str:
        return self.scope

    def get_nonce(self) -> str | None:
        return self.nonce

    def get_auth_time(self) -> int:
        return self.session.auth_time

    def get_acr(self) -> str:
        return "1"

    def get_amr(self) -> list[str]:
        return ["pwd"]


@dataclass(eq=False)
class _RefreshToken:
    """An opaque refresh token (Authlib's ``TokenMixin`` protocol)."""

    value: str
    client: _Client
    scope: str
    session: _UserSession
    issued_at: int
    expires_at: int
    revoked: bool = False

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_at - self.issued_at

    def is_expired(self) -> bool:
        return _now() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked or self.session.ended

    def get_user(self) -> _UserSession:
        return self.session

    def get_client(self) -> _Client:
        return self.client

    def introspection(self, issuer: str) -> dict[str, Any]:
        user = self.session.user
        return {
            "active": True,
            "iss": issuer,
            "sub": user.sub,
            "typ": "Refresh",
            "azp": self.client.client_id,
            "client_id": self.client.client_id,
            "username": user.username,
            "scope": self.scope,
            "sid": self.session.sid,
            "iat": self.issued_at,
            "exp": self.expires_at,
        }


@dataclass(eq=False)
class _AccessToken:
    """A verified access-token JWT (Authlib's ``TokenMixin`` protocol)."""

    claims: dict[str, Any]
    client: _Client
    session: _UserSession | None

    @property
    def scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def check_client(self, client: _Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.claims["exp"]) - int(self.claims["iat"])

    def is_expired(self) -> bool:
        return _now() >= int(self.claims["exp"])

    def is_revoked(self) -> bool:
        # Logging out ends the session, and with it every access token bearing its sid.
        return self.session is None or self.session.ended

    def get_user(self) -> _UserSession | None:
        return self.session

    def get_client(self) -> _Client:
        return self.client

    def introspection(self) -> dict[str, Any]:
        return {
            **self.claims,
            "active": True,
            "client_id": self.client.client_id,
            "username": self.claims.get("preferred_username"),
            "token_type": "Bearer",
        }


class _Store:
    """All mutable IdP state, in memory, behind one lock (the server is threaded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, _UserSession] = {}
        self._codes: dict[str, _AuthorizationCode] = {}
        self._refresh_tokens: dict[str, _RefreshToken] = {}
        self._nonces: set[tuple[str, str]] = set()

    def start_session(self, user: DemoUser) -> _UserSession:
        session = _UserSession(sid=str(uuid.uuid4()), user=user, auth_time=_now())
        with self._lock:
            self._sessions[session.sid] = session
        return session

    def session(self, sid: object) -> _UserSession | None:
        with self._lock:
            return self._sessions.get(sid) if isinstance(sid, str) else None

    def end_session(self, sid: str) -> None:
        # Every code, refresh token and access token of the session checks this flag, so
        # ending the session revokes them all at once.
        with self._lock:
            session = self._sessions.pop(sid, None)
            if session is not None:
                session.ended = True

    def add_code(self, code: _AuthorizationCode) -> None:
        with self._lock:
            self._codes[code.code] = code
            if code.nonce:
                self._nonces.add((code.client_id, code.nonce))

    def take_code(self, code: str) -> _AuthorizationCode | None:
        # Popping on first sight makes a code single use even when the exchange then fails
        # (RFC 6749 section 4.1.2), e.g. on a wrong PKCE verifier.
        with self._lock:
            return self._codes.pop(code, None)

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            return (client_id, nonce) in self._nonces

    def add_refresh_token(self, token: _RefreshToken) -> None:
        with self._lock:
            self._refresh_tokens[token.value] = token

    def refresh_token(self, value: str) -> _RefreshToken | None:
        with self._lock:
            return self._refresh_tokens.get(value)

    def revoke_refresh_token(self, value: str) -> None:
        with self._lock:
            token = self._refresh_tokens.get(value)
            if token is not None:
                token.revoked = True


class _Realm:
    """One realm: its issuer, signing key, users, clients and store."""

    def __init__(
        self,
        *,
        name: str,
        issuer: str,
        private_key: rsa.RSAPrivateKey,
        users: Iterable[DemoUser],
        clients: Iterable[DemoClient],
        access_token_ttl: int,
        refresh_token_ttl: int,
        brute_force: BruteForceDetector | None = None,
    ) -> None:
        self.name = name
        self.brute_force = brute_force
        self.issuer = issuer
        self.key = _signing_jwk(private_key)
        self.public_key = RSAKey.import_key(self.key.as_dict(private=False))
        # Keycloak's realm representation carries the key as base64 DER SubjectPublicKeyInfo.
        self.public_key_spki = base64.b64encode(
            private_key.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode("ascii")
        self.users = {u.username: u for u in users}
        self.clients = {c.client_id: _Client(c) for c in clients}
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.store = _Store()

    # --- Authlib server callbacks

    def query_client(self, client_id: str) -> _Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: Mapping[str, Any], oauth_request: Any) -> None:
        value = token.get("refresh_token")
        if value is None:
            return
        now = _now()
        self.store.add_refresh_token(
            _RefreshToken(
                value=str(value),
                client=oauth_request.client,
                scope=str(token.get("scope", "")),
                session=oauth_request.user,
                issued_at=now,
                expires_at=now + self.refresh_token_ttl,
            )
        )

    # --- helpers

    def check_password(self, username: str, password: str) -> DemoUser | None:
        """The user if the password is right and the user need not wait (brute-force
        detection); None otherwise, the same None whichever it was."""
        user = self.users.get(username)
        guard = self.brute_force
        if user is not None and guard is not None and guard.locked(username):
            # Keycloak answers a locked-out user exactly like a wrong password, and never
            # looks at the password, so a guesser cannot tell a hit during the wait.
            logger.warning("dev IdP: user %r is temporarily locked out", username)
            return None
        expected = user.password if user is not None else ""
        matches = hmac.compare_digest(expected.encode(), password.encode())
        if user is None:
            return None
        if not matches:
            # Keycloak's LOGIN_ERROR event (invalid_user_credentials), as a log line here.
            logger.info("dev IdP: wrong password for user %r", username)
        if guard is not None:
            if matches:
                guard.success(username)
            else:
                guard.failure(username)
        return user if matches else None

    def jwks(self) -> dict[str, list[dict[str, Any]]]:
        return {"keys": [dict(self.public_key.as_dict(private=False))]}

    def load_access_token(self, value: str) -> _AccessToken | None:
        """Verify an access token (signature, header, issuer, type, expiry); None if invalid."""
        try:
            token = jwt.decode(value, self.public_key, algorithms=[SIGNING_ALG])
            self._access_token_claims().validate(token.claims)
        except JoseError:
            return None
        if token.header.get("typ") != "JWT":
            return None
        client = self.clients.get(str(token.claims["azp"]))
        if client is None:
            return None
        return _AccessToken(
            claims=dict(token.claims),
            client=client,
            session=self.store.session(token.claims.get("sid")),
        )

    def _access_token_claims(self) -> jwt.JWTClaimsRegistry:
        # typ "Bearer" keeps ID tokens ("ID") from being accepted as access tokens.
        return jwt.JWTClaimsRegistry(
            leeway=ACCESS_TOKEN_LEEWAY_S,
            iss={"essential": True, "value": self.issuer},
            typ={"essential": True, "value": "Bearer"},
            azp={"essential": True},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
        )

    def endpoint(self, path: str) -> str:
        return f"{self.issuer}/protocol/openid-connect/{path}"

    def discovery_document(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            # Announces the stand-in, so a production control plane can refuse to trust it.
            "sovereign_dev_idp": True,
            "authorization_endpoint": self.endpoint("auth"),
            "token_endpoint": self.endpoint("token"),
            "introspection_endpoint": self.endpoint("token/introspect"),
            "userinfo_endpoint": self.endpoint("userinfo"),
            "end_session_endpoint": self.endpoint("logout"),
            "jwks_uri": self.endpoint("certs"),
            "grant_types_supported": list(GRANT_TYPES),
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [SIGNING_ALG],
            "code_challenge_methods_supported": ["S256"],
            "scopes_supported": list(SUPPORTED_SCOPES),
            "token_endpoint_auth_methods_supported": TOKEN_AUTH_METHODS,
            "introspection_endpoint_auth_methods_supported": list(CONFIDENTIAL_AUTH_METHODS),
            "claims_supported": [
                "iss",
                "sub",
                "aud",
                "exp",
                "iat",
                "auth_time",
                "nonce",
                "sid",
                "azp",
                "name",
                "given_name",
                "family_name",
                "preferred_username",
                "email",
                "email_verified",
                "realm_access",
                "groups",
                "clearance",
                "compartments",
            ],
            "frontchannel_logout_supported": False,
            "backchannel_logout_supported": False,
        }


def _identity_claims(user: DemoUser) -> dict[str, Any]:
    """The claims Keycloak's protocol mappers put in access, ID and UserInfo responses."""
    claims: dict[str, Any] = {
        "sub": user.sub,
        "preferred_username": user.username,
        "name": user.name,
        "given_name": user.given_name,
        "family_name": user.family_name,
        "email": user.email,
        "email_verified": True,
        "realm_access": {"roles": list(user.roles)},
        "groups": list(user.groups),
        "compartments": list(user.compartments),
    }
    if user.clearance is not None:
        claims["clearance"] = user.clearance
    return claims


# --------------------------------------------------------------------------- tokens


class _KeycloakTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068's JWT access tokens in Keycloak's shape, plus Keycloak's response fields."""

    def __init__(self, state: _Realm) -> None:
        super().__init__(
            issuer=state.issuer,
            alg=SIGNING_ALG,
            refresh_token_generator=_opaque_refresh_token,
            expires_generator=state.access_token_ttl,
        )
        self._state = state

    def get_jwks(self) -> RSAKey:
        return self._state.key

    def get_audiences(self, client: _Client, user: _UserSession, scope: str) -> list[str]:
        return list(dict.fromkeys([client.demo.audience, ACCOUNT_AUDIENCE]))

    def get_auth_time(self, user: _UserSession) -> int:
        return user.auth_time

    def get_acr(self, user: _UserSession) -> str:
        # Keycloak: "1" after a password login, "0" when reusing an SSO cookie (never here).
        return "1"

    def get_jti(self, client: _Client, grant_type: str, user: _UserSession, scope: str) -> str:
        return str(uuid.uuid4())

    def get_extra_claims(
        self, client: _Client, grant_type: str, user: _UserSession, scope: str
    ) -> dict[str, Any]:
        return {
            "typ": "Bearer",
            "azp": client.client_id,
            "sid": user.sid,
            **_identity_claims(user.user),
        }

    def access_token_generator(
        self, client: _Client, grant_type: str, user: _UserSession, scope: str
    ) -> str:
        # Keycloak departs from RFC 9068 here: the header says typ "JWT" (not "at+jwt") and
        # the client is named by "azp" (not "client_id"). Resource servers written for
        # Keycloak check exactly that, so the claim set is assembled from the RFC 9068 hooks
        # above rather than by the parent method.
        now = _now()
        claims: dict[str, Any] = {
            "exp": now + self._get_expires_in(client, grant_type),
            "iat": now,
            "auth_time": self.get_auth_time(user),
            "jti": self.get_jti(client, grant_type, user, scope),
            "iss": self.issuer,
            "aud": self.get_audiences(client, user, scope),
            "acr": self.get_acr(user),
            **self.get_extra_claims(client, grant_type, user, scope),
            "scope": scope,
        }
        key = self.get_jwks()
        header = {"alg": self.alg, "typ": "JWT", "kid": key.kid}
        return jwt.encode(header, claims, key, algorithms=[self.alg])

    def generate(  # noqa: PLR0917 - Authlib's BearerTokenGenerator calls it positionally
        self,
        grant_type: str,
        client: _Client,
        user: _UserSession | None = None,
        scope: str | None = None,
        expires_in: int | None = None,
        include_refresh_token: bool = True,
    ) -> dict[str, Any]:
        assert user is not None  # every registered grant has a resource owner
        token: dict[str, Any] = super().generate(
            grant_type, client, user, scope, expires_in, include_refresh_token
        )
        if "refresh_token" in token:
            token["refresh_expires_in"] = self._state.refresh_token_ttl
        token["not-before-policy"] = 0
        token["session_state"] = user.sid
        return token


def _opaque_refresh_token(**_: Any) -> str:
    return str(generate_token(48))


class _KeycloakIdTokenMixin:
    """ID token settings shared by the code flow and the direct (password, refresh) grants."""

    _state: _Realm

    def resolve_client_private_key(self, client: _Client) -> RSAKey:
        return self._state.key

    def get_client_algorithm(self, client: _Client) -> str:
        return SIGNING_ALG

    def get_encode_header(self, client: _Client) -> dict[str, Any]:
        return {"alg": SIGNING_ALG, "typ": "JWT", "kid": self._state.key.kid}

    def get_client_claims(self, client: _Client) -> dict[str, Any]:
        now = _now()
        return {
            "iss": self._state.issuer,
            # Keycloak's ID token audience is the bare client id, not a list.
            "aud": client.client_id,
            "azp": client.client_id,
            "typ": "ID",
            "iat": now,
            "exp": now + self._state.access_token_ttl,
        }

    def generate_user_info(self, user: _UserSession, scope: str) -> UserInfo:
        return UserInfo(
            jti=str(uuid.uuid4()),
            auth_time=user.auth_time,
            sid=user.sid,
            acr="1",
            **_identity_claims(user.user),
        )


class _DirectGrantIdToken(_KeycloakIdTokenMixin, OpenIDToken):  # type: ignore[misc]
    """Adds an ID token to password and refresh grants when ``openid`` is in scope."""

    def __init__(self, state: _Realm) -> None:
        self._state = state


class _CodeFlowIdToken(_KeycloakIdTokenMixin, OpenIDCode):  # type: ignore[misc]
    """OpenID Connect for the code flow: nonce, prompt, ID token from the code's session."""

    def __init__(self, state: _Realm) -> None:
        super().__init__(require_nonce=False)
        self._state = state

    def exists_nonce(self, nonce: str, oauth_request: Any) -> bool:
        return self._state.store.nonce_used(str(oauth_request.payload.client_id), nonce)


class _S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE (RFC 7636) with S256 only, and mandatory for public clients."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if grant.request.client.demo.is_public and not data.get("code_challenge"):
            raise InvalidRequestError("Missing parameter: code_challenge")
        if data.get("code_challenge") and data.get("code_challenge_method") != "S256":
            # An absent method means "plain" (RFC 7636 section 4.3), which is not offered.
            raise InvalidRequestError("Invalid parameter: code_challenge_method")
        super().validate_code_challenge(grant, redirect_uri)


# --------------------------------------------------------------------------- grants


class _InvalidUserCredentialsError(InvalidGrantError):  # type: ignore[misc]
    """Keycloak answers a bad password on the token endpoint with 401 invalid_grant."""

    status_code: ClassVar[int] = 401
    description: ClassVar[str] = "Invalid user credentials"


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS

    def save_authorization_code(self, code: str, oauth_request: Any) -> None:
        data = oauth_request.payload.data
        self.server.state.store.add_code(
            _AuthorizationCode(
                code=code,
                client_id=oauth_request.client.client_id,
                redirect_uri=oauth_request.payload.redirect_uri,
                scope=oauth_request.scope,
                session=oauth_request.user,
                nonce=data.get("nonce") or None,
                code_challenge=data.get("code_challenge") or None,
                code_challenge_method=data.get("code_challenge_method") or None,
                expires_at=_now() + AUTHORIZATION_CODE_TTL,
            )
        )

    def query_authorization_code(self, code: str, client: _Client) -> _AuthorizationCode | None:
        found: _AuthorizationCode | None = self.server.state.store.take_code(code)
        if (
            found is None
            or found.client_id != client.client_id
            or _now() >= found.expires_at
            or found.session.ended
        ):
            return None
        return found

    def delete_authorization_code(self, authorization_code: _AuthorizationCode) -> None:
        """Nothing to do: :meth:`query_authorization_code` already consumed it."""

    def authenticate_user(self, authorization_code: _AuthorizationCode) -> _UserSession:
        return authorization_code.session


class _PasswordGrant(grants.ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    """Keycloak's "direct access grants"."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS

    def authenticate_user(self, username: str, password: str) -> _UserSession:
        state: _Realm = self.server.state
        user = state.check_password(username, password)
        if user is None:
            raise _InvalidUserCredentialsError()
        return state.store.start_session(user)


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS
    # Rotate on every use and revoke the old token (Keycloak's "Revoke Refresh Token").
    INCLUDE_NEW_REFRESH_TOKEN: ClassVar[bool] = True

    def authenticate_refresh_token(self, refresh_token: str) -> _RefreshToken | None:
        token: _RefreshToken | None = self.server.state.store.refresh_token(refresh_token)
        if token is None or token.is_expired() or token.is_revoked():
            return None
        return token

    def authenticate_user(self, refresh_token: _RefreshToken) -> _UserSession:
        return refresh_token.session

    def revoke_old_credential(self, refresh_token: _RefreshToken) -> None:
        self.server.state.store.revoke_refresh_token(refresh_token.value)


# --------------------------------------------------------------------------- endpoints


class _AccessTokenValidator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, state: _Realm) -> None:
        super().__init__(realm=state.name)
        self._state = state

    def authenticate_token(self, token_string: str) -> _AccessToken | None:
        return self._state.load_access_token(token_string)


class _UserInfoEndpoint(UserInfoEndpoint):  # type: ignore[misc]
    def __init__(self, state: _Realm, resource_protector: ResourceProtector) -> None:
        super().__init__(resource_protector=resource_protector)
        self._state = state

    def get_issuer(self) -> str:
        return self._state.issuer

    def resolve_private_key(self) -> RSAKey:
        return self._state.key

    def generate_user_info(self, user: _UserSession, scope: str) -> UserInfo:
        return UserInfo(**_identity_claims(user.user))


class _IntrospectionEndpoint(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662; like Keycloak, any confidential client of the realm may introspect."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(CONFIDENTIAL_AUTH_METHODS)

    def __init__(self, state: _Realm) -> None:
        super().__init__()
        self._state = state

    def query_token(
        self, token_string: str, token_type_hint: str | None
    ) -> _AccessToken | _RefreshToken | None:
        if token_type_hint != "refresh_token":  # noqa: S105 - a hint name, not a secret
            access = self._state.load_access_token(token_string)
            if access is not None:
                return access
        return self._state.store.refresh_token(token_string)

    def check_permission(self, token: object, client: _Client, oauth_request: Any) -> bool:
        return True

    def introspect_token(self, token: _AccessToken | _RefreshToken) -> dict[str, Any]:
        if isinstance(token, _RefreshToken):
            return token.introspection(self._state.issuer)
        return token.introspection()


class _RefreshTokenLogoutEndpoint(TokenEndpoint):  # type: ignore[misc]
    """Keycloak's back-channel logout: POST a refresh token, end its session, answer 204."""

    ENDPOINT_NAME: ClassVar[str] = "refresh_token_logout"
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS

    def __init__(self, state: _Realm) -> None:
        super().__init__()
        self._state = state

    def create_endpoint_response(self, oauth_request: Any) -> tuple[int, str, list[Any]]:
        client = self.authenticate_endpoint_client(oauth_request)
        value = oauth_request.form.get("refresh_token")
        if not value:
            raise InvalidRequestError("Missing parameter: refresh_token")
        token = self._state.store.refresh_token(value)
        if (
            token is None
            or not token.check_client(client)
            or token.is_expired()
            or token.is_revoked()
        ):
            raise InvalidGrantError("Invalid refresh token")
        self._state.store.end_session(token.session.sid)
        return 204, "", [("Cache-Control", "no-store")]


class _EndSessionEndpoint(EndSessionEndpoint):  # type: ignore[misc]
    """OIDC RP-Initiated Logout: ``id_token_hint`` ends the session it names."""

    def __init__(self, state: _Realm) -> None:
        super().__init__()
        self._state = state

    def get_server_jwks(self) -> KeySet:
        return KeySet([self._state.public_key])

    def get_algorithms(self) -> list[str]:
        return [SIGNING_ALG]

    def validate_request(self, oauth_request: Any) -> EndSessionRequest:
        validated: EndSessionRequest = super().validate_request(oauth_request)
        requested = oauth_request.payload.data.get("post_logout_redirect_uri")
        client = validated.client
        if requested and (client is None or requested not in client.demo.post_logout_redirect_uris):
            # Keycloak refuses rather than silently dropping an unregistered redirect.
            raise InvalidRequestError("Invalid redirect uri")
        return validated

    def end_session(self, end_session_request: EndSessionRequest) -> None:
        sid = (end_session_request.id_token_claims or {}).get("sid")
        if isinstance(sid, str):
            self._state.store.end_session(sid)


class _KeycloakAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask authorization server, bound to one realm's state."""

    def __init__(self, state: _Realm) -> None:
        super().__init__(query_client=state.query_client, save_token=state.save_token)
        self.state = state
        self.scopes_supported = list(SUPPORTED_SCOPES)
        self.resource_protector = ResourceProtector()


def _build_server(state: _Realm) -> _KeycloakAuthorizationServer:
    server = _KeycloakAuthorizationServer(state)
    server.register_token_generator("default", _KeycloakTokenGenerator(state))
    server.register_grant(
        _AuthorizationCodeGrant, [_S256CodeChallenge(required=True), _CodeFlowIdToken(state)]
    )
    server.register_grant(_PasswordGrant, [_DirectGrantIdToken(state)])
    server.register_grant(_RefreshTokenGrant, [_DirectGrantIdToken(state)])
    server.resource_protector.register_token_validator(_AccessTokenValidator(state))
    server.register_endpoint(_UserInfoEndpoint(state, server.resource_protector))
    server.register_endpoint(_IntrospectionEndpoint(state))
    server.register_endpoint(_RefreshTokenLogoutEndpoint(state))
    server.register_endpoint(_EndSessionEndpoint(state))
    return server


# --------------------------------------------------------------------------- views

_blueprint = Blueprint("devidp", __name__, url_prefix="/realms/<realm>")


def _server() -> _KeycloakAuthorizationServer:
    server = current_app.extensions[_EXTENSION]
    assert isinstance(server, _KeycloakAuthorizationServer)
    return server


def _response(value: object) -> Response:
    assert isinstance(value, Response)
    return value


@_blueprint.url_value_preprocessor
def _check_realm(endpoint: str | None, values: dict[str, Any] | None) -> None:
    realm = (values or {}).pop("realm", None)
    if realm != _server().state.name:
        # Keycloak's exact answer for an unknown realm.
        abort(Response(_json({"error": "Realm does not exist"}), 404, _JSON))


_JSON: Final = {"Content-Type": "application/json"}


def _json(payload: Mapping[str, Any]) -> str:
    return str(current_app.json.dumps(payload))


def _http_error(error: HTTPException) -> Response:
    # App-level, so routing 404/405 are JSON too (blueprint handlers never see them).
    payload = {
        "error": error.name.lower().replace(" ", "_"),
        "error_description": error.description,
    }
    return Response(_json(payload), error.code or 500, _JSON)


@_blueprint.get("")
def realm_info() -> Response:
    """Keycloak's public realm representation (python-keycloak's ``public_key()`` reads it)."""
    state = _server().state
    return jsonify(
        realm=state.name,
        public_key=state.public_key_spki,
        **{
            "token-service": f"{state.issuer}/protocol/openid-connect",
            "account-service": f"{state.issuer}/account",
            "tokens-not-before": 0,
        },
    )


@_blueprint.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    """OpenID Connect Discovery 1.0 document."""
    return jsonify(_server().state.discovery_document())


@_blueprint.get("/protocol/openid-connect/certs")
def certs() -> Response:
    """The realm's JWKS (RFC 7517): one RS256 signing key, kid = RFC 7638 thumbprint."""
    return jsonify(_server().state.jwks())


@_blueprint.route("/protocol/openid-connect/auth", methods=["GET", "POST"])
def authorize() -> Response:
    """Authorization endpoint: GET shows the login form, POST checks it and redirects."""
    server = _server()
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        return _response(server.handle_error_response(None, error))
    if request.method == "GET":
        return _login_page(server.state.name)
    user = server.state.check_password(
        request.form.get("username", ""), request.form.get("password", "")
    )
    if user is None:
        return _login_page(server.state.name, error=_LOGIN_ERROR, status=401)
    session = server.state.store.start_session(user)
    return _response(server.create_authorization_response(grant_user=session, grant=grant))


@_blueprint.post("/protocol/openid-connect/token")
def token() -> Response:
    """Token endpoint: authorization_code (+PKCE), password and refresh_token grants."""
    return _response(_server().create_token_response())


@_blueprint.route("/protocol/openid-connect/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    """OIDC UserInfo for a Bearer access token carrying the ``openid`` scope."""
    return _response(_server().create_endpoint_response("userinfo"))


@_blueprint.post("/protocol/openid-connect/token/introspect")
def introspect() -> Response:
    """RFC 7662 token introspection for confidential clients."""
    return _response(_server().create_endpoint_response("introspection"))


@_blueprint.route("/protocol/openid-connect/logout", methods=["GET", "POST"])
def logout() -> Response:
    """Refresh-token logout (POST, 204) or RP-Initiated Logout (``id_token_hint``)."""
    server = _server()
    if request.method == "POST" and "refresh_token" in request.form:
        return _response(server.create_endpoint_response("refresh_token_logout"))
    try:
        validated = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        return _response(server.handle_error_response(None, error))
    redirect = server.create_endpoint_response("end_session", validated)
    if redirect is not None:
        return _response(redirect)
    return _page(_SIGNED_OUT_TEMPLATE, realm=server.state.name)


# --------------------------------------------------------------------------- HTML

_PAGE_HEADERS: Final = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    # No form-action: browsers would block the redirect to the client after the POST.
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "Referrer-Policy": "no-referrer",
}

_LAYOUT_HEAD: Final = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex">
<title>{{ title }}</title>
<style>
body { font-family: system-ui, sans-serif; max-width: 24rem; margin: 3rem auto; padding: 0 1rem; }
.banner { background: #fff3cd; border: 2px solid #8a6d00; padding: .5rem; }
.error { color: #8b0000; font-weight: bold; }
label, input, button { display: block; width: 100%; margin-top: .5rem; font-size: 1rem; }
input:focus, button:focus { outline: 3px solid #1a56db; }
</style>
</head>
<body>
<p class="banner" role="note">Development identity provider: never use in production.</p>
"""

_LOGIN_TEMPLATE: Final = (
    _LAYOUT_HEAD
    + """<main>
<h1>{{ title }}</h1>
{% if error %}<p class="error" id="login-error" role="alert">{{ error }}</p>{% endif %}
<form method="post" action="{{ action }}">
{% for name, value in params %}<input type="hidden" name="{{ name }}" value="{{ value }}">
{% endfor %}<label for="username">Username</label>
<input id="username" name="username" type="text" autocomplete="username" required autofocus
{%- if error %} aria-invalid="true" aria-describedby="login-error"{% endif %}>
<label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required
{%- if error %} aria-invalid="true" aria-describedby="login-error"{% endif %}>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""
)

_SIGNED_OUT_TEMPLATE: Final = (
    _LAYOUT_HEAD
    + """<main>
<h1>{{ title }}</h1>
<p>You are signed out of {{ realm }}.</p>
</main>
</body>
</html>
"""
)

#: Never echoed back into the form.
_CREDENTIAL_FIELDS: Final = frozenset({"username", "password"})


def _login_page(realm: str, *, error: str | None = None, status: int = 200) -> Response:
    params = [
        (name, value)
        for name, value in request.values.items(multi=True)
        if name not in _CREDENTIAL_FIELDS
    ]
    return _page(
        _LOGIN_TEMPLATE,
        status=status,
        title=f"Sign in to {realm}",
        action=request.path,
        params=params,
        error=error,
    )


def _page(template: str, *, status: int = 200, **context: Any) -> Response:
    context.setdefault("title", "Signed out")
    # render_template_string autoescapes, so request parameters cannot inject markup.
    body = render_template_string(template, **context)
    return Response(body, status, {**_PAGE_HEADERS, "Content-Type": "text/html; charset=utf-8"})
