"""Where a request (or a CLI command) finds the app's assembled pieces.

Owns the ``app.extensions`` keys of the services and the settings, and the two typed
accessors the API, the console and the CLI share: :func:`services` and :func:`settings`.
Neutral ground: it imports neither :mod:`sovereign.bootstrap` (which builds what it returns)
nor the API or the console, so both channels can use it without importing each other.
"""

from __future__ import annotations

from flask import Flask, current_app

from sovereign.services.registry import Services
from sovereign.settings import SETTINGS, Settings

__all__ = ["SERVICES", "SETTINGS", "services", "settings"]

#: ``app.extensions`` key of the :class:`Services` built by :func:`sovereign.create_app`.
SERVICES = "sovereign"


def services(app: Flask | None = None) -> Services:
    """The services of ``app`` (default: the current app)."""
    found: Services = (app or current_app).extensions[SERVICES]
    return found


def settings(app: Flask | None = None) -> Settings:
    """The typed settings of ``app`` (default: the current app)."""
    found: Settings = (app or current_app).extensions[SETTINGS]
    return found
