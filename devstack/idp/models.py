"""The dev IdP's in-memory state, as the model objects Authlib's protocol code asks for.

This module owns what a realm remembers between requests (user sessions, single-use
authorization codes, refresh tokens, used nonces) behind one lock, and the adapters that give
Authlib its ``ClientMixin``, ``AuthorizationCodeMixin`` and ``TokenMixin`` views of it. It
also owns what a client may ask for: the supported scopes, grant types and client
authentication methods. Nothing here is persisted; a restart forgets everything.
"""

from __future__ import annotations

import hmac
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Final

from authlib.oauth2.rfc6749 import list_to_scope, scope_to_list

from devstack.idp.users import DemoClient, DemoUser

__all__ = [
    "CONFIDENTIAL_AUTH_METHODS",
    "DEFAULT_SCOPES",
    "GRANT_TYPES",
    "SUPPORTED_SCOPES",
    "TOKEN_AUTH_METHODS",
    "AccessToken",
    "AuthorizationCode",
    "Client",
    "RefreshToken",
    "Store",
    "UserSession",
    "unix_time",
]

SUPPORTED_SCOPES: Final = ("openid", "profile", "email", "roles")
#: Keycloak's default client scopes are granted whether or not they are requested.
DEFAULT_SCOPES: Final = ("profile", "email")
GRANT_TYPES: Final = ("authorization_code", "password", "refresh_token")
CONFIDENTIAL_AUTH_METHODS: Final = ("client_secret_basic", "client_secret_post")
#: Order matters to Authlib: Basic first, then form secret, then a bare client_id.
TOKEN_AUTH_METHODS: Final = [*CONFIDENTIAL_AUTH_METHODS, "none"]


def unix_time() -> int:
    return int(time.time())


@dataclass(eq=False)
class UserSession:
    """A Keycloak user session; it is the ``user`` object Authlib passes around."""

    sid: str
    user: DemoUser
    auth_time: int
    ended: bool = False

    def get_user_id(self) -> str:
        return self.user.sub


class Client:
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
        return response_type == "code" and self.demo.standard_flow

    def check_grant_type(self, grant_type: str) -> bool:
        # Keycloak's per-client switches: standard flow (code) and direct access grants.
        if grant_type == "authorization_code":
            return self.demo.standard_flow
        if grant_type == "password":
            return self.demo.direct_access_grants
        return grant_type in GRANT_TYPES


@dataclass(eq=False)
class AuthorizationCode:
    """Authlib's OIDC authorization code model; single use, 60 seconds."""

    code: str
    client_id: str
    redirect_uri: str
    scope: str
    session: UserSession
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
class RefreshToken:
    """An opaque refresh token (Authlib's ``TokenMixin`` protocol)."""

    value: str
    client: Client
    scope: str
    session: UserSession
    issued_at: int
    expires_at: int
    revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_at - self.issued_at

    def is_expired(self) -> bool:
        return unix_time() >= self.expires_at

    def is_revoked(self) -> bool:
        return self.revoked or self.session.ended

    def get_user(self) -> UserSession:
        return self.session

    def get_client(self) -> Client:
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
class AccessToken:
    """A verified access-token JWT (Authlib's ``TokenMixin`` protocol)."""

    claims: dict[str, Any]
    client: Client
    session: UserSession | None

    @property
    def scope(self) -> str:
        return str(self.claims.get("scope", ""))

    def check_client(self, client: Client) -> bool:
        return client.client_id == self.client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return int(self.claims["exp"]) - int(self.claims["iat"])

    def is_expired(self) -> bool:
        return unix_time() >= int(self.claims["exp"])

    def is_revoked(self) -> bool:
        # Logging out ends the session, and with it every access token bearing its sid.
        return self.session is None or self.session.ended

    def get_user(self) -> UserSession | None:
        return self.session

    def get_client(self) -> Client:
        return self.client

    def introspection(self) -> dict[str, Any]:
        return {
            **self.claims,
            "active": True,
            "client_id": self.client.client_id,
            "username": self.claims.get("preferred_username"),
            "token_type": "Bearer",
        }


class Store:
    """All mutable IdP state, in memory, behind one lock (the server is threaded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sessions: dict[str, UserSession] = {}
        self._codes: dict[str, AuthorizationCode] = {}
        self._refresh_tokens: dict[str, RefreshToken] = {}
        self._nonces: set[tuple[str, str]] = set()

    def start_session(self, user: DemoUser) -> UserSession:
        session = UserSession(sid=str(uuid.uuid4()), user=user, auth_time=unix_time())
        with self._lock:
            self._sessions[session.sid] = session
        return session

    def session(self, sid: object) -> UserSession | None:
        with self._lock:
            return self._sessions.get(sid) if isinstance(sid, str) else None

    def end_session(self, sid: str) -> None:
        # Every code, refresh token and access token of the session checks this flag, so
        # ending the session revokes them all at once.
        with self._lock:
            session = self._sessions.pop(sid, None)
            if session is not None:
                session.ended = True

    def add_code(self, code: AuthorizationCode) -> None:
        with self._lock:
            self._codes[code.code] = code
            if code.nonce:
                self._nonces.add((code.client_id, code.nonce))

    def take_code(self, code: str) -> AuthorizationCode | None:
        # Popping on first sight makes a code single use even when the exchange then fails
        # (RFC 6749 section 4.1.2), e.g. on a wrong PKCE verifier.
        with self._lock:
            return self._codes.pop(code, None)

    def nonce_used(self, client_id: str, nonce: str) -> bool:
        with self._lock:
            return (client_id, nonce) in self._nonces

    def add_refresh_token(self, token: RefreshToken) -> None:
        with self._lock:
            self._refresh_tokens[token.value] = token

    def refresh_token(self, value: str) -> RefreshToken | None:
        with self._lock:
            return self._refresh_tokens.get(value)

    def revoke_refresh_token(self, value: str) -> None:
        with self._lock:
            token = self._refresh_tokens.get(value)
            if token is not None:
                token.revoked = True
