"""data residency: tenants' countries, requests' narrowing and pinned country, keys' country

Tenants created before residency get ["ES"] (the default residency, like the default country of
the sites backfilled by 0009); requests and keys made before it keep NULL (no narrowing, no
pinned country, key in the one configured Vault).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 06:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('residency', sa.Text(), server_default='["ES"]', nullable=False)
        )
    with op.batch_alter_table('enclave_requests', schema=None) as batch_op:
        batch_op.add_column(sa.Column('residency', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('country', sa.String(length=2), nullable=True))
    with op.batch_alter_table('enclave_keys', schema=None) as batch_op:
        batch_op.add_column(sa.Column('country', sa.String(length=2), nullable=True))
        batch_op.add_column(sa.Column('vault', sa.String(length=16), nullable=True))
    with op.batch_alter_table('enclaves', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('country', sa.String(length=2), server_default='', nullable=False)
        )


def downgrade() -> None:
    with op.batch_alter_table('enclaves', schema=None) as batch_op:
        batch_op.drop_column('country')
    with op.batch_alter_table('enclave_keys', schema=None) as batch_op:
        batch_op.drop_column('vault')
        batch_op.drop_column('country')
    with op.batch_alter_table('enclave_requests', schema=None) as batch_op:
        batch_op.drop_column('country')
        batch_op.drop_column('residency')
    with op.batch_alter_table('tenants', schema=None) as batch_op:
        batch_op.drop_column('residency')
