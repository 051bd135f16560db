"""Serving the development identity provider over real HTTP, in a background thread.

This module owns the werkzeug server lifecycle (bind, serve in a daemon thread, stop and join)
and a python-keycloak helper for fetching a token. It is for tests and the local devstack
only: werkzeug's server is not a production server, and :func:`start_dev_idp` inherits the
environment refusal of :func:`~devstack.idp.app.create_idp_app`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self
from urllib.parse import urlsplit

from flask import Flask
from keycloak import KeycloakOpenID
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

from devstack.idp.app import create_idp_app
from devstack.idp.users import CLI_CLIENT_ID

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ServerHandle", "password_token", "serve_in_thread", "start_dev_idp"]

logger = logging.getLogger(__name__)

#: How long stop() waits for the serving thread; serve_forever polls every 0.5 s.
STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class ServerHandle:
    """A running server: its base URL, its port, and how to stop it."""

    url: str
    port: int
    _server: BaseWSGIServer = field(repr=False)
    _thread: threading.Thread = field(repr=False)

    def stop(self) -> None:
        """Stop serving, close the socket and join the thread; safe to call twice."""
        self._server.shutdown()
        self._thread.join(STOP_TIMEOUT_S)
        # werkzeug closes the socket when serve_forever returns; closing again is harmless.
        self._server.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class _QuietRequestHandler(WSGIRequestHandler):
    """Logs method and path at DEBUG, never the query string (it may carry an ID token)."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.debug("%s %s -> %s", self.command, urlsplit(self.path).path, code)


def serve_in_thread(app: WSGIApplication, host: str = "127.0.0.1", port: int = 0) -> ServerHandle:
    """Serve ``app`` on ``host:port`` (0 picks a free port) in a daemon thread."""
    return _start(_bind(host, port, app), host)


def start_dev_idp(
    *, environment: str, host: str = "127.0.0.1", port: int = 0, **kw: Any
) -> tuple[ServerHandle, Flask]:
    """Bind first, then build the IdP with the bound port in its issuer, then serve it.

    ``kw`` goes to :func:`~devstack.idp.app.create_idp_app`.

    :raises DevIdpRefusedError: if ``environment`` is not development or testing.
    """
    server = _bind(host, port, _not_ready)
    try:
        app = create_idp_app(
            environment=environment, issuer_base=_base_url(host, server.port), **kw
        )
    except BaseException:
        server.server_close()
        raise
    server.app = app
    return _start(server, host), app


def password_token(
    server_url: str,
    username: str,
    password: str,
    realm: str = "sovereign",
    client_id: str = CLI_CLIENT_ID,
) -> str:
    """Return an access token from Keycloak's direct access grant, via python-keycloak.

    :raises keycloak.exceptions.KeycloakAuthenticationError: on wrong credentials.
    """
    openid = KeycloakOpenID(server_url=server_url, realm_name=realm, client_id=client_id)
    token = openid.token(username, password)
    return str(token["access_token"])


def _bind(host: str, port: int, app: WSGIApplication) -> BaseWSGIServer:
    return make_server(host, port, app, threaded=True, request_handler=_QuietRequestHandler)


def _start(server: BaseWSGIServer, host: str) -> ServerHandle:
    thread = threading.Thread(
        target=server.serve_forever, name=f"devidp-{server.port}", daemon=True
    )
    thread.start()
    return ServerHandle(
        url=_base_url(host, server.port), port=server.port, _server=server, _thread=thread
    )


def _base_url(host: str, port: int) -> str:
    # IPv6 literals need brackets in a URL (RFC 3986 section 3.2.2).
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def _not_ready(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
    # Placeholder while the app is built; serving starts only after it is replaced.
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"identity provider starting\n"]
