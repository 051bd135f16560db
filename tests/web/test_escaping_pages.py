"""The console refuses identifiers with control characters before anything is recorded, and
keeps the line breaks a person typed into free text."""

from __future__ import annotations

from flask import Flask

from audit.store import AuditQuery
from tests.web.conftest import CIVIL_FORM, Users, post, sequence, text


def log_size(app: Flask) -> int:
    sequence(app)
    return len(list(app.extensions["sovereign"].audit.log.export("jsonl", AuditQuery(limit=1000))))


def test_a_form_identifier_with_a_control_character_is_refused(app: Flask, users: Users):
    analyst, officer = users("analyst-research"), users("officer-1")
    before = log_size(app)
    for client, path, form in (
        (analyst, "/requests", {**CIVIL_FORM, "level": "UNCLASSIFIED\x0b"}),
        (analyst, "/requests", {**CIVIL_FORM, "purpose": "a\u2028b"}),
        (officer, "/kill-switch", {"tenant": "research\n<86>1 forged", "reason": "x"}),
        (officer, "/hosts/x/state", {"state": "draining", "reason": "ok", "note\x85": "x"}),
    ):
        page = post(client, path, form)
        assert page.status_code == 400, text(page)
        assert "control character U+" in text(page)
    assert log_size(app) == before


def test_a_console_url_with_a_control_character_is_refused(app: Flask, users: Users):
    officer = users("officer-1")
    before = log_size(app)
    page = officer.get("/hosts/evil%0Aname")
    assert page.status_code == 400
    assert page.mimetype == "text/html"
    assert log_size(app) == before


def test_free_text_keeps_the_line_breaks_typed(app: Flask, users: Users):
    purpose = "protein folding\r\nsecond line\twith a tab"
    done = post(users("analyst-research"), "/requests", {**CIVIL_FORM, "purpose": purpose})
    assert done.status_code == 303, text(done)
