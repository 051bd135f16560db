"""Sovereign: a control plane for isolated GPU enclaves serving classified and civilian tenants.

:func:`create_app` is the one place the application is assembled: configuration, services (built by
:mod:`sovereign.bootstrap`, the only module that chooses backends, into ``app.extensions``; views
read them through :mod:`sovereign.app_context`), the trusted-proxy middleware, the API, the web
console, the rate limits and the error handlers. Importing the package does no I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

__version__ = "0.1.0"


def create_app(config: Mapping[str, Any] | None = None, **overrides: Any) -> Flask:
    """Build the Flask app; ``overrides`` replace backends (see ``build_services``)."""
    # Imported here, not at the top: importing the package stays free of Flask setup.
    from sovereign import api, app_context  # noqa: PLC0415
    from sovereign import config as configuration  # noqa: PLC0415
    from sovereign.bootstrap import build_console_login, build_services  # noqa: PLC0415
    from sovereign.channels import limits  # noqa: PLC0415

    app = configuration.new_app()
    configuration.load(app, config)
    settings = app_context.settings(app)
    proxies = settings.trusted_proxies
    if proxies:
        from werkzeug.middleware.proxy_fix import ProxyFix  # noqa: PLC0415

        # The client's address (and scheme) as the outermost of ``proxies`` trusted proxies saw
        # it: X-Forwarded-For is read from the right, so what a client writes there itself is
        # never taken. Host, port and prefix stay the proxy's request's own (CONSOLE_EXTERNAL_URL
        # names the public URL).
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=proxies, x_proto=proxies, x_host=0, x_port=0, x_prefix=0
        )
    if settings.console_enabled:
        configuration.verify_console(app.config)
    services = build_services(settings, **overrides)
    app.extensions[app_context.SERVICES] = services
    api.register(app)
    if settings.console_enabled:
        from sovereign import web  # noqa: PLC0415

        web.install(app, build_console_login(settings, services.identity))
    limits.install(app, api_prefix=api.PREFIX, open_endpoints=api.open_endpoints())
    return app
