"""In-memory repositories of the fleet: hosts, GPUs, enclaves and two-person actions.

Owns :class:`MemoryFleet`, the four fleet repositories of one
:class:`~sovereign.adapters.memory.MemoryUnitOfWork`, which behave like those of
:mod:`sovereign.adapters.fleetdb` where a service can tell: the unit reads and writes private
copies of the store's rows and publishes them on commit; hosts, enclaves and actions are
optimistically locked by ``version``, a GPU by compare-and-set on its state, and commit refuses
a row that another unit changed meanwhile. The tables' constraints (unique names, foreign keys,
``CHECK``s, ``NOT NULL``) are enforced with the error the SQL unit raises once it has translated
the driver's ``IntegrityError``: :class:`~sovereign.errors.ConcurrentUpdateError`. Columns the
SQL repositories do not store or change are not stored or changed here either. There are no
locks: ``for_update`` and :meth:`MemoryHostRepository.lock_all` do nothing, and the commit-time
checks stand in for them. For unit tests only.
"""

from __future__ import annotations

import builtins
import copy
import json
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import replace
from datetime import datetime
from typing import Any, Generic, Protocol, TypeVar

from sovereign.domain.actions import ActionState, DualAction
from sovereign.domain.fleet import DOMAIN_TYPES, GPU_STATES, HOST_STATES, Enclave, Gpu, Host
from sovereign.domain.placement import GpuStatus
from sovereign.domain.requests import EnclaveRequest
from sovereign.errors import ConcurrentUpdateError

K = TypeVar("K")
V = TypeVar("V")

GpuKey = tuple[str, str]

#: Length of ``enclaves.error``; the SQL repository cuts longer messages to it.
ERROR_LENGTH = 2000


class FleetStore(Protocol):
    """The fleet's committed rows (what :class:`~sovereign.adapters.memory.MemoryStore` holds)."""

    hosts: dict[uuid.UUID, Host]
    gpus: dict[GpuKey, Gpu]
    enclaves: dict[uuid.UUID, Enclave]
    actions: dict[uuid.UUID, DualAction]


def _refused(kind: str, ident: object, constraint: str) -> ConcurrentUpdateError:
    # translate_errors() maps every IntegrityError to ConcurrentUpdateError; the same class
    # here means a service handles a violated constraint alike on both backends.
    return ConcurrentUpdateError(kind=kind, ident=f"{ident} (constraint {constraint})")


class _Table(Generic[K, V]):
    """One table as a unit sees it: the rows it began with, its private rows, what it wrote.

    Stored rows are copies that are replaced, never changed in place, so a shallow copy of a
    dict is a snapshot and rows may be shared between the store and the units.
    """

    def __init__(
        self,
        kind: str,
        rows: Mapping[K, V],
        guard: Callable[[V], object],
        ident: Callable[[V], str],
    ) -> None:
        self.kind = kind
        self.began = dict(rows)
        self.rows = dict(rows)
        self.written: dict[K, None] = {}  # an ordered set
        self._guard = guard
        self._ident = ident

    def put(self, key: K, row: V) -> None:
        """Store ``row`` (already a private copy) in the unit."""
        self.rows[key] = row
        self.written[key] = None

    def changes(self) -> dict[K, V]:
        """The rows this unit added or changed."""
        return {key: self.rows[key] for key in self.written}

    def check(self, committed: Mapping[K, V]) -> None:
        """:raises ConcurrentUpdateError: if a row this unit wrote was added or changed (by its
        guard: version or state) in ``committed`` since the unit began."""
        for key in self.written:
            now, then = committed.get(key), self.began.get(key)
            if self._guarded(now) != self._guarded(then):
                row = now if now is not None else then
                assert row is not None
                raise ConcurrentUpdateError(kind=self.kind, ident=self._ident(row))

    def _guarded(self, row: V | None) -> object:
        return None if row is None else self._guard(row)


def _sorted(rows: Iterable[V], key: Callable[[V], Any]) -> list[V]:
    # Copies out: callers mutate what they get, and only update() may change a stored row.
    return [copy.deepcopy(row) for row in sorted(rows, key=key)]


class MemoryHostRepository:
    """Hosts by id, found by unique name (like ``hosts``: unique name, URI and host UUID)."""

    def __init__(self, table: _Table[uuid.UUID, Host]) -> None:
        self.table = table

    def add(self, host: Host) -> None:
        """Store a new host. :raises ConcurrentUpdateError: a constraint refused it."""
        if host.id in self.table.rows:
            raise _refused("host", host.name, "pk_hosts")
        stored = copy.deepcopy(host)
        host_violations(stored, self.table.rows.values())
        self.table.put(host.id, stored)

    def get(self, name: str, *, for_update: bool = False) -> Host | None:
        """The host called ``name``, or None."""
        for host in self.table.rows.values():
            if host.name == name:
                return copy.deepcopy(host)
        return None

    def list(self) -> list[Host]:
        """All hosts, by name."""
        return _sorted(self.table.rows.values(), lambda h: (h.name,))

    def lock_all(self) -> None:
        """Nothing to lock: commit refuses rows changed meanwhile."""

    def update(self, host: Host) -> None:
        """Store changes. :raises ConcurrentUpdateError: if it changed since it was read."""
        stored = self.table.rows.get(host.id)
        if stored is None or stored.version != host.version:
            raise ConcurrentUpdateError(kind="host", ident=host.name)
        changed = replace(
            copy.deepcopy(host), created_at=stored.created_at, version=host.version + 1
        )
        host_violations(changed, self.table.rows.values())
        self.table.put(host.id, changed)
        host.version += 1


def host_violations(host: Host, others: Iterable[Host]) -> None:
    """:raises ConcurrentUpdateError: if ``host`` breaks a ``hosts`` constraint among
    ``others`` (rows with the same id are the host itself)."""
    if host.state not in HOST_STATES:
        raise _refused("host", host.name, "ck_hosts_state")
    if host.domain_type not in DOMAIN_TYPES:
        raise _refused("host", host.name, "ck_hosts_domain_type")
    for other in others:
        if other.id == host.id:
            continue
        if other.name == host.name:
            raise _refused("host", host.name, "uq_hosts_name")
        if other.uri == host.uri:
            raise _refused("host", host.name, "uq_hosts_uri")
        if host.host_uuid is not None and other.host_uuid == host.host_uuid:
            raise _refused("host", host.name, "uq_hosts_host_uuid")


def gpu_violations(gpu: Gpu, others: Iterable[Gpu]) -> None:
    """:raises ConcurrentUpdateError: if ``gpu`` breaks a unique constraint of ``gpus`` among
    ``others`` (the row with the same key is the GPU itself)."""
    for other in others:
        if (other.host, other.address) == (gpu.host, gpu.address):
            continue
        ident = f"{gpu.host}/{gpu.address}"
        if gpu.host_uuid is not None and (other.host_uuid, other.address) == (
            gpu.host_uuid,
            gpu.address,
        ):
            raise _refused("gpu", ident, "uq_gpus_host_uuid_address")
        if gpu.uuid is not None and other.uuid == gpu.uuid:
            raise _refused("gpu", ident, "uq_gpus_uuid")


class MemoryGpuRepository:
    """GPUs by (host, address); a GPU changes only by compare-and-set on its state."""

    def __init__(self, table: _Table[GpuKey, Gpu], hosts: _Table[uuid.UUID, Host]) -> None:
        self.table = table
        self._hosts = hosts

    def _checked(self, gpu: Gpu) -> Gpu:
        stored = replace(copy.deepcopy(gpu), group_members=tuple(gpu.group_members))
        ident = f"{gpu.host}/{gpu.address}"
        if not any(host.name == gpu.host for host in self._hosts.rows.values()):
            raise _refused("gpu", ident, "fk_gpus_host_hosts")
        if gpu.state not in GPU_STATES:
            raise _refused("gpu", ident, "ck_gpus_state")
        if gpu.state == "allocated" and gpu.enclave_id is None:
            raise _refused("gpu", ident, "ck_gpus_allocated_enclave")
        if gpu.updated_at is None:
            raise _refused("gpu", ident, "gpus.updated_at NOT NULL")
        gpu_violations(stored, self.table.rows.values())
        return stored

    def add(self, gpu: Gpu) -> None:
        """Store a newly discovered GPU. :raises ConcurrentUpdateError: already recorded."""
        if (gpu.host, gpu.address) in self.table.rows:
            raise _refused("gpu", f"{gpu.host}/{gpu.address}", "pk_gpus")
        self.table.put((gpu.host, gpu.address), self._checked(gpu))

    def list(self, host: str | None = None) -> list[Gpu]:
        """GPUs of one host, or all, by host and address."""
        found = (g for g in self.table.rows.values() if host is None or g.host == host)
        return _sorted(found, lambda g: (g.host, g.address))

    def for_enclave(self, enclave_id: uuid.UUID) -> builtins.list[Gpu]:
        """GPUs that name ``enclave_id`` (held now, or last held), by address."""
        found = (g for g in self.table.rows.values() if g.enclave_id == enclave_id)
        return _sorted(found, lambda g: (g.address, g.host))

    def update(self, gpu: Gpu, expected: GpuStatus) -> None:
        """Store ``gpu`` if its stored state is still ``expected`` (compare-and-set).

        :raises ConcurrentUpdateError: if someone else changed the GPU's state first.
        """
        key = (gpu.host, gpu.address)
        stored = self.table.rows.get(key)
        if stored is None or stored.state != expected:
            raise ConcurrentUpdateError(kind="gpu", ident=f"{gpu.host}/{gpu.address}")
        self.table.put(key, self._checked(gpu))


class MemoryEnclaveRepository:
    """Enclaves by id (the id of their request, in the same unit)."""

    def __init__(
        self,
        table: _Table[uuid.UUID, Enclave],
        hosts: _Table[uuid.UUID, Host],
        requests: Mapping[uuid.UUID, EnclaveRequest],
    ) -> None:
        self.table = table
        self._hosts = hosts
        self._requests = requests

    def _checked(self, enclave: Enclave) -> Enclave:
        stored = replace(
            copy.deepcopy(enclave),
            gpus=tuple(enclave.gpus),
            error=enclave.error[:ERROR_LENGTH],
        )
        if enclave.id not in self._requests:
            raise _refused("enclave", enclave.id, "fk_enclaves_id_enclave_requests")
        if not any(host.name == enclave.host for host in self._hosts.rows.values()):
            raise _refused("enclave", enclave.id, "fk_enclaves_host_hosts")
        enclave_violations(stored, self.table.rows.values())
        return stored

    def add(self, enclave: Enclave) -> None:
        """Store a newly placed enclave. :raises ConcurrentUpdateError: a constraint refused it."""
        if enclave.id in self.table.rows:
            raise _refused("enclave", enclave.id, "pk_enclaves")
        self.table.put(enclave.id, self._checked(enclave))

    def get(self, enclave_id: uuid.UUID, *, for_update: bool = False) -> Enclave | None:
        """The enclave, or None."""
        found = self.table.rows.get(enclave_id)
        return None if found is None else copy.deepcopy(found)

    def list(self, *, open_only: bool = True, host: str | None = None) -> list[Enclave]:
        """Enclaves not yet ended (or all), oldest first."""
        found = (
            e
            for e in self.table.rows.values()
            if (not open_only or e.ended_at is None) and (host is None or e.host == host)
        )
        return _sorted(found, lambda e: (e.created_at, e.id))

    def overlapping(self, since: datetime | None, until: datetime | None) -> builtins.list[Enclave]:
        """Enclaves that existed at some time in ``[since, until)``, ended ones included,
        oldest first."""
        found = (
            e
            for e in self.table.rows.values()
            if (until is None or e.created_at < until)
            and (since is None or e.ended_at is None or e.ended_at > since)
        )
        return _sorted(found, lambda e: (e.created_at, e.id))

    def claimable(
        self, worker: str, now: datetime, limit: int, *, states: Collection[str]
    ) -> builtins.list[Enclave]:
        """Open enclaves whose request is in ``states`` that ``worker`` may take now, least
        recently updated first."""
        wanted = {str(state) for state in states}
        found = []
        for enclave in self.table.rows.values():
            request = self._requests.get(enclave.id)
            if (
                enclave.ended_at is None
                and request is not None
                and request.state.value in wanted
                and enclave.claimable(now, worker)
            ):
                found.append(enclave)
        return _sorted(found, lambda e: (e.updated_at, e.id))[: max(limit, 0)]

    def update(self, enclave: Enclave) -> None:
        """Store changes. :raises ConcurrentUpdateError: if it changed since it was read."""
        stored = self.table.rows.get(enclave.id)
        if stored is None or stored.version != enclave.version:
            raise ConcurrentUpdateError(kind="enclave", ident=str(enclave.id))
        changed = self._checked(enclave)
        self.table.put(
            enclave.id,
            replace(changed, created_at=stored.created_at, version=enclave.version + 1),
        )
        enclave.version += 1


def enclave_violations(enclave: Enclave, others: Iterable[Enclave]) -> None:
    """:raises ConcurrentUpdateError: if ``enclave`` breaks a unique constraint of
    ``enclaves`` among ``others`` (rows with the same id are the enclave itself)."""
    for other in others:
        if other.id != enclave.id and other.domain_name == enclave.domain_name:
            raise _refused("enclave", enclave.id, "uq_enclaves_domain_name")


class MemoryActionRepository:
    """Two-person actions by id; only the decision changes once proposed."""

    def __init__(self, table: _Table[uuid.UUID, DualAction]) -> None:
        self.table = table

    @staticmethod
    def _checked(action: DualAction) -> DualAction:
        if action.confirmer is not None and action.confirmer == action.proposer:
            raise _refused("action", action.id, "ck_dual_actions_two_people")
        # Parameters are stored as JSON (tuples come back as lists); notes are not stored.
        params = json.loads(json.dumps(action.params, sort_keys=True))
        return replace(copy.deepcopy(action), params=params, notes={})

    def add(self, action: DualAction) -> None:
        """Store a new proposal. :raises ConcurrentUpdateError: a constraint refused it."""
        if action.id in self.table.rows:
            raise _refused("action", action.id, "pk_dual_actions")
        self.table.put(action.id, self._checked(action))

    def get(self, action_id: uuid.UUID, *, for_update: bool = False) -> DualAction | None:
        """The proposal, or None."""
        found = self.table.rows.get(action_id)
        return None if found is None else copy.deepcopy(found)

    def list(self, state: ActionState | None = None) -> list[DualAction]:
        """Proposals (in ``state``, or all), newest first (ties by id, like the SQL query)."""
        found = [a for a in self.table.rows.values() if state is None or a.state is state]
        by_id = sorted(found, key=lambda a: a.id)
        return [copy.deepcopy(a) for a in sorted(by_id, key=lambda a: a.created_at, reverse=True)]

    def update(self, action: DualAction) -> None:
        """Store a decision. :raises ConcurrentUpdateError: if it changed since it was read."""
        stored = self.table.rows.get(action.id)
        if stored is None or stored.version != action.version:
            raise ConcurrentUpdateError(kind="action", ident=str(action.id))
        # Like the SQL repository, only the decision columns change after the proposal.
        changed = replace(
            stored,
            state=action.state,
            confirmer=action.confirmer,
            confirmer_name=action.confirmer_name,
            decided_at=action.decided_at,
            version=action.version + 1,
        )
        self.table.put(action.id, self._checked(changed))
        action.version += 1


def _version(row: Host | Enclave | DualAction) -> object:
    return row.version


def _state(gpu: Gpu) -> object:
    return gpu.state


class MemoryFleet:
    """The fleet repositories of one unit of work, over private copies of a store's rows."""

    def __init__(self, store: FleetStore, requests: Mapping[uuid.UUID, EnclaveRequest]) -> None:
        """Snapshot ``store`` (call with its lock held); ``requests`` are the unit's own."""
        hosts = _Table("host", store.hosts, _version, lambda h: h.name)
        self.hosts = MemoryHostRepository(hosts)
        self.gpus = MemoryGpuRepository(
            _Table("gpu", store.gpus, _state, lambda g: f"{g.host}/{g.address}"), hosts
        )
        self.enclaves = MemoryEnclaveRepository(
            _Table("enclave", store.enclaves, _version, lambda e: str(e.id)), hosts, requests
        )
        self.actions = MemoryActionRepository(
            _Table("action", store.actions, _version, lambda a: str(a.id))
        )

    def check(self, store: FleetStore) -> None:
        """Whether the unit may publish onto ``store`` now (call with its lock held).

        :raises ConcurrentUpdateError: if a row the unit wrote was changed by another unit
            since this one began, or the unit's rows clash with rows committed meanwhile.
        """
        self.hosts.table.check(store.hosts)
        self.gpus.table.check(store.gpus)
        self.enclaves.table.check(store.enclaves)
        self.actions.table.check(store.actions)
        hosts = {**store.hosts, **self.hosts.table.changes()}
        for host in self.hosts.table.changes().values():
            host_violations(host, hosts.values())
        gpus = {**store.gpus, **self.gpus.table.changes()}
        for gpu in self.gpus.table.changes().values():
            gpu_violations(gpu, gpus.values())
        enclaves = {**store.enclaves, **self.enclaves.table.changes()}
        for enclave in self.enclaves.table.changes().values():
            enclave_violations(enclave, enclaves.values())

    def publish(self, store: FleetStore) -> None:
        """Make the unit's rows the committed ones (after :meth:`check`, same lock)."""
        store.hosts.update(self.hosts.table.changes())
        store.gpus.update(self.gpus.table.changes())
        store.enclaves.update(self.enclaves.table.changes())
        store.actions.update(self.actions.table.changes())
