"""The audit log's query plans: every page the query API reads is an index walk, never a scan.

The log is filled with enough varied events (many actors, actions and targets, times rising
with ``seq``) and analysed, so that each planner chooses as it would on a large production log;
then each query shape :func:`audit.sql.query_statement` builds (each filter, with and without a
``seq < cursor``, with the readers' label filters as residual predicates) is explained:

- an actor, action or target filter walks its ``(column, seq)`` index in ``seq`` order and
  stops after the page: no scan of the table, no sort;
- no filter walks the primary key in ``seq`` order (a scan in SQLite's words, but in
  ``ORDER BY`` order, so it stops after the page);
- a time bound (``since``, ``until`` or both) also walks the primary key in ``seq`` order, but
  from and to the ``seq`` bounds the block summaries give (``audit_time_blocks``, read by
  primary key), so it starts and stops near its matches: never a sort, never the time index.
  PostgreSQL may read an equality filter's few rows through a bitmap of its index and sort
  only those, or walk the primary key for a filter so common that a page comes quickly, when
  its cost model says that is cheaper.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from audit.event import AuditEvent, Outcome
from audit.sql import (
    LOG_COLUMNS,
    audit_log,
    insert_many,
    log_rows,
    query_statement,
    summarise_time_blocks,
    time_param,
)
from audit.store import AuditQuery, event_columns
from sovereign.adapters.database import create_engine
from tests.conftest import make_database

EVENTS = 40_000
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)
MIDDLE = BASE_TIME + timedelta(seconds=EVENTS // 2)
CURSOR = EVENTS * 2 // 3

#: What the API and the services ask for; each is explained with and without a cursor.
SHAPES = {
    "all": AuditQuery(),
    "actor": AuditQuery(actor="user-7"),
    "action": AuditQuery(action="action-3:do"),
    "target": AuditQuery(target="target/42"),
    "action+target": AuditQuery(action="action-3:do", target="target/42"),
    "since": AuditQuery(since=MIDDLE),
    "until": AuditQuery(until=MIDDLE),
    "window": AuditQuery(since=MIDDLE, until=MIDDLE + timedelta(hours=1)),
}
#: Equality filters and the indexes each may walk (both of a pair give seq order).
INDEXED = {
    "actor": ("actor",),
    "action": ("action",),
    "target": ("target",),
    "action+target": ("action", "target"),
}
#: Time-bounded shapes, which the block summaries bound.
TIMED = ("since", "until", "window")


def _events(rng: random.Random, start: int, count: int) -> list[AuditEvent]:
    return [
        AuditEvent(
            actor=f"user-{rng.randrange(300)}",
            action=f"action-{rng.randrange(40)}:do",
            target=f"target/{rng.randrange(5000)}",
            outcome=Outcome.ALLOW,
            label={"level": "SECRET", "compartments": ["NATO"]} if i % 3 == 0 else None,
            time=BASE_TIME + timedelta(seconds=i),
        )
        for i in range(start, start + count)
    ]


def _fill(engine: sa.Engine) -> None:
    """``EVENTS`` rows as the appender writes them (leaf hashes do not matter to a planner)."""
    rng = random.Random(8785)
    with engine.begin() as conn:
        for start in range(0, EVENTS, 5000):
            events = _events(rng, start, 5000)
            entries = [e.canonical_bytes() for e in events]
            leaves = [bytes(32)] * len(entries)
            rows = log_rows(conn, start, entries, leaves, map(event_columns, events))
            insert_many(conn, audit_log, LOG_COLUMNS, rows)
        summarise_time_blocks(conn, 0, EVENTS)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("ANALYZE" if conn.dialect.name == "sqlite" else "VACUUM ANALYZE")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sa.Engine]:
    engine = create_engine(make_database(request, request.param, tmp_path))
    _fill(engine)
    yield engine
    engine.dispose()


def _cases() -> list[tuple[str, AuditQuery]]:
    cases = []
    for name, shape in SHAPES.items():
        # As the API asks: one more than the page, with the reader's label filters.
        query = replace(
            shape, levels=["RESTRICTED", "SECRET"], compartments=frozenset({"NATO"}), limit=51
        )
        cases += [(name, query), (f"{name} cursor", replace(query, before_seq=CURSOR))]
    return cases


def _explain(conn: sa.Connection, query: AuditQuery) -> list[str]:
    sql = str(
        query_statement(query).compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    )
    if conn.dialect.name == "sqlite":
        return [row[-1] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    return [row[0] for row in conn.exec_driver_sql(f"EXPLAIN {sql}")]


def test_every_query_shape_walks_an_index(engine: sa.Engine):
    with engine.connect() as conn:
        for name, query in _cases():
            plan = _explain(conn, query)
            text = "\n".join(plan)
            shape = name.removesuffix(" cursor")
            cursor = name.endswith("cursor")
            if conn.dialect.name == "sqlite":
                _check_sqlite(shape, cursor, plan, text)
            else:
                _check_postgres(shape, text)


def _check_sqlite(shape: str, cursor: bool, plan: list[str], text: str) -> None:
    assert not any(line.startswith("SCAN") and "INDEX" in line for line in plan), text
    if shape in INDEXED:
        # The (column, seq) index gives the rows in seq order: no sort, stops after a page.
        indexes = [f"USING INDEX ix_audit_log_{column}_seq" for column in INDEXED[shape]]
        bound = " AND seq<?" if cursor else ""
        assert any(
            line.startswith("SEARCH audit_log")
            and any(index in line for index in indexes)
            and f"=?{bound})" in line
            for line in plan
        ), text
        assert "TEMP B-TREE" not in text, text
    elif shape in TIMED:
        # The primary key between the seq bounds the summaries give; no sort, no time index.
        bounds = {
            "since": "rowid>? AND rowid<?" if cursor else "rowid>?",
            "until": "rowid<?",
            "window": "rowid>? AND rowid<?",
        }
        assert plan[0] == f"SEARCH audit_log USING INTEGER PRIMARY KEY ({bounds[shape]})", text
        assert "TEMP B-TREE" not in text and "ix_audit_log_time_seq" not in text, text
        assert all(line.startswith(("SEARCH", "SCALAR SUBQUERY")) for line in plan[1:]), text
    elif cursor:
        assert plan == ["SEARCH audit_log USING INTEGER PRIMARY KEY (rowid<?)"], text
    else:
        # The rowid in ORDER BY order (no sort): stops after the page.
        assert plan == ["SCAN audit_log"], text


def _check_postgres(shape: str, text: str) -> None:
    assert "Seq Scan" not in text, text
    if shape in INDEXED:
        # PostgreSQL's planner weighs the filter's index against the primary key: for a small
        # filter it may read its rows through a bitmap and sort just those; for a common one
        # (many matches, so a page comes after a short walk) it may walk the primary key in
        # seq order, which its heap order makes cheaper. Each is bounded; a scan is not.
        indexes = [f"ix_audit_log_{column}_seq" for column in INDEXED[shape]]
        assert any(
            f"Index Scan Backward using {index}" in text or f"Bitmap Index Scan on {index}" in text
            for index in indexes
        ) or ("Index Scan Backward using pk_audit_log" in text and "Sort" not in text), text
    elif shape in TIMED:
        # The primary key, bounded by the summaries (InitPlans over their primary key).
        walk = text.splitlines()[-3:-1]  # the walk and its Index Cond (then its Filter)
        assert "Index Scan Backward using pk_audit_log on audit_log " in walk[0], text
        assert "COALESCE(" in walk[1], text
        assert "Sort" not in text and "ix_audit_log_time_seq" not in text, text
    else:
        assert "Index Scan Backward using pk_audit_log" in text, text


def test_the_plans_find_the_right_rows(engine: sa.Engine):
    # Not a plan check: the same queries return what a filter over every row returns.
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                audit_log.c.seq,
                audit_log.c.actor,
                audit_log.c.action,
                audit_log.c.target,
                audit_log.c.time,
            )
        ).all()
        for name, query in _cases():
            found = [r.seq for r in conn.execute(query_statement(query))]
            wanted = sorted(
                (
                    r.seq
                    for r in rows
                    if (query.actor is None or r.actor == query.actor)
                    and (query.target is None or r.target == query.target)
                    and (query.before_seq is None or r.seq < query.before_seq)
                    and (query.since is None or _utc(r.time) >= query.since)
                    and (query.until is None or _utc(r.time) < query.until)
                    and (query.action is None or r.action == query.action)
                ),
                reverse=True,
            )[: query.limit]
            assert found == wanted, name


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _vm_steps(conn: sa.Connection, sql: str, params: Any = ()) -> int:
    """How many thousand SQLite VM instructions running ``sql`` takes (rows read, roughly)."""
    raw = conn.connection.driver_connection
    assert raw is not None
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    raw.set_progress_handler(count, 1000)
    try:
        raw.execute(sql, params).fetchall()
    finally:
        raw.set_progress_handler(None, 0)
    return steps


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)  # VM steps are SQLite's
def test_time_bounded_pages_read_about_a_page_of_rows(engine: sa.Engine):
    # A plan names the index but not which bound it walks from: SQLite walks a range by one
    # bound per side, so a cursor and a time bound must reach it as one. Count the work.
    # (PostgreSQL's plans show both bounds in the walk's Index Cond: checked above.)
    with engine.connect() as conn:
        whole = _vm_steps(conn, "SELECT max(length(entry)) FROM audit_log")
        deep = [(f"{n} deep", replace(q, before_seq=EVENTS // 10)) for n, q in _cases()]
        for name, query in [*_cases(), *deep]:
            if name.split()[0] in TIMED:
                compiled = query_statement(query).compile(
                    dialect=conn.dialect, compile_kwargs={"render_postcompile": True}
                )
                params = tuple(compiled.params[k] for k in compiled.positiontup or ())
                stamp = time_param(conn)  # how the log stores a time (SQLite: its text)
                params = tuple(stamp(v) if isinstance(v, datetime) else v for v in params)
                steps = _vm_steps(conn, compiled.string, params)
                # At most a block of unsummarised tail, a walk of the summaries and a page.
                assert steps < whole / 10, (name, steps, whole)
