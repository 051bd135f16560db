"""What every console page shares: the blueprint, the session cookie, CSRF, the signed-in
caller, rendering with the classification banner, navigation and error pages.

Owns the request plumbing only, including when a session starts and ends, and so where the
``session:*`` audit events are written (:func:`start_session`, :func:`session_context`, the store's
expiry hook). Pages (in :mod:`sovereign.web.views`) call the same services the API calls, through
:func:`sovereign.app_context.services`; they never touch the database or adapters. Policy stays in
the services: a role check here only decides what to offer, never what is allowed.

Adding a page: write a view on :data:`bp` that calls :func:`caller` and a service, return
:func:`page` with the labels it shows, extend ``console/base.html``, put forms through the
``csrf_field`` / ``post_button`` macros of ``console/_macros.html``, and add a
:class:`~sovereign.web.nav.NavItem` to :data:`sovereign.web.nav.NAV`.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    g,
    has_request_context,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.typing import ResponseReturnValue
from flask_limiter import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from sovereign.app_context import services
from sovereign.app_context import settings as app_settings
from sovereign.channels import limits
from sovereign.channels.statuses import rate_limited_error, status_of
from sovereign.channels.uploads import MemoryFormDataParser
from sovereign.domain.identity import Principal, Role
from sovereign.domain.labels import Label
from sovereign.errors import (
    AuditUnavailableError,
    AuthenticationError,
    NotFoundError,
    RateLimitedError,
    SovereignError,
)
from sovereign.services.authfailures import AUTH_FAILURE
from sovereign.services.recording import CallContext
from sovereign.services.registry import Services
from sovereign.services.sessions import SessionAuditService, SessionEnd
from sovereign.services.signin import SignIn, SignInClient
from sovereign.settings import Settings
from sovereign.text import for_log
from sovereign.web.banner import Shown, banner
from sovereign.web.forms import refuse_control_characters
from sovereign.web.nav import nav_items
from sovereign.web.sessions import (
    ConsoleSession,
    ExpiryHook,
    MemorySessionStore,
    SessionStore,
)

log = logging.getLogger(__name__)

EXTENSION = "sovereign.console"
#: ``__Host-`` cookies must be Secure, host-only and path ``/``: browsers refuse them otherwise,
#: so a subdomain or a plain-http page cannot plant or overwrite one.
SECURE_COOKIE = "__Host-sovereign-console"
PLAIN_COOKIE = "sovereign-console"
CSRF_FIELD = "csrf_token"
#: Methods that change something and so must carry the session's CSRF token.
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

bp = Blueprint(
    "console",
    __name__,
    template_folder="templates",
    static_folder="static",
    static_url_path="/console-static",
)


@dataclass
class Console:
    """The console's settings and collaborators, one per app (``app.extensions``)."""

    login: SignInClient
    store: SessionStore
    cookie_name: str
    cookie_secure: bool
    cookie_samesite: str
    login_timeout_s: int
    external_url: str | None
    idp_logout_redirect: bool
    #: Origin of the IdP, allowed as a form target (logout and step-up redirect there).
    idp_origin: str
    clock: Callable[[], float] = time.time


class LoginRequiredError(Exception):
    """No signed-in session (or it ended): the browser goes to sign in."""

    def __init__(self, *, expired: bool = False) -> None:
        super().__init__("sign-in required")
        self.expired = expired


class CsrfError(Exception):
    """An unsafe request without this session's CSRF token."""


# -- access to the app's pieces ------------------------------------------------------------------


def console() -> Console:
    """This app's console settings."""
    found: Console = current_app.extensions[EXTENSION]
    return found


def signed_in_subject() -> str | None:
    """The subject this browser's session was signed in for, before the console's own hooks
    ran (the write limit keys console forms by it); None without a signed-in session."""
    if not (request.endpoint or "").startswith(bp.name + "."):
        return None
    cookie = request.cookies.get(console().cookie_name)
    found = console().store.get(cookie) if cookie else None
    return found.subject if found is not None and found.signed_in else None


def build(settings: Settings, svc: Services, login: SignInClient) -> Console:
    """The console for ``settings``, signing in through ``login`` (built by the assembly)."""
    secure = settings.console_cookie_secure
    idp = urlsplit(settings.idp_url or "")
    return Console(
        login=login,
        store=MemorySessionStore(
            str(settings.secret_key),
            idle_timeout_s=settings.console_idle_timeout_s,
            max_age_s=settings.console_session_max_s,
            max_sessions=settings.console_max_sessions,
            on_expire=_record_expiry(svc.sessions),
        ),
        cookie_name=SECURE_COOKIE if secure else PLAIN_COOKIE,
        cookie_secure=secure,
        cookie_samesite=settings.console_cookie_samesite,
        login_timeout_s=settings.console_login_timeout_s,
        external_url=settings.console_external_url,
        idp_logout_redirect=settings.console_idp_logout_redirect,
        idp_origin=f"{idp.scheme}://{idp.netloc}" if idp.netloc else "",
    )


# -- the session -------------------------------------------------------------------------------


#: Console endpoints that take file uploads, with what bounds their body (a function of the
#: settings, in bytes). Every other form keeps the app's ``MAX_CONTENT_LENGTH``.
UPLOAD_LIMITS: dict[str, Callable[[Settings], int]] = {}


def accepts_uploads(endpoint: str, limit: Callable[[Settings], int]) -> None:
    """Let ``endpoint`` take a multipart body of up to ``limit(settings)`` bytes, its files held
    in memory only (see :class:`~sovereign.channels.uploads.MemoryFormDataParser`)."""
    UPLOAD_LIMITS[endpoint] = limit


def _allow_upload() -> None:
    limit = UPLOAD_LIMITS.get(request.endpoint or "")
    if limit is not None and request.method == "POST":
        request.max_content_length = limit(app_settings())
        request.form_data_parser_class = MemoryFormDataParser


@bp.before_request
def _load_session() -> None:
    if request.endpoint == "console.static":
        return
    _allow_upload()  # before anything reads the form (the CSRF check below does)
    cookie = request.cookies.get(console().cookie_name)
    g.console_cookie = cookie
    g.console_session = console().store.get(cookie) if cookie else None
    if request.method in UNSAFE_METHODS:
        _check_csrf()
        refuse_control_characters(request.form)


def current_session() -> ConsoleSession | None:
    """This browser's live session, if any."""
    found: ConsoleSession | None = g.get("console_session")
    return found


def session_for_login() -> ConsoleSession:
    """This browser's session, created (with a new cookie) if it has none."""
    found = current_session()
    if found is None:
        cookie, found = console().store.create()
        g.console_cookie = cookie
        g.console_session = found
        g.console_set_cookie = cookie
    return found


def rotate_session() -> ConsoleSession:
    """Give the session a new cookie value and CSRF token (at sign-in: no fixation)."""
    rotated = console().store.rotate(g.console_cookie) if g.get("console_cookie") else None
    if rotated is None:
        raise LoginRequiredError(expired=True)
    cookie, found = rotated
    g.console_cookie = cookie
    g.console_session = found
    g.console_set_cookie = cookie
    return found


def session_context(session: ConsoleSession, *, from_here: bool = True) -> CallContext:
    """The user ``session`` was signed in for, as stored at sign-in (no token is checked), for
    the audit of its end; with this request's id and address unless ``from_here`` is false
    (the request is someone else's)."""
    here = from_here and has_request_context()
    return CallContext(
        principal=Principal(subject=session.subject or "", username=session.username or ""),
        request_id=g.get("request_id", "") if here else "",
        source=(request.remote_addr or "") if here else "",
    )


def _record_expiry(sessions: SessionAuditService) -> ExpiryHook:
    """The store's expiry hook: ``session:expire`` for each signed-in session it drops."""

    def record(session: ConsoleSession, reason: SessionEnd) -> None:
        # An eviction happens during another visitor's request: not this session's address.
        ctx = session_context(session, from_here=reason is not SessionEnd.EVICTED)
        sessions.expired(ctx, session.ref, reason=reason)

    return record


def start_session(signed: SignIn, *, step_up: bool) -> ConsoleSession:
    """Sign this browser in as ``signed.principal``: a new session id (no fixation), the sign-in
    recorded under the new id's reference, and only then the tokens.

    :raises AuditUnavailableError: if the sign-in cannot be recorded; the session has ended by
        then (fail-closed: nobody is signed in without a record of it).
    :raises LoginRequiredError: if the session ended meanwhile.
    """
    before = current_session()
    previous = before.subject if before is not None else None
    replaces = before.ref if before is not None and before.signed_in else None
    session = rotate_session()
    ctx = CallContext(
        principal=signed.principal,
        request_id=g.get("request_id", ""),
        source=request.remote_addr or "",
    )
    try:
        services().sessions.signed_in(
            ctx,
            auth_time=signed.auth_time,
            session_ref=session.ref,
            step_up=step_up,
            replaces=replaces,
        )
    except AuditUnavailableError:
        end_session()  # not even the tokens of an earlier sign-in stay usable
        raise
    if previous is not None and previous != signed.principal.subject:
        session.resume = None
    session.subject = signed.principal.subject
    session.username = signed.principal.username
    session.access_token = signed.access_token
    session.refresh_token = signed.refresh_token
    session.id_token = signed.id_token
    session.auth_time = signed.auth_time
    return session


def end_session() -> None:
    """Forget this browser's session here and tell the browser to drop the cookie."""
    if g.get("console_cookie"):
        console().store.delete(g.console_cookie)
    g.console_session = None
    g.pop("console_set_cookie", None)  # a cookie issued earlier in this request names nothing
    g.console_clear_cookie = True


@bp.after_request
def _finish(response: Response) -> Response:
    settings = console()
    cookie = g.get("console_set_cookie")
    if cookie:
        response.set_cookie(
            settings.cookie_name,
            cookie,
            path="/",
            secure=settings.cookie_secure,
            httponly=True,
            samesite=settings.cookie_samesite,
        )
    elif g.get("console_clear_cookie"):
        response.delete_cookie(
            settings.cookie_name,
            path="/",
            secure=settings.cookie_secure,
            httponly=True,
            samesite=settings.cookie_samesite,
        )
    # No scripts at all; forms may only go here or to the IdP (logout and step-up redirect
    # there, and browsers hold redirects after a form post to form-action too).
    form_action = " ".join(filter(None, ["'self'", settings.idp_origin]))
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; img-src 'self'; "
        f"form-action {form_action}; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    return response


# -- CSRF --------------------------------------------------------------------------------------


def _check_csrf() -> None:
    """Every unsafe request carries the session's token (synchroniser token pattern); a
    missing or wrong one is counted in the audit log (``auth:failure``, error ``csrf``)."""
    session = current_session()
    if session is None:
        # No session to hold a token: it ended (or never was); sign in again.
        raise LoginRequiredError(expired=bool(g.get("console_cookie")))
    sent = request.form.get(CSRF_FIELD, "")
    if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
        log.warning(
            "console: CSRF token missing or wrong on %s %s",
            for_log(request.method),
            for_log(request.path),
        )
        limits.note_auth_failure()
        services().auth_failures.failed(
            request.remote_addr or "",
            AUTH_FAILURE,
            "console",
            "csrf",
            f"{request.method} {request.path} without this session's CSRF token",
            request_id=g.get("request_id", ""),
        )
        raise CsrfError


def csrf_token() -> str:
    """This session's CSRF token, for forms (empty without a session)."""
    session = current_session()
    return session.csrf_token if session is not None else ""


# -- the caller --------------------------------------------------------------------------------


def caller() -> CallContext:
    """The signed-in user of this request, verified exactly as the API verifies a bearer token.

    An expired access token is refreshed once; if the IdP refuses, the session ends.

    :raises LoginRequiredError: if there is no signed-in session.
    """
    found: CallContext | None = g.get("console_ctx")
    if found is not None:
        return found
    session = current_session()
    if session is None or session.access_token is None:
        raise LoginRequiredError(expired=bool(g.get("console_cookie")))
    principal = _principal(session)
    ctx = CallContext(
        principal=principal, request_id=g.get("request_id", ""), source=request.remote_addr or ""
    )
    g.console_ctx = ctx
    return ctx


def _principal(session: ConsoleSession) -> Principal:
    login = console().login
    try:
        return login.authenticate(session.access_token or "")
    except AuthenticationError:
        pass  # most often simply expired: refresh below
    with session.lock:
        try:
            # Another request of this session may have refreshed while we waited.
            return login.authenticate(session.access_token or "")
        except AuthenticationError:
            pass
        if session.refresh_token is None:
            _ended(session, SessionEnd.ACCESS_EXPIRED)
        try:
            tokens = login.refresh(session.refresh_token)
            session.access_token = str(tokens["access_token"])
            principal = login.authenticate(session.access_token)
        except (AuthenticationError, KeyError):
            _ended(session, SessionEnd.IDP_SESSION_ENDED)
        session.refresh_token = tokens.get("refresh_token") or session.refresh_token
        session.id_token = tokens.get("id_token") or session.id_token
    if principal.subject != session.subject:
        _ended(session, SessionEnd.SUBJECT_CHANGED)
    return principal


def _ended(session: ConsoleSession, reason: SessionEnd) -> NoReturn:
    # The session ends even if the audit log cannot say so (it logs the loss loudly).
    services().sessions.expired(session_context(session), session.ref, reason=reason)
    end_session()
    raise LoginRequiredError(expired=True)


def principal_or_none() -> Principal | None:
    """The caller's principal if this request has already established it."""
    ctx: CallContext | None = g.get("console_ctx")
    return ctx.principal if ctx is not None else None


# -- URLs --------------------------------------------------------------------------------------


def external(endpoint: str, **values: Any) -> str:
    """An absolute URL of a console page, under ``CONSOLE_EXTERNAL_URL`` when configured."""
    base = console().external_url
    if base:
        return str(base).rstrip("/") + url_for(endpoint, **values)
    return url_for(endpoint, _external=True, **values)


#: What a ``next`` target may be: an absolute path on this site, with an optional query, in
#: the characters RFC 3986 allows there (section 3.3 pchar, 3.4 query). Not ``//`` at the start
#: (another host), no backslash (browsers read ``/\`` as ``//``), no space or control character
#: (CR/LF would split the ``Location`` header), no fragment, no raw non-ASCII.
LOCAL_TARGET = re.compile(
    r"/(?!/)[A-Za-z0-9\-._~!$&'()*+,;=:@%/]*(?:\?[A-Za-z0-9\-._~!$&'()*+,;=:@%/?]*)?"
)


def safe_next(value: str | None) -> str:
    """``value`` if it is a path on this site in plain URI characters, else ``/`` (no open
    redirect, no header injection)."""
    if not value or not LOCAL_TARGET.fullmatch(value):
        return "/"
    return value


# -- rendering ---------------------------------------------------------------------------------


def page(
    template: str, *, shown: Iterable[Shown] = (), status: int = 200, **context: Any
) -> Response:
    """Render ``template`` with a banner for the most sensitive of ``shown``."""
    body = render_template(template, banner=banner(services().scheme, shown), **context)
    return Response(body, status=status, mimetype="text/html")


def flash(message: str, category: str = "info") -> None:
    """Show ``message`` on the next page this browser renders."""
    session = current_session()
    if session is not None:
        session.flash(message, category)


def retry_form(render: Callable[[SovereignError], Response]) -> None:
    """If a service refuses this submission, show the form again with the reason, via
    ``render``, instead of an error page (the handler calls it)."""
    g.console_form = render


@bp.context_processor
def _context() -> dict[str, Any]:
    session = current_session()
    principal = principal_or_none()
    return {
        "csrf_token": csrf_token,
        "user": principal,
        "nav": nav_items(principal),
        "messages": session.pop_messages() if session is not None else [],
        "Role": Role,
    }


@bp.app_template_filter("label")
def _label_text(value: Label | dict[str, Any] | None) -> str:
    if value is None:
        return "unlabelled"
    if isinstance(value, Label):
        return str(value)
    comps = sorted(value.get("compartments") or [])
    level = str(value.get("level", "?"))
    return f"{level}//{'/'.join(comps)}" if comps else level


@bp.app_template_filter("banner_class")
def _banner_class(value: Label | dict[str, Any] | None) -> str:
    return banner(services().scheme, [value]).css_class


# -- errors ------------------------------------------------------------------------------------


@bp.errorhandler(LoginRequiredError)
def _login_required(error: LoginRequiredError) -> ResponseReturnValue:
    if request.method == "GET":
        target = request.full_path.rstrip("?")
    else:
        # After a form post, come back to the page the form was on.
        referrer = urlsplit(request.referrer or "")
        same = referrer.netloc == request.host
        target = referrer.path + (f"?{referrer.query}" if referrer.query else "") if same else "/"
    if error.expired:
        end_session()
    return redirect(url_for("console.login", next=safe_next(target)))


@bp.errorhandler(CsrfError)
def _csrf_failed(error: CsrfError) -> Response:
    del error
    return page(
        "console/error.html",
        status=400,
        title="This form could not be accepted",
        detail="The form was not sent from this console session (its security token is "
        "missing or out of date). Nothing was changed. Go back, reload the page and try again.",
    )


@bp.errorhandler(SovereignError)
def _refused(error: SovereignError) -> Response:
    status, title = status_of(error)
    if status >= 500 and not error.safe:
        log.error("console: %s: %s", type(error).__name__, for_log(error.message), exc_info=error)
    retry: Callable[[SovereignError], Response] | None = g.pop("console_form", None)
    if retry is not None and error.safe and status < 500 and not isinstance(error, NotFoundError):
        try:
            response = retry(error)
        except SovereignError:
            pass  # the form cannot be shown either (say, the request vanished): error page
        else:
            response.status_code = status
            return response
    detail = error.message if error.safe else "Something went wrong; it has been logged."
    if isinstance(error, AuthenticationError) or request.endpoint == "console.callback":
        title = "Sign-in failed"
    response = page("console/error.html", status=status, title=title, detail=detail)
    if isinstance(error, RateLimitedError):
        response.headers["Retry-After"] = str(error.retry_after)
    return response


@bp.errorhandler(RateLimitExceeded)
def _rate_limited(error: RateLimitExceeded) -> Response:
    return _refused(rate_limited_error(error))


@bp.errorhandler(HTTPException)
def _http_error(error: HTTPException) -> Response:
    return page(
        "console/error.html",
        status=error.code or 500,
        title=error.name,
        detail=error.description or "",
    )


@bp.errorhandler(Exception)
def _unexpected(error: Exception) -> Response:
    log.exception("console: unexpected error", exc_info=error)
    return page(
        "console/error.html",
        status=500,
        title="Internal Server Error",
        detail=f"Something went wrong; it has been logged (request {g.get('request_id', '')}).",
    )
