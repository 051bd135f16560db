"""The enclave and fleet pages of the console: "My enclaves" with the serial console and
terminate, the placement preview, hosts and GPUs, two-person actions and the kill switch, with
real tokens, real SQLite, the libvirt test driver over the bundled simulated hosts and the
reconciler run in-process between requests."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from sovereign.domain.fleet import domain_name
from sovereign.domain.identity import Principal, Role
from sovereign.services.auditing import EventFilter
from sovereign.services.recording import CallContext
from tests.web.conftest import (
    CIVIL_FORM,
    SECRET_FORM,
    Users,
    banners,
    bundled_app,
    post,
    request_id_from,
    sequence,
    text,
)

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]

#: The bundled hosts' libvirt test-driver pools hold 100 GiB: ask for less.
SECRET = {**SECRET_FORM, "disk_gib": "50"}
CIVIL = {**CIVIL_FORM, "disk_gib": "50"}
SECRET_NATO = {"level": "SECRET", "compartments": ["NATO"]}
TWO_PERSON = "two-person rule: a second, different officer must confirm this action"

Reconcile = Callable[[], None]


@pytest.fixture
def app(tmp_path: Path, console_idp: Any) -> Iterator[Flask]:
    """The console app with the embedded default's sites and three simulated hosts."""
    with bundled_app(tmp_path, console_idp.url) as app:
        yield app


@pytest.fixture
def reconcile(app: Flask) -> Reconcile:
    """Run reconciler passes until one changes nothing (as the worker would, at once)."""
    reconciler = app.extensions["sovereign"].reconciler(worker="t")

    def run() -> None:
        for _ in range(50):
            if not reconciler.run_once().busy:
                return
        raise AssertionError("the reconciler never settled")

    run()  # the new hosts' GPUs start dirty: sanitize them
    return run


def file_request(client: FlaskClient, form: dict[str, Any] = SECRET) -> str:
    done = post(client, "/requests", form)
    assert done.status_code == 303, text(done)
    return request_id_from(done)


def running(users: Users, reconcile: Reconcile, *, civil: bool = False) -> str:
    """An enclave the analyst requested, approved and brought up by the reconciler."""
    analyst = users("analyst-research" if civil else "analyst-defence")
    rid = file_request(analyst, CIVIL if civil else SECRET)
    for officer in ("officer-1",) if civil else ("officer-1", "officer-2"):
        assert post(users(officer), f"/requests/{rid}/approve").status_code == 303
    reconcile()
    assert state_of(users, rid, "analyst-research" if civil else "analyst-defence") == "running"
    return rid


def state_of(users: Users, rid: str, user: str = "analyst-defence") -> str:
    html = text(users(user).get(f"/enclaves/{rid}"))
    found = re.search(r'<span id="enclave-state"><span class="state state-(\w+)">', html)
    assert found, html
    return found.group(1)


def events(app: Flask, **filters: str) -> list[Any]:
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
    return list(svc.audit.events(reader, EventFilter(limit=200, **filters)).items)


def host_state(app: Flask, name: str) -> str:
    from sovereign.cli_hosts import cli_context

    return str(app.extensions["sovereign"].hosts.get(cli_context(), name).state)


def pending_actions(app: Flask) -> list[Any]:
    svc = app.extensions["sovereign"]
    officer = CallContext(
        principal=Principal(
            subject="t",
            username="t",
            roles=frozenset({Role.OFFICER}),
            clearance=svc.scheme.highest,
        )
    )
    return list(svc.actions.list(officer))


def nav(html: str) -> list[str]:
    block = html[html.index('<nav aria-label="Main">') : html.index("</nav>")]
    return re.findall(r'<a href="[^"]*"[^>]*>([^<]+)</a>', block)


# -- navigation ------------------------------------------------------------------------------


def test_each_role_is_offered_its_pages(users: Users):
    assert nav(text(users("analyst-defence").get("/"))) == [
        "Overview",
        "Request an enclave",
        "My requests",
        "My enclaves",
        "Datasets",
    ]
    assert nav(text(users("officer-1").get("/"))) == [
        "Overview",
        "Approval queue",
        "Hosts and GPUs",
        "Sites",
        "Two-person actions",
        "Kill switch",
        "Audit log",
    ]
    assert nav(text(users("auditor").get("/"))) == [
        "Overview",
        "Hosts and GPUs",
        "Sites",
        "Audit log",
        "Attestation",
    ]
    assert nav(text(users("operator").get("/"))) == ["Overview", "Hosts and GPUs", "Sites"]


# -- the analyst's enclaves ------------------------------------------------------------------


def test_my_enclaves_shows_state_host_site_gpus_lease_and_step(users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    other = file_request(users("analyst-defence"))  # pending: no enclave yet
    page = users("analyst-defence").get("/enclaves")
    html = text(page)
    assert page.status_code == 200
    assert f"/enclaves/{rid}" in html and other not in html
    row = html[html.index(f"/enclaves/{rid}") :]
    row = row[: row.index("</tr>")]
    assert '<span class="state state-running">running</span>' in row
    assert "secret-h100x8" in row and "es-mad-1" in row
    assert re.search(r"2 GPUs: <code>0000:[0-9a-f]{2}:00\.0, 0000:[0-9a-f]{2}:00\.0</code>", row)
    assert re.search(r'<time datetime="[^"]+">\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</time>', row)
    assert "start" in row  # the last provisioning step
    assert banners(html) == ["SECRET//NATO", "SECRET//NATO"]

    only_pending = text(users("analyst-defence").get("/enclaves?state=terminated"))
    assert f"/enclaves/{rid}" not in only_pending
    assert "No enclaves in state terminated." in only_pending


def test_my_enclaves_lists_only_my_own(users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    assert f"/enclaves/{rid}" not in text(users("analyst-officer").get("/enclaves"))
    research = text(users("analyst-research").get("/enclaves"))
    assert rid not in research and "SECRET" not in research
    assert banners(research) == ["UNCLASSIFIED", "UNCLASSIFIED"]


def test_an_enclave_above_ones_clearance_does_not_exist(users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    page = users("analyst-research").get(f"/enclaves/{rid}")
    assert page.status_code == 404
    assert "SECRET" not in text(page)
    assert post(users("analyst-research"), f"/enclaves/{rid}/terminate").status_code == 404


def test_the_enclave_page_shows_the_serial_console_escaped(
    app: Flask, users: Users, reconcile: Reconcile
):
    rid = running(users, reconcile)
    log = Path(app.config["ENCLAVE_CONSOLE_DIR"]) / f"{domain_name(uuid.UUID(rid))}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("old line\n" * 2000 + "[    0.0] Linux\n<script>alert(1)</script> & done\n")
    html = text(users("analyst-defence").get(f"/enclaves/{rid}"))
    console = html[html.index('<pre class="console"') : html.index("</pre>")]
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; done" in console
    assert "<script>" not in html
    assert len(console) < 8192 + 200  # the tail only
    assert 'id="enclave-host">secret-h100x8 (site es-mad-1)' in html
    assert banners(html) == ["SECRET//NATO", "SECRET//NATO"]
    # Officers read it too; auditors see the enclave but not its console.
    assert "&lt;script&gt;" in text(users("officer-1").get(f"/enclaves/{rid}"))
    audited = text(users("auditor").get(f"/enclaves/{rid}"))
    assert "Serial console" not in audited and "&lt;script&gt;" not in audited
    assert 'id="terminate"' not in audited


def test_the_request_page_links_to_its_enclave(users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    html = text(users("analyst-defence").get(f"/requests/{rid}"))
    assert f'<a href="/enclaves/{rid}">The enclave: host, GPUs, lease, serial console</a>' in html
    pending = file_request(users("analyst-defence"))
    assert 'id="enclave-link"' not in text(users("analyst-defence").get(f"/requests/{pending}"))


def test_the_analyst_terminates_their_own_enclave(app: Flask, users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    analyst = users("analyst-defence")
    html = text(analyst.get(f"/enclaves/{rid}"))
    assert 'id="terminate"' in html and 'id="terminate-confirm"' in html

    unconfirmed = post(analyst, f"/enclaves/{rid}/terminate", {"reason": "done"})
    assert unconfirmed.status_code == 422
    assert "Tick the box to confirm" in text(unconfirmed)
    assert "done</textarea>" in text(unconfirmed)
    assert state_of(users, rid) == "running"

    done = post(analyst, f"/enclaves/{rid}/terminate", {"reason": "done", "confirm": "yes"})
    assert done.status_code == 303
    assert done.headers["Location"] == f"/enclaves/{rid}"
    html = text(analyst.get(f"/enclaves/{rid}"))
    assert "The enclave is terminating" in html
    assert state_of(users, rid) == "terminating"
    assert 'id="terminate"' not in html  # nothing left to end
    reconcile()
    assert state_of(users, rid) == "terminated"
    (ended,) = events(app, action="enclave:terminate", target=f"enclave/{rid}")
    assert ended.event.actor == "user:analyst-defence"
    assert ended.event.outcome.value == "allow"
    assert ended.event.reason == "done"


def test_terminate_needs_the_csrf_token(app: Flask, users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    analyst = users("analyst-defence")
    page = analyst.post(f"/enclaves/{rid}/terminate", data={"confirm": "yes"})
    assert page.status_code == 400
    assert "Nothing was changed" in text(page)
    forged = analyst.post(
        f"/enclaves/{rid}/terminate", data={"confirm": "yes", "csrf_token": "forged"}
    )
    assert forged.status_code == 400
    assert state_of(users, rid) == "running"
    assert events(app, action="enclave:terminate") == []


def test_an_auditor_cannot_terminate(app: Flask, users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    page = post(users("auditor"), f"/enclaves/{rid}/terminate", {"confirm": "yes"})
    assert page.status_code == 403
    assert "only the requester or a security officer may terminate it" in text(page)
    assert state_of(users, rid) == "running"
    (denied,) = events(app, action="enclave:terminate")
    assert denied.event.outcome.value == "deny"


def test_an_officer_may_terminate_anyones_enclave(users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    officer = users("officer-2")
    assert 'id="terminate"' in text(officer.get(f"/enclaves/{rid}"))
    done = post(officer, f"/enclaves/{rid}/terminate", {"reason": "incident", "confirm": "yes"})
    assert done.status_code == 303
    assert state_of(users, rid) == "terminating"


def test_terminating_an_approved_unplaced_request_cancels_it(users: Users):
    analyst = users("analyst-research")
    rid = file_request(analyst, CIVIL)
    assert post(users("officer-1"), f"/requests/{rid}/approve").status_code == 303
    # No reconciler pass: approved, not placed.
    html = text(analyst.get(f"/enclaves/{rid}"))
    assert "not placed yet" in html
    done = post(analyst, f"/enclaves/{rid}/terminate", {"confirm": "yes"})
    assert done.status_code == 303
    html = text(analyst.get(f"/enclaves/{rid}"))
    assert "it is cancelled and its keys erased" in html
    assert "state-cancelled" in html


@pytest.mark.parametrize(
    ("user", "path"),
    [
        ("officer-1", "/enclaves"),
        ("auditor", "/enclaves"),
        ("operator", "/enclaves"),
        ("analyst-defence", "/kill-switch"),
        ("auditor", "/kill-switch"),
        ("operator", "/kill-switch"),
    ],
)
def test_pages_are_only_offered_to_their_role(users: Users, user: str, path: str):
    page = users(user).get(path)
    assert page.status_code == 403
    assert "role." in text(page)


@pytest.mark.parametrize(
    ("user", "path", "reason"),
    [
        ("analyst-defence", "/hosts", "reading hosts needs the officer, operator or auditor role"),
        ("analyst-defence", "/actions", "only security officers see two-person actions"),
        ("auditor", "/actions", "only security officers see two-person actions"),
    ],
)
def test_the_services_refuse_what_a_role_may_not_read(
    users: Users, user: str, path: str, reason: str
):
    page = users(user).get(path)
    assert page.status_code == 403
    assert reason in text(page)


def test_a_host_is_not_found_for_whoever_may_not_read_hosts(users: Users):
    # The answer a missing host gets: the name does not tell whether the host exists.
    for name in ("secret-h100x8", "no-such-host"):
        page = users("analyst-defence").get(f"/hosts/{name}")
        assert page.status_code == 404
        assert f"host {name} not found" in text(page)


# -- the officer's placement preview ---------------------------------------------------------


def test_officers_see_the_placement_preview(users: Users, reconcile: Reconcile):
    rid = file_request(users("analyst-defence"))
    html = text(users("officer-1").get(f"/requests/{rid}"))
    assert "Placement preview" in html
    assert re.search(
        r"Would go to <strong>secret-h100x8</strong>, GPUs <code>0000:[0-9a-f:.]+, "
        r"0000:[0-9a-f:.]+</code> \(H100-SXM5-80GB\)",
        html,
    )
    assert (
        "<strong>civilian-h100x4</strong> — accreditation UNCLASSIFIED does not dominate "
        "SECRET//NATO" in html
    )
    assert banners(html) == ["SECRET//NATO", "SECRET//NATO"]


@pytest.mark.parametrize("user", ["analyst-defence", "auditor"])
def test_only_officers_see_the_placement_preview(users: Users, reconcile: Reconcile, user: str):
    rid = file_request(users("analyst-defence"))
    html = text(users(user).get(f"/requests/{rid}"))
    assert "Placement preview" not in html and "civilian-h100x4" not in html


def test_the_preview_says_when_no_host_fits(users: Users, reconcile: Reconcile):
    assert (
        post(
            users("officer-1"),
            "/hosts/secret-h100x8/state",
            {"state": "draining", "reason": "maintenance"},
        ).status_code
        == 303
    )
    rid = file_request(users("analyst-defence"))
    html = text(users("officer-2").get(f"/requests/{rid}"))
    assert "No host can take it now." in html
    assert "<strong>secret-h100x8</strong> — draining" in html


# -- hosts and GPUs --------------------------------------------------------------------------


def test_hosts_and_gpus_with_state_accreditation_site_and_last_label(
    users: Users, reconcile: Reconcile
):
    rid = running(users, reconcile)
    officer = users("officer-1")
    html = text(officer.get("/hosts"))
    assert re.findall(r'<a href="/hosts/([\w-]+)">', html) == [
        "civilian-h100x4",
        "civilian-pt-1",
        "secret-h100x8",
    ]
    assert "es-mad-1" in html and "pt-lis-1" in html
    assert '<span class="label-badge classification-3">SECRET//CRYPTO/EU/NATO</span>' in html
    assert "6 free, 2 allocated" in html and "4 free" in html
    assert html.count('<span class="state state-gpu-allocated">allocated</span>') == 2
    assert html.count("SECRET//NATO</span> defence") == 2  # the last tenant's label
    assert f'<a href="/enclaves/{rid}">enclave</a>' in html
    assert banners(html) == ["SECRET//NATO", "SECRET//NATO"]

    # A reader cleared only for UNCLASSIFIED sees the GPUs' states but not their last label.
    low = text(users("auditor-low").get("/hosts"))
    assert low.count('<span class="state state-gpu-allocated">allocated</span>') == 2
    assert "SECRET//NATO" not in low and rid not in low
    assert banners(low) == ["UNCLASSIFIED", "UNCLASSIFIED"]


def test_readers_who_may_not_change_a_host_get_no_forms(users: Users, reconcile: Reconcile):
    auditor = text(users("auditor").get("/hosts/secret-h100x8"))
    assert 'id="change-state"' not in auditor and 'id="propose-accreditation"' not in auditor
    operator = text(users("operator").get("/hosts/secret-h100x8"))
    assert 'id="state-draining"' in operator and 'id="state-quarantined"' in operator
    assert 'id="propose-accreditation"' not in operator
    officer = text(users("officer-1").get("/hosts/secret-h100x8"))
    assert 'id="state-active"' not in officer  # it is active already
    assert 'id="propose-accreditation"' in officer


def test_an_officer_drains_and_reactivates_a_host(app: Flask, users: Users, reconcile: Reconcile):
    officer = users("officer-1")
    path = "/hosts/civilian-h100x4/state"
    empty = post(officer, path, {"state": "draining", "reason": " "})
    assert empty.status_code == 422
    assert "a reason is required" in text(empty)
    assert 'id="state-error"' in text(empty)
    assert host_state(app, "civilian-h100x4") == "active"

    done = post(officer, path, {"state": "draining", "reason": "firmware update"})
    assert done.status_code == 303
    assert done.headers["Location"] == "/hosts/civilian-h100x4"
    html = text(officer.get("/hosts/civilian-h100x4"))
    assert "Host civilian-h100x4 is now draining." in html
    assert 'state-host-draining">draining</span> (firmware update)' in html
    assert 'id="state-active"' in html
    assert host_state(app, "civilian-h100x4") == "draining"
    (drained,) = events(app, action="host:drain")
    assert drained.event.actor == "user:officer-1" and drained.event.reason == "firmware update"

    assert post(officer, path, {"state": "active", "reason": ""}).status_code == 303
    assert host_state(app, "civilian-h100x4") == "active"


def test_a_bad_host_state_changes_nothing(app: Flask, users: Users, reconcile: Reconcile):
    form = {"state": "gone", "reason": "x"}
    page = post(users("officer-1"), "/hosts/civilian-h100x4/state", form)
    assert page.status_code == 422
    assert "choose one of active, draining, quarantined" in text(page)
    assert host_state(app, "civilian-h100x4") == "active"


def test_an_operator_may_quarantine_but_not_reactivate(
    app: Flask, users: Users, reconcile: Reconcile
):
    operator = users("operator")
    path = "/hosts/secret-h100x8/state"
    assert post(operator, path, {"state": "quarantined", "reason": "smoke"}).status_code == 303
    assert 'id="state-active"' not in text(operator.get("/hosts/secret-h100x8"))
    refused = post(operator, path, {"state": "active"})
    assert refused.status_code == 403
    assert "only security officers may do this" in text(refused)
    assert host_state(app, "secret-h100x8") == "quarantined"


def test_an_accreditation_change_takes_two_officers(app: Flask, users: Users, reconcile: Reconcile):
    officer1, officer2 = users("officer-1"), users("officer-2")
    path = "/hosts/civilian-h100x4/accreditation"
    done = post(officer1, path, {"level": "RESTRICTED", "reason": "new room"})
    assert done.status_code == 303
    assert done.headers["Location"] == "/actions"
    html = text(officer1.get("/actions"))
    assert "Proposed: accreditation RESTRICTED for host civilian-h100x4" in html
    assert "Change the accreditation of host civilian-h100x4 to RESTRICTED" in html
    assert "1 of 2 officers: officer-1" in html
    assert "You proposed this; a second, different officer must confirm it." in html
    (action,) = pending_actions(app)
    assert f'id="confirm-{action.id}"' not in html

    html = text(officer2.get("/actions"))
    assert f'id="confirm-{action.id}"' in html
    assert banners(html) == ["RESTRICTED", "RESTRICTED"]
    confirmed = post(officer2, f"/actions/{action.id}/confirm")
    assert confirmed.status_code == 303
    html = text(officer2.get("/actions"))
    assert "Confirmed (2 of 2 officers: officer-1, officer-2)" in html
    assert "No proposal is waiting for a second officer." in html
    detail = text(officer2.get("/hosts/civilian-h100x4"))
    assert '<span class="label-badge classification-1">RESTRICTED</span>' in detail


def test_an_unknown_accreditation_is_refused_on_the_form(app: Flask, users: Users):
    page = post(
        users("officer-1"),
        "/hosts/civilian-h100x4/accreditation",
        {"level": "COSMIC", "reason": "x"},
    )
    assert page.status_code == 422
    assert "unknown level &#39;COSMIC&#39;" in text(page)
    assert 'id="accreditation-error"' in text(page)
    assert pending_actions(app) == []


def test_proposals_above_ones_clearance_are_not_shown(app: Flask, users: Users):
    path = "/hosts/civilian-h100x4/accreditation"
    form = {"level": "SECRET", "compartments": ["CRYPTO"], "reason": "crypto lab"}
    assert post(users("officer-1"), path, form).status_code == 303
    (action,) = pending_actions(app)
    # analyst-officer is cleared for SECRET//NATO only.
    html = text(users("analyst-officer").get("/actions"))
    assert str(action.id) not in html and "CRYPTO" not in html
    refused = post(users("analyst-officer"), f"/actions/{action.id}/confirm")
    assert refused.status_code == 404


# -- the kill switch -------------------------------------------------------------------------

KILL_SECRET = {**SECRET_NATO, "reason": "compromised enclave image", "confirm": "yes"}


def test_the_kill_switch_form_offers_labels_within_clearance_and_tenants(users: Users):
    html = text(users("analyst-officer").get("/kill-switch"))
    level = html[html.index('<select id="level"') : html.index("</select>")]
    assert re.findall(r'<option value="(\w*)"', level) == [
        "",
        "UNCLASSIFIED",
        "RESTRICTED",
        "CONFIDENTIAL",
        "SECRET",
    ]
    assert re.findall(r'name="compartments" value="(\w+)"', html) == ["NATO"]
    tenant = html[html.index('<select id="tenant"') :]
    assert re.findall(r'<option value="(\w*)"', tenant[: tenant.index("</select>")]) == [
        "",
        "defence",
        "research",
    ]
    assert (
        '<label for="confirm">I understand this ends every matching enclave and destroys '
        "their keys</label>" in html
    )
    assert banners(html) == ["UNCLASSIFIED", "UNCLASSIFIED"]


def test_a_classified_kill_switch_takes_two_officers(
    app: Flask, users: Users, reconcile: Reconcile
):
    rid = running(users, reconcile)
    officer1, officer2 = users("officer-1"), users("officer-2")

    proposed = post(officer1, "/kill-switch", KILL_SECRET)
    assert proposed.status_code == 200
    html = text(proposed)
    assert "A second officer must confirm this." in html
    assert '<strong id="kill-status">1 of 2 officers: officer-1</strong>' in html
    assert "Kill switch: end every enclave labelled SECRET//NATO and erase their keys" in html
    assert banners(html) == ["SECRET//NATO", "SECRET//NATO"]
    reconcile()
    assert state_of(users, rid) == "running"

    (action,) = pending_actions(app)
    own = post(officer1, f"/actions/{action.id}/confirm")
    assert own.status_code == 403
    assert TWO_PERSON in text(own)
    assert 'id="action-error"' in text(own)
    assert "1 of 2 officers: officer-1" in text(own)
    assert state_of(users, rid) == "running"

    assert f'id="confirm-{action.id}"' in text(officer2.get("/actions"))
    confirmed = post(officer2, f"/actions/{action.id}/confirm")
    assert confirmed.status_code == 303
    assert "Confirmed (2 of 2 officers: officer-1, officer-2)" in text(officer2.get("/actions"))
    assert state_of(users, rid) == "terminating"
    reconcile()
    assert state_of(users, rid) == "terminated"
    (killed,) = events(app, action="enclave:kill", target=f"enclave/{rid}")
    assert killed.event.actor == "user:officer-2"
    done, refused = events(app, action="action:confirm")  # newest first
    assert (refused.event.actor, refused.event.outcome.value) == ("user:officer-1", "deny")
    assert (done.event.actor, done.event.outcome.value) == ("user:officer-2", "allow")


def test_an_unclassified_kill_switch_ends_enclaves_at_once(
    app: Flask, users: Users, reconcile: Reconcile
):
    rid = running(users, reconcile, civil=True)
    done = post(
        users("officer-1"),
        "/kill-switch",
        {"tenant": "research", "reason": "tenant offboarded", "confirm": "yes"},
    )
    assert done.status_code == 200
    html = text(done)
    assert "1 enclave ended." in html
    assert f'<a href="/enclaves/{rid}"><code>{rid}</code></a>' in html
    assert '<span class="state state-terminating">terminating</span>' in html
    assert banners(html) == ["UNCLASSIFIED", "UNCLASSIFIED"]
    assert state_of(users, rid, "analyst-research") == "terminating"
    assert pending_actions(app) == []


def test_a_kill_switch_that_matches_nothing_says_so(users: Users, reconcile: Reconcile):
    done = post(
        users("officer-1"),
        "/kill-switch",
        {"tenant": "research", "reason": "drill", "confirm": "yes"},
    )
    assert done.status_code == 200
    assert "No enclave matched of tenant research: nothing was ended." in text(done)


def test_the_kill_switch_tells_an_officer_nothing_about_enclaves_above_them(
    users: Users, reconcile: Reconcile
):
    officer = users("officer-restricted")
    form = {"tenant": "defence", "reason": "drill", "confirm": "yes"}

    def pull() -> str:
        done = post(officer, "/kill-switch", form)
        assert done.status_code == 200, text(done)
        return re.sub(r'name="csrf_token" value="[^"]*"', "", text(done))

    before = pull()
    rid = running(users, reconcile)  # SECRET//NATO, in the defence tenant
    after = pull()
    assert before == after, "the same page whether or not a SECRET enclave exists"
    assert "No enclave matched of tenant defence: nothing was ended." in after
    assert "Tenant defence may hold enclaves above your clearance." in after
    assert "SECRET" not in after
    assert state_of(users, rid) == "running"


def test_the_kill_switch_needs_the_confirmation(app: Flask, users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    page = post(users("officer-1"), "/kill-switch", {**KILL_SECRET, "confirm": ""})
    assert page.status_code == 422
    html = text(page)
    assert "to confirm; nothing was changed" in html
    assert "compromised enclave image</textarea>" in html  # the form is kept
    assert 'value="NATO" checked' in html
    assert pending_actions(app) == []
    assert state_of(users, rid) == "running"


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"reason": "no scope", "confirm": "yes"}, "name a label, a tenant, or both"),
        ({"tenant": "defence", "reason": " ", "confirm": "yes"}, "a reason is required"),
        (
            {"compartments": ["NATO"], "reason": "x", "confirm": "yes"},
            "choose a level for the compartments",
        ),
    ],
)
def test_an_incomplete_kill_switch_is_refused_on_the_form(
    app: Flask, users: Users, form: dict[str, Any], message: str
):
    page = post(users("officer-1"), "/kill-switch", form)
    assert page.status_code == 422
    assert message in text(page)
    assert pending_actions(app) == []


def test_an_analyst_cannot_pull_the_kill_switch(app: Flask, users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    page = post(users("analyst-defence"), "/kill-switch", KILL_SECRET)
    assert page.status_code == 403
    assert "only security officers may do this" in text(page)
    assert state_of(users, rid) == "running"
    assert pending_actions(app) == []


# -- CSRF on every new form ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "form"),
    [
        ("/hosts/civilian-h100x4/state", {"state": "draining", "reason": "x"}),
        ("/hosts/civilian-h100x4/accreditation", {"level": "RESTRICTED", "reason": "x"}),
        ("/kill-switch", {"tenant": "research", "reason": "x", "confirm": "yes"}),
    ],
)
def test_officer_forms_need_the_csrf_token(
    app: Flask, users: Users, reconcile: Reconcile, path: str, form: dict[str, Any]
):
    officer = users("officer-1")
    for data in (form, {**form, "csrf_token": "forged"}):
        page = officer.post(path, data=data)
        assert page.status_code == 400
        assert "Nothing was changed" in text(page)
    assert host_state(app, "civilian-h100x4") == "active"
    assert pending_actions(app) == []
    assert events(app, action="host:drain") == [] and events(app, action="enclave:kill") == []


def test_confirming_needs_the_csrf_token(app: Flask, users: Users, reconcile: Reconcile):
    rid = running(users, reconcile)
    assert post(users("officer-1"), "/kill-switch", KILL_SECRET).status_code == 200
    (action,) = pending_actions(app)
    officer2 = users("officer-2")
    page = officer2.post(f"/actions/{action.id}/confirm", data={"csrf_token": "forged"})
    assert page.status_code == 400
    assert [a.id for a in pending_actions(app)] == [action.id]
    assert state_of(users, rid) == "running"
