"""The ``sovereign`` CLI: migrations and bootstrap against a real SQLite database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from audit.signer import Ed25519Signer
from sovereign.adapters.migrations import head_revision
from sovereign.cli import main

pytestmark = pytest.mark.idp


@pytest.fixture
def env(tmp_path: Path, idp: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    values = {
        "SOVEREIGN_INSTANCE_PATH": str(tmp_path),
        "SOVEREIGN_ENV": "testing",
        "SOVEREIGN_IDP_URL": idp.url,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_db_upgrade_current_and_bootstrap(env: dict[str, str], tmp_path: Path):
    runner = CliRunner()
    result = runner.invoke(main, ["db", "current"])
    assert "current: None" in result.output
    result = runner.invoke(main, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert "is at head" in result.output
    result = runner.invoke(main, ["db", "current"])
    head = head_revision("sqlite://")
    assert f"current: {head}  head: {head}" in result.output

    definition = tmp_path / "tenants.json"
    definition.write_text(
        json.dumps(
            {
                "tenants": [
                    {
                        "name": "navy",
                        "kind": "classified",
                        "max_label": "SECRET//NATO",
                        "quota": {"vcpus": 8, "memory_mib": 8192, "gpus": 1, "disk_gib": 10},
                    }
                ],
                "images": [],
            }
        )
    )
    first = runner.invoke(main, ["bootstrap", str(definition)])
    assert first.exit_code == 0, first.output
    assert "created 1: tenant/navy" in first.output
    again = runner.invoke(main, ["bootstrap", str(definition)])
    assert "created 0: nothing new" in again.output


def test_bootstrap_reports_bad_files(env: dict[str, str], tmp_path: Path):
    runner = CliRunner()
    runner.invoke(main, ["db", "upgrade"])
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    result = runner.invoke(main, ["bootstrap", str(bad)])
    assert result.exit_code == 2
    assert "not valid JSON" in result.output
    reserved = {"tenants": [{"name": "audit", "kind": "classified", "max_label": "SECRET"}]}
    bad.write_text(json.dumps(reserved))
    result = runner.invoke(main, ["bootstrap", str(bad)])
    assert result.exit_code == 2
    assert "may not be named 'audit'" in result.output
    bad.write_text(
        json.dumps({"tenants": [{"name": "x", "kind": "martian", "max_label": "SECRET"}]})
    )
    result = runner.invoke(main, ["bootstrap", str(bad)])
    assert result.exit_code == 2
    assert "bad tenant definition" in result.output


def test_help_lists_the_commands():
    result = CliRunner().invoke(main, ["--help"])
    for command in ("bootstrap", "db", "dev", "serve"):
        assert command in result.output


def test_auditor_tools(env: dict[str, str], tmp_path: Path):
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    demo = Path(__file__).parents[2] / "sovereign" / "data" / "demo.json"
    assert runner.invoke(main, ["bootstrap", str(demo)]).exit_code == 0
    sequenced = runner.invoke(main, ["audit", "sequence"])
    # SQLite sequences events as they are appended; the run signs the first checkpoint.
    assert "sequenced 0 queued events; log size 4; signed a checkpoint at 4" in sequenced.output

    verified = runner.invoke(main, ["audit", "verify"])
    assert verified.exit_code == 0, verified.output
    assert "audit log intact: 4 events" in verified.output
    assert "1 signed checkpoints and 1 witnessed ones match" in verified.output

    key = runner.invoke(main, ["audit", "public-key"]).output.strip()
    assert key.startswith("sovereign.local/audit+")
    proof = tmp_path / "event-2.proof"
    assert runner.invoke(main, ["audit", "prove", "--seq", "2", "--out", str(proof)]).exit_code == 0
    assert proof.read_text().startswith("c2sp.org/tlog-proof@v1\n")
    ok = runner.invoke(main, ["audit", "verify-proof", str(proof), "--key", key])
    assert ok.exit_code == 0, ok.output
    assert "proof verifies: event 2 is in sovereign.local/audit at size 4" in ok.output
    keyfile = tmp_path / "log.pub"
    keyfile.write_text(key + "\n")
    assert (
        runner.invoke(main, ["audit", "verify-proof", str(proof), "--key", f"@{keyfile}"]).exit_code
        == 0
    )
    stranger = Ed25519Signer.generate("sovereign.local/audit").verifier_key
    bad = runner.invoke(main, ["audit", "verify-proof", str(proof), "--key", stranger])
    assert bad.exit_code == 1
    assert "proof does NOT verify" in bad.output
    proof.write_text(proof.read_text().replace("index 2", "index 3"))
    assert runner.invoke(main, ["audit", "verify-proof", str(proof), "--key", key]).exit_code == 1
    missing = runner.invoke(main, ["audit", "prove", "--seq", "99"])
    assert missing.exit_code == 2

    for fmt, marker in (("jsonl", '"seq":0'), ("cef", "CEF:0|Sovereign|"), ("rfc5424", "<86>1 ")):
        out = tmp_path / f"export.{fmt}"
        result = runner.invoke(main, ["audit", "export", "--format", fmt, "--out", str(out)])
        assert result.exit_code == 0, result.output
        lines = out.read_text().splitlines()
        assert len(lines) == 4
        assert marker in lines[0]
    empty = runner.invoke(main, ["audit", "export", "--since", "2999-01-01"])
    assert "exported 0 events" in empty.output

    # A database owner edits an event behind the triggers' back: verify names it.
    db = sqlite3.connect(tmp_path / "sovereign.db")
    db.execute("DROP TRIGGER audit_log_no_update")
    db.execute("UPDATE audit_log SET entry = replace(entry, 'research', 'r3search') WHERE seq = 0")
    db.commit()
    db.close()
    broken = runner.invoke(main, ["audit", "verify", "--quiet"])
    assert broken.exit_code == 1
    assert "NOT intact (first bad index 0)" in broken.output


@pytest.mark.libvirt
def test_hosts_add_refuses_a_command_uri_and_a_second_registration(
    env: dict[str, str], tmp_path: Path
):
    """``sovereign hosts add`` checks the URI before libvirt sees it, and registers one machine
    once (issue 10, items 1 and 2)."""
    from enclaves.hosts import bundled_host_uri

    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\n")
    script.chmod(0o755)
    common = ["--site", "hall-a", "--accreditation", "SECRET:NATO"]
    unknown = runner.invoke(
        main, ["hosts", "add", bundled_host_uri("secret-h100x8"), "--name", "secret-1", *common]
    )
    assert unknown.exit_code == 2
    assert "unknown site 'hall-a'" in unknown.output
    site = ["sites", "add", "hall-a", "--country", "ES", "--operator", "Hall A operator"]
    assert runner.invoke(main, site).exit_code == 0
    refused = runner.invoke(
        main, ["hosts", "add", f"qemu+ext:///system?command={script}", "--name", "x", *common]
    )
    assert refused.exit_code == 2
    assert "runs a program" in refused.output
    assert not marker.exists()
    uri = bundled_host_uri("secret-h100x8")
    added = runner.invoke(main, ["hosts", "add", uri, "--name", "secret-1", *common])
    assert added.exit_code == 0, added.output
    assert "hypervisor 5d3c9a4e-7f21-4c8b-9e0a-1b2c3d4e5f60" in added.output
    alias = uri.replace("/hosts/", "/hosts/./")
    again = runner.invoke(main, ["hosts", "add", alias, "--name", "secret-2", *common])
    assert again.exit_code == 2
    assert "exists" in again.output
    assert "at hall-a (ES)" in added.output
    listed = runner.invoke(main, ["hosts", "list"]).output.splitlines()
    assert listed[0].split()[4] == "COUNTRY" and listed[1].split()[:5] == [
        "secret-1",
        "active",
        "SECRET//NATO",
        "hall-a",
        "ES",
    ]


def test_sites_add_and_list(env: dict[str, str]):
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    made = runner.invoke(
        main, ["sites", "add", "pt-lis-1", "--country", "PT", "--operator", "Lisboa (demo)"]
    )
    assert made.exit_code == 0, made.output
    assert made.output.strip() == "added site pt-lis-1 in PT, run by Lisboa (demo)"
    for bad, message in (
        (["pt-lis-1", "--country", "PT"], "exists"),
        (["pt-lis-2", "--country", "pt"], "unknown country 'pt'"),
        (["PT LIS", "--country", "PT"], "invalid site name"),
    ):
        refused = runner.invoke(main, ["sites", "add", *bad, "--operator", "x"])
        assert refused.exit_code == 2 and message in refused.output, refused.output
    listed = runner.invoke(main, ["sites", "list"]).output.splitlines()
    assert listed[0].split() == ["NAME", "COUNTRY", "OPERATOR"]
    assert listed[1:] == [f"{'pt-lis-1':<18} {'PT':<8} Lisboa (demo)"]
