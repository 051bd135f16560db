"""The sites page of the console (list for readers of hosts, add form for operators and
officers) and the relocation form on a host's page (two officers), with real tokens, real
SQLite and the embedded default's sites and simulated hosts on libvirt's test driver."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from devstack.cli import _register_bundled_hosts
from sovereign.cli_hosts import cli_context
from sovereign.domain.actions import ActionState
from tests.web.conftest import Users, bundled_app, post, text

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]


@pytest.fixture
def app(tmp_path: Path, console_idp: Any) -> Iterator[Flask]:
    """The console app with the embedded default's sites and three simulated hosts."""
    with bundled_app(tmp_path, console_idp.url) as app:
        yield app


def host(app: Flask, name: str) -> Any:
    return app.extensions["sovereign"].hosts.get(cli_context(), name)


def test_the_embedded_default_has_two_sites_and_three_hosts(app: Flask) -> None:
    svc = app.extensions["sovereign"]
    found = {s.name: (s.country, s.operator) for s in svc.sites.list(cli_context())}
    assert found == {
        "es-mad-1": ("ES", "Centro Nacional de IA (demo)"),
        "pt-lis-1": ("PT", "Iberian AI Gigafactory Lisboa (demo)"),
    }
    hosts = {h.name: (h.site, h.country) for h in svc.hosts.list(cli_context())}
    assert hosts == {
        "civilian-h100x4": ("es-mad-1", "ES"),
        "civilian-pt-1": ("pt-lis-1", "PT"),
        "secret-h100x8": ("es-mad-1", "ES"),
    }
    assert str(host(app, "civilian-pt-1").accreditation) == "UNCLASSIFIED"
    # Registering again adds nothing.
    assert _register_bundled_hosts(svc) == []


def test_readers_see_the_sites_and_only_operators_and_officers_get_the_form(users: Users):
    for user in ("operator", "officer-1", "auditor"):
        html = text(users(user).get("/sites"))
        assert 'id="site-pt-lis-1"' in html and "Iberian AI Gigafactory Lisboa (demo)" in html
        assert ('id="add-site"' in html) == (user != "auditor")
        assert '<a href="/hosts/civilian-pt-1">civilian-pt-1</a>' in html
    assert users("analyst-defence").get("/sites").status_code == 403
    assert 'href="/sites"' in text(users("operator").get("/hosts"))


def test_an_operator_records_a_site_and_a_bad_one_is_shown_on_the_form(users: Users):
    operator = users("operator")
    form = {"name": "fr-par-1", "country": "FR", "operator": "Paris <demo>"}
    done = post(operator, "/sites", form)
    assert done.status_code == 303, text(done)
    html = text(operator.get("/sites"))
    assert "Site fr-par-1 (FR, Paris &lt;demo&gt;) recorded." in html
    assert 'id="site-fr-par-1"' in html and "Paris <demo>" not in html
    refused = post(operator, "/sites", {**form, "name": "fr-par-2", "country": "XX"})
    assert refused.status_code == 422
    assert 'id="site-error"' in text(refused)
    assert "unknown country &#39;XX&#39;" in text(refused)
    assert 'value="fr-par-2"' in text(refused)
    again = post(operator, "/sites", form)
    assert again.status_code == 409  # the form again, with the conflict's reason
    assert "a site called &#39;fr-par-1&#39; exists" in text(again)
    assert post(users("auditor"), "/sites", {**form, "name": "x-1"}).status_code == 403


def test_a_relocation_takes_two_officers(app: Flask, users: Users):
    officer1, officer2 = users("officer-1"), users("officer-2")
    page = text(officer1.get("/hosts/civilian-h100x4"))
    assert 'id="host-site">es-mad-1 (ES)' in page
    assert '<option value="pt-lis-1">' in page and '<option value="es-mad-1"' not in page
    assert 'id="propose-relocation"' not in text(users("operator").get("/hosts/civilian-h100x4"))
    done = post(
        officer1, "/hosts/civilian-h100x4/relocation", {"site": "pt-lis-1", "reason": "moved"}
    )
    assert done.status_code == 303, text(done)
    html = text(officer1.get("/actions"))
    assert "Relocate host civilian-h100x4 to site pt-lis-1" in html
    assert (host(app, "civilian-h100x4").site, host(app, "civilian-h100x4").country) == (
        "es-mad-1",
        "ES",
    )
    with app.extensions["sovereign"].uow(readonly=True) as uow:
        (action,) = uow.actions.list(ActionState.PENDING)
    action_id = str(action.id)
    assert post(officer2, f"/actions/{action_id}/confirm").status_code == 303
    moved = host(app, "civilian-h100x4")
    assert (moved.site, moved.country) == ("pt-lis-1", "PT")
    assert 'id="host-site">pt-lis-1 (PT)' in text(officer2.get("/hosts/civilian-h100x4"))


def test_a_relocation_to_an_unknown_site_is_refused_on_the_form(users: Users):
    page = post(
        users("officer-1"), "/hosts/civilian-h100x4/relocation", {"site": "nowhere", "reason": "x"}
    )
    assert page.status_code == 422
    assert 'id="relocation-error"' in text(page)
    assert "unknown site &#39;nowhere&#39;" in text(page)
