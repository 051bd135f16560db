"""jobs, datasets and sealed blobs

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 21:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op



revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'jobs',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('enclave_id', sa.Uuid(), nullable=False),
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('label_level', sa.String(length=64), nullable=False),
        sa.Column('label_compartments', sa.String(length=1024), nullable=False),
        sa.Column('submitted_by', sa.String(length=255), nullable=False),
        sa.Column('manifest', sa.Text(), nullable=False),
        sa.Column('files', sa.Text(), nullable=False),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('step', sa.String(length=16), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('exit_code', sa.Integer(), nullable=True),
        sa.Column('runtime_s', sa.Float(), nullable=True),
        sa.Column('error', sa.String(length=500), server_default='', nullable=False),
        sa.Column('results', sa.Text(), nullable=False),
        sa.Column('log_size', sa.BigInteger(), server_default='0', nullable=False),
        sa.Column('simulated', sa.Boolean(), nullable=False),
        sa.Column('cancel_requested', sa.Boolean(), nullable=False),
        sa.Column('claimed_by', sa.String(length=128), nullable=True),
        sa.Column('claim_until', sa.DateTime(timezone=True), nullable=True),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(['enclave_id'], ['enclaves.id'], name=op.f('fk_jobs_enclave_id_enclaves')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_enclave', ['enclave_id', 'created_at'], unique=False)
        batch_op.create_index('ix_jobs_step', ['step'], unique=False)

    op.create_table(
        'datasets',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('tenant', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('label_level', sa.String(length=64), nullable=False),
        sa.Column('label_compartments', sa.String(length=1024), nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('sha256', sa.String(length=64), nullable=False),
        sa.Column('uploaded_by', sa.String(length=255), nullable=False),
        sa.Column('key_mount', sa.String(length=255), nullable=False),
        sa.Column('key_name', sa.String(length=255), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant'], ['tenants.name'], name=op.f('fk_datasets_tenant_tenants')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_datasets')),
    )
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.create_index('ix_datasets_tenant', ['tenant', 'created_at'], unique=False)

    op.create_table(
        'blobs',
        sa.Column('owner', sa.Uuid(), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column('size', sa.BigInteger(), nullable=False),
        sa.Column('data', sa.LargeBinary(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('owner', 'kind', 'name', 'seq', name=op.f('pk_blobs')),
    )


def downgrade() -> None:
    op.drop_table('blobs')
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_index('ix_datasets_tenant')
    op.drop_table('datasets')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_step')
        batch_op.drop_index('ix_jobs_enclave')
    op.drop_table('jobs')
