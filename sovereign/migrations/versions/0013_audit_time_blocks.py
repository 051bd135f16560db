"""audit time blocks: the time range of each complete block of 1,024 leaves

``audit_time_blocks`` holds, for every complete block of leaves, the earliest and the latest
``time`` in it. A ``since`` or ``until`` page of the audit API walks the log newest first by
``seq``, and event times are only roughly monotone in ``seq``; the summaries bound that walk to
the blocks that can hold matches (see ``audit.sql.query_statement``). The appender writes a
block's row when it completes the block; this revision summarises the log already there. The
table is append-only, like the log (the same triggers as 0003).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

#: ``audit.sql.TIME_BLOCK`` at this revision (changing it needs a new revision).
BLOCK = 1024
TABLE = "audit_time_blocks"


def upgrade() -> None:
    op.create_table(
        TABLE,
        sa.Column(
            "block",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=False,
            nullable=False,
        ),
        sa.Column("min_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("max_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("block", name=op.f("pk_audit_time_blocks")),
    )
    op.execute(
        f"INSERT INTO {TABLE} (block, min_time, max_time) "  # noqa: S608 - constants only
        f"SELECT seq / {BLOCK}, MIN(time), MAX(time) FROM audit_log "
        f"WHERE seq < (SELECT (COALESCE(MAX(seq) + 1, 0) / {BLOCK}) * {BLOCK} FROM audit_log) "
        f"GROUP BY seq / {BLOCK}"
    )
    if op.get_context().dialect.name == "sqlite":
        for verb in ("UPDATE", "DELETE"):
            op.execute(
                f"CREATE TRIGGER {TABLE}_no_{verb.lower()} BEFORE {verb} ON {TABLE} "
                f"BEGIN SELECT RAISE(ABORT, '{TABLE} is append-only'); END"
            )
    else:
        # audit_append_only() is 0003's.
        op.execute(
            f"CREATE TRIGGER {TABLE}_append_only BEFORE UPDATE OR DELETE ON {TABLE} "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )
        op.execute(
            f"CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()"
        )


def downgrade() -> None:
    op.drop_table(TABLE)
