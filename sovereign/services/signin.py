"""The console's sign-in client as a port: what the console asks of an OpenID Connect provider.

Owns :class:`SignInClient` (authorization code flow with PKCE, refresh, logout), the sign-in in
progress (:class:`PendingLogin`) and the completed one (:class:`SignIn`). The Keycloak backend
is :class:`sovereign.adapters.keycloak_login.KeycloakSignInClient`, chosen by
:func:`sovereign.bootstrap.build_console_login`; the console only sees this port. No protocol
library is imported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from sovereign.domain.identity import Principal


@dataclass
class PendingLogin:
    """A sign-in sent to the IdP and not yet back: what the callback must see again."""

    state: str
    nonce: str
    code_verifier: str
    next_url: str
    started_at: float
    #: A re-authentication (step-up): the new ``auth_time`` must not be older than the start.
    step_up: bool = False


@dataclass(frozen=True)
class SignIn:
    """A completed, verified sign-in."""

    principal: Principal
    access_token: str
    refresh_token: str | None
    id_token: str
    auth_time: int | None


class SignInClient(Protocol):
    """The console as an OpenID Connect relying party (confidential client, PKCE S256)."""

    client_id: str

    def begin(self, redirect_uri: str, next_url: str, *, step_up: bool) -> tuple[str, PendingLogin]:
        """The IdP URL to send the browser to, and what the callback must find again.

        :raises DependencyUnavailableError: if the IdP cannot be reached.
        """
        ...

    def finish(self, pending: PendingLogin, code: str, redirect_uri: str) -> SignIn:
        """Exchange ``code`` and verify what comes back.

        :raises AuthenticationError: for a refused code or tokens that do not verify.
        :raises DependencyUnavailableError: if the IdP cannot be reached.
        """
        ...

    def authenticate(self, access_token: str) -> Principal:
        """The principal of ``access_token``, verified exactly as the API verifies bearers.

        :raises AuthenticationError: if it does not verify.
        """
        ...

    def refresh(self, refresh_token: str) -> Mapping[str, Any]:
        """New tokens for a refresh token.

        :raises AuthenticationError: if the IdP refuses it.
        """
        ...

    def end_session(self, refresh_token: str) -> None:
        """End the user's IdP session over the back channel; best effort, never raises."""
        ...

    def end_session_url(self, id_token: str, post_logout_redirect_uri: str) -> str:
        """Where to send the browser so that the IdP forgets it too (RP-Initiated Logout).

        :raises DependencyUnavailableError: if the IdP cannot be reached.
        """
        ...
