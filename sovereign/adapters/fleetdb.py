"""Repositories of the fleet: hosts, GPUs, enclaves and two-person actions (SQLAlchemy Core).

Owns the mapping between the ``hosts``, ``gpus``, ``enclaves`` and ``dual_actions`` rows and
:mod:`sovereign.domain.fleet` / :mod:`sovereign.domain.actions`. Hosts, enclaves and actions use
optimistic locking (``version``); a GPU changes state only by compare-and-set on its current
state, so two placements can never both allocate it. On PostgreSQL the reconciler's work queue
is read with ``FOR UPDATE SKIP LOCKED``; elsewhere the claim columns alone arbitrate. Driver
errors are translated by the unit of work (:mod:`sovereign.adapters.database`).
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Collection
from datetime import datetime
from typing import Any, Protocol

import sqlalchemy as sa

from audit.store import encode_compartments
from sovereign.adapters.tables import dual_actions, enclave_requests, enclaves, gpus, hosts
from sovereign.domain.actions import ActionKind, ActionState, DualAction
from sovereign.domain.fleet import Enclave, Gpu, Host
from sovereign.domain.labels import Label
from sovereign.domain.placement import GpuStatus
from sovereign.errors import ConcurrentUpdateError


class LabelLoader(Protocol):
    """Rebuilds a label from its stored level and encoded compartments."""

    def load(self, level: str, compartments: str) -> Label: ...


def _label_columns(prefix: str, label: Label | None) -> dict[str, Any]:
    if label is None:
        return {f"{prefix}_level": None, f"{prefix}_compartments": None}
    return {
        f"{prefix}_level": label.level,
        f"{prefix}_compartments": encode_compartments(label.compartments),
    }


def _split(text: str) -> tuple[str, ...]:
    return tuple(part for part in text.split(",") if part)


class SqlHostRepository:
    """Hosts in ``hosts``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def _host(self, r: Any) -> Host:
        return Host(
            id=r.id,
            name=r.name,
            uri=r.uri,
            site=r.site,
            accreditation=self._labels.load(r.accreditation_level, r.accreditation_compartments),
            domain_type=r.domain_type,
            vcpus=r.vcpus,
            memory_mib=r.memory_mib,
            created_at=r.created_at,
            updated_at=r.updated_at,
            state=r.state,
            reason=r.reason,
            version=r.version,
            host_uuid=r.host_uuid,
            hostname=r.hostname,
        )

    @staticmethod
    def _values(host: Host) -> dict[str, Any]:
        return {
            "name": host.name,
            "uri": host.uri,
            "site": host.site,
            **_label_columns("accreditation", host.accreditation),
            "domain_type": host.domain_type,
            "vcpus": host.vcpus,
            "memory_mib": host.memory_mib,
            "state": host.state,
            "reason": host.reason,
            "updated_at": host.updated_at,
            "host_uuid": host.host_uuid,
            "hostname": host.hostname,
        }

    def add(self, host: Host) -> None:
        """Store a new host."""
        self._conn.execute(
            hosts.insert().values(
                id=host.id, created_at=host.created_at, version=host.version, **self._values(host)
            )
        )

    def get(self, name: str, *, for_update: bool = False) -> Host | None:
        """The host called ``name``, or None."""
        stmt = sa.select(hosts).where(hosts.c.name == name)
        if for_update:
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        return None if r is None else self._host(r)

    def list(self) -> list[Host]:
        """All hosts, by name."""
        return [self._host(r) for r in self._conn.execute(sa.select(hosts).order_by(hosts.c.name))]

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
            .values(version=host.version + 1, **self._values(host))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="host", ident=host.name)
        host.version += 1


class SqlGpuRepository:
    """GPUs in ``gpus``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def _gpu(self, r: Any) -> Gpu:
        last = (
            self._labels.load(r.last_label_level, r.last_label_compartments)
            if r.last_label_level is not None
            else None
        )
        return Gpu(
            host=r.host,
            address=r.address,
            model=r.model,
            numa_node=r.numa_node,
            iommu_group=r.iommu_group,
            group_members=_split(r.group_members),
            state=r.state,
            enclave_id=r.enclave_id,
            last_label=last,
            last_tenant=r.last_tenant,
            updated_at=r.updated_at,
            host_uuid=r.host_uuid,
            uuid=r.uuid,
        )

    @staticmethod
    def _values(gpu: Gpu) -> dict[str, Any]:
        return {
            "model": gpu.model,
            "numa_node": gpu.numa_node,
            "iommu_group": gpu.iommu_group,
            "group_members": ",".join(gpu.group_members),
            "state": gpu.state,
            "enclave_id": gpu.enclave_id,
            **_label_columns("last_label", gpu.last_label),
            "last_tenant": gpu.last_tenant,
            "updated_at": gpu.updated_at,
            "host_uuid": gpu.host_uuid,
            "uuid": gpu.uuid,
        }

    def add(self, gpu: Gpu) -> None:
        """Store a newly discovered GPU."""
        self._conn.execute(
            gpus.insert().values(host=gpu.host, address=gpu.address, **self._values(gpu))
        )

    def list(self, host: str | None = None) -> list[Gpu]:
        """GPUs (of one host, or all), by host and address."""
        stmt = sa.select(gpus).order_by(gpus.c.host, gpus.c.address)
        if host is not None:
            stmt = stmt.where(gpus.c.host == host)
        return [self._gpu(r) for r in self._conn.execute(stmt)]

    def for_enclave(self, enclave_id: uuid.UUID) -> builtins.list[Gpu]:
        """GPUs that name ``enclave_id`` (held now, or last held)."""
        stmt = sa.select(gpus).where(gpus.c.enclave_id == enclave_id).order_by(gpus.c.address)
        return [self._gpu(r) for r in self._conn.execute(stmt)]

    def update(self, gpu: Gpu, expected: GpuStatus) -> None:
        """Store ``gpu`` if its stored state is still ``expected`` (compare-and-set).

        :raises ConcurrentUpdateError: if someone else changed the GPU's state first.
        """
        result = self._conn.execute(
            gpus.update()
            .where(gpus.c.host == gpu.host, gpus.c.address == gpu.address)
            .where(gpus.c.state == expected)
            .values(**self._values(gpu))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="gpu", ident=f"{gpu.host}/{gpu.address}")


class SqlEnclaveRepository:
    """Enclaves in ``enclaves``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def _enclave(self, r: Any) -> Enclave:
        return Enclave(
            id=r.id,
            host=r.host,
            gpus=_split(r.gpus),
            domain_name=r.domain_name,
            label=self._labels.load(r.label_level, r.label_compartments),
            classified=bool(r.classified),
            tenant=r.tenant,
            vcpus=r.vcpus,
            memory_mib=r.memory_mib,
            disk_gib=r.disk_gib,
            lease_expires_at=r.lease_expires_at,
            created_at=r.created_at,
            updated_at=r.updated_at,
            step=r.step,
            attempts=r.attempts,
            error=r.error,
            claimed_by=r.claimed_by,
            claim_until=r.claim_until,
            retry_at=r.retry_at,
            version=r.version,
            ended_at=r.ended_at,
        )

    @staticmethod
    def _values(enclave: Enclave) -> dict[str, Any]:
        return {
            "host": enclave.host,
            "gpus": ",".join(enclave.gpus),
            "domain_name": enclave.domain_name,
            **_label_columns("label", enclave.label),
            "classified": enclave.classified,
            "tenant": enclave.tenant,
            "vcpus": enclave.vcpus,
            "memory_mib": enclave.memory_mib,
            "disk_gib": enclave.disk_gib,
            "lease_expires_at": enclave.lease_expires_at,
            "step": enclave.step,
            "attempts": enclave.attempts,
            "error": enclave.error[:2000],
            "claimed_by": enclave.claimed_by,
            "claim_until": enclave.claim_until,
            "retry_at": enclave.retry_at,
            "updated_at": enclave.updated_at,
            "ended_at": enclave.ended_at,
        }

    def add(self, enclave: Enclave) -> None:
        """Store a newly placed enclave."""
        self._conn.execute(
            enclaves.insert().values(
                id=enclave.id,
                created_at=enclave.created_at,
                version=enclave.version,
                **self._values(enclave),
            )
        )

    def get(self, enclave_id: uuid.UUID, *, for_update: bool = False) -> Enclave | None:
        """The enclave, or None."""
        stmt = sa.select(enclaves).where(enclaves.c.id == enclave_id)
        if for_update:
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        return None if r is None else self._enclave(r)

    def list(self, *, open_only: bool = True, host: str | None = None) -> list[Enclave]:
        """Enclaves not yet ended (or all), oldest first."""
        stmt = sa.select(enclaves).order_by(enclaves.c.created_at, enclaves.c.id)
        if open_only:
            stmt = stmt.where(enclaves.c.ended_at.is_(None))
        if host is not None:
            stmt = stmt.where(enclaves.c.host == host)
        return [self._enclave(r) for r in self._conn.execute(stmt)]

    def claimable(
        self, worker: str, now: datetime, limit: int, *, states: Collection[str]
    ) -> builtins.list[Enclave]:
        """Open enclaves whose request is in ``states`` that ``worker`` may take now.

        On PostgreSQL the rows are locked with ``SKIP LOCKED``: concurrent workers each get
        different rows without waiting; the caller claims them in the same transaction.
        """
        c = enclaves.c
        stmt = (
            sa.select(enclaves)
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
        return [self._enclave(r) for r in self._conn.execute(stmt)]

    def update(self, enclave: Enclave) -> None:
        """Store changes. :raises ConcurrentUpdateError: if the row changed since it was read."""
        result = self._conn.execute(
            enclaves.update()
            .where(enclaves.c.id == enclave.id, enclaves.c.version == enclave.version)
            .values(version=enclave.version + 1, **self._values(enclave))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="enclave", ident=str(enclave.id))
        enclave.version += 1


class SqlActionRepository:
    """Two-person actions in ``dual_actions``."""

    def __init__(self, conn: sa.Connection, labels: LabelLoader) -> None:
        self._conn = conn
        self._labels = labels

    def _action(self, r: Any) -> DualAction:
        return DualAction(
            id=r.id,
            kind=ActionKind(r.kind),
            params=json.loads(r.params),
            label=self._labels.load(r.label_level, r.label_compartments),
            reason=r.reason,
            proposer=r.proposer,
            proposer_name=r.proposer_name,
            created_at=r.created_at,
            expires_at=r.expires_at,
            state=ActionState(r.state),
            confirmer=r.confirmer,
            confirmer_name=r.confirmer_name,
            decided_at=r.decided_at,
            version=r.version,
        )

    @staticmethod
    def _values(action: DualAction) -> dict[str, Any]:
        return {
            "state": action.state.value,
            "confirmer": action.confirmer,
            "confirmer_name": action.confirmer_name,
            "decided_at": action.decided_at,
        }

    def add(self, action: DualAction) -> None:
        """Store a new proposal."""
        self._conn.execute(
            dual_actions.insert().values(
                id=action.id,
                kind=action.kind.value,
                params=json.dumps(action.params, sort_keys=True),
                **_label_columns("label", action.label),
                reason=action.reason,
                proposer=action.proposer,
                proposer_name=action.proposer_name,
                created_at=action.created_at,
                expires_at=action.expires_at,
                version=action.version,
                **self._values(action),
            )
        )

    def get(self, action_id: uuid.UUID, *, for_update: bool = False) -> DualAction | None:
        """The proposal, or None."""
        stmt = sa.select(dual_actions).where(dual_actions.c.id == action_id)
        if for_update:
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        return None if r is None else self._action(r)

    def list(self, state: ActionState | None = None) -> list[DualAction]:
        """Proposals (in ``state``, or all), newest first."""
        stmt = sa.select(dual_actions).order_by(dual_actions.c.created_at.desc(), dual_actions.c.id)
        if state is not None:
            stmt = stmt.where(dual_actions.c.state == state.value)
        return [self._action(r) for r in self._conn.execute(stmt)]

    def update(self, action: DualAction) -> None:
        """Store a decision. :raises ConcurrentUpdateError: if it changed since it was read."""
        result = self._conn.execute(
            dual_actions.update()
            .where(dual_actions.c.id == action.id, dual_actions.c.version == action.version)
            .values(version=action.version + 1, **self._values(action))
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="action", ident=str(action.id))
        action.version += 1
