"""The control plane's tables (SQLAlchemy Core), mapped to the domain by the repositories.

Owns table definitions only; migrations in ``sovereign/migrations`` create them. UUID keys,
timezone-aware timestamps and named constraints (shared naming convention with ``audit``).
Labels are stored as a level name and an encoded compartment set so dominance can be filtered
in SQL (see :func:`audit.sql.compartments_within`).
"""

from __future__ import annotations

import sqlalchemy as sa

from audit.sql import NAMING_CONVENTION
from audit.sql import metadata as audit_metadata

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: Everything Alembic manages: the control plane's tables and the audit library's.
ALL_METADATA = (metadata, audit_metadata)

Timestamp = sa.DateTime(timezone=True)

tenants = sa.Table(
    "tenants",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("display_name", sa.String(255), nullable=False, server_default=""),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("max_level", sa.String(64), nullable=False),
    sa.Column("max_compartments", sa.String(1024), nullable=False),
    sa.Column("quota_vcpus", sa.Integer, nullable=False),
    sa.Column("quota_memory_mib", sa.Integer, nullable=False),
    sa.Column("quota_gpus", sa.Integer, nullable=False),
    sa.Column("quota_disk_gib", sa.Integer, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.CheckConstraint("kind IN ('classified', 'civilian')", name="kind"),
)

images = sa.Table(
    "images",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(128), nullable=False, unique=True),
    sa.Column("format", sa.String(16), nullable=False),
    sa.Column("checksum", sa.String(160), nullable=False),
    sa.Column("max_level", sa.String(64), nullable=False),
    sa.Column("max_compartments", sa.String(1024), nullable=False),
    sa.Column("description", sa.String(1024), nullable=False, server_default=""),
    sa.Column("created_at", Timestamp, nullable=False),
)

enclave_requests = sa.Table(
    "enclave_requests",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), nullable=False),
    sa.Column("requester", sa.String(255), nullable=False),
    sa.Column("requester_name", sa.String(255), nullable=False),
    sa.Column("label_level", sa.String(64), nullable=False),
    sa.Column("label_compartments", sa.String(1024), nullable=False),
    sa.Column("vcpus", sa.Integer, nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("gpu_model", sa.String(64), nullable=True),
    sa.Column("disk_gib", sa.Integer, nullable=False),
    sa.Column("image", sa.String(128), sa.ForeignKey("images.name"), nullable=False),
    sa.Column("purpose", sa.String(2000), nullable=False),
    sa.Column("lease_hours", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(2000), nullable=False, server_default=""),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # Keyset pages, newest first: all tenants, and one tenant (an analyst's view).
    sa.Index("ix_enclave_requests_created", "created_at", "id"),
    sa.Index("ix_enclave_requests_tenant_created", "tenant", "created_at", "id"),
    sa.Index("ix_enclave_requests_tenant_state", "tenant", "state"),
    sa.Index("ix_enclave_requests_state", "state"),
)

approvals = sa.Table(
    "approvals",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column(
        "request_id",
        sa.Uuid,
        sa.ForeignKey("enclave_requests.id", ondelete="CASCADE"),
        nullable=False,
        index=True,
    ),
    sa.Column("officer", sa.String(255), nullable=False),
    sa.Column("officer_name", sa.String(255), nullable=False),
    sa.Column("decision", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(2000), nullable=False),
    sa.Column("decided_at", Timestamp, nullable=False),
    # The database itself guarantees "two *distinct* officers", even under races.
    sa.UniqueConstraint("request_id", "officer", name="uq_approvals_request_officer"),
)

enclave_keys = sa.Table(
    "enclave_keys",
    metadata,
    # References only: Vault mount, key name and version, and data keys wrapped by that key.
    sa.Column(
        "request_id",
        sa.Uuid,
        sa.ForeignKey("enclave_requests.id"),
        primary_key=True,
    ),
    sa.Column("mount", sa.String(128), nullable=False),
    sa.Column("key_name", sa.String(128), nullable=False),
    sa.Column("key_version", sa.Integer, nullable=False),
    sa.Column("luks_wrapped", sa.String(1024), nullable=False),
    sa.Column("vtpm_wrapped", sa.String(1024), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("destroyed_at", Timestamp, nullable=True),
)
