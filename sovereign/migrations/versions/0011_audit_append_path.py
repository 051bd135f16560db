"""audit append path: the indexes the queries walk, seq as SQLite's rowid, filter columns queued

- ``audit_log``: the single-column filter indexes (time, actor, action, target) become
  ``(actor, seq)``, ``(action, seq)``, ``(target, seq)`` and ``(time, seq)``, so that a page of
  one actor's (action's, target's) events newest first, with or without a ``seq < cursor``, is
  a bounded walk of one index instead of a scan or a sort. No query filters on ``outcome`` or
  the label columns alone (they are residual predicates), so they get no index.
- SQLite: ``audit_log.seq`` becomes ``INTEGER PRIMARY KEY``, an alias of the rowid (a
  ``BIGINT`` primary key was a second B-tree beside the table's); ``audit_nodes`` becomes
  ``WITHOUT ROWID`` (its rows are small and its key composite: one B-tree instead of two).
  Both tables are rebuilt with their rows (batch mode); their append-only triggers go with the
  old tables and are created again here, as 0003 wrote them.
- ``audit_pending`` carries the filter columns, so that the sequencer (PostgreSQL) no longer
  parses each entry; rows queued before this revision keep them NULL and the sequencer reads
  them out of the entry. On SQLite nothing is queued any more: the appender writes the log.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 07:00:00.000000
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op


revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

OLD_INDEXES = ("time", "actor", "action", "target")
NEW_INDEXES = ("actor", "action", "target", "time")
#: The SQLite tables rebuilt here, whose append-only triggers (from 0003) must be recreated.
REBUILT = ("audit_log", "audit_nodes")


def _filter_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("actor", sa.String(length=255), nullable=True),
        sa.Column("action", sa.String(length=100), nullable=True),
        sa.Column("target", sa.String(length=255), nullable=True),
        sa.Column("outcome", sa.String(length=10), nullable=True),
        sa.Column("label_level", sa.String(length=64), nullable=True),
        sa.Column("label_compartments", sa.String(length=1024), nullable=True),
    ]


def _sqlite_triggers(table: str) -> list[str]:
    # As in 0003; fires for INSERT OR REPLACE too, because the engine sets recursive_triggers.
    return [
        f"CREATE TRIGGER {table}_no_{verb.lower()} BEFORE {verb} ON {table} "
        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
        for verb in ("UPDATE", "DELETE")
    ]


def upgrade() -> None:
    sqlite = op.get_context().dialect.name == "sqlite"
    if sqlite:
        # The triggers would refuse nothing here (a rebuild copies rows, it does not update or
        # delete them), but they belong to the old tables: drop them first, recreate after.
        for table in REBUILT:
            for verb in ("update", "delete"):
                op.execute(f"DROP TRIGGER {table}_no_{verb}")
    with op.batch_alter_table(
        "audit_log", recreate="always" if sqlite else "auto", schema=None
    ) as batch_op:
        for column in OLD_INDEXES:
            batch_op.drop_index(f"ix_audit_log_{column}")
        if sqlite:
            batch_op.alter_column(
                "seq",
                existing_type=sa.BigInteger(),
                type_=sa.Integer(),
                existing_nullable=False,
                autoincrement=False,
            )
        for column in NEW_INDEXES:
            batch_op.create_index(f"ix_audit_log_{column}_seq", [column, "seq"], unique=False)
    if sqlite:
        with op.batch_alter_table(
            "audit_nodes",
            recreate="always",
            schema=None,
            table_kwargs={"sqlite_with_rowid": False},
        ):
            pass
        for table in REBUILT:
            for statement in _sqlite_triggers(table):
                op.execute(statement)
    with op.batch_alter_table("audit_pending", schema=None) as batch_op:
        for new in _filter_columns():
            batch_op.add_column(new)


def downgrade() -> None:
    # Going back would rebuild the log tables without their evidence of being append-only;
    # like 0003, the log moves forward only.
    raise NotImplementedError("the audit log's schema cannot be downgraded")
