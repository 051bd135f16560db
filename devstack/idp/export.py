"""The one realm definition: Keycloak's realm export that production and the dev IdP share.

This module owns reading ``realm-sovereign.json`` (Keycloak's realm export format, shipped as
package data here and used by the Ansible ``keycloak`` role through
``ansible/roles/keycloak/files/realm-sovereign.json``, a link to this file) into what the dev
IdP models: the realm name, its realm roles and group paths, its OIDC clients (ids, public or
confidential, redirect URIs, standard flow, direct access grants, PKCE, audience), its
brute-force settings and token lifespans. It checks that the protocol mappers the clients get
put into access tokens the claims the dev IdP issues (realm roles, full group paths,
``clearance``, multivalued ``compartments``, ``auth_time``, the audience), and it refuses a
demo user whose roles or groups, or a client, the realm does not define: the development
users, roles and claims cannot drift from what production gets.

The export holds no users and no secrets; a confidential client's secret is given at load
(the dev IdP's public fixture; production's is generated at deploy time).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Final

from devstack.idp.bruteforce import BruteForceSettings
from devstack.idp.users import CONSOLE_CLIENT_ID, CONSOLE_CLIENT_SECRET, DemoClient, DemoUser

__all__ = [
    "DEMO_CLIENTS",
    "REALM_EXPORT_NAME",
    "RealmExport",
    "RealmExportError",
    "default_realm_export",
    "realm_export_path",
]

#: The file name, in this package and in the Ansible keycloak role's ``files/``.
REALM_EXPORT_NAME: Final = "realm-sovereign.json"

#: The secrets the dev IdP gives confidential clients (the export has none).
DEV_CLIENT_SECRETS: Final = {CONSOLE_CLIENT_ID: CONSOLE_CLIENT_SECRET}

_ATTRIBUTE_MAPPER: Final = "oidc-usermodel-attribute-mapper"

#: What the dev IdP puts in every access token, as Keycloak protocol mappers that must produce
#: it: (description, mapper type, required config).
REQUIRED_MAPPERS: Final[tuple[tuple[str, str, Mapping[str, str]], ...]] = (
    (
        "realm roles as realm_access.roles",
        "oidc-usermodel-realm-role-mapper",
        {"claim.name": "realm_access.roles", "multivalued": "true"},
    ),
    (
        "groups with their full path",
        "oidc-group-membership-mapper",
        {"claim.name": "groups", "full.path": "true"},
    ),
    (
        "the clearance attribute",
        _ATTRIBUTE_MAPPER,
        {"user.attribute": "clearance", "claim.name": "clearance", "multivalued": "false"},
    ),
    (
        "the compartments attribute, multivalued",
        _ATTRIBUTE_MAPPER,
        {"user.attribute": "compartments", "claim.name": "compartments", "multivalued": "true"},
    ),
    (
        "auth_time",
        "oidc-usersessionmodel-note-mapper",
        {"user.session.note": "AUTH_TIME", "claim.name": "auth_time"},
    ),
)


class RealmExportError(ValueError):
    """The realm export is unusable, or something is not in it."""


def realm_export_path() -> Path:
    """The packaged realm export (a source checkout's file or an installed wheel's)."""
    return Path(str(resources.files("devstack.idp") / REALM_EXPORT_NAME))


@dataclass(frozen=True)
class RealmExport:
    """What the dev IdP serves from a Keycloak realm export."""

    name: str
    roles: frozenset[str]
    groups: frozenset[str]
    clients: tuple[DemoClient, ...]
    brute_force: BruteForceSettings | None
    access_token_ttl: int
    refresh_token_ttl: int
    #: The parsed export itself (a deep copy), for the read-only admin API of
    #: :mod:`devstack.idp.admin`.
    data: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def load(
        cls, path: Path | None = None, secrets: Mapping[str, str] = DEV_CLIENT_SECRETS
    ) -> RealmExport:
        """Read and check a realm export file (the packaged one by default).

        :raises RealmExportError: if the file is not a usable realm export.
        """
        source = path or realm_export_path()
        try:
            data = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise RealmExportError(f"cannot read the realm export {source}: {e}") from e
        return cls.parse(data, secrets=secrets, source=str(source))

    @classmethod
    def parse(
        cls,
        data: Mapping[str, Any],
        *,
        secrets: Mapping[str, str] = DEV_CLIENT_SECRETS,
        source: str = "realm export",
    ) -> RealmExport:
        """Build from a parsed realm export.

        :raises RealmExportError: if it lacks what the dev IdP serves.
        """
        if data.get("users"):
            raise RealmExportError(f"{source}: the realm export must hold no users")
        name = data.get("realm")
        if not isinstance(name, str) or not name:
            raise RealmExportError(f"{source}: no realm name")
        roles = frozenset(r["name"] for r in data.get("roles", {}).get("realm", []))
        groups = frozenset(_group_paths(data.get("groups", []), ""))
        scopes = {s["name"]: s for s in data.get("clientScopes", [])}
        clients = tuple(_client(c, scopes, secrets, source) for c in data.get("clients", []))
        if not clients:
            raise RealmExportError(f"{source}: no clients")
        return cls(
            name=name,
            roles=roles,
            groups=groups,
            clients=clients,
            brute_force=_brute_force(data),
            access_token_ttl=int(data.get("accessTokenLifespan", 300)),
            refresh_token_ttl=int(data.get("ssoSessionIdleTimeout", 1800)),
            data=copy.deepcopy(dict(data)),
        )

    def check_users(self, users: Iterable[DemoUser]) -> tuple[DemoUser, ...]:
        """The users, if every role and group they hold is the realm's.

        :raises RealmExportError: naming the user and what the realm lacks.
        """
        checked = tuple(users)
        for user in checked:
            unknown_roles = sorted(set(user.roles) - self.roles)
            unknown_groups = sorted(set(user.groups) - self.groups)
            if unknown_roles or unknown_groups:
                raise RealmExportError(
                    f"dev user {user.username!r} is not possible in realm {self.name!r}: "
                    f"roles {unknown_roles} and groups {unknown_groups} are not in the realm "
                    f"definition (realm roles {sorted(self.roles)}, groups {sorted(self.groups)})"
                )
        return checked

    def check_clients(self, clients: Iterable[DemoClient]) -> tuple[DemoClient, ...]:
        """The clients, if the realm defines every one of them.

        :raises RealmExportError: naming a client the realm does not define.
        """
        known = {c.client_id for c in self.clients}
        checked = tuple(clients)
        for client in checked:
            if client.client_id not in known:
                raise RealmExportError(
                    f"client {client.client_id!r} is not in realm {self.name!r} "
                    f"(its clients: {sorted(known)})"
                )
        return checked


def default_realm_export() -> RealmExport:
    """The packaged realm export, with the dev IdP's client secrets."""
    return RealmExport.load()


def _group_paths(groups: Iterable[Mapping[str, Any]], parent: str) -> Iterator[str]:
    for group in groups:
        path = f"{parent}/{group['name']}"
        yield path
        yield from _group_paths(group.get("subGroups", []), path)


def _brute_force(data: Mapping[str, Any]) -> BruteForceSettings | None:
    if not data.get("bruteForceProtected", False):
        return None
    if data.get("permanentLockout", False):
        raise RealmExportError("the dev IdP models temporary lockout only (permanentLockout)")
    defaults = BruteForceSettings()
    return BruteForceSettings(
        failure_factor=int(data.get("failureFactor", defaults.failure_factor)),
        wait_increment_s=int(data.get("waitIncrementSeconds", defaults.wait_increment_s)),
        max_failure_wait_s=int(data.get("maxFailureWaitSeconds", defaults.max_failure_wait_s)),
        quick_login_check_ms=int(
            data.get("quickLoginCheckMilliSeconds", defaults.quick_login_check_ms)
        ),
        minimum_quick_login_wait_s=int(
            data.get("minimumQuickLoginWaitSeconds", defaults.minimum_quick_login_wait_s)
        ),
        max_delta_time_s=int(data.get("maxDeltaTimeSeconds", defaults.max_delta_time_s)),
    )


def _mappers(
    client: Mapping[str, Any], scopes: Mapping[str, Mapping[str, Any]]
) -> list[Mapping[str, Any]]:
    found = list(client.get("protocolMappers", []))
    for scope in client.get("defaultClientScopes", []):
        found.extend(scopes.get(scope, {}).get("protocolMappers", []))
    return found


def _in_access_token(mapper: Mapping[str, Any]) -> bool:
    return str(mapper.get("config", {}).get("access.token.claim", "false")) == "true"


def _client(
    rep: Mapping[str, Any],
    scopes: Mapping[str, Mapping[str, Any]],
    secrets: Mapping[str, str],
    source: str,
) -> DemoClient:
    client_id = str(rep["clientId"])
    if "secret" in rep:
        raise RealmExportError(f"{source}: client {client_id!r} carries a secret")
    mappers = [m for m in _mappers(rep, scopes) if _in_access_token(m)]
    for what, kind, config in REQUIRED_MAPPERS:
        if not any(
            m.get("protocolMapper") == kind
            and all(str(m.get("config", {}).get(k)) == v for k, v in config.items())
            for m in mappers
        ):
            raise RealmExportError(
                f"{source}: client {client_id!r} gets no {kind} mapper putting {what} into "
                "access tokens, which the dev IdP issues"
            )
    audiences = [
        str(m["config"]["included.custom.audience"])
        for m in mappers
        if m.get("protocolMapper") == "oidc-audience-mapper"
        and m.get("config", {}).get("included.custom.audience")
    ]
    if len(audiences) != 1:
        raise RealmExportError(
            f"{source}: client {client_id!r} must get exactly one audience mapper "
            f"(found {audiences})"
        )
    public = bool(rep.get("publicClient", False))
    secret = None if public else secrets.get(client_id)
    if not public and secret is None:
        raise RealmExportError(f"{source}: no secret given for confidential client {client_id!r}")
    attributes = rep.get("attributes", {})
    post_logout = str(attributes.get("post.logout.redirect.uris", ""))
    return DemoClient(
        client_id=client_id,
        secret=secret,
        redirect_uris=tuple(rep.get("redirectUris", [])),
        post_logout_redirect_uris=tuple(u for u in post_logout.split("##") if u),
        audience=audiences[0],
        standard_flow=bool(rep.get("standardFlowEnabled", True)),
        direct_access_grants=bool(rep.get("directAccessGrantsEnabled", False)),
        pkce_required=attributes.get("pkce.code.challenge.method") == "S256",
    )


#: The clients of the packaged realm definition, as the dev IdP serves them.
DEMO_CLIENTS: Final = default_realm_export().clients
