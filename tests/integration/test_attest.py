"""``audit attest`` over a real SQLite log written by the real services, sequenced and signed
by the real sequencer: the claims hold over an honest history, an injected violation is found
and named by its seq, a tampered log fails completeness, auditors see only their clearance,
and the signed report opens offline under the log's key."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from audit import AuditEvent, AuditQuery, Outcome
from audit.note import parse_verifier_key
from audit.sql import SqlAuditStore
from sovereign import config as configuration
from sovereign.adapters.migrations import upgrade
from sovereign.bootstrap import build_attestation
from sovereign.cli import main
from sovereign.domain.identity import Role
from sovereign.errors import InvalidInputError, PolicyDeniedError
from sovereign.services.attestation.report import open_report
from sovereign.services.attestation.service import AttestationService
from sovereign.services.recording import utcnow
from tests.support.apps import make_app
from tests.support.audit import stored
from tests.support.factories import AUDITOR, OFFICER_1, OFFICER_2, ctx, principal
from tests.support.fleet import SYSTEM, Fleet, make_fleet
from tests.support.tamper import change_one_byte, drop_append_only_triggers, row_of, set_entry
from tests.unit.attestation.history import good_history


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    url = f"sqlite:///{tmp_path / 'attest.db'}"
    upgrade(url)
    made = make_fleet(url, folder=tmp_path, clock=utcnow)
    yield made
    made.services.close()


def _claims(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["id"]: c for c in report["claims"]}


def _lifecycle(fleet: Fleet) -> uuid.UUID:
    """A SECRET enclave runs and ends, a second one reuses its GPUs (handed over in between),
    a civilian one runs, and a kill switch is proposed and confirmed by two officers."""
    first = fleet.request(gpus=8)
    fleet.settle()
    fleet.services.enclaves.terminate(ctx(OFFICER_1), first, "done")
    fleet.settle()
    second = fleet.request(gpus=8)
    fleet.request({"level": "UNCLASSIFIED", "compartments": []}, gpus=1, civilian=True)
    fleet.settle()
    label = fleet.services.scheme.parse({"level": "SECRET", "compartments": ["NATO"]})
    result = fleet.services.enclaves.kill_switch(
        ctx(OFFICER_1), label=label, tenant=None, reason="drill"
    )
    assert result.proposal is not None
    fleet.services.actions.confirm(ctx(OFFICER_2), result.proposal.id)
    fleet.settle()
    assert fleet.state(second) == "terminated"
    fleet.services.audit.log.sequence()
    return first


def _append(fleet: Fleet, *events: AuditEvent) -> None:
    with fleet.services.uow() as uow:
        uow.audit.append(events)
        uow.commit()
    fleet.services.audit.log.sequence()


def test_the_services_own_history_attests(fleet: Fleet) -> None:
    _lifecycle(fleet)
    report, note = fleet.services.attestation.attest(SYSTEM, None, None)
    claims = _claims(report)
    for claim in claims.values():
        assert claim["verdict"] == "holds", claim
        assert claim["checked"] > 0, claim
    assert claims["gpu-handover"]["checked"] == 8
    # Three placements (two SECRET on one host, one civilian) and their three keys.
    assert claims["residency"]["checked"] == 6
    # The control plane's own configuration facts, signed with the claims.
    assert report["facts"]["two_person_level"] == "CONFIDENTIAL"
    assert report["facts"]["sites_countries"] == sorted(
        {site.country for site in fleet.services.sites.list(SYSTEM)}
    )
    assert [c["letter"] for c in report["claims"]] == list("abcdef")
    assert report["scope"]["source"] == "live"
    assert report["scope"]["clearance"] is None
    keys = [parse_verifier_key(k) for k in fleet.services.audit.public_keys()]
    assert open_report(note, keys) == report
    assert "audit:attest" in fleet.actions("audit:")
    # Each decider's clearance is recorded as far as the event's label reaches, never above:
    # the officers (SECRET//CRYPTO/EU/NATO) appear as SECRET//NATO on SECRET//NATO approvals.
    decided = fleet.services.audit.log.events(AuditQuery(action="request:approve"))
    assert decided
    for approval in decided:
        assert approval.event.details["clearance"] == approval.event.label


def test_an_injected_violation_is_found_with_its_seq(fleet: Fleet) -> None:
    first = _lifecycle(fleet)
    forged = AuditEvent(
        actor="system:reconciler",
        action="enclave:terminated",
        target=f"enclave/{uuid.uuid4()}",
        outcome=Outcome.ALLOW,
        details={"host": "secret-1"},
    )
    _append(fleet, forged)
    seq = next(s.seq for s in fleet.services.audit.log.events(_query()) if s.event.id == forged.id)
    report, _ = fleet.services.attestation.attest(SYSTEM, None, None)
    erase = _claims(report)["crypto-erase"]
    assert erase["verdict"] == "violated"
    assert [v["seqs"] for v in erase["violations"]] == [[seq]]
    assert report["verdict"] == "violated"
    assert str(first) not in erase["violations"][0]["message"]


def _query() -> AuditQuery:
    return AuditQuery(limit=100_000)


def test_a_tampered_log_fails_completeness(fleet: Fleet, tmp_path: Path) -> None:
    _lifecycle(fleet)
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'attest.db'}")
    with engine.begin() as conn:
        drop_append_only_triggers(conn)
        entry = row_of(conn, 3)["entry"]
        set_entry(conn, 3, change_one_byte(entry), rehash=False)
    engine.dispose()
    report, _ = fleet.services.attestation.attest(SYSTEM, None, None)
    complete = _claims(report)["completeness"]
    assert complete["verdict"] == "violated"
    assert "does not verify" in complete["violations"][0]["message"]


@dataclass
class BareLog:
    """A migrated SQLite database holding only the events a test writes, and the attestation
    service the command line builds for it (real sequencer, real file signer)."""

    engine: sa.Engine
    service: AttestationService

    def append(self, *events: AuditEvent) -> list[int]:
        """Queue, sequence and sign ``events``; their seqs."""
        with self.engine.begin() as conn:
            SqlAuditStore(conn).append(events)
        self.service.log.sequence()
        ids = {e.id for e in events}
        found = self.service.log.events(AuditQuery(limit=100_000, ascending=True))
        return [s.seq for s in found if s.event.id in ids]


@pytest.fixture
def bare(tmp_path: Path) -> Iterator[BareLog]:
    url = f"sqlite:///{tmp_path / 'bare.db'}"
    upgrade(url)
    app = configuration.new_app()
    configuration.load(
        app,
        {
            "ENV": "testing",
            "DATABASE_URL": url,
            "AUDIT_SIGNING_KEY": str(tmp_path / "audit.key"),
            "AUDIT_WITNESS_PATH": str(tmp_path / "witness.jsonl"),
        },
        check=False,
    )
    engine = sa.create_engine(url)
    yield BareLog(engine, build_attestation(app.config))
    engine.dispose()


def test_residency_and_co_residency_over_events_written_to_the_real_log(bare: BareLog) -> None:
    """The placement details the sites and residency services add, written as those services
    will write them: both claims hold, and a placement outside its residency is found."""
    history = good_history()
    bare.append(*(s.event for s in history.events))
    report, _ = bare.service.attest(SYSTEM, None, None)
    assert report["verdict"] == "holds", [c for c in report["claims"] if c["violations"]]
    claims = _claims(report)
    assert claims["co-residency"]["checked"] == 2
    assert claims["residency"]["checked"] == 4
    outside = AuditEvent(
        actor="system:reconciler",
        action="enclave:place",
        target=f"enclave/{uuid.uuid4()}",
        outcome=Outcome.ALLOW,
        details={
            "host": "lis-1",
            "gpus": ["0000:99:00.0"],
            "label": {"level": "SECRET", "compartments": []},
            "classified": True,
            "tenant": "defence",
            "country": "PT",
        },
        time=history.events[-1].event.time,
    )
    [seq] = bare.append(outside)
    report, _ = bare.service.attest(SYSTEM, None, None)
    [violation] = _claims(report)["residency"]["violations"]
    assert seq in violation["seqs"]
    assert "outside its residency ES" in violation["message"]
    assert report["verdict"] == "violated"


def test_auditors_only_and_scoped_to_their_clearance(fleet: Fleet) -> None:
    _lifecycle(fleet)
    with pytest.raises(PolicyDeniedError):
        fleet.services.attestation.attest(ctx(OFFICER_1), None, None)
    low = principal("auditor-low", Role.AUDITOR, level="UNCLASSIFIED", compartments=())
    report, _ = fleet.services.attestation.attest(ctx(low), None, None)
    assert report["scope"]["clearance"] == {"level": "UNCLASSIFIED", "compartments": []}
    claims = _claims(report)
    # The SECRET enclaves are neither counted nor named: only the civilian approval is.
    assert claims["two-person"]["checked"] == 1
    full, _ = fleet.services.attestation.attest(ctx(AUDITOR), None, None)
    assert full["scope"]["events"] > report["scope"]["events"]
    assert _claims(full)["two-person"]["checked"] > 0
    # Each run is recorded at the clearance it was scoped to: the low auditor's figures are
    # for anyone cleared for UNCLASSIFIED, the full one's only for auditors cleared as high.
    fleet.services.audit.log.sequence()
    found = fleet.services.audit.log.events(AuditQuery(action="audit:attest"))
    runs = [s.event for s in sorted(found, key=lambda s: s.seq) if s.event.outcome is Outcome.ALLOW]
    assert [run.label for run in runs] == [
        {"level": "UNCLASSIFIED", "compartments": []},
        AUDITOR.clearance.to_dict(),
    ]
    with pytest.raises(InvalidInputError):
        fleet.services.attestation.attest(ctx(AUDITOR), utcnow(), utcnow().replace(year=2020))
    # A period ending in the future is attested up to now, never beyond.
    before = utcnow()
    future, _ = fleet.services.attestation.attest(ctx(AUDITOR), None, utcnow().replace(year=2099))
    until = datetime.fromisoformat(future["period"]["until"].replace("Z", "+00:00"))
    assert before <= until <= utcnow()


# -- the command line ------------------------------------------------------------------------


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An instance folder whose database holds the consistent history, sequenced."""
    monkeypatch.setenv("SOVEREIGN_INSTANCE_PATH", str(tmp_path))
    monkeypatch.setenv("SOVEREIGN_ENV", "testing")
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'sovereign.db'}")
    with engine.begin() as conn:
        SqlAuditStore(conn).append(s.event for s in good_history().events)
    engine.dispose()
    assert runner.invoke(main, ["audit", "sequence"]).exit_code == 0
    (tmp_path / "log.pub").write_text(runner.invoke(main, ["audit", "public-key"]).output)
    return tmp_path


def test_cli_attests_live_and_the_signed_report_verifies_offline(instance: Path) -> None:
    runner = CliRunner()
    note = instance / "report.note"
    result = runner.invoke(main, ["audit", "attest", "--out", str(note)])
    assert result.exit_code == 0, result.output
    assert "attestation of sovereign.local/audit: HOLDS" in result.output
    assert "(e) Data residency: holds (4 checked)" in result.output
    key = f"@{instance / 'log.pub'}"
    args = ["audit", "verify-attestation", str(note), "--key", key]
    checked = runner.invoke(main, [*args, "--json"])
    assert checked.exit_code == 0, checked.output
    assert "attestation verifies" in checked.output
    # Read against a framework's controls, and as a page, from the signed report alone.
    page = instance / "report.html"
    ens = runner.invoke(main, [*args, "--framework", "ens-high", "--html", str(page)])
    assert ens.exit_code == 0, ens.output
    assert re.search(r"^op\.nub\.1 +\[evidenced\]", ens.output, re.M)
    assert re.search(r"^op\.acc\.6 +\[declaration needed\]", ens.output, re.M)
    html = page.read_text()
    assert html.startswith("<!doctype html>") and 'id="framework-ens-high"' in html
    every = json.loads(runner.invoke(main, [*args, "--framework", "all", "--json"]).stdout)
    assert sorted(every["frameworks"]) == ["c5", "ens-high", "secnumcloud"]
    assert {v["id"] for v in every["frameworks"]["c5"]} >= {"PSS-12", "OIS-04", "CRY-04"}
    forged = note.read_text().replace('"verdict":"holds"', '"verdict":"violated"', 1)
    note.write_text(forged)
    bad = runner.invoke(main, args)
    assert bad.exit_code == 1
    assert "does NOT verify" in bad.output


def test_cli_attests_offline_from_an_export_and_the_witness(instance: Path) -> None:
    runner = CliRunner()
    export = instance / "export.jsonl"
    assert runner.invoke(main, ["audit", "export", "--out", str(export)]).exit_code == 0
    key = f"@{instance / 'log.pub'}"
    witness = str(instance / "audit-witness.jsonl")
    args = ["audit", "attest", "--export", str(export), "--witness", witness, "--key", key]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["scope"]["source"] == "export"
    assert report["verdict"] == "holds"
    # One changed event in the export: the rebuilt tree no longer matches the witness.
    lines = export.read_text().splitlines()
    lines[5] = lines[5].replace('"outcome":"allow"', '"outcome":"deny"')
    export.write_text("\n".join(lines) + "\n")
    tampered = runner.invoke(main, args)
    assert tampered.exit_code == 1
    assert "(f) Complete, intact log: violated" in tampered.output
    assert "event 5 does not match its stored leaf hash" in tampered.output
    assert runner.invoke(main, ["audit", "attest", "--export", str(export)]).exit_code == 2


# -- the API ---------------------------------------------------------------------------------


@pytest.mark.idp
def test_api_attestation_for_auditors(tmp_path: Path, idp: Any, token: Any) -> None:
    app = make_app(tmp_path, idp.url)
    client = app.test_client()
    try:

        def get(user: str, path: str) -> Any:
            app.extensions["sovereign"].audit.log.sequence()
            return client.get(path, headers={"Authorization": f"Bearer {token(user)}"})

        answer = get("auditor", "/api/v1/audit/attestation")
        assert answer.status_code == 200, answer.get_data(as_text=True)
        body = answer.get_json()
        report = body["report"]
        assert report["type"] == "sovereign-attestation/v1"
        assert report["scope"]["clearance"]["level"] == "SECRET"
        assert [c["id"] for c in report["claims"]][-1] == "completeness"
        keys = [parse_verifier_key(k) for k in client.get("/api/v1/audit/public-key").text.split()]
        assert open_report(body["note"], keys) == report
        note = get("auditor", "/api/v1/audit/attestation/note?since=2026-01-01T00:00:00Z")
        assert note.mimetype == "text/plain"
        assert open_report(note.get_data(as_text=True), keys)["period"]["since"] == (
            "2026-01-01T00:00:00Z"
        )
        for user in ("officer-1", "analyst-defence", "operator"):
            assert get(user, "/api/v1/audit/attestation").status_code == 403
        bad = get(
            "auditor",
            "/api/v1/audit/attestation?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
        )
        assert bad.status_code in {400, 422}
        assert bad.mimetype == "application/problem+json"
        assert get("auditor", "/api/v1/audit/attestation?since=yesterday").status_code == 422
        actions = [e["action"] for e in stored(app)]
        assert "audit:attest" in actions
        # The auditor's note read offline against a framework says which scope it covers.
        (tmp_path / "report.note").write_text(body["note"])
        (tmp_path / "log.pub").write_text(client.get("/api/v1/audit/public-key").text)
        read = CliRunner().invoke(
            main,
            [
                "audit",
                "verify-attestation",
                str(tmp_path / "report.note"),
                "--key",
                f"@{tmp_path / 'log.pub'}",
                "--framework",
                "c5",
            ],
        )
        assert "the report is scoped to clearance SECRET" in read.output
        assert re.search(r"^PSS-12 +\[", read.output, re.M)
    finally:
        app.extensions["sovereign"].close()
