"""Signing in and out: the OIDC authorization code flow with PKCE, and logout at the IdP.

Owns ``/auth/login`` (start, optionally as a step-up), ``/auth/callback`` (state, code
exchange, token verification, new session id) and ``/auth/logout`` (ends the IdP session over
the back channel, forgets the local one, then sends the browser through the IdP's end-session
endpoint). The protocol work and the token checks are behind the
:class:`~sovereign.services.signin.SignInClient` port (:mod:`sovereign.adapters.keycloak_login`).

Every sign-in, refused sign-in and sign-out is written to the audit log
(:mod:`sovereign.services.sessions`): a sign-in that cannot be recorded does not happen, a
sign-out that cannot be recorded still ends the session (and is logged as a lost event).
"""

from __future__ import annotations

import logging
import time

from flask import Response, g, redirect, request
from flask.typing import ResponseReturnValue

from sovereign import app_context
from sovereign.app_context import services
from sovereign.channels import limits
from sovereign.errors import AuthenticationError, DependencyUnavailableError
from sovereign.services.sessions import SignInFailure
from sovereign.text import for_log
from sovereign.web.banner import stylesheet
from sovereign.web.console import (
    bp,
    console,
    current_session,
    end_session,
    external,
    flash,
    page,
    safe_next,
    session_context,
    session_for_login,
    start_session,
)

log = logging.getLogger(__name__)

#: Echoed by the IdP after RP-Initiated Logout, so the landing page can say "signed out".
SIGNED_OUT_STATE = "signed-out"


@bp.get("/auth/login")
def login() -> ResponseReturnValue:
    """Send the browser to the IdP; ``step_up=1`` asks it for the password again."""
    next_url = safe_next(request.args.get("next"))
    step_up = request.args.get("step_up") == "1"
    existing = current_session()
    if existing is not None and existing.signed_in and not step_up:
        return redirect(next_url)
    url, pending = console().login.begin(external("console.callback"), next_url, step_up=step_up)
    session_for_login().add_login(pending)
    return redirect(url)


@bp.get("/auth/callback")
def callback() -> ResponseReturnValue:
    """Finish a sign-in this browser started: same state, valid code, tokens that verify."""
    session = current_session()
    state = request.args.get("state", "")
    pending = session.take_login(state) if session is not None else None
    if pending is None:
        # Not started here, already used, or the session ended meanwhile (login CSRF defence).
        return _failed(
            SignInFailure.UNKNOWN_STATE,
            "This sign-in was not started from this browser, or was already used.",
        )
    if time.time() - pending.started_at > console().login_timeout_s:
        return _failed(SignInFailure.TIMED_OUT, "The sign-in took too long. Start again.")
    if "error" in request.args:
        reason = request.args.get("error_description") or request.args["error"]
        return _failed(
            SignInFailure.IDP_ERROR,
            f"The identity provider did not sign you in: {reason}",
            reason=f"the identity provider refused: {reason}",
        )
    with services().sessions.attempt(_source(), request_id=g.get("request_id", "")):
        signed = console().login.finish(
            pending, request.args.get("code", ""), external("console.callback")
        )
    start_session(signed, step_up=pending.step_up)
    if pending.step_up:
        flash("You signed in again. Confirm your decision below.")
    else:
        flash(f"Signed in as {signed.principal.username}.")
    # Checked when the sign-in began; again here, for sign-ins begun before a stricter check.
    return redirect(safe_next(pending.next_url))


def _source() -> str:
    return request.remote_addr or ""


def _failed(failure: SignInFailure, detail: str, *, reason: str | None = None) -> Response:
    """Record the refused sign-in (``reason``, else ``detail``), then say so."""
    limits.note_auth_failure()
    services().sessions.sign_in_failed(
        _source(), reason or detail, failure=failure, request_id=g.get("request_id", "")
    )
    return page("console/error.html", status=400, title="Sign-in failed", detail=detail)


@bp.get("/auth/logout")
def confirm_logout() -> ResponseReturnValue:
    """A page with the sign-out button (signing out changes state, so it is a form)."""
    session = current_session()
    if session is None or not session.signed_in:
        return redirect("/")
    return page("console/logout.html", title="Sign out")


@bp.post("/auth/logout")
def logout() -> ResponseReturnValue:
    """End the IdP session and this one; then let the IdP forget the browser too."""
    session = current_session()
    settings = console()
    target = "/?state=" + SIGNED_OUT_STATE
    if session is not None and session.refresh_token:
        settings.login.end_session(session.refresh_token)
    if session is not None and session.id_token and settings.idp_logout_redirect:
        try:
            target = settings.login.end_session_url(session.id_token, external("console.index"))
            target += "&state=" + SIGNED_OUT_STATE
        except (DependencyUnavailableError, AuthenticationError) as e:
            # The back channel already ended the IdP session (or could not): stay here.
            log.info("console: no RP-initiated logout: %s", for_log(e.message))
    if session is not None and session.signed_in:
        # Ends the session whether or not the log can record it (the service logs a loss).
        services().sessions.signed_out(session_context(session), session.ref)
    end_session()
    return redirect(target)


@bp.get("/console-banner.css")
def banner_css() -> Response:
    """Banner colours per level (a stylesheet, so pages need no inline styles)."""
    settings = app_context.settings()
    css = stylesheet(settings.label_levels, settings.console_banner_colours)
    return Response(css, mimetype="text/css")
