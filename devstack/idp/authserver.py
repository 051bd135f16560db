"""The dev IdP's Authlib authorization server: grants, PKCE and protocol endpoints.

This module owns the protocol wiring, all of it Authlib's work bound to the realm's state:
the authorization code grant (RFC 6749) with mandatory S256 PKCE for public clients
(RFC 7636), Keycloak's "direct access grants" (password), refresh-token rotation, Bearer
access-token validation (RFC 6750), UserInfo, introspection (RFC 7662), Keycloak's
refresh-token logout and OIDC RP-Initiated Logout. :func:`build_server` assembles them; the
Flask routes that call them are in :mod:`devstack.idp.routes`.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector
from authlib.oauth2.rfc6749 import (
    InvalidGrantError,
    InvalidRequestError,
    TokenEndpoint,
    grants,
)
from authlib.oauth2.rfc6750 import BearerTokenValidator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oidc.core import UserInfo, UserInfoEndpoint
from authlib.oidc.rpinitiated import EndSessionEndpoint, EndSessionRequest
from joserfc.jwk import KeySet, RSAKey

from devstack.idp.models import (
    CONFIDENTIAL_AUTH_METHODS,
    SUPPORTED_SCOPES,
    TOKEN_AUTH_METHODS,
    AccessToken,
    AuthorizationCode,
    Client,
    RefreshToken,
    UserSession,
    unix_time,
)
from devstack.idp.realm import SIGNING_ALG, Realm, identity_claims
from devstack.idp.tokens import CodeFlowIdToken, DirectGrantIdToken, KeycloakTokenGenerator

__all__ = ["KeycloakAuthorizationServer", "build_server"]

# Authlib ships no type information, so mypy --strict sees its classes as Any; each subclass
# below carries ``type: ignore[misc]`` (disallow_subclassing_any) for that reason alone.

#: Keycloak's default authorization code lifespan: 60 seconds, single use.
AUTHORIZATION_CODE_TTL: Final = 60


class _S256CodeChallenge(CodeChallenge):  # type: ignore[misc]
    """PKCE (RFC 7636) with S256 only, mandatory for public clients and for clients whose
    realm definition requires it (``pkce.code.challenge.method``)."""

    SUPPORTED_CODE_CHALLENGE_METHOD: ClassVar[list[str]] = ["S256"]

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        demo = grant.request.client.demo
        if (demo.is_public or demo.pkce_required) and not data.get("code_challenge"):
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
            AuthorizationCode(
                code=code,
                client_id=oauth_request.client.client_id,
                redirect_uri=oauth_request.payload.redirect_uri,
                scope=oauth_request.scope,
                session=oauth_request.user,
                nonce=data.get("nonce") or None,
                code_challenge=data.get("code_challenge") or None,
                code_challenge_method=data.get("code_challenge_method") or None,
                expires_at=unix_time() + AUTHORIZATION_CODE_TTL,
            )
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        found: AuthorizationCode | None = self.server.state.store.take_code(code)
        if (
            found is None
            or found.client_id != client.client_id
            or unix_time() >= found.expires_at
            or found.session.ended
        ):
            return None
        return found

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        """Nothing to do: :meth:`query_authorization_code` already consumed it."""

    def authenticate_user(self, authorization_code: AuthorizationCode) -> UserSession:
        return authorization_code.session


class _PasswordGrant(grants.ResourceOwnerPasswordCredentialsGrant):  # type: ignore[misc]
    """Keycloak's "direct access grants"."""

    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS

    def authenticate_user(self, username: str, password: str) -> UserSession:
        state: Realm = self.server.state
        user = state.check_password(username, password)
        if user is None:
            raise _InvalidUserCredentialsError()
        return state.store.start_session(user)


class _RefreshTokenGrant(grants.RefreshTokenGrant):  # type: ignore[misc]
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS
    # Rotate on every use and revoke the old token (Keycloak's "Revoke Refresh Token").
    INCLUDE_NEW_REFRESH_TOKEN: ClassVar[bool] = True

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        token: RefreshToken | None = self.server.state.store.refresh_token(refresh_token)
        if token is None or token.is_expired() or token.is_revoked():
            return None
        return token

    def authenticate_user(self, refresh_token: RefreshToken) -> UserSession:
        return refresh_token.session

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        self.server.state.store.revoke_refresh_token(refresh_token.value)


# --------------------------------------------------------------------------- endpoints


class _AccessTokenValidator(BearerTokenValidator):  # type: ignore[misc]
    def __init__(self, state: Realm) -> None:
        super().__init__(realm=state.name)
        self._state = state

    def authenticate_token(self, token_string: str) -> AccessToken | None:
        return self._state.load_access_token(token_string)


class _UserInfoEndpoint(UserInfoEndpoint):  # type: ignore[misc]
    def __init__(self, state: Realm, resource_protector: ResourceProtector) -> None:
        super().__init__(resource_protector=resource_protector)
        self._state = state

    def get_issuer(self) -> str:
        return self._state.issuer

    def resolve_private_key(self) -> RSAKey:
        return self._state.key

    def generate_user_info(self, user: UserSession, scope: str) -> UserInfo:
        return UserInfo(**identity_claims(user.user))


class _IntrospectionEndpoint(IntrospectionEndpoint):  # type: ignore[misc]
    """RFC 7662; like Keycloak, any confidential client of the realm may introspect."""

    CLIENT_AUTH_METHODS: ClassVar[list[str]] = list(CONFIDENTIAL_AUTH_METHODS)

    def __init__(self, state: Realm) -> None:
        super().__init__()
        self._state = state

    def query_token(
        self, token_string: str, token_type_hint: str | None
    ) -> AccessToken | RefreshToken | None:
        if token_type_hint != "refresh_token":  # noqa: S105 - a hint name, not a secret
            access = self._state.load_access_token(token_string)
            if access is not None:
                return access
        return self._state.store.refresh_token(token_string)

    def check_permission(self, token: object, client: Client, oauth_request: Any) -> bool:
        return True

    def introspect_token(self, token: AccessToken | RefreshToken) -> dict[str, Any]:
        if isinstance(token, RefreshToken):
            return token.introspection(self._state.issuer)
        return token.introspection()


class _RefreshTokenLogoutEndpoint(TokenEndpoint):  # type: ignore[misc]
    """Keycloak's back-channel logout: POST a refresh token, end its session, answer 204."""

    ENDPOINT_NAME: ClassVar[str] = "refresh_token_logout"
    CLIENT_AUTH_METHODS: ClassVar[list[str]] = TOKEN_AUTH_METHODS

    def __init__(self, state: Realm) -> None:
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

    def __init__(self, state: Realm) -> None:
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


class KeycloakAuthorizationServer(AuthorizationServer):  # type: ignore[misc]
    """Authlib's Flask authorization server, bound to one realm's state."""

    def __init__(self, state: Realm) -> None:
        super().__init__(query_client=state.query_client, save_token=state.save_token)
        self.state = state
        self.scopes_supported = list(SUPPORTED_SCOPES)
        self.resource_protector = ResourceProtector()


def build_server(state: Realm) -> KeycloakAuthorizationServer:
    """Authlib's server for one realm, with every grant and endpoint the IdP offers."""
    server = KeycloakAuthorizationServer(state)
    server.register_token_generator("default", KeycloakTokenGenerator(state))
    server.register_grant(
        _AuthorizationCodeGrant, [_S256CodeChallenge(required=True), CodeFlowIdToken(state)]
    )
    server.register_grant(_PasswordGrant, [DirectGrantIdToken(state)])
    server.register_grant(_RefreshTokenGrant, [DirectGrantIdToken(state)])
    server.resource_protector.register_token_validator(_AccessTokenValidator(state))
    server.register_endpoint(_UserInfoEndpoint(state, server.resource_protector))
    server.register_endpoint(_IntrospectionEndpoint(state))
    server.register_endpoint(_RefreshTokenLogoutEndpoint(state))
    server.register_endpoint(_EndSessionEndpoint(state))
    return server
