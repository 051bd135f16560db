"""JWT issuing: the dev IdP's access, refresh and ID tokens in Keycloak's shape.

This module owns what the token endpoint hands out: RS256 access tokens built from RFC 9068's
hooks but with Keycloak's header and claims (``typ`` "JWT", ``azp``, ``sid``,
``realm_access``...), opaque refresh tokens, Keycloak's extra response fields, and the OpenID
Connect ID token settings shared by the code flow and the direct grants. The grants that call
them are in :mod:`devstack.idp.authserver`; the signing key is the realm's.
"""

from __future__ import annotations

import uuid
from typing import Any, Final

from authlib.common.security import generate_token
from authlib.oauth2.rfc9068 import JWTBearerTokenGenerator
from authlib.oidc.core import OpenIDCode, OpenIDToken, UserInfo
from joserfc import jwt
from joserfc.jwk import RSAKey

from devstack.idp.models import Client, UserSession, unix_time
from devstack.idp.realm import SIGNING_ALG, Realm, identity_claims

__all__ = ["CodeFlowIdToken", "DirectGrantIdToken", "KeycloakTokenGenerator"]

# Authlib ships no type information, so mypy --strict sees its classes as Any; each subclass
# below carries ``type: ignore[misc]`` (disallow_subclassing_any) for that reason alone.

#: Keycloak adds the ``account`` client to the audience of every user token.
ACCOUNT_AUDIENCE: Final = "account"


class KeycloakTokenGenerator(JWTBearerTokenGenerator):  # type: ignore[misc]
    """RFC 9068's JWT access tokens in Keycloak's shape, plus Keycloak's response fields."""

    def __init__(self, state: Realm) -> None:
        super().__init__(
            issuer=state.issuer,
            alg=SIGNING_ALG,
            refresh_token_generator=_opaque_refresh_token,
            expires_generator=state.access_token_ttl,
        )
        self._state = state

    def get_jwks(self) -> RSAKey:
        return self._state.key

    def get_audiences(self, client: Client, user: UserSession, scope: str) -> list[str]:
        return list(dict.fromkeys([client.demo.audience, ACCOUNT_AUDIENCE]))

    def get_auth_time(self, user: UserSession) -> int:
        return user.auth_time

    def get_acr(self, user: UserSession) -> str:
        # Keycloak: "1" after a password login, "0" when reusing an SSO cookie (never here).
        return "1"

    def get_jti(self, client: Client, grant_type: str, user: UserSession, scope: str) -> str:
        return str(uuid.uuid4())

    def get_extra_claims(
        self, client: Client, grant_type: str, user: UserSession, scope: str
    ) -> dict[str, Any]:
        return {
            "typ": "Bearer",
            "azp": client.client_id,
            "sid": user.sid,
            **identity_claims(user.user),
        }

    def access_token_generator(
        self, client: Client, grant_type: str, user: UserSession, scope: str
    ) -> str:
        # Keycloak departs from RFC 9068 here: the header says typ "JWT" (not "at+jwt") and
        # the client is named by "azp" (not "client_id"). Resource servers written for
        # Keycloak check exactly that, so the claim set is assembled from the RFC 9068 hooks
        # above rather than by the parent method.
        now = unix_time()
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
        client: Client,
        user: UserSession | None = None,
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

    _state: Realm

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        return self._state.key

    def get_client_algorithm(self, client: Client) -> str:
        return SIGNING_ALG

    def get_encode_header(self, client: Client) -> dict[str, Any]:
        return {"alg": SIGNING_ALG, "typ": "JWT", "kid": self._state.key.kid}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        now = unix_time()
        return {
            "iss": self._state.issuer,
            # Keycloak's ID token audience is the bare client id, not a list.
            "aud": client.client_id,
            "azp": client.client_id,
            "typ": "ID",
            "iat": now,
            "exp": now + self._state.access_token_ttl,
        }

    def generate_user_info(self, user: UserSession, scope: str) -> UserInfo:
        return UserInfo(
            jti=str(uuid.uuid4()),
            auth_time=user.auth_time,
            sid=user.sid,
            acr="1",
            **identity_claims(user.user),
        )


class DirectGrantIdToken(_KeycloakIdTokenMixin, OpenIDToken):  # type: ignore[misc]
    """Adds an ID token to password and refresh grants when ``openid`` is in scope."""

    def __init__(self, state: Realm) -> None:
        self._state = state


class CodeFlowIdToken(_KeycloakIdTokenMixin, OpenIDCode):  # type: ignore[misc]
    """OpenID Connect for the code flow: nonce, prompt, ID token from the code's session."""

    def __init__(self, state: Realm) -> None:
        super().__init__(require_nonce=False)
        self._state = state

    def exists_nonce(self, nonce: str, oauth_request: Any) -> bool:
        return self._state.store.nonce_used(str(oauth_request.payload.client_id), nonce)
