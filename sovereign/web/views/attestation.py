"""The attestation in the console: what the audit log proves about a period, for auditors.

Owns ``/audit/attestation`` (a since/until form and the report read as HTML, with the
controls of the sovereign-cloud frameworks), and the downloads of the same report as its
signed note and as a standalone HTML page. Opening the page runs the attestation:
``services().attestation`` decides who may (auditors, up to their clearance), records the run
(``audit:attest``) and the refusals; this module only lays out what it returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from flask import Response, request, url_for
from flask.typing import ResponseReturnValue
from markupsafe import Markup

from sovereign.app_context import services
from sovereign.errors import InvalidInputError
from sovereign.services.attestation.frameworks import (
    FRAMEWORKS,
    ControlView,
    by_framework,
)
from sovereign.services.attestation.html import render_body, render_html
from sovereign.web.console import bp, caller, page
from sovereign.web.views.audit import _when

#: The framework choice meaning every framework of the catalogue.
ALL = "all"


def _period() -> tuple[datetime | None, datetime | None]:
    """The period typed in the form. :raises InvalidInputError: not dates, or since > until."""
    since = _when("since", request.args.get("since", "").strip())
    until = _when("until", request.args.get("until", "").strip())
    if since is not None and until is not None and since > until:
        raise InvalidInputError(reason="since is after until")
    return since, until


def _framework() -> str:
    chosen = request.args.get("framework", ALL)
    if chosen != ALL and chosen not in FRAMEWORKS:
        raise InvalidInputError(reason=f"framework must be {ALL} or one of {', '.join(FRAMEWORKS)}")
    return chosen


def _views(report: dict[str, Any], chosen: str) -> list[ControlView]:
    # The facts the report states (signed with it); a report without them has none to offer.
    facts = report.get("facts") or {}
    names: Sequence[str] = list(FRAMEWORKS) if chosen == ALL else [chosen]
    return [view for name in names for view in by_framework(report, name, facts)]


def _query() -> dict[str, Any]:
    return {k: request.args[k] for k in ("since", "until", "framework") if request.args.get(k)}


def _download(body: str, filename: str, mimetype: str) -> Response:
    return Response(
        body,
        mimetype=mimetype,
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")


@bp.get("/audit/attestation")
def audit_attestation() -> ResponseReturnValue:
    """Attest the period in the form (default: the whole log up to now) and show the report,
    each claim's verdict and evidence, and the frameworks' controls."""
    ctx = caller()
    since, until = _period()
    chosen = _framework()
    report, note = services().attestation.attest(ctx, since, until)
    views = _views(report, chosen)
    query = _query()
    # The report may name anything up to the clearance it was scoped to: mark the page so;
    # a report without a clearance limit covers everything.
    clearance = (report.get("scope") or {}).get("clearance")
    shown = [clearance] if isinstance(clearance, dict) else [services().scheme.highest]
    return page(
        "console/audit/attestation.html",
        shown=shown,
        title="Attestation",
        form={
            "since": request.args.get("since", ""),
            "until": request.args.get("until", ""),
            "framework": chosen,
        },
        frameworks=FRAMEWORKS,
        all_frameworks=ALL,
        # render_body autoescapes everything taken from the report (one template for the
        # console and the standalone page), so its output is markup, not text.
        body=Markup(render_body(report, views)),  # noqa: S704 - escaped by the template
        note=note,
        note_url=url_for("console.audit_attestation_note", **query),
        html_url=url_for("console.audit_attestation_html", **query),
    )


@bp.get("/audit/attestation/note")
def audit_attestation_note() -> ResponseReturnValue:
    """The attestation of the period as its signed note (``sovereign audit
    verify-attestation`` checks it offline with the log's public key)."""
    ctx = caller()
    since, until = _period()
    _report, note = services().attestation.attest(ctx, since, until)
    return _download(note, f"sovereign-attestation-{_stamp()}.note", "text/plain")


@bp.get("/audit/attestation/report.html")
def audit_attestation_html() -> ResponseReturnValue:
    """The attestation of the period as one self-contained HTML page, to keep or send."""
    ctx = caller()
    since, until = _period()
    chosen = _framework()
    report, _note = services().attestation.attest(ctx, since, until)
    body = render_html(report, _views(report, chosen))
    return _download(body, f"sovereign-attestation-{_stamp()}.html", "text/html")
