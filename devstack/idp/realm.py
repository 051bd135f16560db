"""One realm of the dev IdP: issuer, signing key, users, clients and what they may prove.

This module owns the realm's RS256 signing key (generation, JWKS, Keycloak's base64 SPKI
form), the verification of the access tokens it issued, password checking (with brute-force
detection from :mod:`devstack.idp.bruteforce`), the OpenID Connect discovery document and the
identity claims that Keycloak's protocol mappers would add (``realm_access``, ``groups`` and
Sovereign's ``clearance``/``compartments`` attributes). Issuing tokens is
:mod:`devstack.idp.tokens`' job.
"""

from __future__ import annotations

import base64
import hmac
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import RSAKey

from devstack.idp.bruteforce import BruteForceDetector
from devstack.idp.models import (
    CONFIDENTIAL_AUTH_METHODS,
    GRANT_TYPES,
    SUPPORTED_SCOPES,
    TOKEN_AUTH_METHODS,
    AccessToken,
    Client,
    RefreshToken,
    Store,
    unix_time,
)
from devstack.idp.users import DemoClient, DemoUser

__all__ = [
    "DEFAULT_ACCESS_TOKEN_TTL",
    "DEFAULT_REFRESH_TOKEN_TTL",
    "SIGNING_ALG",
    "Realm",
    "generate_key",
    "identity_claims",
]

logger = logging.getLogger(__name__)

#: Tokens are signed with RS256 only, like a default Keycloak realm; the algorithm is pinned
#: on verification so that a token cannot choose its own (no "none", no HMAC confusion).
SIGNING_ALG: Final = "RS256"
RSA_KEY_BITS: Final = 2048

#: The IdP verifies only its own tokens, on its own clock, so it allows no clock skew.
ACCESS_TOKEN_LEEWAY_S: Final = 0

#: Keycloak's defaults: access token lifespan 5 min, SSO session idle 30 min.
DEFAULT_ACCESS_TOKEN_TTL: Final = 300
DEFAULT_REFRESH_TOKEN_TTL: Final = 1800


def generate_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)


def _signing_jwk(private_key: rsa.RSAPrivateKey) -> RSAKey:
    key = RSAKey.import_key(private_key, {"alg": SIGNING_ALG, "use": "sig"})
    # RFC 7638 thumbprint: stable for a given key, so clients can cache the JWKS by kid.
    key.ensure_kid()
    return key


class Realm:
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
        self.clients = {c.client_id: Client(c) for c in clients}
        self.access_token_ttl = access_token_ttl
        self.refresh_token_ttl = refresh_token_ttl
        self.store = Store()

    # --- Authlib server callbacks

    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: Mapping[str, Any], oauth_request: Any) -> None:
        value = token.get("refresh_token")
        if value is None:
            return
        now = unix_time()
        self.store.add_refresh_token(
            RefreshToken(
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

    def load_access_token(self, value: str) -> AccessToken | None:
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
        return AccessToken(
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


def identity_claims(user: DemoUser) -> dict[str, Any]:
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
