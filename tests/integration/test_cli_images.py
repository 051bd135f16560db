"""``sovereign images import``: files into the content-addressed store, the entry into the
catalog, audited ``image:import``; a name never changes its checksum."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from enclaves.imagestore import ImageStore
from sovereign.cli import main
from tests.unit.enclaves.test_imagebuild import qcow2

pytestmark = pytest.mark.idp


@pytest.fixture
def env(tmp_path: Path, idp: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {
        "SOVEREIGN_INSTANCE_PATH": str(tmp_path),
        "SOVEREIGN_ENV": "testing",
        "SOVEREIGN_IDP_URL": idp.url,
    }.items():
        monkeypatch.setenv(key, value)


def test_import_stores_the_files_and_records_the_checksum_once(env: None, tmp_path: Path):
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    disk = qcow2(tmp_path / "guest.qcow2")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd.img"
    kernel.write_bytes(b"kernel bytes")
    initrd.write_bytes(b"initrd bytes")
    argv = ["images", "import", str(disk), "--name", "guest-1", "--max-label", "SECRET:NATO"]
    argv += ["--kernel", str(kernel), "--initrd", str(initrd)]
    result = runner.invoke(main, argv)
    assert result.exit_code == 0, result.output
    assert "imported guest-1 (sha256:" in result.output

    assert runner.invoke(main, ["audit", "sequence"]).exit_code == 0
    db = sqlite3.connect(tmp_path / "sovereign.db")
    (checksum,) = db.execute("SELECT checksum FROM images WHERE name = 'guest-1'").fetchone()
    entries = [
        (action, bytes(entry).decode())
        for action, entry in db.execute("SELECT action, entry FROM audit_log")
    ]
    db.close()
    assert [a for a, e in entries if a == "image:import" and checksum in e] == ["image:import"]
    stored = ImageStore(tmp_path / "images").get(checksum)
    assert stored.disk.path.read_bytes() == disk.read_bytes()
    assert stored.kernel is not None
    assert stored.kernel.path.read_bytes() == b"kernel bytes"
    assert stored.cmdline == "root=/dev/vda rw console=ttyS0"

    again = runner.invoke(main, argv)
    assert again.exit_code == 0, again.output
    other = qcow2(tmp_path / "other.qcow2", virtual_size=2 << 30)
    changed = runner.invoke(
        main, ["images", "import", str(other), "--name", "guest-1", "--max-label", "SECRET"]
    )
    assert changed.exit_code == 2
    assert "exists with checksum" in changed.output


def test_import_refuses_a_qcow2_with_a_backing_file(env: None, tmp_path: Path):
    runner = CliRunner()
    assert runner.invoke(main, ["db", "upgrade"]).exit_code == 0
    disk = qcow2(tmp_path / "guest.qcow2", backing=True)
    result = runner.invoke(
        main, ["images", "import", str(disk), "--name", "evil", "--max-label", "SECRET"]
    )
    assert result.exit_code == 2
    assert "backing file" in result.output
