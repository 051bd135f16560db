"""RFC 9457 problem details: the API's answer for every error.

Owns the rendering of :mod:`sovereign.errors` classes (their statuses from the one table both
channels share, :mod:`sovereign.channels.statuses`) and of HTTP exceptions as
``application/problem+json``. Registered on the app (not a blueprint) so that routing 404/405 and
body-size 413 get the same treatment. ``detail`` is only shown for errors marked safe; anything
unexpected is logged with the request id and answered generically.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json, request
from flask_limiter import RateLimitExceeded
from werkzeug.exceptions import HTTPException

from sovereign.channels.statuses import rate_limited_error, status_of
from sovereign.errors import (
    AuthenticationError,
    DependencyUnavailableError,
    InvalidInputError,
    RateLimitedError,
    SovereignError,
    StepUpRequiredError,
)
from sovereign.text import for_log

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
#: Problem type URIs are URNs under this prefix plus the error's ``code``.
TYPE_PREFIX = "urn:sovereign:problem:"


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
    status, title = status_of(error)
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
