"""Keycloak's URL layout for one realm, as Flask routes over the Authlib server.

This module owns the HTTP surface under ``/realms/{realm}``: the public realm representation,
OIDC discovery, the JWKS (``certs``), the authorization endpoint with its login form, the
token, UserInfo and introspection endpoints, and logout, plus Keycloak's JSON answers for an
unknown realm and for HTTP errors. Each route only hands the request to the Authlib server of
:mod:`devstack.idp.authserver`; :func:`register_routes` installs them on an app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from authlib.oauth2 import OAuth2Error
from flask import Blueprint, Flask, Response, abort, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from devstack.idp.authserver import KeycloakAuthorizationServer
from devstack.idp.pages import login_page, signed_out_page

__all__ = ["register_routes"]

_EXTENSION: Final = "devstack.idp"
_LOGIN_ERROR: Final = "Invalid username or password."

_blueprint = Blueprint("devidp", __name__, url_prefix="/realms/<realm>")


def _server() -> KeycloakAuthorizationServer:
    server = current_app.extensions[_EXTENSION]
    assert isinstance(server, KeycloakAuthorizationServer)
    return server


def _response(value: object) -> Response:
    assert isinstance(value, Response)
    return value


@_blueprint.url_value_preprocessor
def _check_realm(endpoint: str | None, values: dict[str, Any] | None) -> None:
    realm = (values or {}).pop("realm", None)
    if realm != _server().state.name:
        # Keycloak's exact answer for an unknown realm.
        abort(Response(_json({"error": "Realm does not exist"}), 404, _JSON))


_JSON: Final = {"Content-Type": "application/json"}


def _json(payload: Mapping[str, Any]) -> str:
    return str(current_app.json.dumps(payload))


def _http_error(error: HTTPException) -> Response:
    # App-level, so routing 404/405 are JSON too (blueprint handlers never see them).
    payload = {
        "error": error.name.lower().replace(" ", "_"),
        "error_description": error.description,
    }
    return Response(_json(payload), error.code or 500, _JSON)


@_blueprint.get("")
def realm_info() -> Response:
    """Keycloak's public realm representation (python-keycloak's ``public_key()`` reads it)."""
    state = _server().state
    return jsonify(
        realm=state.name,
        public_key=state.public_key_spki,
        **{
            "token-service": f"{state.issuer}/protocol/openid-connect",
            "account-service": f"{state.issuer}/account",
            "tokens-not-before": 0,
        },
    )


@_blueprint.get("/.well-known/openid-configuration")
def openid_configuration() -> Response:
    """OpenID Connect Discovery 1.0 document."""
    return jsonify(_server().state.discovery_document())


@_blueprint.get("/protocol/openid-connect/certs")
def certs() -> Response:
    """The realm's JWKS (RFC 7517): one RS256 signing key, kid = RFC 7638 thumbprint."""
    return jsonify(_server().state.jwks())


@_blueprint.route("/protocol/openid-connect/auth", methods=["GET", "POST"])
def authorize() -> Response:
    """Authorization endpoint: GET shows the login form, POST checks it and redirects."""
    server = _server()
    try:
        grant = server.get_consent_grant(end_user=None)
    except OAuth2Error as error:
        return _response(server.handle_error_response(None, error))
    if request.method == "GET":
        return login_page(server.state.name)
    user = server.state.check_password(
        request.form.get("username", ""), request.form.get("password", "")
    )
    if user is None:
        return login_page(server.state.name, error=_LOGIN_ERROR, status=401)
    session = server.state.store.start_session(user)
    return _response(server.create_authorization_response(grant_user=session, grant=grant))


@_blueprint.post("/protocol/openid-connect/token")
def token() -> Response:
    """Token endpoint: authorization_code (+PKCE), password and refresh_token grants."""
    return _response(_server().create_token_response())


@_blueprint.route("/protocol/openid-connect/userinfo", methods=["GET", "POST"])
def userinfo() -> Response:
    """OIDC UserInfo for a Bearer access token carrying the ``openid`` scope."""
    return _response(_server().create_endpoint_response("userinfo"))


@_blueprint.post("/protocol/openid-connect/token/introspect")
def introspect() -> Response:
    """RFC 7662 token introspection for confidential clients."""
    return _response(_server().create_endpoint_response("introspection"))


@_blueprint.route("/protocol/openid-connect/logout", methods=["GET", "POST"])
def logout() -> Response:
    """Refresh-token logout (POST, 204) or RP-Initiated Logout (``id_token_hint``)."""
    server = _server()
    if request.method == "POST" and "refresh_token" in request.form:
        return _response(server.create_endpoint_response("refresh_token_logout"))
    try:
        validated = server.validate_endpoint_request("end_session")
    except OAuth2Error as error:
        return _response(server.handle_error_response(None, error))
    redirect = server.create_endpoint_response("end_session", validated)
    if redirect is not None:
        return _response(redirect)
    return signed_out_page(server.state.name)


def register_routes(app: Flask, server: KeycloakAuthorizationServer) -> None:
    """Serve ``server``'s realm from ``app`` under Keycloak's URL layout."""
    app.extensions[_EXTENSION] = server
    app.register_blueprint(_blueprint)
    app.register_error_handler(HTTPException, _http_error)
