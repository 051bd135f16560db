"""The SQL backend of the audit store (SQLite and PostgreSQL through SQLAlchemy Core).

Owns the ``audit_events`` table and :class:`SqlAuditStore`, which appends on the caller's
connection so that an event commits or rolls back with the change it records. Also owns the
label encoding used to filter by dominance in SQL (:func:`encode_compartments`,
:func:`compartments_within`), shared with the control plane's own tables.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Collection, Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from audit.event import AuditEvent, Outcome
from audit.store import AuditQuery, StoredEvent

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

# SQLite only autoincrements an INTEGER PRIMARY KEY, PostgreSQL wants BIGINT for a log.
SeqType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("seq", SeqType, primary_key=True, autoincrement=True),
    sa.Column("id", sa.Uuid, nullable=False, unique=True),
    sa.Column("time", sa.DateTime(timezone=True), nullable=False, index=True),
    sa.Column("actor", sa.String(255), nullable=False, index=True),
    sa.Column("action", sa.String(100), nullable=False, index=True),
    sa.Column("target", sa.String(255), nullable=False, index=True),
    sa.Column("outcome", sa.String(10), nullable=False),
    sa.Column("label_level", sa.String(64), nullable=True),
    sa.Column("label_compartments", sa.String(1024), nullable=True),
    sa.Column("entry", sa.LargeBinary, nullable=False),
)


def encode_compartments(compartments: Iterable[str]) -> str:
    """``{"B", "A"}`` -> ``",A,B,"``: delimited on both sides so each name matches exactly."""
    return "," + "".join(f"{c}," for c in sorted(compartments))


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


def _utc(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every time stored here is UTC.
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def event_from_entry(entry: bytes) -> AuditEvent:
    """Rebuild an event from its canonical bytes."""
    data = json.loads(entry)
    return AuditEvent(
        id=uuid.UUID(data["id"]),
        time=_utc(datetime.fromisoformat(data["time"].replace("Z", "+00:00"))),
        actor=data["actor"],
        action=data["action"],
        target=data["target"],
        outcome=Outcome(data["outcome"]),
        reason=data["reason"],
        label=data["label"],
        request_id=data["request_id"],
        source=data["source"],
        details=data["details"],
    )


class SqlAuditStore:
    """Appends and queries events on a connection owned by the caller's unit of work."""

    def __init__(self, connection: sa.Connection) -> None:
        self._conn = connection

    def append(self, events: Iterable[AuditEvent]) -> list[int]:
        """Insert ``events`` in the caller's transaction; errors propagate to fail it."""
        seqs: list[int] = []
        for event in events:
            label = event.label
            result = self._conn.execute(
                audit_events.insert().values(
                    id=event.id,
                    time=event.time,
                    actor=event.actor,
                    action=event.action,
                    target=event.target,
                    outcome=event.outcome.value,
                    label_level=label["level"] if label else None,
                    label_compartments=(
                        encode_compartments(label.get("compartments", [])) if label else None
                    ),
                    entry=event.canonical_bytes(),
                )
            )
            pk = result.inserted_primary_key
            assert pk is not None
            seqs.append(int(pk[0]))
        return seqs

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        """Events matching ``query``, newest first, using the table's indexes."""
        t = audit_events
        stmt = sa.select(t.c.seq, t.c.entry).order_by(t.c.seq.desc()).limit(query.limit)
        if query.actor is not None:
            stmt = stmt.where(t.c.actor == query.actor)
        if query.action is not None:
            stmt = stmt.where(t.c.action == query.action)
        if query.target is not None:
            stmt = stmt.where(t.c.target == query.target)
        if query.since is not None:
            stmt = stmt.where(t.c.time >= query.since)
        if query.until is not None:
            stmt = stmt.where(t.c.time < query.until)
        if query.before_seq is not None:
            stmt = stmt.where(t.c.seq < query.before_seq)
        if query.levels is not None:
            stmt = stmt.where(sa.or_(t.c.label_level.is_(None), t.c.label_level.in_(query.levels)))
        if query.compartments is not None:
            stmt = stmt.where(
                sa.or_(
                    t.c.label_compartments.is_(None),
                    compartments_within(t.c.label_compartments, query.compartments),
                )
            )
        return [
            StoredEvent(seq=row.seq, event=event_from_entry(row.entry))
            for row in self._conn.execute(stmt)
        ]
