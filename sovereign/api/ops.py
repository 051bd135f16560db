"""Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

Owns ``/healthz`` (the process answers), ``/readyz`` (every dependency answers, else 503),
``/metrics`` (request counts and latencies by endpoint and status, per process) and
``/api/openapi.json``, and the hooks every request passes before any view or routing error, so
that nothing records or logs what they refuse: its request id, the refusal of oversized header
fields (431) and of a URL whose path or query holds a control character (400).

What exists behind the control plane and how busy each route is are for operators, not for
anyone who can reach the port: ``/healthz`` and the bare ``/readyz`` status (what a load
balancer or an orchestrator's probe needs) are open; the per-dependency ``/readyz`` detail and
``/metrics`` need a bearer token, either the static scrape token (``METRICS_TOKEN_FILE`` or
``METRICS_TOKEN``, what Prometheus sends with ``authorization: credentials_file``) or an
identity-provider token carrying the ``operator`` role.
"""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid
from pathlib import Path
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from werkzeug.exceptions import BadRequest, RequestHeaderFieldsTooLarge

from sovereign import app_context
from sovereign.api import v1
from sovereign.api.problems import problem
from sovereign.api.routing import call_context, openapi
from sovereign.app_context import services
from sovereign.config import MIN_SCRAPE_TOKEN_LENGTH
from sovereign.domain.identity import Role
from sovereign.errors import DependencyUnavailableError, PolicyDeniedError
from sovereign.settings import Settings
from sovereign.text import control_character, describe

log = logging.getLogger(__name__)

blueprint = Blueprint("ops", __name__)

#: HTTP methods counted under their own name in the metrics; any other is "OTHER".
METRIC_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

#: The OpenAPI document's ``info``.
TITLE = "Sovereign control plane"
VERSION = "1"
#: Client-supplied request ids are echoed only if they look harmless (no log injection);
#: matched whole, since ``$`` would also accept a trailing newline.
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process is up (no dependency is checked)."""
    return jsonify(status="ok")


def scrape_token(settings: Settings) -> str | None:
    """The static metrics scrape token: ``METRICS_TOKEN_FILE``'s content, or ``METRICS_TOKEN``.

    The file is read on each use, so a rotated token takes effect without a restart; one that
    cannot be read, or holds too short a token, accepts nothing (fail closed, logged).
    """
    path = settings.metrics_token_file
    if not path:
        return settings.metrics_token or None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as e:
        log.warning("metrics token file %s cannot be read: %s", path, e.strerror)
        return None
    if len(token) < MIN_SCRAPE_TOKEN_LENGTH:
        log.warning("metrics token file %s holds too short a token; ignored", path)
        return None
    return token


def require_operator() -> None:
    """Let the request through only with the scrape token or an operator's bearer token.

    :raises AuthenticationError: (401) no bearer token, or one that verifies as neither.
    :raises PolicyDeniedError: (403) a valid token without the operator role.
    """
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    expected = scrape_token(app_context.settings())
    # Constant time: the comparison must not tell a guesser how much of it was right.
    if (
        scheme.lower() == "bearer"
        and expected
        and token
        and hmac.compare_digest(token.encode(), expected.encode())
    ):
        return
    if not call_context().principal.has_role(Role.OPERATOR):
        raise PolicyDeniedError(reason="operational detail is for operators")


@blueprint.get("/readyz")
def readyz() -> Response:
    """Every dependency answers, else 503; which ones, only to operators.

    Without credentials the answer is the overall status alone (what a probe needs); with a
    bearer token it must be an operator's or the scrape token, and the checks are named.

    :raises AuthenticationError: a bearer token that does not verify.
    :raises PolicyDeniedError: a valid token without the operator role.
    """
    detailed = "Authorization" in request.headers
    if detailed:
        require_operator()
    checks: dict[str, str] = {}
    for probe in services().probes:
        try:
            probe.ping()
            checks[probe.name] = "ok"
        except DependencyUnavailableError as e:
            checks[probe.name] = e.message
    failing = sorted(name for name, state in checks.items() if state != "ok")
    if not detailed:
        if failing:
            return problem(503, "Not ready", type_="urn:sovereign:problem:not-ready")
        return jsonify(status="ready")
    if failing:
        return problem(
            503,
            "Not ready",
            detail=f"unavailable: {', '.join(failing)}",
            type_="urn:sovereign:problem:not-ready",
            checks=checks,
        )
    return jsonify(status="ready", checks=checks)


@blueprint.get("/api/openapi.json")
def openapi_document() -> Response:
    """The OpenAPI 3.1 description of ``/api/v1``, generated from the validating schemas."""
    return jsonify(openapi(v1.api, v1.PREFIX, title=TITLE, version=VERSION))


class Metrics:
    """Per-app Prometheus registry; one per app so tests can build many apps."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "sovereign_http_requests",
            "HTTP requests by endpoint and status.",
            ["method", "endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "sovereign_http_request_duration_seconds",
            "HTTP request latency by endpoint.",
            ["method", "endpoint"],
            registry=self.registry,
        )


def _refuse_large_headers(limit: int) -> None:
    """Refuse a request whose header fields take more than ``limit`` bytes in all (each counted
    as ``name: value`` and CRLF, as on the wire; WSGI gives them as latin-1, one character a
    byte). The server in front has limits of its own, which must be larger for this to answer.

    :raises RequestHeaderFieldsTooLarge: (431, RFC 6585 section 5).
    """
    size = sum(len(name) + len(value) + 4 for name, value in request.headers.items())
    if size > limit:
        raise RequestHeaderFieldsTooLarge(
            f"The request's header fields take {size} bytes; at most {limit} are accepted."
        )


def _refuse_control_characters() -> None:
    """Refuse a request whose path or query string holds a control character or line separator
    once decoded (``%0A``, ``%C2%85``, ``%E2%80%A8``): path segments and query values are
    identifiers, and this runs before any view, so nothing such a request names is recorded or
    logged. Routing errors (404, 405) come after it too.

    :raises BadRequest: (400) naming the character.
    """
    texts = [request.path, *(t for pair in request.args.items(multi=True) for t in pair)]
    for text in texts:
        char = control_character(text)
        if char is not None:
            raise BadRequest(
                f"The URL holds the control character {describe(char)}; identifiers cannot."
            )


def install(app: Flask) -> None:
    """Register the ops blueprint, request ids, the URL check and metrics hooks on ``app``."""
    metrics = Metrics()
    max_header_bytes = app_context.settings(app).max_header_bytes
    app.extensions["sovereign.metrics"] = metrics
    app.register_blueprint(blueprint)

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        _refuse_large_headers(max_header_bytes)
        _refuse_control_characters()

    @app.after_request
    def _finish(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        # Label values come from fixed sets only, so a client inventing methods cannot grow
        # the metrics without bound.
        method = request.method if request.method in METRIC_METHODS else "OTHER"
        metrics.requests.labels(method, endpoint, str(response.status_code)).inc()
        started: Any = g.get("started")
        if started is not None:
            metrics.latency.labels(method, endpoint).observe(time.perf_counter() - started)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        """Prometheus text exposition of this process's metrics (scrape token or operator).

        :raises AuthenticationError: no bearer token, or one that does not verify.
        :raises PolicyDeniedError: a valid token without the operator role.
        """
        require_operator()
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)
