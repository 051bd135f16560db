"""GPU hand-over certificates in the console: each GPU's latest certificate on its host's page
(verdict, coverage, bandwidth, time, a ``simulated`` badge and a link to its proof), up to the
reader's clearance; quarantined GPUs shown to officers with the failed certificate's reason, and
their two-person return to service. Real tokens, real SQLite and audit log, the libvirt test
driver's bundled hosts, and hand-overs recorded as the sanitization phase records them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from audit import AuditQuery
from audit.note import parse_verifier_key
from audit.proof import verify_proof
from devstack.cli import _register_bundled_hosts
from tests.support.handover import handed_over
from tests.web.conftest import Users, banners, make_app, post, text

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]

HOST = "secret-h100x8"
PAGE = f"/hosts/{HOST}"
GPU, OTHER = "0000:18:00.0", "0000:2a:00.0"
SECRET_NATO = {"level": "SECRET", "compartments": ["NATO"]}


@pytest.fixture
def app(tmp_path: Path, console_idp: Any) -> Iterator[Flask]:
    app = make_app(tmp_path, console_idp.url)
    _register_bundled_hosts(app.extensions["sovereign"])
    yield app
    app.extensions["sovereign"].close()


def cell(html: str, address: str) -> str:
    """The certificate cell of one GPU."""
    slug = address.replace(":", "-").replace(".", "-")
    found = re.search(rf'<td class="certificate" id="certificate-{slug}">(.*?)</td>', html, re.S)
    assert found, html
    return found.group(1)


def gpu_state(app: Flask, address: str) -> str:
    with app.extensions["sovereign"].uow(readonly=True) as uow:
        return next(g.state for g in uow.gpus.list(HOST) if g.address == address)


def audited(app: Flask, action: str) -> list[Any]:
    services = app.extensions["sovereign"]
    services.audit.log.sequence()
    with services.uow(readonly=True) as uow:
        return uow.audit.query(AuditQuery(action=action, limit=50))


def test_each_gpu_shows_its_latest_certificate_with_a_proof_link(app: Flask, users: Users):
    services = app.extensions["sovereign"]
    handed_over(services, HOST, GPU)
    handed_over(services, HOST, GPU, label=SECRET_NATO)  # the latest of GPU
    handed_over(services, HOST, OTHER, label=SECRET_NATO, canary_hits=2)
    client = users("officer-1")
    html = text(client.get(PAGE))

    mine = cell(html, GPU)
    assert '<span class="state state-certificate-clean">clean</span>' in mine
    assert ">simulated</span>" in mine
    assert "coverage 100.00 %, 6.4 GB/s" in mine
    assert "<time datetime=" in mine
    seq = int(re.search(r'href="/audit/events/(\d+)/proof"', mine).group(1))  # type: ignore[union-attr]
    failed = cell(html, OTHER)
    assert '<span class="state state-certificate-failed">failed</span>' in failed
    assert "2 words of the previous tenant&#39;s canary were found" in failed
    # GPUs never handed over yet.
    assert "none you are cleared for" in cell(html, "0000:3a:00.0")
    assert banners(html) == ["SECRET//NATO", "SECRET//NATO"]

    # The link downloads the proof of that event; it verifies and carries the certificate.
    proof = client.get(f"/audit/events/{seq}/proof")
    assert proof.status_code == 200
    keys = [parse_verifier_key(k) for k in services.audit.public_keys()]
    entry = json.loads(verify_proof(proof.get_data(as_text=True), keys).entry)
    assert entry["action"] == "gpu:handover"
    assert entry["target"] == f"gpu/{HOST}/{GPU}"
    assert entry["details"]["certificate"]["previous_label"] == "SECRET//NATO"
    assert entry["details"]["certificate"]["verdict"] == "clean"


def test_certificates_are_shown_up_to_the_readers_clearance(app: Flask, users: Users):
    services = app.extensions["sovereign"]
    handed_over(services, HOST, GPU)
    handed_over(services, HOST, OTHER, label=SECRET_NATO, mismatches=1)
    html = text(users("auditor-low").get(PAGE))
    assert "clean" in cell(html, GPU)
    hidden = cell(html, OTHER)
    assert "none you are cleared for" in hidden and "did not read back" not in hidden
    assert "SECRET" not in html.split("<main", 1)[-1].split("</main>", 1)[0].replace(
        "SECRET//CRYPTO/EU/NATO", ""
    )
    assert banners(html)[0] != "SECRET//NATO"


def test_operators_see_no_certificates_and_are_not_refused(app: Flask, users: Users):
    handed_over(app.extensions["sovereign"], HOST, GPU)
    html = text(users("operator").get(PAGE))
    assert 'class="certificate"' not in html
    assert "Hand-over certificates are shown to security officers and auditors." in html
    assert audited(app, "gpu:certificates") == []


def test_officers_see_quarantined_gpus_with_the_reason_and_a_return_form(app: Flask, users: Users):
    handed_over(app.extensions["sovereign"], HOST, GPU, label=SECRET_NATO, mismatches=16)
    assert gpu_state(app, GPU) == "quarantined"
    officer = text(users("officer-1").get(PAGE))
    section = officer[officer.index('id="quarantine-heading"') :]
    assert "GPU <code>0000:18:00.0</code>" in section
    assert "16 bytes did not read back as written" in section
    assert 'id="propose-return-0000-18-00-0"' in section
    # An auditor reads the reason in the certificate but gets no form.
    auditor = text(users("auditor").get(PAGE))
    assert "16 bytes did not read back as written" in cell(auditor, GPU)
    assert 'id="quarantine-heading"' not in auditor and "propose-return" not in auditor


def test_two_officers_return_a_quarantined_gpu_from_the_console(app: Flask, users: Users):
    handed_over(app.extensions["sovereign"], HOST, GPU, label=SECRET_NATO, canary_hits=1)
    path = f"{PAGE}/gpus/{GPU}/return"
    first, second = users("officer-1"), users("officer-2")

    empty = post(first, path, {"reason": "  "})
    assert empty.status_code == 422
    assert 'id="return-error"' in text(empty) and "a reason is required" in text(empty)
    assert audited(app, "action:propose") == []

    done = post(first, path, {"reason": "the canary was a test pattern"})
    assert done.status_code == 303 and done.headers["Location"] == "/actions"
    what = "Return the quarantined GPU 0000:18:00.0 of host secret-h100x8 to service"
    assert what in text(first.get("/actions"))
    actions = text(second.get("/actions"))
    assert what in actions
    action_id = re.search(r'action="/actions/([0-9a-f-]{36})/confirm"', actions).group(1)  # type: ignore[union-attr]

    own = post(first, f"/actions/{action_id}/confirm")
    assert "a second, different officer must confirm" in text(own)
    assert gpu_state(app, GPU) == "quarantined"

    confirmed = post(second, f"/actions/{action_id}/confirm")
    assert confirmed.status_code == 303
    assert gpu_state(app, GPU) == "dirty"
    (moved,) = audited(app, "gpu:returned")
    assert moved.event.target == f"gpu/{HOST}/{GPU}"
    assert moved.event.details["from"] == "quarantined"
    assert moved.event.details["to"] == "dirty"
    assert moved.event.reason == "the canary was a test pattern"
    # No longer quarantined: no return form.
    assert "propose-return" not in text(first.get(PAGE))


def test_returning_a_gpu_needs_the_csrf_token(app: Flask, users: Users):
    handed_over(app.extensions["sovereign"], HOST, GPU, label=SECRET_NATO, mismatches=1)
    client = users("officer-1")
    refused = client.post(f"{PAGE}/gpus/{GPU}/return", data={"reason": "x"})
    assert refused.status_code in (400, 403)
    assert audited(app, "action:propose") == []


def test_only_a_quarantined_gpu_may_be_proposed_and_a_bad_address_names_nothing(
    app: Flask, users: Users
):
    handed_over(app.extensions["sovereign"], HOST, GPU)  # clean: free
    client = users("officer-1")
    free = post(client, f"{PAGE}/gpus/{GPU}/return", {"reason": "x"})
    assert free.status_code == 409
    assert "only a quarantined GPU is returned to service" in text(free)
    assert post(client, f"{PAGE}/gpus/not-an-address/return", {"reason": "x"}).status_code == 404
