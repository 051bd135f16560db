"""Whole-log verification split between processes, on the real databases.

:func:`verify_log` with ``processes=2`` checks chunks of the log in a worker process that reads
through its own connection (:class:`SqlLogSource`). The log of ``test_audit_log``'s plan (86
events, 10 checkpoints) is cut into 22 chunks of 4 events; the worker starts on the last
quarter (chunks 17-21, events 68-85, the last chunk partial), this process on chunk 0. Every
tampering must be reported exactly as the one-process verifier reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from audit.sql import SqlLogReader, SqlLogSource
from audit.verify import LogVerificationError, VerifyReport, verify_log
from tests.integration.test_audit_log import BACKENDS, ORIGIN, PLAN_SIZES, AuditLog, open_log
from tests.support import tamper

#: The first event the worker checks whatever the timing (its reserved chunks, see above).
WORKER_FROM = 68

Edit = Callable[[sa.Connection], None]


@pytest.fixture(params=BACKENDS)
def filled(request: pytest.FixtureRequest, tmp_path: Path) -> AuditLog:
    """The plan's log of 86 events under 10 checkpoints, on each real backend."""
    log = open_log(request, request.param, tmp_path)
    log.fill()
    assert log.sizes() == PLAN_SIZES
    return log


def verify(
    log: AuditLog,
    processes: int,
    *,
    source: SqlLogSource | None = None,
    check_columns: bool = True,
) -> VerifyReport:
    with log.engine.connect() as conn:
        return verify_log(
            SqlLogReader(conn),
            [log.verifier],
            ORIGIN,
            witness=log.witnessed(),
            check_columns=check_columns,
            source=source or SqlLogSource.for_engine(log.engine),
            processes=processes,
        )


def failure(log: AuditLog, processes: int) -> tuple[int | None, str]:
    with pytest.raises(LogVerificationError) as caught:
        verify(log, processes)
    return caught.value.index, str(caught.value)


def change_byte(seq: int) -> Edit:
    def edit(conn: sa.Connection) -> None:
        entry = tamper.row_of(conn, seq)["entry"]
        tamper.set_entry(conn, seq, tamper.change_one_byte(bytes(entry)), rehash=False)

    return edit


def test_an_intact_log_verifies_the_same_in_two_processes(filled: AuditLog):
    alone = verify(filled, 1)
    both = verify(filled, 2)
    assert alone.worker_events == 0
    assert both.worker_events >= 86 - WORKER_FROM
    assert (both.size, both.root_hash, both.checkpoints, both.witnessed) == (
        alone.size,
        alone.root_hash,
        alone.checkpoints,
        alone.witnessed,
    )
    assert (both.size, both.checkpoints, both.witnessed) == (86, 10, 10)
    tree_only = verify(filled, 2, check_columns=False)
    assert (tree_only.size, tree_only.root_hash) == (alone.size, alone.root_hash)


@pytest.mark.parametrize(
    ("edits", "index", "message"),
    [
        # In a whole chunk the worker checks, and in the last, partial one.
        ([change_byte(70)], 70, "event 70 does not match its stored leaf hash"),
        ([change_byte(85)], 85, "event 85 does not match its stored leaf hash"),
        # In this process's first chunk.
        ([change_byte(1)], 1, "event 1 does not match its stored leaf hash"),
        # Gaps: inside a chunk, at a chunk's start, and the last event of the log.
        (
            [lambda c: tamper.delete_event(c, 73)],
            73,
            "event 73 is missing (the next stored event is 74)",
        ),
        (
            [lambda c: tamper.delete_event(c, 72)],
            72,
            "event 72 is missing (the next stored event is 73)",
        ),
        (
            [lambda c: tamper.delete_event(c, 40), lambda c: tamper.delete_event(c, 41)],
            40,
            "event 40 is missing (the next stored event is 42)",
        ),
        # A filter column, found by the worker's column check.
        (
            [lambda c: tamper.set_columns(c, 74, actor="someone-else")],
            74,
            "event 74's stored actor is 'someone-else'",
        ),
        # Rows swapped across the two processes' parts: each row is self-consistent, so the
        # first checkpoint covering the earlier one fails (46; the last good one is 16).
        ([lambda c: tamper.swap_events(c, 20, 70)], 16, "signed at that size"),
        # Problems in both parts: the first in the log's order is reported.
        (
            [change_byte(80), lambda c: tamper.set_columns(c, 30, actor="someone-else")],
            30,
            "event 30's stored actor is 'someone-else'",
        ),
        ([change_byte(2), change_byte(78)], 2, "event 2 does not match"),
        # A bad event after a bad checkpoint: the checkpoint at 74 comes first.
        ([lambda c: tamper.swap_events(c, 60, 61), change_byte(80)], 58, "signed at that size"),
    ],
    ids=[
        "worker-chunk",
        "last-partial-chunk",
        "first-chunk",
        "gap",
        "gap-at-chunk-start",
        "two-missing",
        "column",
        "swap-across-parts",
        "both-parts-column-first",
        "both-parts-byte-first",
        "checkpoint-before-event",
    ],
)
def test_tampering_is_reported_as_one_process_reports_it(
    filled: AuditLog, edits: list[Edit], index: int, message: str
):
    filled.tamper(*edits)
    alone = failure(filled, 1)
    assert alone[0] == index
    assert message in alone[1]
    assert failure(filled, 2) == alone


def test_a_dead_worker_leaves_its_chunks_to_this_process(filled: AuditLog, tmp_path: Path):
    # A source the worker cannot open: it fails at once, and this process checks everything.
    nowhere = SqlLogSource(f"sqlite:///{tmp_path / 'missing' / 'none.db'}")
    report = verify(filled, 2, source=nowhere)
    assert (report.size, report.worker_events) == (86, 0)
    filled.tamper(change_byte(79))
    with pytest.raises(LogVerificationError) as caught:
        verify(filled, 2, source=nowhere)
    assert caught.value.index == 79


def test_small_logs_stay_in_one_process_and_several_need_a_source(filled: AuditLog):
    with filled.engine.connect() as conn:
        reader = SqlLogReader(conn)
        auto = verify_log(
            reader, [filled.verifier], ORIGIN, source=SqlLogSource.for_engine(filled.engine)
        )
        assert (auto.size, auto.worker_events) == (86, 0)
        with pytest.raises(ValueError, match="source"):
            verify_log(reader, [filled.verifier], ORIGIN, processes=2)
        with pytest.raises(ValueError, match="at least 1"):
            verify_log(reader, [filled.verifier], ORIGIN, processes=0)


def test_the_source_keeps_the_password_out_of_its_repr():
    source = SqlLogSource("postgresql+psycopg://app:s3cret@db.example/sovereign")
    assert "s3cret" not in repr(source)
    memory = sa.create_engine("sqlite://")
    try:
        assert SqlLogSource.for_engine(memory) is None
    finally:
        memory.dispose()
