"""In-memory repositories of jobs, datasets and sealed blobs, for unit tests.

Owns :class:`MemoryJobs`, the three repositories of one
:class:`~sovereign.adapters.memory.MemoryUnitOfWork`, which behave like those of
:mod:`sovereign.adapters.jobsdb` where a service can tell: the unit works on private copies and
publishes them on commit; jobs are optimistically locked by ``version``; a blob key (owner,
kind, name, seq) is stored once, and a duplicate is refused with the error the SQL unit raises
for the violated primary key (:class:`~sovereign.errors.ConcurrentUpdateError`), at ``put`` or,
if another unit stored it meanwhile, at commit. No locks: ``for_update`` does nothing.
"""

from __future__ import annotations

import builtins
import copy
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Protocol

from sovereign.domain.fleet import Enclave
from sovereign.domain.jobs import MAX_ERROR, Blob, BlobKind, Dataset, Job, JobStep
from sovereign.domain.tenants import Tenant
from sovereign.errors import ConcurrentUpdateError

BlobKey = tuple[uuid.UUID, BlobKind, str, int]


class JobStore(Protocol):
    """The committed rows (what :class:`~sovereign.adapters.memory.MemoryStore` holds)."""

    jobs: dict[uuid.UUID, Job]
    datasets: dict[uuid.UUID, Dataset]
    blobs: dict[BlobKey, Blob]


class MemoryJobRepository:
    """Jobs in a dict; ``versions`` remembers what each was when the unit began."""

    def __init__(self, data: dict[uuid.UUID, Job], enclaves: dict[uuid.UUID, Enclave]) -> None:
        self.data = data
        self.versions = {k: j.version for k, j in data.items()}
        self.touched: dict[uuid.UUID, None] = {}
        self._enclaves = enclaves

    def add(self, job: Job) -> None:
        if job.id in self.data or job.enclave_id not in self._enclaves:
            raise ConcurrentUpdateError(kind="job", ident=f"{job.id} (constraint)")
        stored = copy.deepcopy(job)
        stored.error = stored.error[:MAX_ERROR]
        self.data[job.id] = stored
        self.touched[job.id] = None

    def get(self, job_id: uuid.UUID, *, for_update: bool = False) -> Job | None:
        found = self.data.get(job_id)
        return copy.deepcopy(found) if found else None

    def list(self, enclave_id: uuid.UUID) -> builtins.list[Job]:
        found = [j for j in self.data.values() if j.enclave_id == enclave_id]
        found.sort(key=lambda j: (j.created_at, j.id), reverse=True)
        return [copy.deepcopy(j) for j in found]

    def claimable(self, worker: str, now: datetime, limit: int) -> builtins.list[Job]:
        found = [
            j for j in self.data.values() if j.step is not JobStep.DONE and j.claimable(now, worker)
        ]
        found.sort(key=lambda j: (j.created_at, j.id))
        return [copy.deepcopy(j) for j in found[: max(limit, 0)]]

    def update(self, job: Job) -> None:
        stored = self.data.get(job.id)
        if stored is None or stored.version != job.version:
            raise ConcurrentUpdateError(kind="job", ident=str(job.id))
        job.version += 1
        changed = copy.deepcopy(job)
        changed.created_at = stored.created_at
        # The column holds MAX_ERROR characters; the SQL repository cuts longer text too.
        changed.error = changed.error[:MAX_ERROR]
        self.data[job.id] = changed
        self.touched[job.id] = None


class MemoryDatasetRepository:
    """Datasets in a dict (they never change once stored)."""

    def __init__(self, data: dict[uuid.UUID, Dataset], tenants: dict[str, Tenant]) -> None:
        self.data = data
        self.added: dict[uuid.UUID, None] = {}
        self._tenants = tenants

    def add(self, dataset: Dataset) -> None:
        if dataset.id in self.data or dataset.tenant not in self._tenants:
            raise ConcurrentUpdateError(kind="dataset", ident=f"{dataset.id} (constraint)")
        self.data[dataset.id] = dataset
        self.added[dataset.id] = None

    def get(self, dataset_id: uuid.UUID) -> Dataset | None:
        return self.data.get(dataset_id)

    def list(self, tenants: Collection[str] | None = None) -> builtins.list[Dataset]:
        found = [d for d in self.data.values() if tenants is None or d.tenant in tenants]
        found.sort(key=lambda d: (d.created_at, d.id), reverse=True)
        return found


class MemoryBlobRepository:
    """Sealed blobs in a dict keyed by (owner, kind, name, seq)."""

    def __init__(self, data: dict[BlobKey, Blob]) -> None:
        self.data = data
        self.added: dict[BlobKey, None] = {}

    def put(self, blob: Blob) -> None:
        key = (blob.owner, blob.kind, blob.name, blob.seq)
        if key in self.data:
            raise ConcurrentUpdateError(kind="blob", ident=f"{blob.owner} (constraint)")
        self.data[key] = blob
        self.added[key] = None

    def get(self, owner: uuid.UUID, kind: BlobKind, name: str, seq: int = 0) -> Blob | None:
        return self.data.get((owner, kind, name, seq))

    def _file(self, owner: uuid.UUID, kind: BlobKind, name: str) -> builtins.list[Blob]:
        found = [
            b for (o, k, n, _), b in self.data.items() if o == owner and k is kind and n == name
        ]
        return sorted(found, key=lambda b: b.seq)

    def chunks(
        self, owner: uuid.UUID, kind: BlobKind, name: str, *, after: int = -1, limit: int = 64
    ) -> builtins.list[Blob]:
        return [b for b in self._file(owner, kind, name) if b.seq > after][: max(limit, 0)]

    def last(self, owner: uuid.UUID, kind: BlobKind, name: str, before: int) -> Blob | None:
        found = [b for b in self._file(owner, kind, name) if b.seq <= before]
        return found[-1] if found else None


class MemoryJobs:
    """The job, dataset and blob repositories of one memory unit of work."""

    def __init__(
        self,
        store: JobStore,
        enclaves: dict[uuid.UUID, Enclave],
        tenants: dict[str, Tenant],
    ) -> None:
        self.jobs = MemoryJobRepository(dict(store.jobs), enclaves)
        self.datasets = MemoryDatasetRepository(dict(store.datasets), tenants)
        self.blobs = MemoryBlobRepository(dict(store.blobs))

    def check(self, store: JobStore) -> None:
        """:raises ConcurrentUpdateError: if another unit changed what this one wrote."""
        for jid in self.jobs.touched:
            current = store.jobs.get(jid)
            if (current.version if current else None) != self.jobs.versions.get(jid):
                raise ConcurrentUpdateError(kind="job", ident=str(jid))
        for did in self.datasets.added:
            if did in store.datasets:
                raise ConcurrentUpdateError(kind="dataset", ident=str(did))
        for key in self.blobs.added:
            if key in store.blobs:
                raise ConcurrentUpdateError(kind="blob", ident=str(key[0]))

    def publish(self, store: JobStore) -> None:
        """Make this unit's rows the committed ones (after :meth:`check`)."""
        for jid in self.jobs.touched:
            store.jobs[jid] = self.jobs.data[jid]
        for did in self.datasets.added:
            store.datasets[did] = self.datasets.data[did]
        for key in self.blobs.added:
            store.blobs[key] = self.blobs.data[key]
