"""Keycloak: verify bearer access tokens exactly as the realm issues them.

Owns discovery and key retrieval (through python-keycloak), the JWKS cache, token verification
(PyJWT) and the mapping of claims to a :class:`Principal`. Every keycloak or JWT exception is
translated here. Tokens are never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import jwt
from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakError

from sovereign.domain.identity import Principal, Role
from sovereign.domain.labels import LabelScheme
from sovereign.errors import AuthenticationError, DependencyUnavailableError, LabelError
from sovereign.text import for_log

log = logging.getLogger(__name__)

#: Keycloak signs access tokens with RS256 by default. Pinning the list (instead of reading
#: the token header) defeats ``alg: none`` and HS256-with-the-public-key confusion.
ALGORITHMS = ["RS256"]
#: JWS algorithm names (RFC 7518 section 3.1, RFC 8037) a refusal may name.
JWA_NAMES = frozenset(
    {"none", "EdDSA"}
    | {f"{family}{bits}" for family in ("HS", "RS", "ES", "PS") for bits in (256, 384, 512)}
)
#: Clock skew tolerated between the IdP and us, in seconds, for exp / nbf / iat.
LEEWAY_S = 30
#: Claims a Keycloak access token always has; a token without one is refused.
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
#: Keycloak marks access tokens ``typ: Bearer`` and ID tokens ``typ: ID``; only the former
#: authorise API calls.
ACCESS_TOKEN_TYP = "Bearer"  # noqa: S105 - a token type name, not a secret
#: The ``typ`` of ID tokens, which only sign a user in to the web console.
ID_TOKEN_TYP = "ID"  # noqa: S105 - a token type name, not a secret
#: An unknown ``kid`` triggers a JWKS refresh, at most this often (seconds), so that a flood of
#: forged tokens cannot turn us into a load generator against the IdP.
JWKS_MIN_REFRESH_S = 10.0
#: Verified tokens are remembered (by SHA-256 of the token, never the token itself) until they
#: expire, so a client reusing its token costs one dictionary lookup instead of an RSA check.
VERIFIED_CACHE_SIZE = 4096


class KeycloakIdentityProvider:
    """Verifies tokens of one Keycloak realm and maps their claims to principals."""

    def __init__(
        self,
        *,
        server_url: str,
        realm: str,
        client_id: str,
        audience: str,
        scheme: LabelScheme,
        tenant_group_prefix: str = "/tenants/",
        timeout_s: int = 5,
        trust_dev_idp: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._oidc = KeycloakOpenID(
            server_url=server_url.rstrip("/") + "/",
            realm_name=realm,
            client_id=client_id,
            timeout=timeout_s,
        )
        self._audience = audience
        self._scheme = scheme
        self._prefix = tenant_group_prefix
        self._trust_dev = trust_dev_idp
        self._clock = clock
        self._lock = threading.Lock()
        self._issuer: str | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._verified: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()

    # -- discovery and keys ------------------------------------------------------------------

    def _discover(self) -> str:
        if self._issuer is None:
            with _translate():
                config: Any = self._oidc.well_known()
            if not isinstance(config, dict) or not isinstance(config.get("issuer"), str):
                # A proxy's page or a broken realm: not an OpenID configuration.
                raise DependencyUnavailableError(
                    "The identity provider's discovery document is not an OpenID configuration.",
                    dependency="identity provider",
                )
            if config.get("sovereign_dev_idp") and not self._trust_dev:
                # The dev stand-in announces itself; outside development we refuse it.
                raise DependencyUnavailableError(
                    "The identity provider is the development stand-in, which is not trusted "
                    "outside development.",
                    dependency="identity provider",
                )
            self._issuer = str(config["issuer"])
        return self._issuer

    def _refresh_keys(self) -> None:
        with _translate():
            jwks: Any = self._oidc.certs()
        found = jwks.get("keys") if isinstance(jwks, dict) else None
        if not isinstance(found, list):
            raise DependencyUnavailableError(
                "The identity provider's key set is not a JWKS.", dependency="identity provider"
            )
        keys = {}
        for jwk in found:
            if not isinstance(jwk, dict):
                continue
            if jwk.get("use", "sig") == "sig" and jwk.get("kid") and jwk.get("kty") == "RSA":
                try:
                    keys[jwk["kid"]] = jwt.PyJWK(jwk, algorithm="RS256")
                except (jwt.PyJWKError, jwt.InvalidKeyError):
                    # One malformed key does not stop the others; tokens it signed are refused.
                    log.warning(
                        "identity provider key %s cannot be read; skipped", for_log(jwk["kid"])
                    )
        self._keys = keys
        self._fetched_at = self._clock()

    def _key(self, kid: str) -> jwt.PyJWK:
        with self._lock:
            key = self._keys.get(kid)
            if key is None and self._clock() - self._fetched_at >= JWKS_MIN_REFRESH_S:
                self._refresh_keys()
                key = self._keys.get(kid)
        if key is None:
            raise AuthenticationError(reason="token signed with an unknown key")
        return key

    # -- the port ----------------------------------------------------------------------------

    def ping(self) -> None:
        """Fetch the realm's discovery document. :raises DependencyUnavailableError:."""
        with _translate():
            self._oidc.well_known()

    def authenticate(self, token: str) -> Principal:
        """Verify ``token`` fully and return its principal.

        :raises AuthenticationError: for any token that does not verify.
        :raises DependencyUnavailableError: if the IdP is needed and unreachable.
        """
        issuer = self._discover()
        digest = hashlib.sha256(token.encode()).digest()
        cached = self._cached(digest)
        if cached is not None:
            return cached
        claims = self._verified_claims(token, issuer, self._audience)
        if claims.get("typ", ACCESS_TOKEN_TYP) != ACCESS_TOKEN_TYP:
            raise AuthenticationError(reason="not an access token")
        principal = self.principal(claims)
        self._remember(digest, principal, float(claims["exp"]))
        return principal

    def verify_id_token(self, token: str, *, client_id: str, nonce: str) -> dict[str, Any]:
        """Verify an OpenID Connect ID token with the checks access tokens get (key, RS256,
        issuer, expiry, leeway), addressed to ``client_id`` and carrying ``nonce`` (OIDC Core
        1.0 section 3.1.3.7); return its claims.

        :raises AuthenticationError: for any ID token that does not verify.
        :raises DependencyUnavailableError: if the IdP is needed and unreachable.
        """
        claims = self._verified_claims(token, self._discover(), client_id)
        if claims.get("typ") != ID_TOKEN_TYP:
            raise AuthenticationError(reason="not an ID token")
        # With one audience azp is optional; when present it must name us (Core 3.1.3.7 #5).
        if claims.get("azp", client_id) != client_id:
            raise AuthenticationError(reason="ID token was issued to another client")
        found = claims.get("nonce")
        if not isinstance(found, str) or not hmac.compare_digest(found, nonce):
            # The nonce binds the token to the sign-in this browser started (replay defence).
            raise AuthenticationError(reason="ID token nonce does not match the sign-in")
        return claims

    def _verified_claims(self, token: str, issuer: str, audience: str) -> dict[str, Any]:
        """Signature, algorithm, issuer, audience, expiry and required claims, or raise."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as e:
            raise AuthenticationError(reason="malformed token") from e
        if header.get("alg") not in ALGORITHMS:
            alg = header.get("alg")
            # Only a registered name is repeated: the reason reaches the audit log, which keeps
            # no text a token chose.
            shown = repr(alg) if isinstance(alg, str) and alg in JWA_NAMES else "(unregistered)"
            raise AuthenticationError(reason=f"algorithm {shown} is not accepted")
        kid = header.get("kid")
        if not isinstance(kid, str):
            raise AuthenticationError(reason="token has no key id")
        key = self._key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=ALGORITHMS,
                audience=audience,
                issuer=issuer,
                leeway=LEEWAY_S,
                options={"require": REQUIRED_CLAIMS, "verify_signature": True},
            )
        except jwt.ExpiredSignatureError as e:
            raise AuthenticationError(reason="token has expired") from e
        except jwt.InvalidAudienceError as e:
            raise AuthenticationError(reason="token is not for this service") from e
        except jwt.InvalidIssuerError as e:
            raise AuthenticationError(reason="token is from another issuer") from e
        except jwt.ImmatureSignatureError as e:
            raise AuthenticationError(reason="token is not valid yet") from e
        except jwt.PyJWTError as e:
            raise AuthenticationError(reason="token does not verify") from e
        return claims

    def _cached(self, digest: bytes) -> Principal | None:
        """The principal of an already verified token that has not expired yet."""
        with self._lock:
            hit = self._verified.get(digest)
            if hit is None:
                return None
            principal, expires = hit
            if time.time() >= expires:
                # Past exp: forget it and verify again (which now fails as expired).
                del self._verified[digest]
                return None
            self._verified.move_to_end(digest)
            return principal

    def _remember(self, digest: bytes, principal: Principal, expires: float) -> None:
        with self._lock:
            self._verified[digest] = (principal, expires)
            while len(self._verified) > VERIFIED_CACHE_SIZE:
                self._verified.popitem(last=False)

    def principal(self, claims: dict[str, Any]) -> Principal:
        """Map verified claims to a principal.

        A signature says who issued the claims, not that they have the shape Keycloak gives
        them; a claim of the wrong JSON type makes the token invalid, like a bad signature.

        :raises AuthenticationError: a claim of the wrong type, or a clearance not understood.
        """
        realm_access = claims.get("realm_access") or {}
        if not isinstance(realm_access, dict):
            raise AuthenticationError(reason="claim realm_access is not an object")
        realm_roles = _strings(realm_access, "roles", "realm_access.roles")
        roles = frozenset(Role(r) for r in realm_roles if r in Role._value2member_map_)
        tenants = frozenset(
            g[len(self._prefix) :]
            for g in _strings(claims, "groups")
            if g.startswith(self._prefix) and len(g) > len(self._prefix)
        )
        clearance = None
        level = claims.get("clearance")
        if level is not None:
            if not isinstance(level, str):
                raise AuthenticationError(reason="claim clearance is not a string")
            try:
                clearance = self._scheme.label(level, _strings(claims, "compartments"))
            except LabelError as e:
                raise AuthenticationError(reason=f"clearance claim not understood: {e}") from e
        auth_time = claims.get("auth_time")
        return Principal(
            subject=str(claims["sub"]),
            username=str(claims.get("preferred_username") or claims["sub"]),
            roles=roles,
            clearance=clearance,
            tenants=tenants,
            auth_time=int(auth_time) if isinstance(auth_time, int | float) else None,
        )


def _strings(claims: dict[str, Any], key: str, name: str | None = None) -> list[str]:
    """Claim ``key`` as a list of strings (absent or null: empty).

    :raises AuthenticationError: if it is anything else.
    """
    value = claims.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise AuthenticationError(reason=f"claim {name or key} is not a list of strings")
    return value


@contextmanager
def _translate() -> Iterator[None]:
    """Keycloak and network errors become DependencyUnavailableError, here and only here."""
    try:
        yield
    except (KeycloakError, OSError) as e:
        log.warning("identity provider unreachable: %s", type(e).__name__)
        raise DependencyUnavailableError(dependency="identity provider") from e
