"""In-memory backends for fast unit tests of the services.

Owns :class:`MemoryStore` and :class:`MemoryUnitOfWork`, which behave like the SQL ones where
the services can tell: a unit works on a private copy, commit publishes it (refusing a request,
host, GPU, enclave or action changed meanwhile), anything else is rolled back, and audit events
commit with the change. The fleet's repositories live in :mod:`sovereign.adapters.memory_fleet`.
The contract tests in ``tests/contract`` hold both backends to the same behaviour.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from audit import AuditEvent, AuditQuery, MemoryAuditStore, StoredEvent
from sovereign.adapters.database import decode_cursor, encode_cursor
from sovereign.adapters.memory_fleet import (
    GpuKey,
    MemoryActionRepository,
    MemoryEnclaveRepository,
    MemoryFleet,
    MemoryGpuRepository,
    MemoryHostRepository,
)
from sovereign.adapters.memory_jobs import (
    BlobKey,
    MemoryBlobRepository,
    MemoryDatasetRepository,
    MemoryJobRepository,
    MemoryJobs,
)
from sovereign.domain.actions import DualAction
from sovereign.domain.fleet import Enclave, Gpu, Host
from sovereign.domain.jobs import Blob, Dataset, Job
from sovereign.domain.keys import EnclaveKeys
from sovereign.domain.policy import Visibility
from sovereign.domain.requests import COMMITTED_STATES, EnclaveRequest
from sovereign.domain.sites import Site
from sovereign.domain.tenants import Image, Resources, Tenant
from sovereign.errors import ConcurrentUpdateError
from sovereign.services.ports import Page, RequestFilter


@dataclass
class MemoryStore:
    """The shared "database" of the in-memory backend."""

    tenants: dict[str, Tenant] = field(default_factory=dict)
    images: dict[str, Image] = field(default_factory=dict)
    requests: dict[uuid.UUID, EnclaveRequest] = field(default_factory=dict)
    keys: dict[uuid.UUID, EnclaveKeys] = field(default_factory=dict)
    sites: dict[str, Site] = field(default_factory=dict)
    hosts: dict[uuid.UUID, Host] = field(default_factory=dict)
    gpus: dict[GpuKey, Gpu] = field(default_factory=dict)
    enclaves: dict[uuid.UUID, Enclave] = field(default_factory=dict)
    actions: dict[uuid.UUID, DualAction] = field(default_factory=dict)
    jobs: dict[uuid.UUID, Job] = field(default_factory=dict)
    datasets: dict[uuid.UUID, Dataset] = field(default_factory=dict)
    blobs: dict[BlobKey, Blob] = field(default_factory=dict)
    audit: MemoryAuditStore = field(default_factory=MemoryAuditStore)
    lock: threading.Lock = field(default_factory=threading.Lock)


class MemoryTenantRepository:
    """Tenants in a dict."""

    def __init__(self, data: dict[str, Tenant]) -> None:
        self.data = data

    def get(self, name: str, *, for_update: bool = False) -> Tenant | None:
        return self.data.get(name)

    def list(self) -> list[Tenant]:
        return [self.data[k] for k in sorted(self.data)]

    def add(self, tenant: Tenant) -> None:
        if tenant.name in self.data:
            raise ConcurrentUpdateError(kind="tenant", ident=tenant.name)
        self.data[tenant.name] = tenant


class MemorySiteRepository:
    """Sites in a dict; ``added`` are the names this unit stored (checked again at commit)."""

    def __init__(self, data: dict[str, Site]) -> None:
        self.data = data
        self.added: list[str] = []

    def add(self, site: Site) -> None:
        """Store a new site. :raises ConcurrentUpdateError: one of that name exists."""
        if site.name in self.data:
            raise ConcurrentUpdateError(kind="site", ident=f"{site.name} (constraint pk_sites)")
        self.data[site.name] = site
        self.added.append(site.name)

    def get(self, name: str) -> Site | None:
        """The site called ``name``, or None."""
        return self.data.get(name)

    def list(self) -> list[Site]:
        """All sites, by name."""
        return [self.data[k] for k in sorted(self.data)]


class MemoryImageRepository:
    """Images in a dict."""

    def __init__(self, data: dict[str, Image]) -> None:
        self.data = data

    def get(self, name: str) -> Image | None:
        return self.data.get(name)

    def list(self) -> list[Image]:
        return [self.data[k] for k in sorted(self.data)]

    def add(self, image: Image) -> None:
        if image.name in self.data:
            raise ConcurrentUpdateError(kind="image", ident=image.name)
        self.data[image.name] = image


class MemoryRequestRepository:
    """Requests in a dict; ``versions`` remembers what each was when the unit began."""

    def __init__(self, data: dict[uuid.UUID, EnclaveRequest]) -> None:
        self.data = data
        self.versions = {k: r.version for k, r in data.items()}
        self.touched: set[uuid.UUID] = set()

    def add(self, request: EnclaveRequest) -> None:
        self.data[request.id] = copy.deepcopy(request)
        self.touched.add(request.id)

    def get(self, request_id: uuid.UUID, *, for_update: bool = False) -> EnclaveRequest | None:
        found = self.data.get(request_id)
        return copy.deepcopy(found) if found else None

    def update(self, request: EnclaveRequest) -> None:
        stored = self.data.get(request.id)
        if stored is None or stored.version != request.version:
            raise ConcurrentUpdateError(kind="request", ident=str(request.id))
        request.version += 1
        self.data[request.id] = copy.deepcopy(request)
        self.touched.add(request.id)

    def list(self, visibility: Visibility, query: RequestFilter) -> Page[EnclaveRequest]:
        found = [
            r
            for r in self.data.values()
            if visibility.covers(r.label)
            and (visibility.tenants is None or r.tenant in visibility.tenants)
            and (query.state is None or r.state is query.state)
            and (query.tenant is None or r.tenant == query.tenant)
        ]
        found.sort(key=lambda r: (r.created_at, r.id), reverse=True)
        if query.cursor is not None:
            after = decode_cursor(query.cursor)
            found = [r for r in found if (r.created_at, r.id) < after]
        page = found[: query.limit]
        more = len(found) > query.limit
        cursor = encode_cursor(page[-1].created_at, page[-1].id) if more else None
        return Page([copy.deepcopy(r) for r in page], cursor)

    def committed_usage(self, tenant: str) -> Resources:
        total = Resources()
        for r in self.data.values():
            if r.tenant == tenant and r.state in COMMITTED_STATES:
                total += r.resources
        return total


class MemoryKeyRepository:
    """Key references in a dict."""

    def __init__(self, data: dict[uuid.UUID, EnclaveKeys]) -> None:
        self.data = data

    def add(self, keys: EnclaveKeys) -> None:
        if keys.request_id in self.data:
            raise ConcurrentUpdateError(kind="keys", ident=str(keys.request_id))
        self.data[keys.request_id] = keys

    def get(self, request_id: uuid.UUID) -> EnclaveKeys | None:
        return self.data.get(request_id)

    def update(self, keys: EnclaveKeys) -> None:
        self.data[keys.request_id] = keys


class _PendingAudit:
    """Events buffered until the unit commits, like rows in an open transaction."""

    def __init__(self, store: MemoryAuditStore) -> None:
        self.store = store
        self.pending: list[AuditEvent] = []

    def append(self, events: Iterable[AuditEvent]) -> None:
        if self.store.fail:
            raise OSError("audit store unavailable (simulated)")
        self.pending.extend(events)

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        return self.store.query(query)


class MemoryUnitOfWork:
    """A unit over private copies of a :class:`MemoryStore`."""

    hosts: MemoryHostRepository
    gpus: MemoryGpuRepository
    enclaves: MemoryEnclaveRepository
    actions: MemoryActionRepository
    jobs: MemoryJobRepository
    datasets: MemoryDatasetRepository
    blobs: MemoryBlobRepository

    def __init__(self, store: MemoryStore) -> None:
        self._store = store

    def __enter__(self) -> Self:
        with self._store.lock:
            self.tenants = MemoryTenantRepository(dict(self._store.tenants))
            self.images = MemoryImageRepository(dict(self._store.images))
            self.requests = MemoryRequestRepository(dict(self._store.requests))
            self.keys = MemoryKeyRepository(dict(self._store.keys))
            self.sites = MemorySiteRepository(dict(self._store.sites))
            self._fleet = MemoryFleet(self._store, self.requests.data)
            self._jobs = MemoryJobs(self._store, self._fleet.enclaves.table.rows, self.tenants.data)
        self.hosts = self._fleet.hosts
        self.gpus = self._fleet.gpus
        self.enclaves = self._fleet.enclaves
        self.actions = self._fleet.actions
        self.jobs = self._jobs.jobs
        self.datasets = self._jobs.datasets
        self.blobs = self._jobs.blobs
        self.audit = _PendingAudit(self._store.audit)
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.audit.pending.clear()

    def commit(self) -> None:
        """Publish the unit's changes. :raises ConcurrentUpdateError: lost a race."""
        store = self._store
        with store.lock:
            for rid in self.requests.touched:
                current = store.requests.get(rid)
                seen = self.requests.versions.get(rid)
                if (current.version if current else None) != seen:
                    raise ConcurrentUpdateError(kind="request", ident=str(rid))
            for name in self.sites.added:
                if name in store.sites:
                    raise ConcurrentUpdateError(kind="site", ident=f"{name} (constraint pk_sites)")
            self._fleet.check(store)
            self._jobs.check(store)
            store.audit.append(self.audit.pending)
            store.tenants.update(self.tenants.data)
            store.images.update(self.images.data)
            store.keys.update(self.keys.data)
            store.sites.update({name: self.sites.data[name] for name in self.sites.added})
            for rid in self.requests.touched:
                store.requests[rid] = self.requests.data[rid]
            self._fleet.publish(store)
            self._jobs.publish(store)
        self.audit.pending = []


class MemoryUnitOfWorkFactory:
    """Makes units over one shared :class:`MemoryStore`."""

    def __init__(self, store: MemoryStore | None = None) -> None:
        self.store = store or MemoryStore()

    def __call__(self, *, readonly: bool = False) -> MemoryUnitOfWork:
        return MemoryUnitOfWork(self.store)
