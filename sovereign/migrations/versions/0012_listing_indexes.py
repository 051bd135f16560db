"""listing indexes: request pages by state, newest first, on the keyset

A page of requests in one state (an officer's queue across tenants, or one tenant's) walks
``(state, created_at, id)`` or ``(tenant, state, created_at, id)`` in order, without a sort or a
scan. They replace ``(state)`` and ``(tenant, state)``, which are their prefixes (the quota sum and
the reconciler's claims by state still use them).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 07:10:00.000000
"""

from __future__ import annotations

from alembic import op


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        'ix_enclave_requests_state_created',
        'enclave_requests',
        ['state', 'created_at', 'id'],
        unique=False,
    )
    op.create_index(
        'ix_enclave_requests_tenant_state_created',
        'enclave_requests',
        ['tenant', 'state', 'created_at', 'id'],
        unique=False,
    )
    op.drop_index('ix_enclave_requests_state', table_name='enclave_requests')
    op.drop_index('ix_enclave_requests_tenant_state', table_name='enclave_requests')


def downgrade() -> None:
    op.create_index('ix_enclave_requests_tenant_state', 'enclave_requests', ['tenant', 'state'])
    op.create_index('ix_enclave_requests_state', 'enclave_requests', ['state'])
    op.drop_index('ix_enclave_requests_tenant_state_created', table_name='enclave_requests')
    op.drop_index('ix_enclave_requests_state_created', table_name='enclave_requests')
