"""TEMP, residency branch only: hosts.country, so that 0010 and placement by country can be
tested before the sites branch (whose 0009 adds the real column and sites) is merged. Delete
this file (revert its commit) when merging the sites branch.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 05:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('country', sa.String(length=2), server_default='', nullable=False))


def downgrade() -> None:
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_column('country')
