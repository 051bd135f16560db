"""Repositories of jobs, datasets and sealed blobs (SQLAlchemy Core).

Owns the statements on the ``jobs``, ``datasets`` and ``blobs`` tables; rows become
:mod:`sovereign.domain.jobs` objects through the maps of :mod:`sovereign.adapters.mappings`.
Jobs use optimistic locking (``version``); on PostgreSQL the runner's work queue is read with
``FOR UPDATE SKIP LOCKED``, elsewhere the claim columns alone arbitrate. Blobs hold sealed bytes
only (the services seal before they store). Driver errors are translated by the unit of work
(:mod:`sovereign.adapters.database`).
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Collection
from datetime import UTC, datetime

import sqlalchemy as sa

from sovereign.adapters.mappings import BLOBS, DATASETS, JOBS
from sovereign.adapters.rowmap import LabelLoader
from sovereign.adapters.tables import blobs, datasets, jobs
from sovereign.domain.jobs import Blob, BlobKind, Dataset, Job, JobStep
from sovereign.errors import ConcurrentUpdateError

_JOB_CHANGES = JOBS.dumper(exclude=("id", "created_at", "version"))


class SqlJobRepository:
    """Jobs in ``jobs``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def add(self, job: Job) -> None:
        """Store a new job."""
        self._conn.execute(jobs.insert().values(**JOBS.values(job)))

    def get(self, job_id: uuid.UUID, *, for_update: bool = False) -> Job | None:
        """The job, or None."""
        stmt = JOBS.select().where(jobs.c.id == job_id)
        if for_update:
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        return None if r is None else JOBS.load(r, self._labels)

    def list(self, enclave_id: uuid.UUID) -> builtins.list[Job]:
        """The enclave's jobs, newest first."""
        stmt = (
            JOBS.select()
            .where(jobs.c.enclave_id == enclave_id)
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        )
        return JOBS.load_all(self._conn.execute(stmt), self._labels)

    def claimable(self, worker: str, now: datetime, limit: int) -> builtins.list[Job]:
        """Jobs not done that ``worker`` may take now, oldest first (``SKIP LOCKED`` on
        PostgreSQL, so concurrent runners each get different rows without waiting)."""
        c = jobs.c
        stmt = (
            JOBS.select()
            .where(c.step != JobStep.DONE.value)
            .where(sa.or_(c.claimed_by.is_(None), c.claimed_by == worker, c.claim_until <= now))
            .order_by(c.created_at, c.id)
            .limit(limit)
        )
        if self._conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        return JOBS.load_all(self._conn.execute(stmt), self._labels)

    def update(self, job: Job) -> None:
        """Store changes. :raises ConcurrentUpdateError: if the row changed since it was read."""
        result = self._conn.execute(
            jobs.update()
            .where(jobs.c.id == job.id, jobs.c.version == job.version)
            .values(version=job.version + 1, **_JOB_CHANGES(job))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="job", ident=str(job.id))
        job.version += 1


class SqlDatasetRepository:
    """Datasets in ``datasets``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def add(self, dataset: Dataset) -> None:
        """Store a new dataset."""
        self._conn.execute(datasets.insert().values(**DATASETS.values(dataset)))

    def get(self, dataset_id: uuid.UUID) -> Dataset | None:
        """The dataset, or None."""
        r = self._conn.execute(DATASETS.select().where(datasets.c.id == dataset_id)).first()
        return None if r is None else DATASETS.load(r, self._labels)

    def list(self, tenants: Collection[str] | None = None) -> builtins.list[Dataset]:
        """Datasets of ``tenants`` (None: all), newest first."""
        stmt = DATASETS.select()
        if tenants is not None:
            stmt = stmt.where(datasets.c.tenant.in_(sorted(tenants)))
        stmt = stmt.order_by(datasets.c.created_at.desc(), datasets.c.id.desc())
        return DATASETS.load_all(self._conn.execute(stmt), self._labels)


class SqlBlobRepository:
    """Sealed bytes in ``blobs``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def put(self, blob: Blob) -> None:
        """Store a blob (a duplicate key is a constraint violation: ConcurrentUpdateError)."""
        self._conn.execute(
            blobs.insert().values(**BLOBS.values(blob), created_at=datetime.now(UTC))
        )

    def get(self, owner: uuid.UUID, kind: BlobKind, name: str, seq: int = 0) -> Blob | None:
        """One blob, or None."""
        c = blobs.c
        stmt = BLOBS.select().where(
            c.owner == owner, c.kind == kind.value, c.name == name, c.seq == seq
        )
        r = self._conn.execute(stmt).first()
        return None if r is None else BLOBS.load(r, self._labels)

    def chunks(
        self, owner: uuid.UUID, kind: BlobKind, name: str, *, after: int = -1, limit: int = 64
    ) -> builtins.list[Blob]:
        """Up to ``limit`` blobs of one file with ``seq`` above ``after``, by ``seq``."""
        c = blobs.c
        stmt = (
            BLOBS.select()
            .where(c.owner == owner, c.kind == kind.value, c.name == name, c.seq > after)
            .order_by(c.seq)
            .limit(limit)
        )
        return BLOBS.load_all(self._conn.execute(stmt), self._labels)

    def last(self, owner: uuid.UUID, kind: BlobKind, name: str, before: int) -> Blob | None:
        """The blob of one file with the highest ``seq`` at or below ``before``, or None."""
        c = blobs.c
        stmt = (
            BLOBS.select()
            .where(c.owner == owner, c.kind == kind.value, c.name == name, c.seq <= before)
            .order_by(c.seq.desc())
            .limit(1)
        )
        r = self._conn.execute(stmt).first()
        return None if r is None else BLOBS.load(r, self._labels)
