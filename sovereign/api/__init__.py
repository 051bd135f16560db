"""The HTTP interface: REST API v1, operational endpoints and the problem handler table.

Owns the blueprints and their registration. Views reach services through ``current_app``;
they never import adapters, SQLAlchemy, hvac or libvirt.
"""

from __future__ import annotations

from flask import Flask

from sovereign.api import (
    ops,
    problems,
    routing,
    v1,
    v1_fleet,  # noqa: F401 - adds the fleet routes to v1's blueprint
)


def register(app: Flask) -> None:
    """Install the API, the ops endpoints and the error handlers on ``app``."""
    problems.register(app)
    routing.install(app)  # first: the console's routes use the same converters
    ops.install(app)
    app.register_blueprint(v1.blueprint)
    app.teardown_request(_flush_auth_failures)


def _flush_auth_failures(_error: BaseException | None) -> None:
    # Summaries of authentication failures whose interval is over (usually nothing to do).
    routing.services().auth_failures.flush()
