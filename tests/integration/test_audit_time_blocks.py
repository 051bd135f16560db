"""The block summaries behind time-filtered audit pages, on the real databases.

Event times are only roughly monotone in ``seq``: here they rise with jitter, some events are
stamped well in the past or the future, and the log ends in a block not yet complete. Events
are appended as the control plane appends them (SQLite sequences in the business
transaction; PostgreSQL queues and a sequencer drains), in transactions of many sizes, so
block boundaries fall inside transactions and sequencer batches. Then every stored summary
must be the earliest and latest time of its block, and every time-filtered page (each bound
alone and together, with and without a cursor, either direction) must be exactly what a filter
over every row returns: the summaries may only ever narrow the walk, never hide an event.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import NamedTuple

import pytest
import sqlalchemy as sa

from audit.event import AuditEvent, Outcome
from audit.sequencer import Sequencer
from audit.signer import Ed25519Signer
from audit.sql import (
    LOG_COLUMNS,
    SqlAuditStore,
    SqlLogReader,
    SqlLogSource,
    audit_log,
    audit_time_blocks,
    insert_many,
    log_rows,
)
from audit.store import TIME_BLOCK, AuditQuery, event_columns
from audit.verify import LogVerificationError, verify_log
from sovereign.adapters.database import create_engine
from sovereign.adapters.migrations import upgrade
from tests.conftest import make_database
from tests.support import tamper
from tests.support.postgres import PgCluster

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ORIGIN = "test.sovereign/time-blocks"
BASE_TIME = datetime(2026, 3, 1, tzinfo=UTC)
#: Three complete blocks and a partial one.
EVENTS = 3 * TIME_BLOCK + 300


def _times(rng: random.Random, count: int) -> list[datetime]:
    times = []
    for i in range(count):
        at = BASE_TIME + timedelta(seconds=i, microseconds=rng.randrange(1_000_000))
        roll = rng.random()
        if roll < 0.01:
            at -= timedelta(days=rng.randrange(1, 30))  # stamped long before it was logged
        elif roll < 0.02:
            at += timedelta(hours=rng.randrange(1, 5))  # a clock running ahead
        elif roll < 0.3:
            at -= timedelta(seconds=rng.randrange(600))  # waited for the write lock
        times.append(at)
    return times


def _event(i: int, at: datetime) -> AuditEvent:
    return AuditEvent(
        actor=f"user-{i % 5}",
        action="request:create",
        target=f"target-{i}",
        outcome=Outcome.ALLOW,
        time=at,
    )


def _summaries(conn: sa.Connection) -> list[tuple[int, datetime, datetime]]:
    b = audit_time_blocks
    rows = conn.execute(sa.select(b.c.block, b.c.min_time, b.c.max_time).order_by(b.c.block))
    return [(r.block, _utc(r.min_time), _utc(r.max_time)) for r in rows]


def _expected_summaries(times: list[datetime]) -> list[tuple[int, datetime, datetime]]:
    blocks = len(times) // TIME_BLOCK
    return [
        (k, min(chunk), max(chunk))
        for k in range(blocks)
        for chunk in [times[k * TIME_BLOCK : (k + 1) * TIME_BLOCK]]
    ]


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Appended(NamedTuple):
    engine: sa.Engine
    times: list[datetime]
    signer: Ed25519Signer


@pytest.fixture(params=BACKENDS)
def appended(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Appended]:
    """A log of :data:`EVENTS` events appended in transactions of 1 to 400 events."""
    engine = create_engine(make_database(request, request.param, tmp_path))
    signer = Ed25519Signer.generate(ORIGIN)
    sequencer = Sequencer(engine, signer, ORIGIN, batch=500)
    rng = random.Random(1024)
    times = _times(rng, EVENTS)
    done = 0
    while done < EVENTS:
        size = min(EVENTS - done, rng.choice((1, 3, 17, 250, 400)))
        with engine.begin() as conn:
            SqlAuditStore(conn).append(_event(i, times[i]) for i in range(done, done + size))
        done += size
        if rng.random() < 0.3:
            sequencer.run_once()
    sequencer.run_once()
    yield Appended(engine, times, signer)
    engine.dispose()


def test_every_complete_block_is_summarised_exactly(appended: Appended):
    engine, times, _ = appended
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar() == EVENTS
        assert _summaries(conn) == _expected_summaries(times)


def test_time_filtered_pages_are_exactly_the_matching_events(appended: Appended):
    engine, times, _ = appended
    rng = random.Random(9)
    # Bounds at and around every block edge, before and after everything, and at random.
    edges = [times[min(k * TIME_BLOCK + d, EVENTS - 1)] for k in range(5) for d in (-1, 0, 1)]
    bounds = [
        *edges,
        min(times) - timedelta(seconds=1),
        max(times) + timedelta(seconds=1),
        *(rng.choice(times) for _ in range(12)),
    ]
    checked = 0
    with engine.connect() as conn:
        for since in [None, *bounds[::2]]:
            for until in [None, *bounds[1::2]]:
                if since is None and until is None:
                    continue
                for cursor in (None, EVENTS // 2, 10):
                    for ascending in (False, True):
                        query = AuditQuery(
                            since=since,
                            until=until,
                            before_seq=None if ascending else cursor,
                            after_seq=cursor if ascending else None,
                            ascending=ascending,
                            limit=60,
                        )
                        found = [s.seq for s in SqlAuditStore(conn).query(query)]
                        wanted = [
                            i
                            for i in (range(EVENTS) if ascending else range(EVENTS - 1, -1, -1))
                            if (since is None or times[i] >= since)
                            and (until is None or times[i] < until)
                            and (cursor is None or (i > cursor if ascending else i < cursor))
                        ][:60]
                        assert found == wanted, (since, until, cursor, ascending)
                        checked += bool(wanted)
    assert checked > 500  # most of the combinations match something


def _verify(log: Appended) -> None:
    """Verify in one process, then in two (chunks smaller than a block, so each block's range
    is pieced together from several chunks, some checked by the worker); both must agree."""
    outcomes = []
    for processes in (1, 2):
        with log.engine.connect() as conn:
            try:
                verify_log(
                    SqlLogReader(conn),
                    [log.signer.verifier],
                    ORIGIN,
                    source=SqlLogSource.for_engine(log.engine),
                    processes=processes,
                )
            except LogVerificationError as e:
                outcomes.append(str(e))
            else:
                outcomes.append("intact")
    assert outcomes[0] == outcomes[1], outcomes
    if outcomes[0] != "intact":
        raise LogVerificationError(outcomes[0])


def test_verify_holds_the_summaries_to_the_events(appended: Appended):
    # A database owner who narrows a summary (or drops one) hides events from time-filtered
    # pages, as rewriting their time column would: whole-log verification must say so.
    _verify(appended)
    b = audit_time_blocks
    late = max(appended.times[TIME_BLOCK : 2 * TIME_BLOCK])
    with appended.engine.begin() as conn:
        tamper.drop_append_only_triggers(conn)
        narrowed = late - timedelta(seconds=1)
        conn.execute(b.update().where(b.c.block == 1).values(max_time=narrowed))
        since = AuditQuery(since=late, before_seq=2 * TIME_BLOCK, limit=TIME_BLOCK)
        assert [s.seq for s in SqlAuditStore(conn).query(since)] == []  # hidden
    with pytest.raises(LogVerificationError, match="time summary of block 1 says"):
        _verify(appended)
    with appended.engine.begin() as conn:
        conn.execute(b.delete().where(b.c.block == 1))
    with pytest.raises(LogVerificationError, match="skip block 1"):
        _verify(appended)
    with appended.engine.begin() as conn:
        _, lo, hi = _expected_summaries(appended.times)[1]
        conn.execute(b.insert().values(block=1, min_time=lo, max_time=hi))  # put back
        conn.execute(b.insert().values(block=3, min_time=late, max_time=late))
    with pytest.raises(LogVerificationError, match="block 3, which the log does not hold whole"):
        _verify(appended)


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_the_migration_summarises_the_log_already_there(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path
):
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        cluster: PgCluster = request.getfixturevalue("pg")
        url = cluster.create_database(f"b_{uuid.uuid4().hex[:12]}")
    upgrade(url, "0012")
    engine = create_engine(url)
    request.addfinalizer(engine.dispose)
    count = 2 * TIME_BLOCK + 7
    times = _times(random.Random(3), count)
    events = [_event(i, at) for i, at in enumerate(times)]
    with engine.begin() as conn:
        entries = [e.canonical_bytes() for e in events]
        rows = log_rows(conn, 0, entries, [bytes(32)] * count, map(event_columns, events))
        insert_many(conn, audit_log, LOG_COLUMNS, rows)
    engine.dispose()

    upgrade(url)

    with engine.connect() as conn:
        assert _summaries(conn) == _expected_summaries(times)
    for statement in (
        "UPDATE audit_time_blocks SET max_time = min_time",
        "DELETE FROM audit_time_blocks WHERE block = 1",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), engine.begin() as conn:
            conn.exec_driver_sql(statement)
