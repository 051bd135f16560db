"""The control plane's tables (SQLAlchemy Core), mapped to the domain by the repositories.

Owns table definitions only; migrations in ``sovereign/migrations`` create them. UUID keys,
timezone-aware timestamps and named constraints (shared naming convention with ``audit``).
Labels are stored as a level name and an encoded compartment set so dominance can be filtered
in SQL (see :func:`audit.sql.compartments_within`).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa

from audit.sql import NAMING_CONVENTION
from audit.sql import metadata as audit_metadata

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

#: Everything Alembic manages: the control plane's tables and the audit library's.
ALL_METADATA = (metadata, audit_metadata)


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """A timezone-aware timestamp stored as UTC on every database, read back aware.

    SQLite keeps no offset: without this an aware ``12:00+02:00`` would be stored as ``12:00``
    and read back naive. Naive datetimes are refused on the way in (they are bugs here).
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Convert to UTC before storing."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must be timezone-aware")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        """Attach UTC to what SQLite returns naive (PostgreSQL returns it aware already)."""
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)


Timestamp = UtcDateTime()

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
    # The countries its enclaves may live in: a JSON list of ISO 3166-1 alpha-2 codes.
    sa.Column("residency", sa.Text, nullable=False, server_default='["ES"]'),
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
    # The requester's narrowing of the tenant's residency (JSON list; NULL: none), and the
    # country the enclave was pinned to at final approval (NULL before, and for old rows).
    sa.Column("residency", sa.Text, nullable=True),
    sa.Column("country", sa.String(2), nullable=True),
    # Keyset pages, newest first: all tenants, one tenant (an analyst's view), one state (an
    # officer's queue) and one tenant's requests in one state (migration 0012). The quota sum
    # and the reconciler's claims by state use the last two's prefixes.
    sa.Index("ix_enclave_requests_created", "created_at", "id"),
    sa.Index("ix_enclave_requests_tenant_created", "tenant", "created_at", "id"),
    sa.Index("ix_enclave_requests_state_created", "state", "created_at", "id"),
    sa.Index("ix_enclave_requests_tenant_state_created", "tenant", "state", "created_at", "id"),
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
    # The country whose secret store holds the key (NULL for keys made before residency).
    sa.Column("country", sa.String(2), nullable=True),
    # The secret store that holds it ("default" or a country code; NULL before residency).
    sa.Column("vault", sa.String(16), nullable=True),
)

sites = sa.Table(
    "sites",
    metadata,
    sa.Column("name", sa.String(63), primary_key=True),
    # ISO 3166-1 alpha-2, upper case (sovereign.domain.sites.check_country).
    sa.Column("country", sa.String(2), nullable=False),
    sa.Column("operator", sa.String(128), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
)

hosts = sa.Table(
    "hosts",
    metadata,
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("name", sa.String(64), nullable=False, unique=True),
    sa.Column("uri", sa.String(1024), nullable=False, unique=True),
    sa.Column("site", sa.String(128), nullable=False),
    sa.Column("accreditation_level", sa.String(64), nullable=False),
    sa.Column("accreditation_compartments", sa.String(1024), nullable=False),
    sa.Column("domain_type", sa.String(8), nullable=False),
    sa.Column("vcpus", sa.Integer, nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("reason", sa.String(2000), nullable=False, server_default=""),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    # The hypervisor's own identity (libvirt's host UUID, and its hostname): one record per
    # machine, whatever URI spelling reached it. NULL only for hosts registered before 0006.
    sa.Column("host_uuid", sa.String(36), nullable=True, unique=True),
    sa.Column("hostname", sa.String(255), nullable=True),
    # The country of the host's site, copied at registration and relocation (0009).
    sa.Column("country", sa.String(2), nullable=False, server_default=""),
    sa.CheckConstraint("state IN ('active', 'draining', 'quarantined')", name="state"),
    sa.CheckConstraint("domain_type IN ('kvm', 'qemu')", name="domain_type"),
)

gpus = sa.Table(
    "gpus",
    metadata,
    # One row per physical GPU: a GPU cannot be recorded (or allocated) twice.
    sa.Column("host", sa.String(64), sa.ForeignKey("hosts.name"), primary_key=True),
    sa.Column("address", sa.String(16), primary_key=True),
    sa.Column("model", sa.String(64), nullable=False),
    sa.Column("numa_node", sa.Integer, nullable=True),
    sa.Column("iommu_group", sa.Integer, nullable=True),
    sa.Column("group_members", sa.String(1024), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("enclave_id", sa.Uuid, nullable=True),
    sa.Column("last_label_level", sa.String(64), nullable=True),
    sa.Column("last_label_compartments", sa.String(1024), nullable=True),
    sa.Column("last_tenant", sa.String(64), nullable=True),
    sa.Column("updated_at", Timestamp, nullable=False),
    # The physical device: its host's hypervisor identity and PCI address, and the GPU's own
    # UUID where NVML reports it. Neither can be held by two records.
    sa.Column("host_uuid", sa.String(36), nullable=True),
    sa.Column("uuid", sa.String(64), nullable=True, unique=True),
    sa.UniqueConstraint("host_uuid", "address", name="uq_gpus_host_uuid_address"),
    sa.CheckConstraint(
        "state IN ('free', 'allocated', 'dirty', 'sanitizing', 'quarantined')", name="state"
    ),
    # An allocated GPU always names its enclave.
    sa.CheckConstraint("state != 'allocated' OR enclave_id IS NOT NULL", name="allocated_enclave"),
    sa.Index("ix_gpus_state", "state"),
    sa.Index("ix_gpus_enclave", "enclave_id"),
)

enclaves = sa.Table(
    "enclaves",
    metadata,
    # One enclave per approved request; its life is the request's state.
    sa.Column("id", sa.Uuid, sa.ForeignKey("enclave_requests.id"), primary_key=True),
    sa.Column("host", sa.String(64), sa.ForeignKey("hosts.name"), nullable=False),
    sa.Column("gpus", sa.String(1024), nullable=False),
    sa.Column("domain_name", sa.String(64), nullable=False, unique=True),
    sa.Column("label_level", sa.String(64), nullable=False),
    sa.Column("label_compartments", sa.String(1024), nullable=False),
    sa.Column("classified", sa.Boolean, nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("vcpus", sa.Integer, nullable=False),
    sa.Column("memory_mib", sa.Integer, nullable=False),
    sa.Column("disk_gib", sa.Integer, nullable=False),
    sa.Column("lease_expires_at", Timestamp, nullable=False),
    sa.Column("step", sa.String(32), nullable=False, server_default=""),
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("error", sa.String(2000), nullable=False, server_default=""),
    sa.Column("claimed_by", sa.String(128), nullable=True),
    sa.Column("claim_until", Timestamp, nullable=True),
    sa.Column("retry_at", Timestamp, nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("ended_at", Timestamp, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    # The enclave's GPU canary nonce (32 bytes, hex): only the control plane keeps it.
    sa.Column("canary_nonce", sa.String(64), nullable=True),
    # The country its host was in when it was placed ("" before countries were recorded).
    sa.Column("country", sa.String(2), nullable=False, server_default=""),
    sa.Index("ix_enclaves_host_open", "host", "ended_at"),
    sa.Index("ix_enclaves_open", "ended_at"),
)

dual_actions = sa.Table(
    "dual_actions",
    metadata,
    # Actions that need two distinct officers: proposed by one, confirmed by another.
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("params", sa.String(4000), nullable=False),
    sa.Column("label_level", sa.String(64), nullable=False),
    sa.Column("label_compartments", sa.String(1024), nullable=False),
    sa.Column("reason", sa.String(2000), nullable=False),
    sa.Column("proposer", sa.String(255), nullable=False),
    sa.Column("proposer_name", sa.String(255), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("confirmer", sa.String(255), nullable=True),
    sa.Column("confirmer_name", sa.String(255), nullable=True),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("expires_at", Timestamp, nullable=False),
    sa.Column("decided_at", Timestamp, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.CheckConstraint("confirmer IS NULL OR confirmer != proposer", name="two_people"),
    sa.Index("ix_dual_actions_state", "state"),
)

jobs = sa.Table(
    "jobs",
    metadata,
    # Code run by an enclave's agent; the code, logs and outputs are sealed blobs.
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("enclave_id", sa.Uuid, sa.ForeignKey("enclaves.id"), nullable=False),
    sa.Column("tenant", sa.String(64), nullable=False),
    sa.Column("label_level", sa.String(64), nullable=False),
    sa.Column("label_compartments", sa.String(1024), nullable=False),
    sa.Column("submitted_by", sa.String(255), nullable=False),
    sa.Column("manifest", sa.Text, nullable=False),
    sa.Column("files", sa.Text, nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("step", sa.String(16), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Column("updated_at", Timestamp, nullable=False),
    sa.Column("started_at", Timestamp, nullable=True),
    sa.Column("finished_at", Timestamp, nullable=True),
    sa.Column("exit_code", sa.Integer, nullable=True),
    sa.Column("runtime_s", sa.Float, nullable=True),
    sa.Column("error", sa.String(500), nullable=False, server_default=""),
    sa.Column("results", sa.Text, nullable=False),
    sa.Column("log_size", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("simulated", sa.Boolean, nullable=False),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("claimed_by", sa.String(128), nullable=True),
    sa.Column("claim_until", Timestamp, nullable=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Index("ix_jobs_enclave", "enclave_id", "created_at"),
    sa.Index("ix_jobs_step", "step"),
)

datasets = sa.Table(
    "datasets",
    metadata,
    # Input data of a tenant at a label; the bytes are a sealed blob.
    sa.Column("id", sa.Uuid, primary_key=True),
    sa.Column("tenant", sa.String(64), sa.ForeignKey("tenants.name"), nullable=False),
    sa.Column("name", sa.String(128), nullable=False),
    sa.Column("label_level", sa.String(64), nullable=False),
    sa.Column("label_compartments", sa.String(1024), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("uploaded_by", sa.String(255), nullable=False),
    sa.Column("key_mount", sa.String(255), nullable=False),
    sa.Column("key_name", sa.String(255), nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
    sa.Index("ix_datasets_tenant", "tenant", "created_at"),
)

blobs = sa.Table(
    "blobs",
    metadata,
    # Sealed bytes (sovereign.envelope) only: never plaintext.
    sa.Column("owner", sa.Uuid, primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("name", sa.String(255), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("data", sa.LargeBinary, nullable=False),
    sa.Column("created_at", Timestamp, nullable=False),
)
