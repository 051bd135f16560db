"""The analyst's form and list, the officer's queue and decisions, step-up for classified
approvals, role denials and CSRF failures, all through the console with real tokens."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.web.conftest import (
    CIVIL_FORM,
    SECRET_FORM,
    Users,
    at_idp,
    banners,
    clock_of,
    csrf,
    post,
    query_of,
    request_id_from,
    sequence,
    session_of,
    text,
)

pytestmark = pytest.mark.idp


def options(html: str, select_id: str) -> list[str]:
    """The option values of a select."""
    start = html.index(f'<select id="{select_id}"')
    block = html[start : html.index("</select>", start)]
    return re.findall(r'<option value="([^"]*)"', block)


def file_request(client: FlaskClient, form: dict[str, Any] = SECRET_FORM) -> str:
    done = post(client, "/requests", form)
    assert done.status_code == 303, text(done)
    return request_id_from(done)


def events(app: Flask, **filters: str) -> list[Any]:
    from sovereign.domain.identity import Principal, Role
    from sovereign.services.auditing import EventFilter
    from sovereign.services.recording import CallContext

    sequence(app)
    svc = app.extensions["sovereign"]
    reader = CallContext(
        principal=Principal(
            subject="t",
            username="t",
            roles=frozenset({Role.AUDITOR}),
            clearance=svc.scheme.highest,
        )
    )
    return svc.audit.events(reader, EventFilter(limit=200, **filters)).items


# -- the analyst's form ----------------------------------------------------------------------


def test_the_form_offers_only_what_the_analyst_may_ask_for(users: Users):
    html = text(users("analyst-defence").get("/requests/new"))
    assert options(html, "tenant") == ["defence"]
    assert options(html, "level") == ["UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET"]
    # Clearance SECRET//NATO meets the tenant's SECRET//CRYPTO/EU/NATO at SECRET//NATO.
    assert re.findall(r'name="compartments" value="([^"]+)"', html) == ["NATO"]
    assert "SECRET//NATO" in html
    # The quota is shown: 8 GPUs, 256 vCPUs, 2048 GiB memory, 16384 GiB disk.
    assert "8 GPUs, 256 vCPUs, 2048 GiB memory, 16384 GiB disk" in html
    assert '<label for="vcpus">vCPUs</label>' in html
    assert banners(html) == ["UNCLASSIFIED", "UNCLASSIFIED"]

    civil = text(users("analyst-research").get("/requests/new"))
    assert options(civil, "tenant") == ["research"]
    assert options(civil, "level") == ["UNCLASSIFIED"]
    assert 'name="compartments"' not in civil


def test_quota_in_use_counts_committed_requests(users: Users):
    analyst = users("analyst-research")
    rid = file_request(analyst, CIVIL_FORM)
    assert post(users("officer-1"), f"/requests/{rid}/approve").status_code == 303
    html = text(analyst.get("/requests/new"))
    # research: 4 GPUs, 128 vCPUs; the approved request holds 2 GPUs and 16 vCPUs.
    assert "2 GPUs, 16 vCPUs, 64 GiB memory, 200 GiB disk" in html
    assert "2 GPUs, 112 vCPUs, 960 GiB memory, 7992 GiB disk" in html


def test_a_request_may_keep_to_some_of_its_tenants_countries(app: Flask, users: Users):
    analyst = users("analyst-research")
    html = text(analyst.get("/requests/new"))
    assert '<td id="residency-research">ES, PT</td>' in html
    assert 'id="country-ES"' in html and 'id="country-PT"' in html
    rid = file_request(analyst, {**CIVIL_FORM, "residency": "PT"})
    assert '<dd id="residency">PT</dd>' in text(analyst.get(f"/requests/{rid}"))
    (created,) = events(app, action="request:create", target=f"request/{rid}")
    assert created.event.details["residency"] == ["PT"]
    # A country the form does not offer (sent by hand) is refused next to the field.
    page = post(analyst, "/requests", {**CIVIL_FORM, "residency": "FR"})
    assert page.status_code == 422
    assert "FR" in text(page)


def test_filing_a_request_shows_it_with_its_approvals_and_records_it(app: Flask, users: Users):
    analyst = users("analyst-defence")
    rid = file_request(analyst)
    page = analyst.get(f"/requests/{rid}")
    html = text(page)
    assert page.status_code == 200
    assert "Request filed at SECRET//NATO; it needs 2 officer approval(s)." in html
    assert '<strong id="approval-status">0 of 2 approvals</strong>' in html
    assert '<dd id="residency">ES (the tenant\'s)</dd>' in html
    assert '<dd id="country">chosen at final approval</dd>' in html
    assert banners(html) == ["SECRET//NATO", "SECRET//NATO"]
    assert 'id="approve"' not in html  # analysts are not offered a decision
    assert 'id="cancel"' in html
    (created,) = events(app, action="request:create", target=f"request/{rid}")
    assert created.event.actor == "user:analyst-defence"
    assert created.event.outcome.value == "allow"


def test_the_form_needs_the_csrf_token(app: Flask, users: Users):
    analyst = users("analyst-defence")
    page = analyst.post("/requests", data=SECRET_FORM)
    assert page.status_code == 400
    assert "Nothing was changed" in text(page)
    wrong = analyst.post("/requests", data={**SECRET_FORM, "csrf_token": "forged"})
    assert wrong.status_code == 400
    assert events(app, action="request:create") == []


def test_a_post_without_a_session_goes_to_sign_in(app: Flask):
    page = app.test_client().post("/requests", data=SECRET_FORM)
    assert page.status_code == 302
    assert urlsplit(page.headers["Location"]).path == "/auth/login"


def test_invalid_fields_are_shown_next_to_them_and_kept(users: Users):
    analyst = users("analyst-defence")
    page = post(analyst, "/requests", {**SECRET_FORM, "vcpus": "many", "purpose": ""})
    html = text(page)
    assert page.status_code == 422
    assert '<p class="field-error" id="vcpus-error">Enter a whole number.</p>' in html
    assert 'id="vcpus" name="vcpus"' in html and 'value="many"' in html
    assert 'aria-invalid="true"' in html
    assert '<p class="field-error" id="purpose-error">' in html


def test_a_policy_refusal_shows_the_form_again_with_the_reason(app: Flask, users: Users):
    # A crafted form: the research analyst asks for SECRET, which was never offered.
    page = post(users("analyst-research"), "/requests", {**CIVIL_FORM, "level": "SECRET"})
    html = text(page)
    assert page.status_code == 403
    assert "your clearance does not dominate SECRET" in html
    assert 'value="protein folding"' not in html  # textarea keeps it as text, not attribute
    assert "protein folding</textarea>" in html
    (denied,) = events(app, action="request:create")
    assert denied.event.outcome.value == "deny"


def test_quota_exceeded_is_a_conflict(users: Users):
    page = post(users("analyst-research"), "/requests", {**CIVIL_FORM, "gpus": "5"})
    assert page.status_code == 409
    assert "Quota exceeded for tenant research" in text(page)


def test_my_requests_lists_only_my_own(users: Users):
    mine = file_request(users("analyst-defence"))
    theirs = file_request(users("analyst-officer"))  # same tenant, another analyst
    html = text(users("analyst-defence").get("/requests"))
    assert mine in html
    assert theirs not in html
    assert "0 of 2 approvals" in html
    pending = text(users("analyst-defence").get("/requests?state=approved"))
    assert mine not in pending


# -- role denials ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "path"),
    [
        ("analyst-defence", "/queue"),
        ("auditor", "/queue"),
        ("officer-1", "/requests/new"),
        ("auditor", "/requests/new"),
        ("operator", "/requests/new"),
    ],
)
def test_pages_are_only_offered_to_their_role(users: Users, user: str, path: str):
    page = users(user).get(path)
    assert page.status_code == 403
    assert "role." in text(page)


def test_operators_cannot_read_requests(users: Users):
    page = users("operator").get("/requests")
    assert page.status_code == 403
    assert "reading requests needs the analyst, officer or auditor role" in text(page)


def test_requests_above_ones_clearance_do_not_exist(users: Users):
    rid = file_request(users("analyst-defence"))
    page = users("analyst-research").get(f"/requests/{rid}")
    assert page.status_code == 404
    assert "SECRET" not in text(page)
    assert post(users("analyst-research"), f"/requests/{rid}/cancel").status_code == 404


# -- officers --------------------------------------------------------------------------------


def test_two_officers_approve_a_secret_request(app: Flask, users: Users):
    rid = file_request(users("analyst-defence"))
    officer1, officer2 = users("officer-1"), users("officer-2")

    queue = text(officer1.get("/queue"))
    assert rid in queue and "awaiting your decision" in queue
    assert banners(queue) == ["SECRET//NATO", "SECRET//NATO"]
    page = text(officer1.get(f"/requests/{rid}"))
    assert 'id="approve"' in page and 'id="reject"' in page
    assert 'id="step-up-note"' not in page  # signed in a moment ago

    done = post(officer1, f"/requests/{rid}/approve", {"reason": "justified"})
    assert done.status_code == 303
    page = text(officer1.get(f"/requests/{rid}"))
    assert "1 of 2 approvals: officer-1" in page
    assert "The request is pending." in page
    assert 'id="approve"' not in page
    assert "You have already decided on this request" in page
    assert "you approved" in text(officer1.get("/queue"))

    assert post(officer2, f"/requests/{rid}/approve").status_code == 303
    page = text(officer2.get(f"/requests/{rid}"))
    assert "2 of 2 approvals: officer-1, officer-2" in page
    assert '<span class="state state-approved">approved</span>' in page
    assert '<dd id="country">ES (pinned at approval; its key lives there)</dd>' in page
    assert rid not in text(officer2.get("/queue"))
    approvals = events(app, action="request:approve", target=f"request/{rid}")
    assert [e.event.actor for e in reversed(approvals)] == ["user:officer-1", "user:officer-2"]


def test_an_analyst_cannot_approve_their_own_request(app: Flask, users: Users):
    analyst = users("analyst-defence")
    rid = file_request(analyst)
    assert 'id="approve"' not in text(analyst.get(f"/requests/{rid}"))
    page = post(analyst, f"/requests/{rid}/approve")
    assert page.status_code == 403
    assert "only security officers may approve or reject" in text(page)
    assert "0 of 2 approvals" in text(page)
    (denied,) = events(app, action="request:approve")
    assert denied.event.outcome.value == "deny"


def test_an_officer_cannot_approve_a_request_they_filed(app: Flask, users: Users):
    both = users("analyst-officer")
    rid = file_request(both)
    page = text(both.get(f"/requests/{rid}"))
    assert 'id="approve"' not in page
    assert "You filed this request, so another officer must decide on it." in page
    refused = post(both, f"/requests/{rid}/approve")
    assert refused.status_code == 403
    assert "officers may not decide on their own requests" in text(refused)
    (denied,) = events(app, action="request:approve")
    assert denied.event.outcome.value == "deny"


def test_approve_needs_the_csrf_token(users: Users):
    rid = file_request(users("analyst-defence"))
    officer = users("officer-1")
    assert officer.post(f"/requests/{rid}/approve").status_code == 400
    assert "0 of 2 approvals" in text(officer.get(f"/requests/{rid}"))


def test_rejecting_needs_a_reason_and_is_final(users: Users):
    rid = file_request(users("analyst-defence"))
    officer = users("officer-1")
    empty = post(officer, f"/requests/{rid}/reject", {"reason": "  "})
    assert empty.status_code == 422
    assert "a reason is required" in text(empty)
    assert 'id="reject"' in text(empty)  # the form is shown again
    done = post(officer, f"/requests/{rid}/reject", {"reason": "no justification given"})
    assert done.status_code == 303
    page = text(officer.get(f"/requests/{rid}"))
    assert "state-rejected" in page and "no justification given" in page
    late = post(users("officer-2"), f"/requests/{rid}/approve")
    assert late.status_code == 409
    assert "request is rejected, not pending" in text(late)


def test_the_requester_can_cancel_while_pending(users: Users):
    analyst = users("analyst-defence")
    rid = file_request(analyst)
    assert post(analyst, f"/requests/{rid}/cancel", {"reason": "changed plans"}).status_code == 303
    page = text(analyst.get(f"/requests/{rid}"))
    assert "state-cancelled" in page and 'id="cancel"' not in page


# -- step-up ---------------------------------------------------------------------------------


def age_sign_in(app: Flask, seconds: int) -> None:
    """Move the services' clock ahead: every sign-in so far is ``seconds`` older."""
    clock_of(app).ahead += timedelta(seconds=seconds)


def test_approving_a_classified_request_needs_a_recent_sign_in(app: Flask, users: Users):
    rid = file_request(users("analyst-defence"))
    officer = users("officer-1")
    age_sign_in(app, app.config["STEP_UP_MAX_AGE_S"] + 60)
    page = text(officer.get(f"/requests/{rid}"))
    assert 'id="step-up-note"' in page
    assert "within the last 10 minutes" in page

    asked = post(officer, f"/requests/{rid}/approve", {"reason": "fine by me"})
    assert asked.status_code == 303
    login = urlsplit(asked.headers["Location"])
    assert login.path == "/auth/login"
    assert query_of(asked.headers["Location"]) == {
        "next": [f"/requests/{rid}"],
        "step_up": ["1"],
    }
    assert "0 of 2 approvals" in text(officer.get(f"/requests/{rid}"))  # nothing approved yet

    to_idp = officer.get(login.path + "?" + login.query)
    q = query_of(to_idp.headers["Location"])
    assert q["prompt"] == ["login"] and q["max_age"] == ["0"]
    back = officer.get(at_idp(to_idp.headers["Location"], "officer-1"))
    clock_of(app).ahead = timedelta()  # the new sign-in happened "now" on the services' clock
    assert back.headers["Location"] == f"/requests/{rid}"
    page = text(officer.get(f"/requests/{rid}"))
    assert "You signed in again. Confirm your decision below." in page
    assert "fine by me</textarea>" in page  # the interrupted approval, offered, not replayed
    assert 'id="step-up-note"' not in page
    assert post(officer, f"/requests/{rid}/approve").status_code == 303
    assert "1 of 2 approvals: officer-1" in text(officer.get(f"/requests/{rid}"))


def test_an_unclassified_approval_needs_no_step_up(app: Flask, users: Users):
    rid = file_request(users("analyst-research"), CIVIL_FORM)
    officer = users("officer-1")
    age_sign_in(app, 3600)
    assert post(officer, f"/requests/{rid}/approve").status_code == 303
    assert "1 of 1 approvals: officer-1" in text(officer.get(f"/requests/{rid}"))


def test_a_step_up_the_idp_did_not_honour_is_refused(app: Flask, users: Users):
    officer = users("officer-1")
    started = officer.get("/auth/login?step_up=1&next=/queue")
    (pending,) = session_of(app, officer).logins.values()
    pending.started_at += 120  # as if the IdP answered with an older authentication
    page = officer.get(at_idp(started.headers["Location"], "officer-1"))
    assert page.status_code == 401
    assert "did not ask for your password" in text(page)


def test_rejecting_needs_no_step_up(app: Flask, users: Users):
    rid = file_request(users("analyst-defence"))
    officer = users("officer-1")
    age_sign_in(app, 3600)
    assert post(officer, f"/requests/{rid}/reject", {"reason": "no"}).status_code == 303


def test_step_up_keeps_the_csrf_protection(users: Users):
    officer = users("officer-1")
    token = csrf(officer)
    assert token and token == csrf(officer, "/queue")
