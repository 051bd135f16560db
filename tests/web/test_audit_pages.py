"""The auditor's pages: event browser with filters and pages (seq and leaf hash per event),
the latest signed checkpoint, "verify now", proof and export downloads, clearance filtering."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask

from audit.merkle import leaf_hash
from audit.note import parse_verifier_key
from audit.proof import verify_proof
from devstack.idp import DEMO_PASSWORD, password_token
from tests.support.tamper import change_one_byte, drop_append_only_triggers, row_of, set_entry
from tests.web.conftest import (
    CIVIL_FORM,
    SECRET_FORM,
    Users,
    banners,
    post,
    request_id_from,
    sequence,
    text,
)

pytestmark = pytest.mark.idp


def seqs(html: str) -> list[int]:
    """The seq column of the events table."""
    return [
        int(s) for s in re.findall(r'<tr class="outcome-\w+">\s*<th scope="row">(\d+)</th>', html)
    ]


@pytest.fixture
def filed(app: Flask, users: Users) -> dict[str, str]:
    """A SECRET request approved by two officers and a civilian one, all sequenced."""
    secret = request_id_from(post(users("analyst-defence"), "/requests", SECRET_FORM))
    for officer in ("officer-1", "officer-2"):
        assert post(users(officer), f"/requests/{secret}/approve").status_code == 303
    civil = request_id_from(post(users("analyst-research"), "/requests", CIVIL_FORM))
    sequence(app)
    return {"secret": secret, "civil": civil}


def test_the_event_browser_shows_seq_leaf_hash_and_the_most_sensitive_banner(
    app: Flask, users: Users, filed: dict[str, str]
):
    page = users("auditor").get("/audit")
    html = text(page)
    assert page.status_code == 200
    numbers = seqs(html)
    assert numbers == sorted(numbers, reverse=True)
    # 4 bootstrap events; then each user's session:login before their decisions: create;
    # approval; key:create, approval; create; and the auditor's own sign-in (SQLite sequences
    # each event as it is recorded, before any checkpoint covers it).
    assert len(numbers) == 14
    hashes = re.findall(r'<code class="hash">([0-9a-f]{64})</code>', html)
    assert len(hashes) == len(numbers)
    assert f"request/{filed['secret']}" in html and "request:approve" in html
    assert "user:officer-2" in html
    assert banners(html)[0] == banners(html)[1] == "SECRET//CRYPTO/EU/NATO"  # tenant:create
    # The signed checkpoint is shown with its size.
    assert '<dd id="checkpoint-size">13 events</dd>' in html
    assert "sovereign.local/audit" in html


def test_leaf_hashes_are_those_of_the_events(app: Flask, users: Users, filed: dict[str, str]):
    html = text(users("auditor").get(f"/audit?target=request/{filed['secret']}"))
    rows = re.findall(
        r'<th scope="row">(\d+)</th>.*?<code class="hash">([0-9a-f]{64})</code>', html, re.S
    )
    assert len(rows) == 3
    engine = sa.create_engine(app.config["DATABASE_URL"])
    with engine.connect() as conn:
        for seq, shown in rows:
            assert leaf_hash(row_of(conn, int(seq))["entry"]).hex() == shown
    engine.dispose()


def test_filters_and_pages(users: Users, filed: dict[str, str]):
    auditor = users("auditor")
    html = text(auditor.get("/audit?action=request:approve"))
    assert len(seqs(html)) == 2
    html = text(auditor.get("/audit?actor=user:officer-1"))
    assert len(seqs(html)) == 2  # session:login, request:approve
    assert 'value="user:officer-1"' in html  # the filter is kept in the form
    first = text(auditor.get("/audit?limit=20"))
    assert len(seqs(first)) == 14 and 'rel="next"' not in first  # 13 + the auditor's sign-in
    # A page of 10 over more events: the next link carries the cursor and the filters.
    for _ in range(3):
        request_id_from(post(users("analyst-research"), "/requests", CIVIL_FORM))
    sequence(auditor.application)
    first = text(auditor.get("/audit?limit=10"))
    assert len(seqs(first)) == 10
    nxt = re.search(r'<a href="([^"]+)" rel="next">', first)
    assert nxt is not None
    second = text(auditor.get(nxt.group(1).replace("&amp;", "&")))
    assert seqs(second) == [6, 5, 4, 3, 2, 1, 0]  # 13 + 3 creates + the auditor's sign-in
    assert "Newest" in second
    since = text(auditor.get("/audit?since=2999-01-01T00:00"))
    assert "No events match." in since
    bad = auditor.get("/audit?since=yesterday")
    assert bad.status_code == 422
    assert "since is not a date" in text(bad)


def test_readers_see_only_what_their_clearance_dominates(users: Users, filed: dict[str, str]):
    html = text(users("auditor-low").get("/audit"))
    assert f"request/{filed['civil']}" in html
    assert filed["secret"] not in html
    assert "SECRET" not in html.replace("SECRET_KEY", "")
    assert banners(html) == ["UNCLASSIFIED", "UNCLASSIFIED"]
    export = users("auditor-low").get("/audit/export?format=jsonl").get_data(as_text=True)
    assert filed["secret"] not in export and filed["civil"] in export


def test_denials_about_a_secret_request_are_read_only_by_auditors_cleared_for_it(
    app: Flask, users: Users, filed: dict[str, str], console_idp: Any
):
    secret = f"request/{filed['secret']}"
    # A civilian analyst probes the SECRET request: told it does not exist, and the attempt is
    # recorded under the request's label.
    assert users("analyst-research").get(f"/requests/{filed['secret']}").status_code == 404
    assert users("analyst-research").get(f"/requests/{uuid.uuid4()}").status_code == 404
    sequence(app)
    query = f"target={secret}&action=request:read"
    assert "outcome-deny" in text(users("auditor").get(f"/audit?{query}"))
    assert "No events match." in text(users("auditor-low").get(f"/audit?{query}"))
    # An unlabelled denial (about no object that exists) stays visible to every reader.
    assert "outcome-deny" in text(users("auditor-low").get("/audit?action=request:read"))
    client = app.test_client()

    def api(user: str) -> list[dict[str, Any]]:
        token = password_token(console_idp.url, user, DEMO_PASSWORD)
        r = client.get(
            f"/api/v1/audit/events?{query}", headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 200, r.get_json()
        return list(r.get_json()["items"])

    (seen,) = api("auditor")
    assert seen["outcome"] == "deny" and seen["label"]["level"] == "SECRET"
    assert api("auditor-low") == []


def test_analysts_may_not_read_the_log_and_the_refusal_is_recorded(
    app: Flask, users: Users, filed: dict[str, str]
):
    for path in ("/audit", "/audit/export", "/audit/events/0/proof"):
        page = users("analyst-defence").get(path)
        assert page.status_code == 403, path
        assert "reading the audit log needs the auditor or officer role" in text(page)
    sequence(app)
    html = text(users("auditor").get("/audit?actor=user:analyst-defence&action=audit:read"))
    assert len(seqs(html)) == 1 and "outcome-deny" in html


def test_verify_now_says_intact_and_is_recorded(app: Flask, users: Users, filed: dict[str, str]):
    auditor = users("auditor")
    page = post(auditor, "/audit/verify")
    html = text(page)
    assert page.status_code == 200
    assert "Audit log intact" in html
    assert "14 events" in html  # 13 + the auditor's sign-in, sequenced as it was recorded
    sequence(app)
    assert len(seqs(text(auditor.get("/audit?action=audit:verify")))) == 1


def test_verify_now_needs_the_csrf_token(users: Users):
    assert users("auditor").post("/audit/verify").status_code == 400


def test_verify_now_finds_a_tampered_event(app: Flask, users: Users, filed: dict[str, str]):
    engine = sa.create_engine(app.config["DATABASE_URL"])
    with engine.begin() as conn:
        drop_append_only_triggers(conn)
        set_entry(conn, 5, change_one_byte(row_of(conn, 5)["entry"]), rehash=False)
    engine.dispose()
    page = post(users("auditor"), "/audit/verify")
    html = text(page)
    assert "Audit log NOT intact" in html
    assert "first bad index 5" in html
    assert 'role="alert"' in html


def test_a_proof_downloads_and_verifies_offline(users: Users, filed: dict[str, str]):
    auditor = users("auditor")
    proof = auditor.get("/audit/events/7/proof")
    assert proof.status_code == 200
    assert proof.headers["Content-Disposition"] == 'attachment; filename="sovereign-event-7.proof"'
    keys = auditor.get("/audit/public-key").get_data(as_text=True).split()
    verified = verify_proof(proof.get_data(as_text=True), [parse_verifier_key(k) for k in keys])
    assert verified.index == 7
    assert json.loads(verified.entry)["action"] == "request:approve"
    checkpoint = auditor.get("/audit/checkpoint")
    assert checkpoint.get_data(as_text=True).startswith("sovereign.local/audit\n13\n")


def test_a_proof_above_ones_clearance_is_not_found(users: Users, filed: dict[str, str]):
    assert users("auditor-low").get("/audit/events/5/proof").status_code == 404


@pytest.mark.parametrize("fmt", ["jsonl", "cef", "rfc5424"])
def test_exports_download_with_seq_and_leaf_hash(users: Users, filed: dict[str, str], fmt: str):
    export = users("auditor").get(f"/audit/export?format={fmt}&since=2000-01-01")
    assert export.status_code == 200
    assert export.headers["Content-Disposition"].startswith(
        'attachment; filename="sovereign-audit-'
    )
    lines = export.get_data(as_text=True).splitlines()
    assert len(lines) == 14  # 13 + the auditor's sign-in, sequenced as it was recorded
    if fmt == "jsonl":
        records = [json.loads(line) for line in lines]
        assert [r["seq"] for r in records] == list(range(14))
        assert all(len(r["leaf_hash"]) == 64 for r in records)
    elif fmt == "cef":
        assert all(
            line.startswith("CEF:0|Sovereign|") and "cs2Label=leafHash" in line for line in lines
        )
    else:
        assert all('seq="' in line and 'leafHash="' in line for line in lines)


def test_an_unknown_export_format_is_refused(users: Users):
    page = users("auditor").get("/audit/export?format=xml")
    assert page.status_code == 422
    assert "format must be one of jsonl, cef, rfc5424" in text(page)


def test_officers_read_the_log_too(users: Users, filed: dict[str, str]):
    assert users("officer-1").get("/audit").status_code == 200
    nav = text(users("officer-1").get("/"))
    assert 'href="/audit"' in nav and 'href="/queue"' in nav


@pytest.mark.parametrize(
    ("path", "status"),
    [
        (f"/audit/events/{2**64}/proof", 404),
        (f"/audit?before={2**64}", 422),
        ("/audit?before=%C2%B2", 200),  # "²" passes str.isdigit(), not int(): ignored
        ("/audit?since=0001-01-01T00:00:00%2B01:00", 422),
        ("/audit?until=9999-12-31T23:59:59-01:00", 422),
        ("/audit/export?format=jsonl&since=0001-01-01T00:00:00%2B01:00", 422),
    ],
)
def test_numbers_and_times_out_of_range_are_refused_not_crashed(
    users: Users, path: str, status: int
):
    assert users("auditor").get(path).status_code == status
