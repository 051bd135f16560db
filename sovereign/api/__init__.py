"""The HTTP interface: REST API v1, operational endpoints and the problem handler table.

Owns the blueprints and their registration. Views reach services through
:func:`sovereign.app_context.services`; they never import adapters, SQLAlchemy, hvac or libvirt,
nor the assembly (:mod:`sovereign.bootstrap`) or the console (import-linter contracts).
"""

from __future__ import annotations

from flask import Flask

from sovereign import app_context
from sovereign.api import (
    ops,
    problems,
    routing,
    v1,
    v1_fleet,  # noqa: F401 - adds the fleet routes to v1's blueprint
    v1_jobs,  # noqa: F401 - adds the job and dataset routes to v1's blueprint
    v1_reports,  # noqa: F401 - adds the report routes to v1's blueprint
)

#: Where the REST API lives (the rate limits key its writes by principal).
PREFIX = v1.PREFIX


def open_endpoints() -> frozenset[str]:
    """The endpoints of the API operations that need no token (limited per address)."""
    return frozenset(
        f"{v1.blueprint.name}.{op.view.__name__}" for op in v1.api.operations if not op.auth
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
    app_context.services().auth_failures.flush()
