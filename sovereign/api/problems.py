"""RFC 9457 problem details: the one table from errors to HTTP responses.

Owns the mapping of :mod:`sovereign.errors` classes and HTTP exceptions to status codes, and
the rendering of ``application/problem+json``. Registered on the app (not a blueprint) so that
routing 404/405 and body-size 413 get the same treatment. ``detail`` is only shown for errors
marked safe; anything unexpected is logged with the request id and answered generically.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json, request
from flask_limiter import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from sovereign.errors import (
    AuthenticationError,
    ConflictError,
    DependencyUnavailableError,
    InvalidInputError,
    NotFoundError,
    PolicyDeniedError,
    RateLimitedError,
    SovereignError,
    StepUpRequiredError,
)
from sovereign.text import for_log

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: ``g`` attribute where the rate limiter leaves the seconds until a breached limit resets.
RETRY_AFTER = "sovereign_retry_after"
#: Problem type URIs are URNs under this prefix plus the error's ``code``.
TYPE_PREFIX = "urn:sovereign:problem:"

#: Most specific first; the first class an error is an instance of decides the status.
STATUS_BY_ERROR: tuple[tuple[type[SovereignError], int, str], ...] = (
    # Titles are the HTTP reason phrases, so an error looks the same whichever layer raised it.
    (InvalidInputError, 422, "Unprocessable Content"),
    (AuthenticationError, 401, "Unauthorized"),
    (PolicyDeniedError, 403, "Forbidden"),
    (RateLimitedError, 429, "Too Many Requests"),
    (NotFoundError, 404, "Not Found"),
    (ConflictError, 409, "Conflict"),
    (DependencyUnavailableError, 503, "Service Unavailable"),
    (SovereignError, 500, "Internal Server Error"),
)


def problem(
    status: int,
    title: str,
    *,
    detail: str | None = None,
    type_: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extensions: Any,
) -> Response:
    """An ``application/problem+json`` response (RFC 9457 section 3)."""
    body: dict[str, Any] = {"type": type_, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    body["instance"] = request.path
    request_id = g.get("request_id")
    if request_id:
        body["request_id"] = request_id
    body.update(extensions)
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def _sovereign_error(error: SovereignError) -> Response:
    status, title = next((s, t) for cls, s, t in STATUS_BY_ERROR if isinstance(error, cls))
    extensions: dict[str, Any] = {}
    headers: dict[str, str] = {}
    if isinstance(error, InvalidInputError) and error.errors:
        extensions["errors"] = error.errors
    if isinstance(error, DependencyUnavailableError):
        extensions["dependency"] = error.dependency
        headers["Retry-After"] = "5"
    if isinstance(error, StepUpRequiredError):
        # RFC 9470 section 3: the token is valid but its authentication is too old; the client
        # gets a new one with max_age (and prompt=login) and retries.
        extensions["max_age"] = error.max_age
        headers["WWW-Authenticate"] = (
            'Bearer realm="sovereign", error="insufficient_user_authentication", '
            'error_description="A more recent authentication is required", '
            f'max_age="{error.max_age}"'
        )
    elif isinstance(error, AuthenticationError):
        # RFC 6750 section 3: tell the client which scheme and why.
        headers["WWW-Authenticate"] = 'Bearer realm="sovereign", error="invalid_token"'
    if isinstance(error, RateLimitedError):
        headers["Retry-After"] = str(error.retry_after)
    if status >= 500 and not error.safe:
        log.error("unhandled %s: %s", type(error).__name__, for_log(error.message), exc_info=error)
    return problem(
        status,
        title,
        detail=error.message if error.safe else None,
        type_=TYPE_PREFIX + error.code,
        headers=headers,
        **extensions,
    )


def rate_limited_error(error: RateLimitExceeded) -> RateLimitedError:
    """Flask-Limiter's breach as the control plane's error, with the wait the limiter left."""
    return RateLimitedError(limit=error.description, retry_after=int(g.get(RETRY_AFTER, 1)))


def _rate_limited(error: RateLimitExceeded) -> Response:
    return _sovereign_error(rate_limited_error(error))


def _http_error(error: HTTPException) -> Response:
    status = error.code or 500
    headers = {k: v for k, v in error.get_headers() if k.lower() not in {"content-type"}}
    return problem(status, error.name, detail=error.description, headers=headers)


def _unexpected(error: Exception) -> Response:
    log.exception("unexpected error", exc_info=error)
    return problem(500, "Internal Server Error", type_=TYPE_PREFIX + "internal-error")


def register(app: Flask) -> None:
    """Install the handler table on ``app``."""
    app.register_error_handler(SovereignError, _sovereign_error)
    # Before the generic HTTPException handler: a 429 is a problem with Retry-After.
    app.register_error_handler(RateLimitExceeded, _rate_limited)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(Exception, _unexpected)
