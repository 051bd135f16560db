"""The auditor's attestation page: the period form, the report as HTML with the frameworks'
controls, the signed note and HTML downloads, access control and escaping.

The first tests run the assembled service over the app's real log; the ones about the form,
escaping and marking use a stub with its interface (auditors only, as the service) whose report
holds what they need."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from flask import Flask

from sovereign.app_context import services
from sovereign.domain.identity import Role
from sovereign.errors import PolicyDeniedError
from sovereign.services.recording import CallContext
from tests.unit.sovereign.services.attestation.reports import report
from tests.web.conftest import Users, banners, text

pytestmark = pytest.mark.idp

HOSTILE = '<script>alert("x")</script>'
NOTE = "sovereign.local/audit\nsovereign-attestation/v1\n\n\u2014 sovereign.local/audit AAAA\n"


class StubAttester:
    """The attestation service's interface: auditors only; remembers the periods asked for."""

    def __init__(self, found: dict[str, Any]) -> None:
        self.found = found
        self.periods: list[tuple[datetime | None, datetime | None]] = []

    def attest(
        self, ctx: CallContext, since: datetime | None, until: datetime | None
    ) -> tuple[dict[str, Any], str]:
        if Role.AUDITOR not in ctx.principal.roles:
            raise PolicyDeniedError(reason="only auditors attest the log")
        self.periods.append((since, until))
        return self.found, NOTE


@pytest.fixture
def stub(app: Flask, monkeypatch: pytest.MonkeyPatch) -> StubAttester:
    """A stub attester whose report has a violation with hostile text in it."""
    found = StubAttester(report(violated={"residency": f"host h1 is in FR {HOSTILE}"}))
    monkeypatch.setattr(services(app), "attestation", found, raising=False)
    return found


def test_auditors_attest_and_see_every_claim_and_the_frameworks(users: Users):
    page = users("auditor").get("/audit/attestation")
    html = text(page)
    assert page.status_code == 200, html
    assert 'id="attestation-verdict"' in html
    for claim in ("co-residency", "gpu-handover", "crypto-erase", "two-person", "residency"):
        assert f'id="claim-{claim}"' in html
    for framework in ("ens-high", "secnumcloud", "c5"):
        assert f'id="framework-{framework}"' in html
    assert 'id="attestation-note"' in html
    assert 'href="/audit/attestation/note"' in html
    # Offered in the navigation to auditors.
    assert 'href="/audit/attestation"' in text(users("auditor").get("/"))


def test_analysts_and_officers_may_not(users: Users):
    for who in ("analyst-defence", "officer-1"):
        for path in ("/audit/attestation", "/audit/attestation/note"):
            assert users(who).get(path).status_code == 403, (who, path)
        assert 'href="/audit/attestation"' not in text(users(who).get("/"))


def test_the_period_and_framework_are_read_from_the_form(users: Users, stub: StubAttester):
    auditor = users("auditor")
    html = text(
        auditor.get("/audit/attestation?since=2026-12-01&until=2026-12-07T06:00&framework=c5")
    )
    assert stub.periods[-1] == (
        datetime(2026, 12, 1, tzinfo=UTC),
        datetime(2026, 12, 7, 6, 0, tzinfo=UTC),
    )
    assert 'id="framework-c5"' in html and 'id="framework-ens-high"' not in html
    assert 'value="2026-12-01"' in html  # the form keeps what was typed
    assert "since=2026-12-01" in html  # and the downloads carry it
    assert auditor.get("/audit/attestation?since=yesterday").status_code == 422
    late = auditor.get("/audit/attestation?since=2026-12-08&until=2026-12-07")
    assert late.status_code == 422 and "since is after until" in text(late)
    assert auditor.get("/audit/attestation?framework=nist").status_code == 422


def test_hostile_text_in_the_report_is_escaped(users: Users, stub: StubAttester):
    html = text(users("auditor").get("/audit/attestation"))
    assert "1 of 6 claims violated" in html
    assert HOSTILE not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html
    assert "seq 5, 7" in html
    del stub


def test_the_page_is_marked_at_the_clearance_the_report_was_scoped_to(
    app: Flask, users: Users, stub: StubAttester
):
    # No clearance limit: the report may name anything, so the page is marked at the top.
    html = text(users("auditor").get("/audit/attestation"))
    assert banners(html)[0] == str(services(app).scheme.highest)
    stub.found = report(scope={"source": "live", "clearance": {"level": "RESTRICTED"}})
    html = text(users("auditor").get("/audit/attestation"))
    assert banners(html) == ["RESTRICTED", "RESTRICTED"]
    assert "RESTRICTED: events above it are neither counted nor named" in html


def test_downloads_the_signed_note_and_the_html_page(users: Users, stub: StubAttester):
    auditor = users("auditor")
    note = auditor.get("/audit/attestation/note?until=2026-12-07")
    assert note.status_code == 200
    assert note.mimetype == "text/plain"
    assert "attachment" in note.headers["Content-Disposition"]
    assert text(note) == NOTE
    assert stub.periods[-1] == (None, datetime(2026, 12, 7, tzinfo=UTC))
    page = auditor.get("/audit/attestation/report.html?framework=secnumcloud")
    assert page.status_code == 200
    assert ".html" in page.headers["Content-Disposition"]
    body = text(page)
    assert body.startswith("<!doctype html>") and 'id="framework-secnumcloud"' in body
    assert HOSTILE not in body
