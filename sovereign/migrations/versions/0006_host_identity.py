"""host identity: hypervisor host UUID and hostname; GPUs keyed by host identity and UUID

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06 18:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host_uuid', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('hostname', sa.String(length=255), nullable=True))
        batch_op.create_unique_constraint(op.f('uq_hosts_host_uuid'), ['host_uuid'])

    with op.batch_alter_table('gpus', schema=None) as batch_op:
        batch_op.add_column(sa.Column('host_uuid', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('uuid', sa.String(length=64), nullable=True))
        batch_op.create_unique_constraint(op.f('uq_gpus_host_uuid_address'), ['host_uuid', 'address'])
        batch_op.create_unique_constraint(op.f('uq_gpus_uuid'), ['uuid'])


def downgrade() -> None:
    with op.batch_alter_table('gpus', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('uq_gpus_uuid'), type_='unique')
        batch_op.drop_constraint(op.f('uq_gpus_host_uuid_address'), type_='unique')
        batch_op.drop_column('uuid')
        batch_op.drop_column('host_uuid')

    with op.batch_alter_table('hosts', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('uq_hosts_host_uuid'), type_='unique')
        batch_op.drop_column('hostname')
        batch_op.drop_column('host_uuid')
