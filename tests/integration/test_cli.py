"""The ``sovereign`` CLI: migrations and bootstrap against a real SQLite database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

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
