"""Operational endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.

Owns ``/healthz`` (the process answers), ``/readyz`` (every dependency answers; 503 naming the
ones that do not), ``/metrics`` (request counts and latencies by endpoint and status, per
process) and ``/api/openapi.json``.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from flask import Blueprint, Flask, Response, g, jsonify, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)

from sovereign.api import v1
from sovereign.api.problems import problem
from sovereign.api.routing import openapi, services
from sovereign.errors import DependencyUnavailableError

blueprint = Blueprint("ops", __name__)

#: The OpenAPI document's ``info``.
TITLE = "Sovereign control plane"
VERSION = "1"
#: Client-supplied request ids are echoed only if they look harmless (no log injection).
REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@blueprint.get("/healthz")
def healthz() -> Response:
    """The process is up (no dependency is checked)."""
    return jsonify(status="ok")


@blueprint.get("/readyz")
def readyz() -> Response:
    """Every dependency answers; otherwise 503 with the failing ones."""
    checks: dict[str, str] = {}
    for probe in services().probes:
        try:
            probe.ping()
            checks[probe.name] = "ok"
        except DependencyUnavailableError as e:
            checks[probe.name] = e.message
    failing = sorted(name for name, state in checks.items() if state != "ok")
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


def install(app: Flask) -> None:
    """Register the ops blueprint, request ids and metrics hooks on ``app``."""
    metrics = Metrics()
    app.extensions["sovereign.metrics"] = metrics
    app.register_blueprint(blueprint)

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()
        incoming = request.headers.get("X-Request-ID", "")
        g.request_id = incoming if REQUEST_ID.match(incoming) else uuid.uuid4().hex

    @app.after_request
    def _finish(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(request.method, endpoint, str(response.status_code)).inc()
        started: Any = g.get("started")
        if started is not None:
            metrics.latency.labels(request.method, endpoint).observe(time.perf_counter() - started)
        response.headers["X-Request-ID"] = g.get("request_id", "")
        response.headers["Cache-Control"] = "no-store"
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        """Prometheus text exposition of this process's metrics."""
        return Response(generate_latest(metrics.registry), mimetype=CONTENT_TYPE_LATEST)
