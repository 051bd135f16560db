"""A read-only subset of Keycloak's admin REST API over the loaded realm export (dev only).

This module owns the few admin endpoints that ``community.general``'s ``keycloak_*`` modules
read when the Ansible ``keycloak`` role runs in check mode (``ansible-playbook --check``), so
that the role's realm tasks can be exercised for real where no Keycloak server exists. It is
part of the development identity provider and shares its refusal outside development and
testing. It is READ-ONLY: every write (POST, PUT, PATCH, DELETE) under ``/admin`` answers
405 with a message saying so, and any other admin path answers 501. Nothing here is, or may
be used as, an administration interface.

What it serves, as Keycloak would return it (representations derived from the realm export
the IdP loaded, each with a stable id):

- ``POST /realms/master/protocol/openid-connect/token``: the ``master`` realm's password grant
  for client ``admin-cli`` and the dev admin (:data:`DEV_ADMIN_USERNAME`,
  :data:`DEV_ADMIN_PASSWORD`, fixtures known to tests only); the access token is an opaque
  random bearer token living :data:`ADMIN_TOKEN_TTL` seconds (Keycloak's master default).
- ``GET /admin/realms/{realm}``: the realm's settings (the export without its collections);
- ``GET .../roles`` and ``.../roles/{name}``: realm roles;
- ``GET .../groups``, ``.../groups/{id}`` and ``.../groups/{id}/children``: groups, Keycloak 23+
  style (``subGroupCount``, children fetched separately);
- ``GET .../client-scopes``, ``.../client-scopes/{id}`` and
  ``.../client-scopes/{id}/protocol-mappers/models``;
- ``GET .../clients`` (``?clientId=``), ``.../clients/{id}``, and its default and optional
  client scopes; a confidential client carries the secret the dev IdP gives it, and the
  redirect URIs the dev IdP actually accepts;
- ``GET .../components`` (``?type=``, ``?parent=``, ``?name=``): the user profile component.

Every admin GET needs ``Authorization: Bearer`` with a live admin token (401 otherwise).
"""

from __future__ import annotations

import hmac
import secrets
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from flask import Blueprint, Flask, Response, current_app, jsonify, request

from devstack.idp.users import DemoClient

__all__ = [
    "ADMIN_CLIENT_ID",
    "ADMIN_TOKEN_TTL",
    "DEV_ADMIN_PASSWORD",
    "DEV_ADMIN_USERNAME",
    "AdminApi",
    "register_admin_routes",
]

#: The ``master`` realm's dev administrator (testing fixtures, like the demo users' password).
DEV_ADMIN_USERNAME: Final = "admin"
DEV_ADMIN_PASSWORD: Final = "dev-admin-password"  # noqa: S105 - a public dev/test fixture
#: Keycloak's admin console client, the one the keycloak_* modules authenticate with.
ADMIN_CLIENT_ID: Final = "admin-cli"
#: Keycloak's default access token lifespan in the master realm.
ADMIN_TOKEN_TTL: Final = 60

_EXTENSION: Final = "devstack.idp.admin"
_MASTER: Final = "master"
_COLLECTIONS: Final = frozenset(
    {"roles", "groups", "clientScopes", "clients", "components", "users"}
)
_READ_ONLY: Final = (
    "the development identity provider's admin API is read-only: it serves the realm export "
    "for check mode (ansible-playbook --check) and never changes it"
)
_NAMESPACE: Final = uuid.UUID("8f6b2c1e-4d1a-5b7e-9c3f-2a6d0e4b7c11")


def _id(*parts: str) -> str:
    """A stable UUID for one object of the realm (the same on every start)."""
    return str(uuid.uuid5(_NAMESPACE, "/".join(parts)))


@dataclass
class AdminApi:
    """The representations served for one realm, built once from its export."""

    realm: str
    data: Mapping[str, Any]
    clients: tuple[DemoClient, ...]
    _tokens: dict[str, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # -- the master realm's admin token ------------------------------------------------------

    def issue_token(self, form: Mapping[str, str]) -> str | None:
        """An admin bearer token for the dev admin's password grant, or None."""
        if form.get("grant_type") != "password" or form.get("client_id") != ADMIN_CLIENT_ID:
            return None
        user_ok = hmac.compare_digest(
            form.get("username", "").encode(), DEV_ADMIN_USERNAME.encode()
        )
        password_ok = hmac.compare_digest(
            form.get("password", "").encode(), DEV_ADMIN_PASSWORD.encode()
        )
        if not (user_ok and password_ok):
            return None
        token = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._tokens = {t: exp for t, exp in self._tokens.items() if exp > now}
            self._tokens[token] = now + ADMIN_TOKEN_TTL
        return token

    def token_valid(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` header carries a live admin token."""
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return False
        with self._lock:
            expiry = self._tokens.get(token.strip())
        return expiry is not None and expiry > time.monotonic()

    # -- representations ---------------------------------------------------------------------

    def realm_rep(self) -> dict[str, Any]:
        """The realm's settings, as GET /admin/realms/{realm} returns them."""
        rep = {k: v for k, v in self.data.items() if k not in _COLLECTIONS}
        rep["id"] = self.realm
        rep["realm"] = self.realm
        return rep

    def roles(self) -> list[dict[str, Any]]:
        """The realm roles."""
        return [
            {
                "id": _id(self.realm, "role", str(r["name"])),
                "name": r["name"],
                "description": r.get("description", ""),
                "composite": False,
                "clientRole": False,
                "containerId": self.realm,
                "attributes": r.get("attributes", {}),
            }
            for r in self.data.get("roles", {}).get("realm", [])
        ]

    def groups(self) -> Iterator[dict[str, Any]]:
        """Every group, depth first, each with its id, parentId and subGroupCount."""

        def walk(
            groups: Iterable[Mapping[str, Any]], parent: str | None
        ) -> Iterator[dict[str, Any]]:
            for g in groups:
                gid = _id(self.realm, "group", str(g["path"]))
                children = g.get("subGroups", [])
                rep: dict[str, Any] = {
                    "id": gid,
                    "name": g["name"],
                    "path": g["path"],
                    "subGroupCount": len(children),
                    "subGroups": [],
                    "attributes": g.get("attributes", {}),
                    "realmRoles": g.get("realmRoles", []),
                    "clientRoles": g.get("clientRoles", {}),
                    "access": {"view": True, "manage": True, "manageMembership": True},
                }
                if parent is not None:
                    rep["parentId"] = parent
                yield rep
                yield from walk(children, gid)

        return walk(self.data.get("groups", []), None)

    def client_scopes(self) -> list[dict[str, Any]]:
        """The client scopes with their protocol mappers."""
        scopes = []
        for s in self.data.get("clientScopes", []):
            name = str(s["name"])
            rep = dict(s)
            rep["id"] = _id(self.realm, "client-scope", name)
            rep["protocolMappers"] = [
                {"id": _id(self.realm, "client-scope", name, "mapper", str(m["name"])), **m}
                for m in s.get("protocolMappers", [])
            ]
            scopes.append(rep)
        return scopes

    def client_reps(self) -> list[dict[str, Any]]:
        """The clients, with the secret and redirect URIs the dev IdP actually uses."""
        served = {c.client_id: c for c in self.clients}
        reps = []
        for c in self.data.get("clients", []):
            client_id = str(c["clientId"])
            rep = dict(c)
            rep["id"] = _id(self.realm, "client", client_id)
            rep["attributes"] = dict(c.get("attributes", {}))
            live = served.get(client_id)
            if live is not None:
                rep["redirectUris"] = list(live.redirect_uris)
                rep["attributes"]["post.logout.redirect.uris"] = "##".join(
                    live.post_logout_redirect_uris
                )
                if live.secret is not None:
                    rep["secret"] = live.secret
            reps.append(rep)
        return reps

    def components(self) -> list[dict[str, Any]]:
        """The realm's components (the declarative user profile)."""
        found = []
        for provider_type, items in self.data.get("components", {}).items():
            for c in items:
                provider_id = str(c["providerId"])
                found.append(
                    {
                        "id": _id(self.realm, "component", provider_type, provider_id),
                        "name": c.get("name", provider_id),
                        "providerId": provider_id,
                        "providerType": provider_type,
                        "parentId": self.realm,
                        "subType": c.get("subType"),
                        "config": c.get("config", {}),
                    }
                )
        return found


_blueprint = Blueprint("devidp_admin", __name__)


def _api() -> AdminApi:
    api = current_app.extensions[_EXTENSION]
    assert isinstance(api, AdminApi)
    return api


def _error(status: int, message: str) -> Response:
    response = jsonify(error=message)
    response.status_code = status
    return response


def _found(rep: Mapping[str, Any] | None, what: str) -> Response:
    return jsonify(rep) if rep is not None else _error(404, f"Could not find {what}")


def _first(reps: Iterable[Mapping[str, Any]], key: str, value: str) -> Mapping[str, Any] | None:
    return next((r for r in reps if r.get(key) == value), None)


@_blueprint.before_request
def _authorize() -> Response | None:
    reading = request.path.startswith("/admin") and request.method in ("GET", "HEAD")
    if reading and not _api().token_valid(request.headers.get("Authorization")):
        return _error(401, "HTTP 401 Unauthorized")
    return None


@_blueprint.post(f"/realms/{_MASTER}/protocol/openid-connect/token")
def admin_token() -> Response:
    """The master realm's password grant for admin-cli and the dev admin."""
    token = _api().issue_token(request.form)
    if token is None:
        response = jsonify(error="invalid_grant", error_description="Invalid user credentials")
        response.status_code = 401
        return response
    return jsonify(
        access_token=token,
        expires_in=ADMIN_TOKEN_TTL,
        token_type="Bearer",  # noqa: S106 - the token type, not a password
        scope="profile email",
    )


def _realm_route(rule: str) -> Callable[[Callable[..., Response]], Callable[..., Response]]:
    """A GET route under /admin/realms/{realm}, answering 404 for another realm."""

    def decorate(view: Callable[..., Response]) -> Callable[..., Response]:
        def checked(realm: str, **kw: str) -> Response:
            if realm != _api().realm:
                return _error(404, "Realm not found.")
            return view(**kw)

        checked.__name__ = view.__name__
        checked.__doc__ = view.__doc__
        _blueprint.get(f"/admin/realms/<realm>{rule}")(checked)
        return view

    return decorate


@_realm_route("")
def realm() -> Response:
    """The realm representation."""
    return jsonify(_api().realm_rep())


@_realm_route("/roles")
def roles() -> Response:
    """The realm roles."""
    return jsonify(_api().roles())


@_realm_route("/roles/<name>")
def role(name: str) -> Response:
    """One realm role by name."""
    return _found(_first(_api().roles(), "name", name), "role")


@_realm_route("/groups")
def groups() -> Response:
    """The top-level groups (Keycloak 23+: children are fetched separately)."""
    return jsonify([g for g in _api().groups() if "parentId" not in g])


@_realm_route("/groups/<gid>")
def group(gid: str) -> Response:
    """One group by id."""
    return _found(_first(_api().groups(), "id", gid), "group")


@_realm_route("/groups/<gid>/children")
def group_children(gid: str) -> Response:
    """A group's direct children."""
    if _first(_api().groups(), "id", gid) is None:
        return _error(404, "Could not find group by id")
    return jsonify([g for g in _api().groups() if g.get("parentId") == gid])


@_realm_route("/client-scopes")
def client_scopes() -> Response:
    """The client scopes."""
    return jsonify(_api().client_scopes())


@_realm_route("/client-scopes/<sid>")
def client_scope(sid: str) -> Response:
    """One client scope by id."""
    return _found(_first(_api().client_scopes(), "id", sid), "client scope")


@_realm_route("/client-scopes/<sid>/protocol-mappers/models")
def client_scope_mappers(sid: str) -> Response:
    """A client scope's protocol mappers."""
    scope = _first(_api().client_scopes(), "id", sid)
    return _found(None, "client scope") if scope is None else jsonify(scope["protocolMappers"])


@_realm_route("/clients")
def clients() -> Response:
    """The clients, or the one named by ``?clientId=`` (a list, as Keycloak answers)."""
    wanted = request.args.get("clientId")
    reps = _api().client_reps()
    return jsonify([c for c in reps if wanted is None or c["clientId"] == wanted])


@_realm_route("/clients/<cid>")
def client(cid: str) -> Response:
    """One client by id."""
    return _found(_first(_api().client_reps(), "id", cid), "client")


def _client_scopes_of(cid: str, key: str) -> Response:
    rep = _first(_api().client_reps(), "id", cid)
    if rep is None:
        return _error(404, "Could not find client")
    scopes = {s["name"]: s for s in _api().client_scopes()}
    names = rep.get(key, [])
    return jsonify([{"id": scopes[n]["id"], "name": n} for n in names if n in scopes])


@_realm_route("/clients/<cid>/default-client-scopes")
def client_default_scopes(cid: str) -> Response:
    """A client's default client scopes."""
    return _client_scopes_of(cid, "defaultClientScopes")


@_realm_route("/clients/<cid>/optional-client-scopes")
def client_optional_scopes(cid: str) -> Response:
    """A client's optional client scopes."""
    return _client_scopes_of(cid, "optionalClientScopes")


@_realm_route("/components")
def components() -> Response:
    """The components, filtered by ``?type=``, ``?parent=`` and ``?name=`` as Keycloak does."""
    filters = {"providerType": "type", "parentId": "parent", "name": "name"}
    return jsonify(
        [
            c
            for c in _api().components()
            if all(request.args.get(arg) in (None, c[key]) for key, arg in filters.items())
        ]
    )


@_blueprint.route("/admin/<path:rest>", methods=["POST", "PUT", "PATCH", "DELETE"])
def refuse_write(rest: str) -> Response:
    """Every write: refused, the stand-in's admin API is read-only."""
    return _error(405, _READ_ONLY)


@_blueprint.get("/admin/<path:rest>")
def not_implemented(rest: str) -> Response:
    """Any other read: not part of the subset the stand-in serves."""
    return _error(
        501,
        f"the development identity provider does not implement GET /admin/{rest}; "
        "its read-only admin API serves only what the keycloak_* modules read in check mode",
    )


def register_admin_routes(app: Flask, api: AdminApi) -> None:
    """Serve ``api`` (and the master realm's admin token) from ``app``."""
    app.extensions[_EXTENSION] = api
    app.register_blueprint(_blueprint)
