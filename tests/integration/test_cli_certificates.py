"""``sovereign audit certificate HOST/ADDRESS``: the latest hand-over certificate of a GPU and
its inclusion proof, verified offline by ``sovereign audit verify-proof`` as any other event,
against a real SQLite database and audit log and the libvirt test driver's bundled host."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from flask import Flask

from enclaves.hosts import bundled_host_uri
from sovereign import create_app
from sovereign.cli import main
from tests.support.handover import handed_over

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]

GPU = "secret-1/0000:18:00.0"
SECRET_NATO = {"level": "SECRET", "compartments": ["NATO"]}


@pytest.fixture
def app(tmp_path: Path, idp: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    for key, value in {
        "SOVEREIGN_INSTANCE_PATH": str(tmp_path),
        "SOVEREIGN_ENV": "testing",
        "SOVEREIGN_IDP_URL": idp.url,
    }.items():
        monkeypatch.setenv(key, value)
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    site = ["sites", "add", "hall-a", "--country", "ES", "--operator", "Hall A operator"]
    assert runner.invoke(main, site).exit_code == 0
    added = runner.invoke(
        main,
        [
            "hosts",
            "add",
            bundled_host_uri("secret-h100x8"),
            "--name",
            "secret-1",
            "--site",
            "hall-a",
            "--accreditation",
            "SECRET:CRYPTO,EU,NATO",
        ],
    )
    assert added.exit_code == 0, added.output
    app = create_app()
    yield app
    app.extensions["sovereign"].close()


def test_the_latest_certificate_and_a_proof_that_verifies_offline(app: Flask, tmp_path: Path):
    services = app.extensions["sovereign"]
    handed_over(services, "secret-1", "0000:18:00.0")
    latest = handed_over(services, "secret-1", "0000:18:00.0", label=SECRET_NATO, mismatches=8)
    handed_over(services, "secret-1", "0000:2a:00.0")  # another GPU's, newer
    runner = CliRunner()
    proof = tmp_path / "cert.proof"

    shown = runner.invoke(main, ["audit", "certificate", GPU, "--out", str(proof)])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.stdout) == latest
    assert latest["verdict"] == "failed" and latest["previous_label"] == "SECRET//NATO"
    assert "verdict failed, the GPU went quarantined" in shown.stderr

    key = runner.invoke(main, ["audit", "public-key"]).output.strip()
    verified = runner.invoke(main, ["audit", "verify-proof", str(proof), "--key", key])
    assert verified.exit_code == 0, verified.output
    assert verified.output.startswith("proof verifies: event ")
    entry = json.loads(verified.output.splitlines()[1])
    assert entry["action"] == "gpu:handover"
    assert entry["target"] == "gpu/secret-1/0000:18:00.0"
    assert entry["details"]["certificate"] == latest

    # Without --out the proof follows the certificate on stdout: the same proof.
    both = runner.invoke(main, ["audit", "certificate", GPU])
    assert both.exit_code == 0, both.output
    document, _, rest = both.stdout.partition("\n\n")
    assert json.loads(document) == latest
    assert rest == proof.read_text()

    # A tampered certificate in the proof no longer verifies.
    text = proof.read_text()
    lines = text.splitlines(keepends=True)
    lines[1] = lines[1][:-6] + ("A" if lines[1][-6] != "A" else "B") + lines[1][-5:]
    proof.write_text("".join(lines))
    broken = runner.invoke(main, ["audit", "verify-proof", str(proof), "--key", key])
    assert broken.exit_code == 1


@pytest.mark.parametrize(
    "argument",
    [
        "secret-1",
        "secret-1/",
        "/0000:18:00.0",
        "secret-1/0000:18:00",
        "secret-1/0000:18:00.0/x",
        "secret-1/../../etc/passwd",
        "-x/0000:18:00.0",
        "secret-1/0000:18:00.0\n",
        "a" * 65 + "/0000:18:00.0",
    ],
)
def test_what_is_not_host_slash_address_is_refused_clearly(app: Flask, argument: str):
    result = CliRunner().invoke(main, ["audit", "certificate", "--", argument])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output
    assert "e.g. secret-h100x8/0000:18:00.0" in result.output
    assert "Traceback" not in result.output


def test_a_gpu_without_a_certificate_says_so(app: Flask):
    result = CliRunner().invoke(main, ["audit", "certificate", "secret-1/0000:99:00.0"])
    assert result.exit_code == 1
    assert "no hand-over certificate of secret-1/0000:99:00.0" in result.output


def test_a_certificate_of_the_reconcilers_own_hand_over_verifies(app: Flask, tmp_path: Path):
    """What `make run` does: a test-driver GPU handed over by the reconciler (the scrub program
    on simulated device memory), its certificate and proof from the command line."""
    services = app.extensions["sovereign"]
    reconciler = services.reconciler(worker="cli")
    for _ in range(20):
        if not reconciler.run_once().busy:
            break
    runner = CliRunner()
    assert runner.invoke(main, ["audit", "sequence"]).exit_code == 0
    proof = tmp_path / "gpu.proof"
    shown = runner.invoke(main, ["audit", "certificate", GPU, "--out", str(proof)])
    assert shown.exit_code == 0, shown.output
    cert = json.loads(shown.stdout)
    assert cert["verdict"] == "clean" and cert["simulated"] is True
    assert cert["host"] == "secret-1" and cert["gpu"]["address"] == "0000:18:00.0"
    assert cert["scrub"]["coverage"] >= 0.99
    key = runner.invoke(main, ["audit", "public-key"]).output.strip()
    verified = runner.invoke(main, ["audit", "verify-proof", str(proof), "--key", key])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.output.splitlines()[1])["details"]["certificate"] == cert
