"""Sites in the console: the sites hosts stand in, with their countries and operators, and the
form to record a new one.

Owns what readers of hosts (officers, operators, auditors) are shown and what operators and
officers are offered. Every decision stays in ``services().sites`` (who reads, who adds, what a
valid name, country and operator are); a refusal shows the service's reason on the form and
records nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Response, redirect, request, url_for
from flask.typing import ResponseReturnValue

from sovereign.app_context import services
from sovereign.errors import SovereignError
from sovereign.services.recording import CallContext
from sovereign.services.sites import SITE_OPERATORS
from sovereign.web.console import bp, caller, flash, page, retry_form


@dataclass
class SiteForm:
    """What was typed into the add form, and the service's refusal of it."""

    name: str = ""
    country: str = ""
    operator: str = ""
    error: str | None = None


def _sites_page(ctx: CallContext, form: SiteForm | None = None) -> Response:
    form = form or SiteForm()
    found = services().sites.list(ctx)
    hosts = services().hosts.list(ctx)
    by_site: dict[str, list[str]] = {}
    for host in hosts:
        by_site.setdefault(host.site, []).append(host.name)
    return page(
        "console/sites/list.html",
        title="Sites",
        sites=found,
        hosts_by_site=by_site,
        can_add=bool(ctx.principal.roles & SITE_OPERATORS),
        form=form,
        status=422 if form.error else 200,
    )


@bp.get("/sites")
def sites() -> ResponseReturnValue:
    """Every site with its country, operator and hosts; the add form for operators."""
    return _sites_page(caller())


@bp.post("/sites")
def add_site() -> ResponseReturnValue:
    """Record a site (operators and officers); the service checks and audits it."""
    ctx = caller()
    form = SiteForm(
        name=request.form.get("name", "").strip(),
        country=request.form.get("country", "").strip(),
        operator=request.form.get("operator", "").strip(),
    )

    def again(error: SovereignError) -> Response:
        form.error = error.message
        return _sites_page(ctx, form)

    retry_form(again)
    site = services().sites.add(ctx, name=form.name, country=form.country, operator=form.operator)
    flash(f"Site {site.name} ({site.country}, {site.operator}) recorded.")
    return redirect(url_for("console.sites"), 303)
