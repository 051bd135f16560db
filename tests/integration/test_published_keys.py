"""The published-keys file: written by an explicit call before each sequencer run, never by a read.

The file lives outside the database so that a database owner cannot slip in a key of their
own; the keys it lists stay verifiable after the signer moves on.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sovereign.adapters.auditlog import SqlAuditLog, file_signer
from sovereign.adapters.database import create_engine
from tests.conftest import make_database

ORIGIN = "test.sovereign/audit-log"


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "keys" / "audit-keys.txt"


def _log(
    tmp_path: Path, keys_file: Path, key: str = "signing.key", url: str | None = None
) -> SqlAuditLog:
    engine = create_engine(url or f"sqlite:///{tmp_path / 'unused.db'}")
    signer = file_signer(ORIGIN, tmp_path / key, create=True)
    return SqlAuditLog(engine, signer, ORIGIN, None, keys_file=keys_file)


def test_reading_the_keys_writes_nothing(tmp_path: Path, keys_file: Path):
    log = _log(tmp_path, keys_file)
    assert len(log.public_keys) == 1
    assert log.verifiers
    assert not keys_file.exists()


def test_publishing_appends_each_new_key_once_and_old_keys_stay_listed(
    tmp_path: Path, keys_file: Path
):
    first = _log(tmp_path, keys_file)
    first.publish_keys()
    first.publish_keys()
    [old] = first.public_keys
    assert keys_file.read_text() == f"{old}\n"

    rotated = _log(tmp_path, keys_file, key="rotated.key")
    [new] = rotated.public_keys[:1]
    assert rotated.public_keys == [new, old], "the current key first, then the published ones"
    rotated.publish_keys()
    assert keys_file.read_text().split() == [old, new]
    assert rotated.public_keys == [new, old]


def test_a_sequencer_run_publishes_the_signing_key_first(
    request: pytest.FixtureRequest, tmp_path: Path, keys_file: Path
):
    log = _log(tmp_path, keys_file, url=make_database(request, "sqlite", tmp_path))
    log.sequence()
    assert keys_file.read_text().split() == log.public_keys
