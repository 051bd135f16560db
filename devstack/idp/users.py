"""Demo identities for the development identity provider.

This module owns the fixed cast of demo users that the dev IdP serves and the client model, as
plain frozen dataclasses. The clients themselves, the realm roles and groups come from the one
realm definition (:mod:`devstack.idp.export`), which checks these users against it. It must
not import Authlib and holds no protocol logic; the passwords here are public test fixtures and
must never be reused anywhere real. The console client's secret is the one the control plane's
configuration expects of the dev IdP (:data:`sovereign.config.DEV_IDP_CONSOLE_CLIENT_SECRET`),
so that it is written once.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from sovereign.config import DEV_IDP_CONSOLE_CLIENT_SECRET

__all__ = [
    "CLI_CLIENT_ID",
    "CONSOLE_CLIENT_ID",
    "CONSOLE_CLIENT_SECRET",
    "DEMO_PASSWORD",
    "DEMO_USERS",
    "DemoClient",
    "DemoUser",
    "with_extra_uris",
]

#: Shared by every demo user; a published fixture, not a secret.
DEMO_PASSWORD = "sovereign"  # noqa: S105 - public development fixture

CLI_CLIENT_ID = "sovereign-cli"
CONSOLE_CLIENT_ID = "sovereign"
CONSOLE_CLIENT_SECRET = DEV_IDP_CONSOLE_CLIENT_SECRET

#: Subjects are uuid5 names in this namespace, so ``sub`` is stable across restarts and hosts.
SUBJECT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:sovereign:devidp:subject")

#: Keycloak realms used by the demo have no mail server; RFC 2606 reserves ``.test``.
EMAIL_DOMAIN = "sovereign.test"


@dataclass(frozen=True, slots=True)
class DemoUser:
    """A realm user with the attributes Sovereign reads from Keycloak tokens."""

    username: str
    password: str
    name: str
    roles: tuple[str, ...]
    groups: tuple[str, ...]
    clearance: str | None
    compartments: tuple[str, ...]

    @property
    def sub(self) -> str:
        """The stable subject identifier (uuid5 of the username)."""
        return str(uuid.uuid5(SUBJECT_NAMESPACE, self.username))

    @property
    def email(self) -> str:
        """A deterministic address under a reserved test domain."""
        return f"{self.username}@{EMAIL_DOMAIN}"

    @property
    def given_name(self) -> str:
        """The first word of ``name``, as Keycloak's ``firstName``."""
        return self.name.split(" ", 1)[0]

    @property
    def family_name(self) -> str:
        """Everything after the first word of ``name``, as Keycloak's ``lastName``."""
        parts = self.name.split(" ", 1)
        return parts[1] if len(parts) > 1 else ""


@dataclass(frozen=True, slots=True)
class DemoClient:
    """An OIDC client; ``secret is None`` makes it public (PKCE, no client authentication)."""

    client_id: str
    secret: str | None
    redirect_uris: tuple[str, ...]
    post_logout_redirect_uris: tuple[str, ...]
    audience: str = "sovereign"
    #: Keycloak's ``standardFlowEnabled``: the authorization code flow.
    standard_flow: bool = True
    #: Keycloak's ``directAccessGrantsEnabled``: the password grant.
    direct_access_grants: bool = True
    #: Keycloak's ``pkce.code.challenge.method`` S256: PKCE required even of a confidential client.
    pkce_required: bool = False

    @property
    def is_public(self) -> bool:
        """Whether the client has no secret and so cannot authenticate itself."""
        return self.secret is None


def with_extra_uris(
    client: DemoClient,
    redirect_uris: Iterable[str] = (),
    post_logout_redirect_uris: Iterable[str] = (),
) -> DemoClient:
    """Return a copy of ``client`` that also accepts the given exact URIs."""
    return dataclasses.replace(
        client,
        redirect_uris=_merge(client.redirect_uris, redirect_uris),
        post_logout_redirect_uris=_merge(
            client.post_logout_redirect_uris, post_logout_redirect_uris
        ),
    )


def _merge(existing: tuple[str, ...], extra: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys((*existing, *extra)))


_ALL_COMPARTMENTS = ("CRYPTO", "EU", "NATO")

DEMO_USERS: tuple[DemoUser, ...] = (
    DemoUser(
        username="analyst-research",
        password=DEMO_PASSWORD,
        name="Research Analyst",
        roles=("analyst",),
        groups=("/tenants/research",),
        clearance="UNCLASSIFIED",
        compartments=(),
    ),
    DemoUser(
        username="analyst-defence",
        password=DEMO_PASSWORD,
        name="Defence Analyst",
        roles=("analyst",),
        groups=("/tenants/defence",),
        clearance="SECRET",
        compartments=("NATO",),
    ),
    DemoUser(
        username="officer-1",
        password=DEMO_PASSWORD,
        name="Security Officer One",
        roles=("security-officer",),
        groups=(),
        clearance="SECRET",
        compartments=_ALL_COMPARTMENTS,
    ),
    DemoUser(
        username="officer-2",
        password=DEMO_PASSWORD,
        name="Security Officer Two",
        roles=("security-officer",),
        groups=(),
        clearance="SECRET",
        compartments=_ALL_COMPARTMENTS,
    ),
    DemoUser(
        username="auditor",
        password=DEMO_PASSWORD,
        name="Audit Reviewer",
        roles=("auditor",),
        groups=(),
        clearance="SECRET",
        compartments=_ALL_COMPARTMENTS,
    ),
    DemoUser(
        username="operator",
        password=DEMO_PASSWORD,
        name="Platform Operator",
        roles=("operator",),
        groups=(),
        clearance=None,
        compartments=(),
    ),
)
