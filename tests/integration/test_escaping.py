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
