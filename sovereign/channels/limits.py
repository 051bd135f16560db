"""Rate limits (Flask-Limiter): per client address where no one is signed in, per principal for
writes.

Owns the app's :class:`flask_limiter.Limiter` and the three limits it applies before any view
runs (all strings in Flask-Limiter's notation, e.g. ``"300/minute;5000/hour"``):

* ``RATELIMIT_ANONYMOUS``, per client address, on what is reachable without credentials: the
  console's sign-in start and callback, ``/readyz``, the OpenAPI document, API operations that
  need no token, and any request that carries neither a bearer token nor a cookie;
* ``RATELIMIT_AUTH_FAILURES``, per client address, counting only refused authentications (401
  answers other than step-up challenges, console CSRF and sign-in refusals): an address that
  keeps presenting bad tokens is turned away for the rest of the window, whatever it asks for;
* ``RATELIMIT_WRITES``, per principal subject (per address until one is verified), on
  POST/PUT/PATCH/DELETE under ``/api/v1`` and on console forms, and on the reads that cost as
  much (:data:`COSTLY_READS`: an attestation re-verifies the whole log and records an event).

``/healthz``, ``/metrics`` and static files are never limited (probes and scrapers). A breach
is answered 429 (:class:`~sovereign.errors.RateLimitedError`): problem+json with
``Retry-After`` from the app-level problem table, and in the console an error page with the
same header. The client address is ``request.remote_addr``, so behind a trusted-proxy fix (ProxyFix)
it is the real client's.

Storage is ``RATELIMIT_STORAGE_URI`` (Flask-Limiter reads it, and the other ``RATELIMIT_*``
keys it knows, from ``app.config`` itself): ``memory://`` by default, served by
:class:`SweptMemoryStorage` (the library's in-memory counters without the timer thread it starts
on every hit), which counts per process, so N replicas allow N times the limit; point every
replica at one shared store (``redis://...``, needs the ``limits[redis]`` extra) for one count
across them. If that store fails, each process falls back to counting in memory
(``RATELIMIT_IN_MEMORY_FALLBACK_ENABLED``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from flask import Flask, current_app, g, request
from flask.wrappers import Response
from flask_limiter import ApplicationLimit, Limiter, RequestLimit
from limits.storage import MemoryStorage

from sovereign import app_context
from sovereign.channels.statuses import RETRY_AFTER
from sovereign.errors import AuthenticationError, DependencyUnavailableError

log = logging.getLogger(__name__)

EXTENSION = "sovereign.limits"
#: ``app.extensions`` key of the subject resolvers (channels add theirs before :func:`install`).
RESOLVERS = "sovereign.limits.subjects"
#: Methods that change something: limited per principal.
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
#: Reads counted as writes: each re-verifies the whole audit log and records an event.
COSTLY_READS = frozenset(
    {
        "api_v1.audit_attestation",
        "api_v1.audit_attestation_note",
        "console.audit_attestation",
        "console.audit_attestation_note",
        "console.audit_attestation_html",
    }
)
#: Never limited: liveness probes, metrics scrapes and static files.
EXEMPT_ENDPOINTS = frozenset({"ops.healthz", "metrics_endpoint", "console.static"})
#: Reachable without credentials, so limited per address whatever the request carries.
ANONYMOUS_ENDPOINTS = frozenset(
    {"console.login", "console.callback", "ops.readyz", "ops.openapi_document"}
)
#: How often :class:`SweptMemoryStorage` drops counters whose window has passed (seconds).
SWEEP_S = 5.0
#: The scheme :class:`SweptMemoryStorage` registers; ``memory://`` in the configuration means it.
SWEPT_MEMORY = "sovereign-memory"

#: ``g`` flag set by whoever refuses an authentication (see :func:`note_auth_failure`).
AUTH_FAILED = "sovereign_auth_failed"

#: Who is writing, from a request that has not reached its view yet: a function per channel
#: that returns the verified subject, or None if it cannot tell.
SubjectResolver = Callable[[], str | None]


class SweptMemoryStorage(MemoryStorage):
    """``memory://`` counting that starts no thread on the request path.

    The library's in-memory storage expires a counter when it is next read (``get``, which every
    hit calls first) and, for counters nobody reads again, starts a timer thread whenever none is
    alive: about one new thread per request under load, and ``Thread.start`` waits for the new
    thread to be scheduled. Here the sweep of abandoned counters runs in the caller's thread at
    most every :data:`SWEEP_S` seconds instead; what is counted, and when a window ends, is the
    library's own logic unchanged. (This replaces the library's private ``__schedule_expiry``;
    ``limits`` is pinned below its next major version and a test holds both behaviours.)
    """

    STORAGE_SCHEME = [SWEPT_MEMORY]  # noqa: RUF012 - the library's registry reads it

    def __init__(self, uri: str | None = None, wrap_exceptions: bool = False, **options: Any):
        super().__init__(uri, wrap_exceptions=wrap_exceptions, **options)
        self._swept = time.monotonic()

    def _MemoryStorage__schedule_expiry(self) -> None:  # noqa: N802 - the library's own name
        now = time.monotonic()
        if now - self._swept >= SWEEP_S:
            self._swept = now
            self._MemoryStorage__expire_events()  # type: ignore[attr-defined]


def client_address() -> str:
    """The client's address (the socket peer, or the client a trusted proxy names)."""
    return request.remote_addr or "unknown"


def note_auth_failure() -> None:
    """Count this request against ``RATELIMIT_AUTH_FAILURES`` (whatever its status)."""
    setattr(g, AUTH_FAILED, True)


def add_subject_resolver(app: Flask, resolver: SubjectResolver) -> None:
    """Let the write limit key requests of another channel (the console) by their subject."""
    app.extensions.setdefault(RESOLVERS, []).append(resolver)


def _bearer_subject() -> str | None:
    """The subject of a verifying bearer token on an API request (the adapter caches verified
    tokens, so the view's own check costs a lookup); None for anything else."""
    if not request.path.startswith(_api_prefix() + "/"):
        return None
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    try:
        return app_context.services().identity.authenticate(token.strip()).subject
    except (AuthenticationError, DependencyUnavailableError):
        return None  # the view refuses it (and records why); count it by address meanwhile


def writer_key() -> str:
    """The write limit's key: the verified subject, else the client address."""
    resolvers: list[SubjectResolver] = current_app.extensions.get(RESOLVERS, [])
    for resolve in (_bearer_subject, *resolvers):
        subject = resolve()
        if subject:
            return f"subject:{subject}"
    return f"address:{client_address()}"


def _exempt() -> bool:
    return request.endpoint in EXEMPT_ENDPOINTS


def _anonymous() -> bool:
    if request.endpoint in ANONYMOUS_ENDPOINTS or request.endpoint in _open_operations():
        return True
    return "Authorization" not in request.headers and not request.cookies


def _open_operations() -> frozenset[str]:
    names: frozenset[str] = current_app.extensions[EXTENSION]["open"]
    return names


def _api_prefix() -> str:
    prefix: str = current_app.extensions[EXTENSION]["prefix"]
    return prefix


def _write() -> bool:
    if request.endpoint in COSTLY_READS:
        return True
    if request.method not in WRITE_METHODS:
        return False
    return request.path.startswith(_api_prefix() + "/") or (request.endpoint or "").startswith(
        "console."
    )


def _auth_failed(response: Response) -> bool:
    if g.get(AUTH_FAILED):
        return True
    # A step-up challenge (RFC 9470) answers a valid token whose sign-in is old: not a guess.
    challenge = response.headers.get("WWW-Authenticate", "")
    return response.status_code == 401 and "insufficient_user_authentication" not in challenge


def _breached(limit: RequestLimit) -> Response | None:
    # Flask-Limiter raises RateLimitExceeded next; the problem table (and the console's error
    # page) read the wait from here for Retry-After.
    setattr(g, RETRY_AFTER, max(int(limit.reset_at - time.time()), 1))
    return None


def install(app: Flask, *, api_prefix: str, open_endpoints: frozenset[str]) -> Limiter:
    """Attach the limiter and its three limits to ``app`` (after the API and console): writes
    under ``api_prefix`` are limited per principal, and ``open_endpoints`` (the API operations
    that need no token) per address."""
    settings = app_context.settings(app)
    if settings.production and settings.ratelimit_storage_uri.startswith("memory://"):
        log.warning(
            "rate limits are counted per process (RATELIMIT_STORAGE_URI=memory://); "
            "with several replicas, point them at one shared store"
        )
    app.extensions[EXTENSION] = {"open": open_endpoints, "prefix": api_prefix}
    if settings.ratelimit_storage_uri.startswith("memory://"):
        app.config["RATELIMIT_STORAGE_URI"] = settings.ratelimit_storage_uri.replace(
            "memory", SWEPT_MEMORY, 1
        )
    limiter = Limiter(
        key_func=client_address,
        application_limits=[
            ApplicationLimit(
                settings.ratelimit_anonymous,
                key_function=client_address,
                scope="anonymous",
                exempt_when=lambda: _exempt() or not _anonymous(),
            ),
            ApplicationLimit(
                settings.ratelimit_auth_failures,
                key_function=client_address,
                scope="auth-failures",
                exempt_when=_exempt,
                deduct_when=_auth_failed,
            ),
            ApplicationLimit(
                settings.ratelimit_writes,
                key_function=writer_key,
                scope="writes",
                exempt_when=lambda: _exempt() or not _write(),
            ),
        ],
        on_breach=_breached,
    )
    limiter.init_app(app)
    return limiter
