"""Escape at the boundary, end to end: identifiers with control characters are refused over
HTTP before anything is recorded, free text that may hold line breaks is recorded and exported
one record per line, and the application log quotes request-controlled text escaped."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from audit.store import AuditQuery
from tests.support.apps import make_app

pytestmark = pytest.mark.idp

#: A whole forged RFC 5424 record, as an attacker would put it after a newline.
FORGED = '<86>1 2026-12-06T00:00:00Z - sovereign - request:approve [sovereign@32473 actor="x"]'
CIVIL: dict[str, Any] = {
    "tenant": "research",
    "label": {"level": "UNCLASSIFIED", "compartments": []},
    "resources": {"vcpus": 4, "memory_mib": 4096, "gpus": 0, "disk_gib": 10},
    "image": "ubuntu-24.04-research",
    "purpose": "protein folding",
    "lease_hours": 4,
}


@pytest.fixture
def app(tmp_path: Path, idp: Any) -> Iterator[Flask]:
    app = make_app(tmp_path, idp.url)
    yield app
    app.extensions["sovereign"].close()


Call = Callable[..., Any]


@pytest.fixture
def call(app: Flask, token: Callable[[str], str]) -> Call:
    client: FlaskClient = app.test_client()

    def do(user: str, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token(user)}", **kw.pop("headers", {})}
        return client.open(path, method=method, headers=headers, **kw)

    return do


def log_size(app: Flask) -> int:
    log = app.extensions["sovereign"].audit.log
    log.sequence()
    return len(list(log.export("jsonl", AuditQuery(limit=1000))))


def exported(app: Flask, fmt: str) -> list[str]:
    app.extensions["sovereign"].audit.log.sequence()
    text = "\n".join(app.extensions["sovereign"].audit.log.export(fmt, AuditQuery(limit=1000)))
    return text.splitlines()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        # The attack of issue 10 item 4: an analyst's denied discover used to record the name.
        ("POST", "/api/v1/hosts/evil%0A" + FORGED.replace(" ", "%20") + "/discover"),
        ("POST", "/api/v1/hosts/evil%0D%0Aname/state"),
        ("GET", "/api/v1/hosts/evil%C2%85name"),
        ("GET", "/api/v1/hosts/evil%E2%80%A8name"),
        ("GET", "/api/v1/hosts/evil%00name"),
        ("GET", "/api/v1/no-such-route%0A" + FORGED.replace(" ", "%20")),
        ("GET", "/api/v1/audit/events?target=a%0Ab"),
        ("GET", "/api/v1/gpus?host%0B=x"),
    ],
)
def test_a_control_character_in_the_url_is_refused_and_nothing_recorded(
    app: Flask, call: Call, method: str, path: str
):
    before = log_size(app)
    r = call("analyst-defence", method, path, json={"state": "draining", "reason": "x"})
    assert r.status_code == 400, r.get_data(as_text=True)
    assert r.mimetype == "application/problem+json"
    assert "control character U+" in r.get_json()["detail"]
    assert log_size(app) == before
    for fmt in ("jsonl", "cef", "rfc5424"):
        assert len(exported(app, fmt)) == before


def test_a_control_character_in_a_body_identifier_is_refused(app: Flask, call: Call):
    before = log_size(app)
    for body in (
        {**CIVIL, "label": {"level": "UNCLASSIFIED\n<86>1", "compartments": []}},
        {**CIVIL, "image": "ubuntu\u2028" + FORGED},
        {**CIVIL, "purpose": "a vertical\x0btab"},
    ):
        r = call("analyst-research", "POST", "/api/v1/requests", json=body)
        assert r.status_code == 422, r.get_data(as_text=True)
        assert "control character" in json.dumps(r.get_json()["errors"])
    assert log_size(app) == before


def test_free_text_keeps_its_line_breaks_and_exports_one_record_per_event(app: Flask, call: Call):
    r = call("analyst-research", "POST", "/api/v1/requests", json=CIVIL)
    assert r.status_code == 201, r.get_json()
    rid = r.get_json()["id"]
    reason = "no budget\r\n" + FORGED + "\ttabbed"
    r = call("officer-1", "POST", f"/api/v1/requests/{rid}/reject", json={"reason": reason})
    assert r.status_code == 200, r.get_json()
    size = log_size(app)
    for fmt in ("jsonl", "cef", "rfc5424"):
        lines = exported(app, fmt)
        assert len(lines) == size, (fmt, lines)
    events = [json.loads(line) for line in exported(app, "jsonl")]
    assert reason in [e["reason"] for e in events]


def test_the_csrf_warning_quotes_the_path_escaped(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    from sovereign.web import console

    class Session:
        csrf_token = "the-real-token"

    monkeypatch.setattr(console, "current_session", Session)
    with (
        app.test_request_context(
            "/hosts/x%0D%0A" + FORGED.replace(" ", "%20") + "/state",
            method="POST",
            data={"csrf_token": "forged"},
        ),
        caplog.at_level(logging.WARNING, logger="sovereign.web.console"),
        pytest.raises(console.CsrfError),
    ):
        console._check_csrf()
    [record] = [r for r in caplog.records if "CSRF" in r.getMessage()]
    line = record.getMessage()
    assert len(line.splitlines()) == 1
    assert "/hosts/x\\r\\n<86>1 " in line


# -- the client's address behind trusted proxies (issue 10 item 13) ---------------------------

PROXY, CLIENT, SPOOFED = "10.0.0.2", "203.0.113.7", "198.51.100.66"


def sources_of_requests(app: Flask, token: Callable[[str], str], **request: Any) -> list[str]:
    """File a request as it arrives with ``request`` (environ_base, headers); the audit sources
    of the request:create events."""
    client = app.test_client()
    headers = {"Authorization": f"Bearer {token('analyst-research')}", **request.pop("headers")}
    r = client.post("/api/v1/requests", json=CIVIL, headers=headers, **request)
    assert r.status_code == 201, r.get_json()
    events = [json.loads(line) for line in exported(app, "jsonl")]
    return [e["source"] for e in events if e["action"] == "request:create"]


def test_without_trusted_proxies_x_forwarded_for_is_ignored(app: Flask, token: Any):
    sources = sources_of_requests(
        app,
        token,
        environ_base={"REMOTE_ADDR": CLIENT},
        headers={"X-Forwarded-For": SPOOFED},
    )
    assert sources == [CLIENT]


@pytest.mark.parametrize(
    ("proxies", "forwarded_for", "remote"),
    [
        # One TLS proxy: it appends the client's address to whatever the client sent.
        (1, f"{SPOOFED}, {CLIENT}", PROXY),
        (1, CLIENT, PROXY),
        # Two: the outer proxy appended the client, the inner one the outer proxy.
        (2, f"{SPOOFED}, {CLIENT}, 10.0.0.1", PROXY),
    ],
)
def test_behind_trusted_proxies_the_client_is_recorded(
    tmp_path: Path, idp: Any, token: Any, proxies: int, forwarded_for: str, remote: str
):
    app = make_app(tmp_path, idp.url, TRUSTED_PROXIES=proxies)
    try:
        sources = sources_of_requests(
            app,
            token,
            environ_base={"REMOTE_ADDR": remote},
            headers={"X-Forwarded-For": forwarded_for, "X-Forwarded-Proto": "https"},
        )
        assert sources == [CLIENT]
    finally:
        app.extensions["sovereign"].close()
