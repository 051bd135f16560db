"""An acknowledged audit event survives ``kill -9``.

A child process appends events through the public API in committed transactions, on an
engine made as the control plane makes it (SQLite: WAL, ``synchronous=FULL``, ``BEGIN
IMMEDIATE``; PostgreSQL: the default durable commit), and prints each event's id once its
commit has returned. The test kills it with SIGKILL mid-stream, reopens the database, and holds
every acknowledged event to being in the log (sequenced on SQLite; queued or sequenced on
PostgreSQL, where the sequencer then runs), and the whole log to verifying.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.sequencer import Sequencer
from audit.signer import Ed25519Signer
from audit.sql import SqlLogReader, audit_log, audit_pending
from audit.verify import verify_log
from sovereign.adapters.database import create_engine
from tests.conftest import make_database

ORIGIN = "test.sovereign/durability"
#: Acknowledged events to wait for before the kill (the child keeps going until killed).
ACKNOWLEDGED = 150
REPO = Path(__file__).resolve().parents[2]

CHILD = textwrap.dedent(
    """
    import sys, uuid
    from audit.event import AuditEvent, Outcome
    from audit.sql import SqlAuditStore
    from sovereign.adapters.database import create_engine

    engine = create_engine(sys.argv[1])
    n = 0
    while True:
        size = 1 + n % 3  # transactions of one to three events
        events = [
            AuditEvent(actor="durability", action="test:append", target=f"t/{n + k}",
                       outcome=Outcome.ALLOW, details={"n": n + k})
            for k in range(size)
        ]
        with engine.begin() as conn:
            SqlAuditStore(conn).append(events)
        # Only now, after the commit returned, is each event acknowledged.
        print(" ".join(str(e.id) for e in events), flush=True)
        n += size
    """
)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_an_acknowledged_event_survives_kill_9(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
):
    url = make_database(request, kind, tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, url],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[str] = []
    try:
        assert child.stdout is not None
        deadline = time.monotonic() + 60
        while len(acknowledged) < ACKNOWLEDGED and time.monotonic() < deadline:
            line = child.stdout.readline()
            if not line:
                break
            acknowledged += line.split()
        # Mid-stream: the child is appending (in the middle of a transaction, likely).
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        # Whatever it printed before dying was acknowledged too.
        acknowledged += child.stdout.read().split()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if child.stdout is not None:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    assert len(acknowledged) >= ACKNOWLEDGED

    engine = create_engine(url)
    request.addfinalizer(engine.dispose)
    signer = Ed25519Signer.generate(ORIGIN)
    with engine.connect() as conn:
        queued = conn.execute(sa.select(sa.func.count()).select_from(audit_pending)).scalar()
    # SQLite sequences in the business transaction: nothing is queued.
    assert queued == 0 or kind != "sqlite"
    run = Sequencer(engine, signer, ORIGIN).run_once()
    with engine.connect() as conn:
        entries = list(conn.execute(sa.select(audit_log.c.entry).order_by(audit_log.c.seq)))
        stored = {json.loads(bytes(row.entry))["id"] for row in entries}
        report = verify_log(SqlLogReader(conn), [signer.verifier], ORIGIN)
    missing = [i for i in acknowledged if i not in stored]
    assert missing == []
    assert report.size == run.size == len(stored)
