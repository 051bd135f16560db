"""``sovereign report usage`` against a real SQLite database: the table, JSON, the period, the
tenant filter, bad input, and the ``report:usage`` event it leaves in the log."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

from audit import AuditQuery
from sovereign.cli import main
from tests.support.apps import make_app
from tests.support.usage import HISTORY, record_history

pytestmark = pytest.mark.idp

T0 = (datetime.now(UTC) - timedelta(days=2)).replace(minute=0, second=0, microsecond=0)


def _typed(when: datetime) -> str:
    """A time as typed on the command line (read as UTC)."""
    return when.strftime("%Y-%m-%dT%H:%M:%S")


SINCE, UNTIL = _typed(T0), _typed(T0 + timedelta(hours=24))


@pytest.fixture
def app(tmp_path: Path, idp: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    app = make_app(tmp_path, idp.url)
    for key, value in {
        "SOVEREIGN_INSTANCE_PATH": str(tmp_path),
        "SOVEREIGN_ENV": "testing",
        "SOVEREIGN_IDP_URL": idp.url,
        "SOVEREIGN_DATABASE_URL": f"sqlite:///{tmp_path / 'sovereign.db'}",
        "SOVEREIGN_AUDIT_SIGNING_KEY": str(tmp_path / "audit.key"),
        "SOVEREIGN_AUDIT_WITNESS_PATH": str(tmp_path / "witness.jsonl"),
    }.items():
        monkeypatch.setenv(key, value)
    yield app
    app.extensions["sovereign"].close()


def usage(*args: str) -> Any:
    return CliRunner().invoke(main, ["report", "usage", *args])


def expected(countries: dict[str, str]) -> dict[tuple[str, str], tuple[float, int]]:
    """GPU hours and enclaves of the whole history by (tenant, country as stored)."""
    found: dict[tuple[str, str], tuple[float, int]] = {}
    for used in HISTORY:
        key = (used.tenant, countries[used.host])
        hours, count = found.get(key, (0.0, 0))
        assert used.end is not None
        found[key] = (hours + used.gpus * (used.end - used.start), count + 1)
    return found


def test_usage_as_a_table_and_as_json(app: Flask):
    countries = record_history(app.extensions["sovereign"].uow, T0)
    want = expected(countries)
    result = usage("--since", SINCE, "--until", UNTIL, "--by", "tenant")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == f"GPU usage from {SINCE}Z to {UNTIL}Z, by tenant"
    # The table runs to the first blank line (the parity shares follow it).
    table = lines[3 : lines.index("", 3) if "" in lines[3:] else None]
    rows = {tuple(line.split()[:2]): line.split()[2:] for line in table if line.strip()}
    for (tenant, country), (hours, count) in want.items():
        assert rows[(tenant, country or "-")] == [f"{hours:.2f}", str(count)]
    assert rows[("all", "57.00")] == []  # the command line counts every label: 33 + 24
    data = json.loads(usage("--since", SINCE, "--until", UNTIL, "--json").output)
    assert data["by"] == "country"
    assert (data["since"], data["until"]) == (f"{SINCE}Z", f"{UNTIL}Z")
    assert data["gpu_hours"] == 57.0
    got = {(r["tenant"], r["country"]): (r["gpu_hours"], r["enclaves"]) for r in data["rows"]}
    assert got == want


def test_the_period_and_tenant_filter_clip(app: Flask):
    record_history(app.extensions["sovereign"].uow, T0)
    later = _typed(T0 + timedelta(hours=4))
    result = usage("--since", later, "--tenant", "research", "--json")
    assert result.exit_code == 0, result.output
    # Spain: 2 GPUs for the last 6 of their 10 h (the 4-GPU enclave ended at 4 h: out);
    # Portugal: 1 GPU for the last hour of 5.
    data = json.loads(result.output)
    assert data["gpu_hours"] == 13.0
    assert {r["tenant"] for r in data["rows"]} == {"research"}
    empty = usage("--until", _typed(T0 - timedelta(days=1)))
    assert empty.exit_code == 0, empty.output
    assert "(no enclave in the period)" in empty.output


def test_bad_periods_are_refused_and_every_report_is_an_event(app: Flask):
    bad = usage("--since", UNTIL, "--until", SINCE)
    assert bad.exit_code == 2
    assert "since must not be after until" in bad.output
    assert usage("--by", "site").exit_code == 2  # click refuses it before anything runs
    assert usage("--tenant", "research").exit_code == 0
    assert CliRunner().invoke(main, ["audit", "sequence"]).exit_code == 0
    with app.extensions["sovereign"].uow(readonly=True) as u:
        found = u.audit.query(AuditQuery(action="report:usage", ascending=True, limit=10))
    assert [(e.event.actor, e.event.outcome.value) for e in found] == [
        ("system:cli", "deny"),
        ("system:cli", "allow"),
    ]
    assert found[1].event.details["tenant"] == "research"
