"""The SQL backend of the audit log (SQLite and PostgreSQL through SQLAlchemy Core).

Owns the log's tables and the code that reads and writes them:

- ``audit_pending``: on PostgreSQL, where business transactions append events (fail-closed: the
  insert is part of the caller's transaction, so no event means no change), with the filter
  columns already computed. A queue, drained by the sequencer. Unused on SQLite (see below).
- ``audit_log``: the sequenced log. One row per leaf: ``seq`` is the leaf index (0-based,
  contiguous), ``entry`` the event's canonical bytes, ``leaf_hash`` = SHA-256(0x00 || entry),
  and a few columns copied out of the event for filtering (:func:`audit.store.event_columns`).
- ``audit_nodes``: the hash of every complete perfect subtree, ``(level, idx)`` covering leaves
  ``[idx * 2**level, (idx + 1) * 2**level)``, so any inclusion or consistency proof needs only
  O(log n) point reads. A node table (rather than tiles) because both databases index it well
  and a proof is ~2 log2(n) primary-key lookups: well under the 5 ms budget at 10**6 leaves.
- ``audit_checkpoints``: every signed checkpoint (C2SP tlog-checkpoint notes).
- ``audit_time_blocks``: the earliest and latest ``time`` in each complete block of
  :data:`TIME_BLOCK` leaves, written by the appender when it completes a block. Event times are
  only roughly monotone in ``seq`` (an event is stamped before it is sequenced), so no index
  bounds a newest-first walk by ``seq`` under a time filter; these summaries do: a ``since`` or
  ``until`` page seeks straight to the blocks that can hold matches (see
  :func:`query_statement`).

On SQLite the database has one writer at a time and the control plane begins every write
transaction ``BEGIN IMMEDIATE``, so the appender itself is the single sequencer: in the
business transaction it reads the log's size, assigns the next indices, and writes the leaves
and the nodes they complete straight into ``audit_log`` and ``audit_nodes`` (no queue, one
write per event). The tree's frontier is cached per engine, keyed on the size and last leaf
hash read inside the transaction, so another process's appends (or a rolled-back transaction
of ours) only cost restoring it from the stored nodes. Two writers that somehow overlap (an
engine without ``BEGIN IMMEDIATE``) cannot both commit the same index: ``seq`` and the node
keys are primary keys. The sequencer then only drains what an older version queued and signs
checkpoints. On PostgreSQL several control-plane processes commit concurrently, so indices are
assigned after commit by the sequencer, which holds an advisory lock.

Database triggers make the log tables insert-only (see the migrations); the proofs are the real
guarantee. :class:`SqlLogReader` is the SQL implementation of :class:`audit.store.LogReader`,
the port the pure verifier reads through. Also owns the SQL side of the label filter
(:func:`compartments_within`, over the encoding of :func:`audit.store.encode_compartments`),
shared with the control plane.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from audit.event import MAX_ACTOR, MAX_TARGET, AuditEvent, event_from_entry
from audit.merkle import Frontier, NodeGetter, consistency_proof, inclusion_proof, leaf_hashes
from audit.store import (
    INDEX_COLUMNS,
    TIME_BLOCK,
    AuditQuery,
    RowBatch,
    StoredCheckpoint,
    StoredEvent,
    TimeBlock,
    event_columns,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only autoincrements an INTEGER PRIMARY KEY; PostgreSQL wants BIGINT for a log.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _filter_columns(*, nullable: bool) -> list[sa.Column[Any]]:
    """The filter columns (:data:`audit.store.INDEX_COLUMNS`), declared once for both tables."""
    return [
        sa.Column("time", sa.DateTime(timezone=True), nullable=nullable),
        sa.Column("actor", sa.String(MAX_ACTOR), nullable=nullable),
        sa.Column("action", sa.String(100), nullable=nullable),
        sa.Column("target", sa.String(MAX_TARGET), nullable=nullable),
        sa.Column("outcome", sa.String(10), nullable=nullable),
        sa.Column("label_level", sa.String(64), nullable=True),
        sa.Column("label_compartments", sa.String(1024), nullable=True),
    ]


#: The queue (PostgreSQL). The filter columns are NULL only in rows queued before migration
#: 0011, which the sequencer reads out of the entry instead.
audit_pending = sa.Table(
    "audit_pending",
    metadata,
    sa.Column("id", BigId, primary_key=True, autoincrement=True),
    sa.Column("entry", sa.LargeBinary, nullable=False),
    *_filter_columns(nullable=True),
)

#: ``seq`` is INTEGER on SQLite so that it is the rowid (one B-tree, not two). The indexes are
#: those the query API walks (:meth:`SqlAuditStore.query`): newest first by ``seq`` within one
#: actor, action or target, and a time range.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=False),
    sa.Column("entry", sa.LargeBinary, nullable=False),
    sa.Column("leaf_hash", sa.LargeBinary(32), nullable=False),
    *_filter_columns(nullable=False),
    sa.Index("ix_audit_log_actor_seq", "actor", "seq"),
    sa.Index("ix_audit_log_action_seq", "action", "seq"),
    sa.Index("ix_audit_log_target_seq", "target", "seq"),
    sa.Index("ix_audit_log_time_seq", "time", "seq"),
)

#: Small fixed-size rows under a composite key: WITHOUT ROWID on SQLite (one B-tree, not two).
audit_nodes = sa.Table(
    "audit_nodes",
    metadata,
    sa.Column("level", sa.SmallInteger, primary_key=True, autoincrement=False),
    sa.Column("idx", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    sqlite_with_rowid=False,
)

audit_checkpoints = sa.Table(
    "audit_checkpoints",
    metadata,
    sa.Column("size", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("note", sa.Text, nullable=False),
    sa.Column("signed_at", sa.DateTime(timezone=True), nullable=False),
)

#: The time range of each complete block of leaves ``[block * TIME_BLOCK, (block + 1) *
#: TIME_BLOCK)``. Complete blocks never change, so neither do their rows. A time-filtered page
#: reads at most about a block of rows beyond its matches; the summaries are one row a block.
audit_time_blocks = sa.Table(
    "audit_time_blocks",
    metadata,
    sa.Column("block", BigId, primary_key=True, autoincrement=False),
    sa.Column("min_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("max_time", sa.DateTime(timezone=True), nullable=False),
)

#: Tables that only ever grow; triggers refuse UPDATE and DELETE (and TRUNCATE) on them.
APPEND_ONLY_TABLES = ("audit_log", "audit_nodes", "audit_checkpoints", "audit_time_blocks")


def compartments_within(
    column: sa.ColumnElement[Any], allowed: Collection[str]
) -> sa.ColumnElement[bool]:
    """SQL that is true when the encoded set in ``column`` is a subset of ``allowed``.

    Removing every allowed name from the encoded string leaves ``","`` exactly when nothing
    else was there; this needs no list of all compartments and works on SQLite and PostgreSQL.
    """
    expr: sa.ColumnElement[Any] = column
    for name in sorted(allowed):
        expr = sa.func.replace(expr, f",{name},", ",")
    return expr == ","


def _as_bytes(value: Any) -> bytes:
    """Stored bytes, even if someone wrote text into a blob column (SQLite allows it): the
    verifier must then report a mismatch, not crash."""
    return value.encode() if isinstance(value, str) else bytes(value)


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time stored here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def insert_many(
    conn: sa.Connection, table: sa.Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]
) -> None:
    """Insert ``rows`` straight through the driver, in the connection's transaction: the append
    path writes thousands of rows per transaction, and SQLAlchemy's per-row parameter
    processing cost more than the inserts. PostgreSQL (psycopg) takes a ``COPY ... FROM
    STDIN`` (one stream, no per-row round trip or statement); SQLite an ``executemany``
    (in-process). Values must already be what the driver stores (see :func:`time_param`)."""
    names = ", ".join(columns)
    if conn.dialect.driver == "psycopg":
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            with cursor.copy(f"COPY {table.name} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        finally:
            cursor.close()
        return
    mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
    conn.exec_driver_sql(
        f"INSERT INTO {table.name} ({names}) VALUES ({', '.join([mark] * len(columns))})",  # noqa: S608 - our own names
        rows if isinstance(rows, list) else list(rows),
    )


def _sqlite_time(t: datetime) -> str:
    # The text SQLAlchemy's DateTime writes on SQLite (microseconds always), for UTC times, so
    # that queries through SQLAlchemy compare like with like.
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(" ", "microseconds")


def time_param(conn: sa.Connection) -> Callable[[datetime], Any]:
    """How a UTC time is stored: PostgreSQL takes the datetime; SQLite the text SQLAlchemy's
    DateTime type writes."""
    if conn.dialect.name == "sqlite":
        return _sqlite_time
    return lambda t: t


def log_rows(
    conn: sa.Connection,
    start: int,
    entries: Sequence[bytes],
    leaves: Sequence[bytes],
    columns: Iterable[tuple[Any, ...]],
) -> list[tuple[Any, ...]]:
    """``audit_log`` rows (:data:`LOG_COLUMNS` order) for events from index ``start`` on."""
    stamp = time_param(conn)
    return [
        (start + i, entry, leaf, stamp(cols[0]), *cols[1:])
        for i, (entry, leaf, cols) in enumerate(zip(entries, leaves, columns, strict=True))
    ]


def summarise_time_blocks(conn: sa.Connection, old_size: int, new_size: int) -> None:
    """Write the time range of every block the log's growth from ``old_size`` to ``new_size``
    leaves completed, in the caller's transaction. Costs nothing unless a block boundary was
    crossed; then summarises every complete block after the last one summarised, so blocks
    stay contiguous even if an earlier append did not write its own (a log written before
    this table existed is summarised by its migration)."""
    if new_size // TIME_BLOCK == old_size // TIME_BLOCK:
        return
    b, t = audit_time_blocks, audit_log
    first = conn.execute(sa.select(sa.func.coalesce(sa.func.max(b.c.block) + 1, 0))).scalar_one()
    end = new_size // TIME_BLOCK
    if first >= end:
        return
    block = t.c.seq // TIME_BLOCK
    conn.execute(
        b.insert().from_select(
            ["block", "min_time", "max_time"],
            sa.select(block, sa.func.min(t.c.time), sa.func.max(t.c.time))
            .where(t.c.seq >= first * TIME_BLOCK, t.c.seq < end * TIME_BLOCK)
            .group_by(block),
        )
    )


#: The columns of an ``audit_log`` row as :func:`log_rows` builds it.
LOG_COLUMNS = ("seq", "entry", "leaf_hash", *INDEX_COLUMNS)


@dataclass(frozen=True)
class _CachedFrontier:
    size: int
    last_leaf: bytes
    hashes: tuple[bytes, ...]


#: The frontier each engine's last append left, by engine (SQLite only, see the module doc).
_FRONTIERS: weakref.WeakKeyDictionary[sa.Engine, _CachedFrontier] = weakref.WeakKeyDictionary()
_FRONTIERS_LOCK = threading.Lock()


def frontier_positions(size: int) -> list[tuple[int, int]]:
    """The ``(level, index)`` of each frontier node of a tree of ``size`` leaves, largest first."""
    found = []
    start = 0
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            found.append((level, start >> level))
            start += 1 << level
    return found


def _all_bytes(values: Sequence[Any]) -> Sequence[bytes]:
    """``values`` as bytes (see :func:`_as_bytes`), checked in one C-level pass when they are."""
    return values if set(map(type, values)) <= {bytes} else [_as_bytes(v) for v in values]


def _stored_times(values: Sequence[Any]) -> list[Any]:
    """Stored times as aware datetimes (see :func:`_stored_time`), in bulk."""
    if set(map(type, values)) == {str}:
        # SQLite: naive UTC text, parsed with its offset added in one C call per value.
        try:
            return [_fromisoformat(v + "+00:00") for v in values]
        except ValueError:
            pass  # one holds an offset already, or is no time at all: value by value
    return [_stored_time(v) for v in values]


_fromisoformat = datetime.fromisoformat


def _stored_time(value: Any) -> Any:
    """A stored time as an aware datetime (SQLite stores text); anything else as it is."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return value
    return _utc(value) if isinstance(value, datetime) else value


class SqlAuditStore:
    """Appends events in the caller's transaction (sequenced at once on SQLite, queued on
    PostgreSQL); queries the log."""

    def __init__(self, connection: sa.Connection) -> None:
        self._conn = connection

    def append(self, events: Iterable[AuditEvent]) -> None:
        """Add ``events`` in order in the caller's transaction; errors propagate to fail it."""
        batch = list(events)
        if not batch:
            return
        if self._conn.dialect.name == "sqlite":
            self._append_sequenced(batch)
        else:
            self._queue(batch)

    def _queue(self, events: list[AuditEvent]) -> None:
        stamp = time_param(self._conn)
        rows = [
            (e.canonical_bytes(), stamp(cols[0]), *cols[1:])
            for e, cols in ((e, event_columns(e)) for e in events)
        ]
        insert_many(self._conn, audit_pending, ("entry", *INDEX_COLUMNS), rows)

    def _append_sequenced(self, events: list[AuditEvent]) -> None:
        """Assign the next indices and write leaves and completed nodes (SQLite's single
        writer; the caller's transaction holds the write lock from its first statement)."""
        conn = self._conn
        entries = [e.canonical_bytes() for e in events]
        leaves = leaf_hashes(entries)
        frontier = self._frontier()
        start = frontier.size
        nodes = frontier.extend(leaves)
        insert_many(
            conn,
            audit_log,
            LOG_COLUMNS,
            log_rows(conn, start, entries, leaves, map(event_columns, events)),
        )
        if nodes:
            insert_many(conn, audit_nodes, ("level", "idx", "hash"), nodes)
        summarise_time_blocks(conn, start, frontier.size)
        with _FRONTIERS_LOCK:
            _FRONTIERS[conn.engine] = _CachedFrontier(frontier.size, leaves[-1], frontier.hashes)

    def _frontier(self) -> Frontier:
        """The frontier of the log as this transaction sees it: the cached one if the size and
        the last leaf hash read now match it, else restored from the stored nodes."""
        t = audit_log
        last = self._conn.execute(
            sa.select(t.c.seq, t.c.leaf_hash).order_by(t.c.seq.desc()).limit(1)
        ).first()
        if last is None:
            return Frontier()
        size, last_leaf = int(last[0]) + 1, bytes(last[1])
        with _FRONTIERS_LOCK:
            cached = _FRONTIERS.get(self._conn.engine)
        if cached is not None and (cached.size, cached.last_leaf) == (size, last_leaf):
            return Frontier(size, cached.hashes)
        wanted = frontier_positions(size)
        found = SqlLogReader(self._conn).nodes(wanted)
        try:
            return Frontier(size, [found[w] for w in wanted])
        except KeyError as e:
            raise MissingNodeError(f"the stored tree lacks frontier node {e.args[0]}") from None

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        """Sequenced events matching ``query``, newest first, using the table's indexes."""
        return [
            StoredEvent(seq=row.seq, event=event_from_entry(row.entry), leaf_hash=row.leaf_hash)
            for row in self._conn.execute(query_statement(query))
        ]


def query_statement(query: AuditQuery) -> sa.Select[Any]:
    """The SELECT behind :meth:`SqlAuditStore.query` (the EXPLAIN tests hold its plans to the
    indexes): equality filters and the cursor pick an index walk in ``seq`` order; the label
    filters are residual predicates on the rows it reads. A time bound also bounds ``seq``
    by the block summaries (:func:`first_seq_since`, :func:`end_seq_until`), so the walk
    starts and stops near its matches."""
    t = audit_log
    order = t.c.seq.asc() if query.ascending else t.c.seq.desc()
    stmt = sa.select(t.c.seq, t.c.entry, t.c.leaf_hash).order_by(order).limit(query.limit)
    if query.actor is not None:
        stmt = stmt.where(t.c.actor == query.actor)
    if query.action is not None:
        stmt = stmt.where(t.c.action == query.action)
    if query.target is not None:
        stmt = stmt.where(t.c.target == query.target)
    # The seq range: one lower and one upper bound each, because SQLite walks a range by only
    # one of several bounds on a side (a cursor and a time bound are joined in SQL).
    lower: list[sa.ColumnElement[Any]] = []  # seq >= each
    upper: list[sa.ColumnElement[Any]] = []  # seq < each
    if query.since is not None:
        stmt = stmt.where(t.c.time >= query.since)
        lower.append(first_seq_since(query.since))
    if query.until is not None:
        stmt = stmt.where(t.c.time < query.until)
        upper.append(end_seq_until(query.until))
    if query.before_seq is not None:
        upper.append(sa.literal(query.before_seq, sa.BigInteger))
    if query.after_seq is not None:
        lower.append(sa.literal(query.after_seq, sa.BigInteger) + _ONE)
    if lower:
        stmt = stmt.where(t.c.seq >= _extreme(lower, highest=True))
    if upper:
        stmt = stmt.where(t.c.seq < _extreme(upper, highest=False))
    if query.levels is not None:
        stmt = stmt.where(sa.or_(t.c.label_level.is_(None), t.c.label_level.in_(query.levels)))
    if query.compartments is not None:
        stmt = stmt.where(
            sa.or_(
                t.c.label_compartments.is_(None),
                compartments_within(t.c.label_compartments, query.compartments),
            )
        )
    return stmt


#: Integer constants of the summary bounds, inlined into the SQL (no parameters: the read
#: model prepares these statements and binds only a call's own values).
_BLOCK = sa.literal_column(str(TIME_BLOCK), sa.BigInteger)
_ONE = sa.literal_column("1", sa.BigInteger)
_ZERO = sa.literal_column("0", sa.BigInteger)


def _extreme(bounds: list[sa.ColumnElement[Any]], *, highest: bool) -> sa.ColumnElement[Any]:
    """The highest (or lowest) of ``bounds``, as one SQL expression."""
    found = bounds[0]
    for bound in bounds[1:]:
        wins = bound > found if highest else bound < found
        found = sa.case((wins, bound), else_=found)
    return found


def _summarised() -> sa.ScalarSelect[Any]:
    """The first leaf after the summarised blocks: the start of the unsummarised tail."""
    b = audit_time_blocks
    return sa.select(
        sa.func.coalesce(sa.func.max(b.c.block) + _ONE, _ZERO) * _BLOCK
    ).scalar_subquery()


def first_seq_since(since: datetime) -> sa.ColumnElement[Any]:
    """No event before this ``seq`` has ``time >= since``: the first summarised block whose
    latest time reaches ``since``, else the tail (where the summaries say nothing)."""
    b = audit_time_blocks
    first_block = sa.select(sa.func.min(b.c.block) * _BLOCK).where(b.c.max_time >= since)
    return sa.func.coalesce(first_block.scalar_subquery(), _summarised())


def end_seq_until(until: datetime) -> sa.ColumnElement[Any]:
    """No event from this ``seq`` on has ``time < until``: one past the last such event of the
    tail (at most a block of rows, read newest first), else the end of the last summarised
    block whose earliest time is before ``until``, else 0."""
    b, t = audit_time_blocks, audit_log
    in_tail = (
        sa.select(t.c.seq + _ONE)
        .where(t.c.seq >= _summarised(), t.c.time < until)
        .order_by(t.c.seq.desc())
        .limit(_ONE)
    )
    last_block = sa.select((sa.func.max(b.c.block) + _ONE) * _BLOCK).where(b.c.min_time < until)
    return sa.func.coalesce(in_tail.scalar_subquery(), last_block.scalar_subquery(), _ZERO)


class MissingNodeError(LookupError):
    """A node or leaf the tree needs is not in the database (deleted, or never written)."""


class SqlLogReader:
    """Reads the sequenced log, its nodes and checkpoints, and builds proofs from them."""

    def __init__(self, connection: sa.Connection) -> None:
        self._conn = connection

    def size(self) -> int:
        """Number of sequenced events (leaves)."""
        top = self._conn.execute(sa.select(sa.func.max(audit_log.c.seq))).scalar()
        return 0 if top is None else int(top) + 1

    def pending(self) -> int:
        """Number of events waiting for the sequencer (0 on SQLite, whose appends are
        sequenced at once, unless an older version left some queued)."""
        return int(
            self._conn.execute(sa.select(sa.func.count()).select_from(audit_pending)).scalar_one()
        )

    def node(self, level: int, index: int) -> bytes:
        """Hash of the perfect subtree ``(level, index)``; level 0 is a leaf hash.

        :raises MissingNodeError: if it is not stored.
        """
        if level == 0:
            found = self._conn.execute(
                sa.select(audit_log.c.leaf_hash).where(audit_log.c.seq == index)
            ).scalar()
        else:
            found = self._conn.execute(
                sa.select(audit_nodes.c.hash).where(
                    audit_nodes.c.level == level, audit_nodes.c.idx == index
                )
            ).scalar()
        if found is None:
            raise MissingNodeError(f"no stored hash for level {level}, index {index}")
        return bytes(found)

    def entry(self, seq: int) -> bytes:
        """The canonical bytes of event ``seq``. :raises MissingNodeError: if absent."""
        found = self._conn.execute(
            sa.select(audit_log.c.entry).where(audit_log.c.seq == seq)
        ).scalar()
        if found is None:
            raise MissingNodeError(f"no event with seq {seq}")
        return bytes(found)

    def entries(self, batch: int = 10_000) -> Iterator[tuple[int, bytes, bytes]]:
        """Every stored ``(seq, entry, leaf_hash)`` in seq order, read in batches."""
        for row in self._rows((audit_log.c.entry, audit_log.c.leaf_hash), batch):
            yield int(row[0]), _as_bytes(row[1]), _as_bytes(row[2])

    def filter_columns(self, batch: int = 10_000) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        """Every ``(seq, entry, filter columns as stored)``, to check them against the entry."""
        names = list(INDEX_COLUMNS)
        cols = (audit_log.c.entry, *(audit_log.c[n] for n in names))
        for row in self._rows(cols, batch):
            stored = dict(zip(names, row[2:], strict=True))
            stored["time"] = _utc(stored["time"]) if stored["time"] is not None else None
            yield int(row[0]), _as_bytes(row[1]), stored

    def row_batches(
        self, start: int, limit: int, *, columns: bool, batch: int = 8192
    ) -> Iterator[RowBatch]:
        """Stored rows with ``seq >= start``, in seq order, at most ``limit``, in batches.

        One query per call, read through the driver's own cursor: its plain tuples cost the
        verifier a third less than SQLAlchemy rows, and the stored time is parsed here once
        (SQLAlchemy's SQLite processor is slower). Values are returned as stored; a time that
        does not parse stays as it is, for the verifier to report.
        """
        t = audit_log
        cols = [t.c.seq, t.c.entry, t.c.leaf_hash]
        if columns:
            cols += [t.c[name] for name in INDEX_COLUMNS]
        stmt = sa.select(*cols).where(t.c.seq >= int(start)).order_by(t.c.seq).limit(int(limit))
        # Only two integers are bound, so rendering them into the SQL is safe.
        sql = str(stmt.compile(dialect=self._conn.dialect, compile_kwargs={"literal_binds": True}))
        cursor = self._conn.connection.cursor()
        try:
            cursor.execute(sql)
            while rows := cursor.fetchmany(batch):
                by_column = list(zip(*rows, strict=True))
                values = None
                if columns:
                    values = list(zip(_stored_times(by_column[3]), *by_column[4:], strict=True))
                yield RowBatch(
                    by_column[0], _all_bytes(by_column[1]), _all_bytes(by_column[2]), values
                )
        finally:
            cursor.close()

    def _rows(self, columns: tuple[Any, ...], batch: int) -> Iterator[Any]:
        last = -1
        t = audit_log
        while True:
            rows = self._conn.execute(
                sa.select(t.c.seq, *columns).where(t.c.seq > last).order_by(t.c.seq).limit(batch)
            ).all()
            if not rows:
                return
            yield from rows
            last = int(rows[-1][0])

    def time_summaries(self) -> list[TimeBlock]:
        """Every stored block summary, in block order, as stored."""
        b = audit_time_blocks
        rows = self._conn.execute(
            sa.select(b.c.block, b.c.min_time, b.c.max_time).order_by(b.c.block)
        )
        return [(int(k), _utc(lo), _utc(hi)) for k, lo, hi in rows]

    def checkpoints(self) -> list[StoredCheckpoint]:
        """Every stored checkpoint, smallest first."""
        t = audit_checkpoints
        return [
            StoredCheckpoint(int(r.size), bytes(r.root_hash), r.note)
            for r in self._conn.execute(sa.select(t).order_by(t.c.size))
        ]

    def latest_checkpoint(self) -> StoredCheckpoint | None:
        """The largest stored checkpoint, if any."""
        t = audit_checkpoints
        r = self._conn.execute(sa.select(t).order_by(t.c.size.desc()).limit(1)).first()
        return StoredCheckpoint(int(r.size), bytes(r.root_hash), r.note) if r else None

    def checkpoint_at_least(self, size: int) -> StoredCheckpoint | None:
        """The smallest checkpoint covering ``size`` leaves, if any."""
        t = audit_checkpoints
        r = self._conn.execute(
            sa.select(t).where(t.c.size >= size).order_by(t.c.size).limit(1)
        ).first()
        return StoredCheckpoint(int(r.size), bytes(r.root_hash), r.note) if r else None

    def inclusion_proof(self, seq: int, size: int) -> list[bytes]:
        """RFC 9162 inclusion path of leaf ``seq`` in the tree of ``size`` leaves."""
        return self._prefetched(lambda get: inclusion_proof(seq, size, get))

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 consistency proof between two tree sizes."""
        return self._prefetched(lambda get: consistency_proof(old_size, new_size, get))

    def _prefetched(self, compute: Callable[[NodeGetter], list[bytes]]) -> list[bytes]:
        """Run a proof twice: once to learn which nodes it reads (which nodes a proof needs
        depends only on the sizes and indices, never on hash values), then with all of them
        fetched in two queries instead of ~2 log2(n) point reads."""
        wanted: set[tuple[int, int]] = set()

        def record(level: int, index: int) -> bytes:
            wanted.add((level, index))
            return bytes(32)

        compute(record)
        found = self.nodes(wanted)

        def get(level: int, index: int) -> bytes:
            try:
                return found[(level, index)]
            except KeyError:
                raise MissingNodeError(f"no stored hash for level {level}, index {index}") from None

        return compute(get)

    def nodes(self, wanted: Collection[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        """The stored hashes of ``wanted`` (level, index) pairs; missing ones are left out."""
        found: dict[tuple[int, int], bytes] = {}
        leaves = sorted(i for lvl, i in wanted if lvl == 0)
        if leaves:
            rows = self._conn.execute(
                sa.select(audit_log.c.seq, audit_log.c.leaf_hash).where(audit_log.c.seq.in_(leaves))
            )
            found.update(((0, int(r[0])), bytes(r[1])) for r in rows)
        inner = sorted((lvl, i) for lvl, i in wanted if lvl > 0)
        if inner:
            t = audit_nodes
            node_rows = self._conn.execute(
                sa.select(t.c.level, t.c.idx, t.c.hash).where(
                    sa.or_(*(sa.and_(t.c.level == lvl, t.c.idx == i) for lvl, i in inner))
                )
            )
            found.update(((int(r[0]), int(r[1])), bytes(r[2])) for r in node_rows)
        return found


@dataclass(frozen=True)
class SqlLogSource:
    """Opens :class:`SqlLogReader` s on one database by URL, in any process.

    The :class:`audit.store.LogSource` that lets :func:`audit.verify.verify_log` read part of
    the log in worker processes. Each :meth:`open` makes its own engine without a pool.
    """

    #: May hold a password, so it is left out of the repr (and so of logs and tracebacks).
    url: str = field(repr=False)

    @classmethod
    def for_engine(cls, engine: sa.Engine) -> SqlLogSource | None:
        """The source of ``engine``'s database; None if no other process can open it (in memory)."""
        url = engine.url
        if url.get_backend_name() == "sqlite" and (
            url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"
        ):
            return None
        return cls(url.render_as_string(hide_password=False))

    @contextmanager
    def open(self) -> Iterator[SqlLogReader]:
        """A reader on a new connection, closed (with its engine) when the context ends."""
        engine = sa.create_engine(self.url, poolclass=sa.pool.NullPool, hide_parameters=True)
        try:
            with engine.connect() as conn:
                yield SqlLogReader(conn)
        finally:
            engine.dispose()
