"""The attestation report as a human-readable HTML page.

Owns :func:`render_html` (a self-contained page: no external CSS, scripts or images) and
:func:`render_body` (the same template's body, which the console embeds). Both render the
package template with Jinja2's autoescaping on, so text taken from the log (violation
messages, notes, titles) can never become markup. Must not decide anything: the verdicts are
the report's and the framework views'; this module only lays them out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

from jinja2 import Environment, PackageLoader

from sovereign.services.attestation.frameworks import FRAMEWORKS, ControlView, fact_text

__all__ = ["render_body", "render_html"]

PAGE_TEMPLATE = "report.html"
BODY_TEMPLATE = "_body.html"


def _clearance(value: Any) -> str:
    """A clearance as the events hold it (``{"level", "compartments"}``) as label text."""
    if not isinstance(value, Mapping):
        return str(value or "")
    comps = sorted(str(c) for c in value.get("compartments") or [])
    level = str(value.get("level", "?"))
    return f"{level}//{'/'.join(comps)}" if comps else level


@cache
def _environment() -> Environment:
    # Autoescaping for every template whatever its name: nothing taken from the log (messages,
    # notes, titles, labels) is trusted markup.
    env = Environment(
        loader=PackageLoader("sovereign.services.attestation", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fact"] = fact_text
    return env


def _context(
    report: Mapping[str, Any], framework_views: Sequence[ControlView] | None
) -> dict[str, Any]:
    scope = report.get("scope") or {}
    return {
        "report": report,
        "period": report.get("period") or {},
        "scope": scope,
        "log": report.get("log") or {},
        "parameters": report.get("parameters") or {},
        "clearance": _clearance(scope.get("clearance")),
        "framework_views": list(framework_views or ()),
        "framework_names": FRAMEWORKS,
    }


def render_html(
    report: Mapping[str, Any], framework_views: Sequence[ControlView] | None = None
) -> str:
    """``report`` (a sovereign-attestation/v1 dict) as one self-contained HTML page, with a
    table per framework when ``framework_views`` are given."""
    return _environment().get_template(PAGE_TEMPLATE).render(_context(report, framework_views))


def render_body(
    report: Mapping[str, Any], framework_views: Sequence[ControlView] | None = None
) -> str:
    """The page's body alone (escaped HTML), for embedding in another page."""
    return _environment().get_template(BODY_TEMPLATE).render(_context(report, framework_views))
