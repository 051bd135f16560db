"""The one table from the control plane's errors to HTTP statuses, for both channels.

Owns :data:`STATUS_BY_ERROR` and :func:`status_of`: the API renders the status as RFC 9457
problem+json (:mod:`sovereign.api.problems`), the console as an error page; both take the
status and title from here. Also the rate limiter's breach as a
:class:`~sovereign.errors.RateLimitedError`, with the wait it left in :data:`RETRY_AFTER`.
"""

from __future__ import annotations

from flask import g
from flask_limiter import RateLimitExceeded

from sovereign.errors import (
    AuthenticationError,
    ConflictError,
    DependencyUnavailableError,
    GoneError,
    InvalidInputError,
    NotFoundError,
    PolicyDeniedError,
    RateLimitedError,
    SovereignError,
    TooLargeError,
    WorkloadError,
)

#: ``g`` attribute where the rate limiter leaves the seconds until a breached limit resets.
RETRY_AFTER = "sovereign_retry_after"

#: Most specific first; the first class an error is an instance of decides the status.
STATUS_BY_ERROR: tuple[tuple[type[SovereignError], int, str], ...] = (
    # Titles are the HTTP reason phrases, so an error looks the same whichever layer raised it.
    (InvalidInputError, 422, "Unprocessable Content"),
    (AuthenticationError, 401, "Unauthorized"),
    (PolicyDeniedError, 403, "Forbidden"),
    (RateLimitedError, 429, "Too Many Requests"),
    (NotFoundError, 404, "Not Found"),
    (ConflictError, 409, "Conflict"),
    (GoneError, 410, "Gone"),
    (TooLargeError, 413, "Content Too Large"),
    (WorkloadError, 502, "Bad Gateway"),
    (DependencyUnavailableError, 503, "Service Unavailable"),
    (SovereignError, 500, "Internal Server Error"),
)


def status_of(error: SovereignError) -> tuple[int, str]:
    """The HTTP status and title for ``error`` (the first row of the table it matches)."""
    return next((s, t) for cls, s, t in STATUS_BY_ERROR if isinstance(error, cls))


def rate_limited_error(error: RateLimitExceeded) -> RateLimitedError:
    """Flask-Limiter's breach as the control plane's error, with the wait the limiter left."""
    return RateLimitedError(limit=error.description, retry_after=int(g.get(RETRY_AFTER, 1)))
