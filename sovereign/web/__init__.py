"""The web console: server-rendered pages for analysts, security officers and auditors.

Owns the console blueprint, its OIDC sign-in (authorization code + PKCE against the same Keycloak
realm the API trusts), server-side sessions, CSRF protection, the classification banner, templates
and static files. It calls the same services the API calls and never imports adapters, SQLAlchemy,
hvac or libvirt, the API or the assembly (import-linter contracts say so). No JavaScript: every
page works with plain links and forms (a running job's page reloads itself by ``<meta>``).

See :mod:`sovereign.web.console` for how to add a page.
"""

from __future__ import annotations

from flask import Flask

from sovereign import app_context
from sovereign.channels import limits
from sovereign.services.signin import SignInClient
from sovereign.web import console


def install(app: Flask, login: SignInClient) -> None:
    """Register the console on ``app`` (its settings checked by ``verify_console`` first),
    signing in through ``login`` (the assembly builds it: :mod:`sovereign.bootstrap`)."""
    from sovereign.web import views  # noqa: PLC0415, F401 - registers the routes on the blueprint

    app.extensions[console.EXTENSION] = console.build(
        app_context.settings(app), app_context.services(app), login
    )
    app.register_blueprint(console.bp)
    # Console forms count against the write limit of the user signed in to the session.
    limits.add_subject_resolver(app, console.signed_in_subject)
