"""The development identity provider: a Flask app that speaks Keycloak's OIDC dialect.

This module owns the IdP's Flask app factory and the rule that it runs only in development
or testing: :func:`create_idp_app` refuses any other environment. The rest is split by what
it owns: :mod:`~devstack.idp.models` (in-memory sessions, codes and tokens, as Authlib's
models), :mod:`~devstack.idp.realm` (issuer, signing key, users, clients, discovery),
:mod:`~devstack.idp.tokens` (JWT issuing in Keycloak's shape),
:mod:`~devstack.idp.authserver` (Authlib's grants and endpoints), :mod:`~devstack.idp.routes`
(Keycloak's URL layout), :mod:`~devstack.idp.pages` (login and signed-out HTML) and
:mod:`~devstack.idp.bruteforce` (Keycloak's brute-force detection).

The protocol work is Authlib's: grants (RFC 6749), PKCE (RFC 7636), OpenID Connect ID tokens,
introspection (RFC 7662), UserInfo and RP-Initiated Logout. The IdP only supplies storage,
Keycloak's URL layout and Keycloak's token shape (RS256 JWTs with ``realm_access``,
``groups`` and Sovereign's ``clearance``/``compartments`` attributes).

Nothing is persisted; a restart forgets every session and, unless a key is given, rotates the
signing key. There is no IdP session cookie, so every authorization request asks for the
password again; that is also how ``prompt=login`` and ``max_age`` are honoured. Authlib only
accepts http on loopback addresses (RFC 8252 section 7.3), so serve it on 127.0.0.1 or
localhost, or behind https.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from typing import Final, Literal

from authlib.oidc import rpinitiated
from authlib.oidc.discovery import OpenIDProviderMetadata
from cryptography.hazmat.primitives.asymmetric import rsa
from flask import Flask

from devstack.idp.admin import AdminApi, register_admin_routes
from devstack.idp.authserver import build_server
from devstack.idp.bruteforce import BruteForceDetector, BruteForceSettings
from devstack.idp.export import RealmExport, default_realm_export
from devstack.idp.realm import Realm, generate_key
from devstack.idp.routes import register_routes
from devstack.idp.users import (
    CONSOLE_CLIENT_ID,
    DEMO_USERS,
    DemoClient,
    DemoUser,
    with_extra_uris,
)

__all__ = ["ALLOWED_ENVIRONMENTS", "DevIdpRefusedError", "create_idp_app"]

logger = logging.getLogger(__name__)

#: The only environments in which the dev IdP may be built.
ALLOWED_ENVIRONMENTS: Final = frozenset({"development", "testing"})


class DevIdpRefusedError(RuntimeError):
    """The dev IdP was asked for outside development or testing."""


def create_idp_app(
    *,
    environment: str,
    issuer_base: str,
    realm: str | None = None,
    users: Iterable[DemoUser] = DEMO_USERS,
    clients: Iterable[DemoClient] | None = None,
    realm_export: RealmExport | None = None,
    signing_key: rsa.RSAPrivateKey | None = None,
    access_token_ttl: int | None = None,
    refresh_token_ttl: int | None = None,
    extra_redirect_uris: Sequence[str] = (),
    extra_post_logout_redirect_uris: Sequence[str] = (),
    brute_force: BruteForceSettings | Literal["realm"] | None = "realm",
) -> Flask:
    """Build the IdP app serving one realm under ``{issuer_base}/realms/{realm}``.

    The realm comes from ``realm_export`` (the packaged ``realm-sovereign.json``, the one realm
    definition production also gets, unless given): its name, roles, groups, clients, token
    lifespans and brute-force settings. ``realm``, ``clients`` and the TTLs override it for
    tests; every user and client must still be the realm's (:class:`RealmExportError`).

    ``brute_force`` is the realm's brute-force detection by default (``"realm"``); settings
    given here replace it, None turns it off.

    ``extra_redirect_uris`` and ``extra_post_logout_redirect_uris`` are added, as exact
    matches, to the confidential ``sovereign`` client (e.g. a console on a random port).

    :raises DevIdpRefusedError: if ``environment`` is not development or testing.
    :raises RealmExportError: if a user or client is not possible in the realm definition.
    :raises ValueError: if the issuer is neither https nor loopback http.
    """
    if environment not in ALLOWED_ENVIRONMENTS:
        raise DevIdpRefusedError(
            f"the development identity provider is refused in environment {environment!r}; "
            f"it runs only in {sorted(ALLOWED_ENVIRONMENTS)}"
        )
    definition = realm_export or default_realm_export()
    name = realm or definition.name
    registered = [
        with_extra_uris(c, extra_redirect_uris, extra_post_logout_redirect_uris)
        if c.client_id == CONSOLE_CLIENT_ID
        else c
        for c in definition.check_clients(definition.clients if clients is None else clients)
    ]
    guard = definition.brute_force if brute_force == "realm" else brute_force
    state = Realm(
        name=name,
        issuer=f"{issuer_base.rstrip('/')}/realms/{name}",
        private_key=signing_key or generate_key(),
        users=definition.check_users(users),
        clients=registered,
        access_token_ttl=access_token_ttl or definition.access_token_ttl,
        refresh_token_ttl=refresh_token_ttl or definition.refresh_token_ttl,
        brute_force=BruteForceDetector(guard) if guard is not None else None,
    )
    metadata = state.discovery_document()
    # Fail at startup, not at the first login, if Authlib would refuse the issuer.
    OpenIDProviderMetadata(metadata).validate(metadata_classes=[rpinitiated.OpenIDProviderMetadata])

    app = Flask(__name__)
    register_routes(app, build_server(state))
    # Read-only admin API subset over the same export, for the Ansible role's check mode.
    admin = AdminApi(realm=name, data=definition.data, clients=tuple(registered))
    register_admin_routes(app, admin)
    logger.warning(
        "development identity provider: never use in production "
        "(realm %r, issuer %s, environment %s)",
        name,
        state.issuer,
        environment,
    )
    return app
