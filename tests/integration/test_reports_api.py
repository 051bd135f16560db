"""``GET /api/v1/reports/usage`` with real tokens from the dev IdP (with an auditor cleared only
for UNCLASSIFIED) over real SQLite: who reads it, the clearance filter (an enclave above the
reader changes no figure), problem+json on bad input, and the ``report:usage`` events."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from audit import AuditQuery
from devstack.idp import DEMO_PASSWORD, DEMO_USERS, password_token, start_dev_idp
from sovereign.api import report_schemas as r
from tests.support.apps import make_app
from tests.support.usage import record_history
from tests.support.users import LOW_CLEARANCE_USERS

pytestmark = pytest.mark.idp

T0 = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)
PERIOD = {
    "since": T0.strftime("%Y-%m-%dT%H:%M:%SZ"),
    "until": (T0 + timedelta(hours=24)).strftime("%Y-%m-%dT%H:%M:%SZ"),
}
URL = "/api/v1/reports/usage"


@pytest.fixture(scope="module")
def low_idp() -> Iterator[Any]:
    handle, _app = start_dev_idp(environment="testing", users=(*DEMO_USERS, *LOW_CLEARANCE_USERS))
    yield handle
    handle.stop()


@pytest.fixture
def app(tmp_path: Path, low_idp: Any) -> Iterator[Flask]:
    app = make_app(tmp_path, low_idp.url)
    yield app
    app.extensions["sovereign"].close()


@pytest.fixture
def countries(app: Flask) -> dict[str, str]:
    return record_history(app.extensions["sovereign"].uow, T0)


Call = Callable[..., Any]


@pytest.fixture
def call(app: Flask, low_idp: Any) -> Call:
    client: FlaskClient = app.test_client()
    tokens: dict[str, str] = {}

    def do(user: str | None, query: dict[str, str] | None = None) -> Any:
        headers = {}
        if user:
            if user not in tokens:
                tokens[user] = password_token(low_idp.url, user, DEMO_PASSWORD)
            headers["Authorization"] = f"Bearer {tokens[user]}"
        return client.get(URL, query_string=query or {}, headers=headers)

    return do


def report(call: Call, user: str, **query: str) -> r.UsageReportOut:
    got = call(user, {**PERIOD, **query})
    assert got.status_code == 200, got.get_data(as_text=True)
    return r.UsageReportOut.model_validate(got.get_json())


def problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    return dict(response.get_json())


def test_officers_and_auditors_read_usage_up_to_their_clearance(
    call: Call, countries: dict[str, str]
):
    es, pt = countries["mad-open"], countries["lis-open"]
    full = report(call, "auditor", by="tenant")
    assert full.gpu_hours == 57.0
    assert [t.key for t in full.totals] == ["defence", "research"]
    assert report(call, "officer-1").gpu_hours == 57.0
    # Cleared for UNCLASSIFIED only: the SECRET enclave changes no figure and names no tenant.
    low = report(call, "auditor-low", by="tenant")
    assert low.gpu_hours == 33.0
    assert {row.tenant for row in low.rows} == {"research"}
    assert [(t.key, t.gpu_hours, t.enclaves) for t in low.totals] == [("research", 33.0, 3)]
    if es != pt:  # hosts record their country
        assert [(row.country, row.gpu_hours) for row in low.rows] == [("ES", 28.0), ("PT", 5.0)]
    clipped = report(call, "auditor", since=(T0 + timedelta(hours=4)).isoformat())
    assert clipped.gpu_hours == 13.0
    assert report(call, "auditor", tenant="defence").gpu_hours == 24.0


def test_other_roles_and_bad_input_get_problems(call: Call, countries: dict[str, str]):
    problem(call(None), 401)
    for user in ("analyst-defence", "operator"):
        problem(call(user), 403)
    problem(call("auditor", {"by": "site"}), 422)
    problem(call("auditor", {"since": "2026-01-01"}), 422)
    problem(call("auditor", {"tenant": "../x"}), 422)
    problem(
        call("auditor", {"until": "2026-01-01T00:00:00Z", "since": "2026-02-01T00:00:00Z"}), 422
    )
    problem(call("auditor", {"nope": "1"}), 422)


def test_each_report_and_refusal_is_an_event(app: Flask, call: Call, countries: dict[str, str]):
    report(call, "auditor-low", tenant="research")
    problem(call("operator"), 403)
    services = app.extensions["sovereign"]
    services.sequencer.sequence()
    with services.uow(readonly=True) as u:
        found = u.audit.query(AuditQuery(action="report:usage", ascending=True, limit=10))
    assert [(e.event.actor, e.event.outcome.value) for e in found] == [
        ("user:auditor-low", "allow"),
        ("user:operator", "deny"),
    ]
    details = found[0].event.details
    assert details["tenant"] == "research"
    assert details["by"] == "country"
    assert "gpu_hours" not in details
