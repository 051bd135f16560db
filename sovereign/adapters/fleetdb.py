"""The fleet's repositories: sites, hosts, GPUs, enclaves, two-person actions (SQLAlchemy Core).

Owns the statements on the ``sites``, ``hosts``, ``gpus``, ``enclaves`` and ``dual_actions``
tables; their rows become :mod:`sovereign.domain.fleet` / :mod:`sovereign.domain.actions` /
:mod:`sovereign.domain.sites` objects through the maps of :mod:`sovereign.adapters.mappings`.
Hosts, enclaves and actions use optimistic locking (``version``); a GPU changes state only by
compare-and-set on its current state, so two placements can never both allocate it. On
PostgreSQL the reconciler's work queue is read with ``FOR UPDATE SKIP LOCKED``; elsewhere the
claim columns alone arbitrate. Driver errors are translated by the unit of work
(:mod:`sovereign.adapters.database`).
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Collection
from datetime import datetime

import sqlalchemy as sa

from sovereign.adapters.mappings import ACTIONS, ENCLAVES, GPUS, HOSTS, SITES
from sovereign.adapters.rowmap import LabelLoader
from sovereign.adapters.tables import dual_actions, enclave_requests, enclaves, gpus, hosts, sites
from sovereign.domain.actions import ActionState, DualAction
from sovereign.domain.fleet import Enclave, Gpu, Host
from sovereign.domain.placement import GpuStatus
from sovereign.domain.sites import Site
from sovereign.errors import ConcurrentUpdateError

#: What each update may change: never the key or the creation time; versions are bumped by the
#: update itself; a decision on an action changes its state, confirmer and time only.
_HOST_CHANGES = HOSTS.dumper(exclude=("id", "created_at", "version"))
_GPU_CHANGES = GPUS.dumper(exclude=("host", "address"))
_ENCLAVE_CHANGES = ENCLAVES.dumper(exclude=("id", "created_at", "version"))
_ACTION_CHANGES = ACTIONS.dumper(only=("state", "confirmer", "confirmer_name", "decided_at"))


class SqlSiteRepository:
    """Sites in ``sites``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def add(self, site: Site) -> None:
        """Store a new site (a duplicate name breaks ``pk_sites``)."""
        self._conn.execute(sites.insert().values(**SITES.values(site)))

    def get(self, name: str) -> Site | None:
        """The site called ``name``, or None."""
        r = self._conn.execute(SITES.select().where(sites.c.name == name)).first()
        return None if r is None else SITES.load(r, self._labels)

    def list(self) -> list[Site]:
        """All sites, by name."""
        rows = self._conn.execute(SITES.select().order_by(sites.c.name))
        return SITES.load_all(rows, self._labels)


class SqlHostRepository:
    """Hosts in ``hosts``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def add(self, host: Host) -> None:
        """Store a new host."""
        self._conn.execute(hosts.insert().values(**HOSTS.values(host)))

    def get(self, name: str, *, for_update: bool = False) -> Host | None:
        """The host called ``name``, or None."""
        stmt = HOSTS.select().where(hosts.c.name == name)
        if for_update:
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        return None if r is None else HOSTS.load(r, self._labels)

    def list(self) -> list[Host]:
        """All hosts, by name."""
        rows = self._conn.execute(HOSTS.select().order_by(hosts.c.name))
        return HOSTS.load_all(rows, self._labels)

    def lock_all(self) -> None:
        """Serialise placements: lock every host row until the transaction ends.

        SQLite's ``BEGIN IMMEDIATE`` already serialises writers; PostgreSQL needs the lock.
        """
        if self._conn.dialect.name == "postgresql":
            self._conn.execute(sa.select(hosts.c.id).with_for_update()).all()

    def update(self, host: Host) -> None:
        """Store changes. :raises ConcurrentUpdateError: if the row changed since it was read."""
        result = self._conn.execute(
            hosts.update()
            .where(hosts.c.id == host.id, hosts.c.version == host.version)
            .values(version=host.version + 1, **_HOST_CHANGES(host))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="host", ident=host.name)
        host.version += 1


class SqlGpuRepository:
    """GPUs in ``gpus``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def add(self, gpu: Gpu) -> None:
        """Store a newly discovered GPU."""
        self._conn.execute(gpus.insert().values(**GPUS.values(gpu)))

    def list(self, host: str | None = None) -> list[Gpu]:
        """GPUs (of one host, or all), by host and address."""
        stmt = GPUS.select().order_by(gpus.c.host, gpus.c.address)
        if host is not None:
            stmt = stmt.where(gpus.c.host == host)
        return GPUS.load_all(self._conn.execute(stmt), self._labels)

    def for_enclave(self, enclave_id: uuid.UUID) -> builtins.list[Gpu]:
        """GPUs that name ``enclave_id`` (held now, or last held)."""
        stmt = GPUS.select().where(gpus.c.enclave_id == enclave_id).order_by(gpus.c.address)
        return GPUS.load_all(self._conn.execute(stmt), self._labels)

    def update(self, gpu: Gpu, expected: GpuStatus) -> None:
        """Store ``gpu`` if its stored state is still ``expected`` (compare-and-set).

        :raises ConcurrentUpdateError: if someone else changed the GPU's state first.
        """
        result = self._conn.execute(
            gpus.update()
            .where(gpus.c.host == gpu.host, gpus.c.address == gpu.address)
            .where(gpus.c.state == expected)
            .values(**_GPU_CHANGES(gpu))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="gpu", ident=f"{gpu.host}/{gpu.address}")


class SqlEnclaveRepository:
    """Enclaves in ``enclaves``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def add(self, enclave: Enclave) -> None:
        """Store a newly placed enclave."""
        self._conn.execute(enclaves.insert().values(**ENCLAVES.values(enclave)))

    def get(self, enclave_id: uuid.UUID, *, for_update: bool = False) -> Enclave | None:
        """The enclave, or None."""
        stmt = ENCLAVES.select().where(enclaves.c.id == enclave_id)
        if for_update:
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        return None if r is None else ENCLAVES.load(r, self._labels)

    def list(self, *, open_only: bool = True, host: str | None = None) -> list[Enclave]:
        """Enclaves not yet ended (or all), oldest first."""
        stmt = ENCLAVES.select().order_by(enclaves.c.created_at, enclaves.c.id)
        if open_only:
            stmt = stmt.where(enclaves.c.ended_at.is_(None))
        if host is not None:
            stmt = stmt.where(enclaves.c.host == host)
        return ENCLAVES.load_all(self._conn.execute(stmt), self._labels)

    def overlapping(self, since: datetime | None, until: datetime | None) -> builtins.list[Enclave]:
        """Enclaves that existed at some time in ``[since, until)``, ended ones included,
        oldest first (what usage reports add up)."""
        c = enclaves.c
        stmt = ENCLAVES.select().order_by(c.created_at, c.id)
        if until is not None:
            stmt = stmt.where(c.created_at < until)
        if since is not None:
            stmt = stmt.where(sa.or_(c.ended_at.is_(None), c.ended_at > since))
        return ENCLAVES.load_all(self._conn.execute(stmt), self._labels)

    def claimable(
        self, worker: str, now: datetime, limit: int, *, states: Collection[str]
    ) -> builtins.list[Enclave]:
        """Open enclaves whose request is in ``states`` that ``worker`` may take now.

        On PostgreSQL the rows are locked with ``SKIP LOCKED``: concurrent workers each get
        different rows without waiting; the caller claims them in the same transaction.
        """
        c = enclaves.c
        stmt = (
            ENCLAVES.select()
            .join(enclave_requests, enclave_requests.c.id == c.id)
            .where(enclave_requests.c.state.in_(list(states)))
            .where(c.ended_at.is_(None))
            .where(sa.or_(c.retry_at.is_(None), c.retry_at <= now))
            .where(sa.or_(c.claimed_by.is_(None), c.claimed_by == worker, c.claim_until <= now))
            .order_by(c.updated_at, c.id)
            .limit(limit)
        )
        if self._conn.dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True, of=enclaves)
        return ENCLAVES.load_all(self._conn.execute(stmt), self._labels)

    def update(self, enclave: Enclave) -> None:
        """Store changes. :raises ConcurrentUpdateError: if the row changed since it was read."""
        result = self._conn.execute(
            enclaves.update()
            .where(enclaves.c.id == enclave.id, enclaves.c.version == enclave.version)
            .values(version=enclave.version + 1, **_ENCLAVE_CHANGES(enclave))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="enclave", ident=str(enclave.id))
        enclave.version += 1


class SqlActionRepository:
    """Two-person actions in ``dual_actions``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def add(self, action: DualAction) -> None:
        """Store a new proposal."""
        self._conn.execute(dual_actions.insert().values(**ACTIONS.values(action)))

    def get(self, action_id: uuid.UUID, *, for_update: bool = False) -> DualAction | None:
        """The proposal, or None."""
        stmt = ACTIONS.select().where(dual_actions.c.id == action_id)
        if for_update:
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        return None if r is None else ACTIONS.load(r, self._labels)

    def list(self, state: ActionState | None = None) -> list[DualAction]:
        """Proposals (in ``state``, or all), newest first."""
        stmt = ACTIONS.select().order_by(dual_actions.c.created_at.desc(), dual_actions.c.id)
        if state is not None:
            stmt = stmt.where(dual_actions.c.state == state.value)
        return ACTIONS.load_all(self._conn.execute(stmt), self._labels)

    def update(self, action: DualAction) -> None:
        """Store a decision. :raises ConcurrentUpdateError: if it changed since it was read."""
        result = self._conn.execute(
            dual_actions.update()
            .where(dual_actions.c.id == action.id, dual_actions.c.version == action.version)
            .values(version=action.version + 1, **_ACTION_CHANGES(action))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="action", ident=str(action.id))
        action.version += 1
