"""The console's sign-in client over Keycloak: authorization code flow with PKCE.

The :class:`~sovereign.services.signin.SignInClient` backend that
:func:`sovereign.bootstrap.build_console_login` builds, next to the API's identity provider
(:mod:`sovereign.adapters.keycloak`). Owns building the authorization URL and exchanging the
code (both through python-keycloak), refreshing and ending IdP sessions, and the verification
of what comes back. Tokens are
verified by the same identity provider object the API uses (``services().identity``): access
tokens with ``authenticate`` exactly as a bearer token, ID tokens with ``verify_id_token``
(same key, algorithm, issuer, leeway; audience = the console client; ``typ: ID``; nonce).
Every python-keycloak exception is translated here, once. Tokens are never logged.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote, urlencode

from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakError
from keycloak.pkce_utils import generate_code_challenge, generate_code_verifier

from sovereign.domain.identity import Principal
from sovereign.errors import AuthenticationError, ConfigurationError, DependencyUnavailableError
from sovereign.services.ports import IdentityProvider
from sovereign.services.signin import PendingLogin, SignIn
from sovereign.text import for_log

log = logging.getLogger(__name__)

#: Scopes asked for: ``openid`` makes it OIDC (an ID token comes back); Keycloak adds its
#: default client scopes (profile, email, roles) on its own.
SCOPE = "openid"
#: An ``auth_time`` this far before the step-up started still counts (IdP clock skew), seconds.
AUTH_TIME_LEEWAY_S = 30
#: HTTP status codes at which the token endpoint refuses the grant itself (bad, used or
#: expired code, wrong verifier), as opposed to being unreachable.
REFUSED = frozenset({400, 401, 403})


@runtime_checkable
class IdTokenVerifier(Protocol):
    """An identity provider that can also verify OIDC ID tokens (the Keycloak adapter)."""

    def verify_id_token(self, token: str, *, client_id: str, nonce: str) -> dict[str, Any]:
        """:raises AuthenticationError: for any ID token that does not verify."""
        ...


class KeycloakSignInClient:
    """The console's Keycloak client (confidential, PKCE S256, state and nonce)."""

    def __init__(
        self,
        *,
        server_url: str,
        realm: str,
        client_id: str,
        client_secret: str | None,
        identity: IdentityProvider,
        timeout_s: int = 5,
    ) -> None:
        self.client_id = client_id
        self._oidc = KeycloakOpenID(
            server_url=server_url.rstrip("/") + "/",
            realm_name=realm,
            client_id=client_id,
            client_secret_key=client_secret,
            timeout=timeout_s,
        )
        self._identity = identity

    # -- start -------------------------------------------------------------------------------

    def begin(self, redirect_uri: str, next_url: str, *, step_up: bool) -> tuple[str, PendingLogin]:
        """The IdP URL to send the browser to, and what the callback must find again.

        A step-up asks the IdP to authenticate the user afresh whatever session it holds
        (``prompt=login`` and ``max_age=0``, OIDC Core 3.1.2.1).

        :raises DependencyUnavailableError: if the IdP's discovery document cannot be read.
        """
        verifier = generate_code_verifier()
        challenge, method = generate_code_challenge(verifier)
        pending = PendingLogin(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=verifier,
            next_url=next_url,
            started_at=time.time(),
            step_up=step_up,
        )
        with _translate():
            # python-keycloak puts the values into the query string as they are, so the one
            # that is not URL-safe already (the redirect URI) is encoded here.
            url: str = self._oidc.auth_url(
                redirect_uri=quote(redirect_uri, safe=""),
                scope=SCOPE,
                state=pending.state,
                nonce=pending.nonce,
                code_challenge=challenge,
                code_challenge_method=method,
            )
        if step_up:
            url += "&" + urlencode({"prompt": "login", "max_age": 0})
        return url, pending

    # -- finish ------------------------------------------------------------------------------

    def finish(self, pending: PendingLogin, code: str, redirect_uri: str) -> SignIn:
        """Exchange ``code`` (with the PKCE verifier) and verify both tokens.

        :raises AuthenticationError: refused code, a token that does not verify, or a step-up
            the IdP did not honour.
        :raises DependencyUnavailableError: if the IdP cannot be reached.
        """
        with _translate("the sign-in could not be completed"):
            tokens: dict[str, Any] = self._oidc.token(
                grant_type="authorization_code",
                code=code,
                redirect_uri=redirect_uri,
                code_verifier=pending.code_verifier,
            )
        id_token = tokens.get("id_token")
        access_token = tokens.get("access_token")
        if not isinstance(id_token, str) or not isinstance(access_token, str):
            raise AuthenticationError(reason="the identity provider returned no ID token")
        claims = self._verifier().verify_id_token(
            id_token, client_id=self.client_id, nonce=pending.nonce
        )
        # The access token is what every later page presents; it passes the API's own checks.
        principal = self._identity.authenticate(access_token)
        if claims["sub"] != principal.subject:
            raise AuthenticationError(reason="ID token and access token name different users")
        auth_time = claims.get("auth_time")
        auth_time = int(auth_time) if isinstance(auth_time, int | float) else None
        if pending.step_up and (
            auth_time is None or auth_time < pending.started_at - AUTH_TIME_LEEWAY_S
        ):
            raise AuthenticationError(reason="the identity provider did not ask for your password")
        refresh = tokens.get("refresh_token")
        return SignIn(
            principal=principal,
            access_token=access_token,
            refresh_token=refresh if isinstance(refresh, str) else None,
            id_token=id_token,
            auth_time=auth_time,
        )

    def _verifier(self) -> IdTokenVerifier:
        if not isinstance(self._identity, IdTokenVerifier):
            raise ConfigurationError(
                reason="the console needs an identity provider that verifies ID tokens"
            )
        return self._identity

    # -- during ------------------------------------------------------------------------------

    def authenticate(self, access_token: str) -> Principal:
        """The principal of ``access_token``, verified exactly as the API verifies bearers."""
        return self._identity.authenticate(access_token)

    def refresh(self, refresh_token: str) -> Mapping[str, Any]:
        """New tokens for a refresh token (rotated by the IdP).

        :raises AuthenticationError: if the IdP refuses it (session ended or expired).
        """
        with _translate("your session at the identity provider has ended"):
            tokens: dict[str, Any] = self._oidc.refresh_token(refresh_token)
        return tokens

    # -- end ---------------------------------------------------------------------------------

    def end_session(self, refresh_token: str) -> None:
        """End the user's IdP session over the back channel; best effort, never raises."""
        try:
            with _translate():
                self._oidc.logout(refresh_token)
        except (AuthenticationError, DependencyUnavailableError) as e:
            # Already ended or unreachable: the local session is gone either way.
            log.info("IdP session not ended over the back channel: %s", for_log(e.message))

    def end_session_url(self, id_token: str, post_logout_redirect_uri: str) -> str:
        """RP-Initiated Logout 1.0: where to send the browser so the IdP forgets it too.

        :raises DependencyUnavailableError: if the discovery document cannot be read.
        """
        with _translate():
            endpoint = str(self._oidc.well_known()["end_session_endpoint"])
        query = urlencode(
            {
                "id_token_hint": id_token,
                "post_logout_redirect_uri": post_logout_redirect_uri,
                "client_id": self.client_id,
            }
        )
        return f"{endpoint}?{query}"


@contextmanager
def _translate(refused: str = "the identity provider refused the request") -> Iterator[None]:
    """python-keycloak errors become ours: a refusal is an authentication failure, anything
    else (connection, timeout, server error) an unavailable IdP."""
    try:
        yield
    except KeycloakError as e:
        if e.response_code in REFUSED:
            raise AuthenticationError(reason=refused) from e
        log.warning("identity provider error: %s", type(e).__name__)
        raise DependencyUnavailableError(dependency="identity provider") from e
    except (OSError, KeyError, ValueError) as e:
        log.warning("identity provider unreachable: %s", type(e).__name__)
        raise DependencyUnavailableError(dependency="identity provider") from e
