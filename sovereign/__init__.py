"""Sovereign: a control plane for isolated GPU enclaves serving classified and civilian tenants.

:func:`create_app` is the one place the application is assembled: configuration, services
(``app.extensions["sovereign"]``), the trusted-proxy middleware, the API, the web console, the
rate limits and the error handlers. Importing the package does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

__version__ = "0.1.0"


def create_app(config: Mapping[str, Any] | None = None, **overrides: Any) -> Flask:
    """Build the Flask app; ``overrides`` replace backends (see ``build_services``)."""
    from sovereign import api  # noqa: PLC0415 - keep package import free of Flask setup
    from sovereign import config as settings  # noqa: PLC0415
    from sovereign.bootstrap import build_services  # noqa: PLC0415

    app = settings.new_app()
    settings.load(app, config)
    proxies = app.config["TRUSTED_PROXIES"]
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix  # noqa: PLC0415

        # The client's address (and scheme) as the outermost of ``proxies`` trusted proxies saw
        # it: X-Forwarded-For is read from the right, so what a client writes there itself is
        # never taken. Host, port and prefix stay the proxy's request's own (CONSOLE_EXTERNAL_URL
        # names the public URL).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=0, x_port=0, x_prefix=0
        )
    console = bool(app.config["CONSOLE_ENABLED"])
    if console:
        settings.verify_console(app.config)
    app.extensions["sovereign"] = build_services(app.config, **overrides)
    api.register(app)
    if console:
        from sovereign import web  # noqa: PLC0415

        web.install(app)
    from sovereign.api import limits  # noqa: PLC0415

    limits.install(app)
    return app
