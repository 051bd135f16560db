"""Migration 0011 keeps an existing audit log whole: rows, tree, checkpoints, queue, triggers.

A log is written at revision 0010 as the sequencer of that version wrote it (leaves with their
filter columns, every completed node, a signed checkpoint) with a few events still queued (no
filter columns then); after the upgrade every row is unchanged, the tables are still
append-only, the queued events are sequenced (their columns read out of the entry), new
appends extend the same tree, and the whole log verifies.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.checkpoint import Checkpoint, sign_checkpoint
from audit.event import AuditEvent, Outcome
from audit.merkle import Frontier, leaf_hashes
from audit.sequencer import Sequencer
from audit.signer import Ed25519Signer
from audit.sql import (
    LOG_COLUMNS,
    SqlAuditStore,
    SqlLogReader,
    audit_log,
    audit_nodes,
    insert_many,
    log_rows,
)
from audit.store import AuditQuery, event_columns
from audit.verify import verify_log
from sovereign.adapters.database import create_engine
from sovereign.adapters.migrations import upgrade
from tests.support.postgres import PgCluster

ORIGIN = "test.sovereign/migration"
BASE_TIME = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
SEQUENCED = 37
QUEUED = 3


def _event(i: int) -> AuditEvent:
    return AuditEvent(
        actor=f"user-{i % 4}",
        action="request:create",
        target=f"target-{i}",
        outcome=Outcome.ALLOW,
        label={"level": "SECRET", "compartments": ["NATO"]} if i % 3 == 0 else None,
        details={"i": i, "note": "çà✓"},
        time=BASE_TIME + timedelta(seconds=i),
    )


def _url(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'old.db'}"
    cluster: PgCluster = request.getfixturevalue("pg")
    return cluster.create_database(f"m_{uuid.uuid4().hex[:12]}")


def _rows(conn: sa.Connection) -> dict[str, list[tuple[Any, ...]]]:
    order = {"audit_log": "seq", "audit_nodes": "level, idx", "audit_checkpoints": "size"}
    return {
        table: [tuple(r) for r in conn.exec_driver_sql(f"SELECT * FROM {table} ORDER BY {key}")]  # noqa: S608
        for table, key in order.items()
    }


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_upgrade_keeps_the_log_and_its_queue(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
):
    url = _url(request, kind, tmp_path)
    upgrade(url, "0010")
    engine = create_engine(url)
    request.addfinalizer(engine.dispose)
    signer = Ed25519Signer.generate(ORIGIN)
    events = [_event(i) for i in range(SEQUENCED + QUEUED)]
    entries = [e.canonical_bytes() for e in events]
    leaves = leaf_hashes(entries[:SEQUENCED])
    frontier = Frontier()
    nodes = frontier.extend(leaves)
    with engine.begin() as conn:
        rows = log_rows(
            conn, 0, entries[:SEQUENCED], leaves, map(event_columns, events[:SEQUENCED])
        )
        insert_many(conn, audit_log, LOG_COLUMNS, rows)
        insert_many(conn, audit_nodes, ("level", "idx", "hash"), nodes)
        note = sign_checkpoint(Checkpoint(ORIGIN, SEQUENCED, frontier.root()), [signer])
        conn.execute(
            sa.text(
                "INSERT INTO audit_checkpoints (size, root_hash, note, signed_at) "
                "VALUES (:s, :r, :n, :t)"
            ),
            {"s": SEQUENCED, "r": frontier.root(), "n": note, "t": BASE_TIME},
        )
        for entry in entries[SEQUENCED:]:
            conn.execute(sa.text("INSERT INTO audit_pending (entry) VALUES (:e)"), {"e": entry})
    with engine.connect() as conn:
        before = _rows(conn)
    engine.dispose()

    upgrade(url)

    with engine.connect() as conn:
        assert _rows(conn) == before
        assert SqlLogReader(conn).pending() == QUEUED
        if kind == "sqlite":
            plan = conn.exec_driver_sql("EXPLAIN QUERY PLAN SELECT * FROM audit_log WHERE seq = 5")
            assert [r[-1] for r in plan] == ["SEARCH audit_log USING INTEGER PRIMARY KEY (rowid=?)"]
            ddl = conn.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'audit_nodes'"
            ).scalar()
            assert "WITHOUT ROWID" in str(ddl)
    for statement in (
        "UPDATE audit_log SET actor = 'mallory' WHERE seq = 3",
        "DELETE FROM audit_log WHERE seq = 3",
        "UPDATE audit_nodes SET hash = hash",
        "DELETE FROM audit_nodes",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)

    # The queued events join the tree, with their columns read out of the entries.
    sequencer = Sequencer(engine, signer, ORIGIN)
    run = sequencer.run_once()
    assert (run.sequenced, run.size) == (QUEUED, SEQUENCED + QUEUED)
    more = [_event(i) for i in range(100, 105)]
    with engine.begin() as conn:
        SqlAuditStore(conn).append(more)
    total = SEQUENCED + QUEUED + len(more)
    assert sequencer.run_once().size == total
    with engine.connect() as conn:
        report = verify_log(SqlLogReader(conn), [signer.verifier], ORIGIN)
        assert (report.size, report.checkpoints) == (total, 3)
        found = SqlAuditStore(conn).query(AuditQuery(actor="user-2", limit=100))
    everything = events + more
    assert [s.seq for s in found] == [i for i in range(total - 1, -1, -1) if i % 4 == 2]
    assert [s.event for s in found] == [everything[s.seq] for s in found]
