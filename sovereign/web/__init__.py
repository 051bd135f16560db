"""The web console: server-rendered pages for analysts, security officers and auditors.

Owns the console blueprint, its OIDC sign-in (authorization code + PKCE against the same
Keycloak realm the API trusts), server-side sessions, CSRF protection, the classification
banner, templates and static files. It calls the same services the API calls and never imports
adapters, SQLAlchemy, hvac or libvirt (an import-linter contract says so). No JavaScript: every
page works with plain links and forms.

See :mod:`sovereign.web.console` for how to add a page.
"""

from __future__ import annotations

from flask import Flask

from sovereign.api import limits
from sovereign.web import console


def install(app: Flask) -> None:
    """Register the console on ``app`` (its settings checked by ``verify_console`` first)."""
    from sovereign.web import views  # noqa: PLC0415, F401 - registers the routes on the blueprint

    app.extensions[console.EXTENSION] = console.build(app.config, app.extensions["sovereign"])
    app.register_blueprint(console.bp)
    # Console forms count against the write limit of the user signed in to the session.
    limits.add_subject_resolver(app, console.signed_in_subject)
