"""The landing page: a sign-in link for visitors, the way to each role's work for users."""

from __future__ import annotations

from flask import request
from flask.typing import ResponseReturnValue

from sovereign.web.console import bp, caller, current_session, page
from sovereign.web.views.auth import SIGNED_OUT_STATE


@bp.get("/")
def index() -> ResponseReturnValue:
    """Who you are and where your work is; or the sign-in link."""
    session = current_session()
    if session is None or not session.signed_in:
        return page(
            "console/index.html",
            title="Sovereign console",
            signed_out=request.args.get("state") == SIGNED_OUT_STATE,
        )
    # The user's own clearance is not classified information: the page is marked by what
    # else it shows, which is nothing.
    return page("console/home.html", title="Overview", principal=caller().principal)
