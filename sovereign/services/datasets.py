"""Use cases for datasets: upload, list, read.

Owns who may upload a dataset (an analyst member of the tenant, cleared for the label, which
the tenant's ceiling must dominate), its sealing at rest (under the tenant's dataset key in the
tenant's Vault transit mount, created on first use; bound to the dataset's id and label) and
who may know of it (:class:`~sovereign.services.sealing.Readers`). Every upload decision is
audited (``dataset:upload``), fail-closed. The plaintext exists only in memory for the moment
of sealing. Must not decide which enclave may read a dataset: submitting a job does.
"""

from __future__ import annotations

import hashlib
import uuid

from sovereign.domain.identity import Role
from sovereign.domain.jobs import BlobKind, Dataset, JobLimits, check_name
from sovereign.domain.keys import key_mount
from sovereign.domain.labels import Label
from sovereign.errors import NotFoundError, PolicyDeniedError, TooLargeError
from sovereign.services.ports import SecretStore, UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow
from sovereign.services.sealing import Readers, Sealer, dataset_key_name, dataset_target


class DatasetService:
    """Datasets of tenants, sealed at rest."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        store: SecretStore,
        *,
        limits: JobLimits,
        mount_prefix: str = "sovereign-",
        clock: Clock = utcnow,
    ) -> None:
        self._uow = uow_factory
        self._sealer = Sealer(store)
        self._limits = limits
        self._prefix = mount_prefix
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    def upload(
        self, ctx: CallContext, tenant: str, name: str, label: Label, data: bytes
    ) -> Dataset:
        """Seal ``data`` and store it as the dataset ``name`` of ``tenant`` at ``label``.

        :raises InvalidInputError: a bad name. :raises TooLargeError: over the size limit.
        :raises PolicyDeniedError: not an analyst member of the tenant, not cleared for the
            label, or the label is above the tenant's ceiling.
        :raises NotFoundError: no such tenant (the same answer as a tenant one is not in).
        :raises DependencyUnavailableError: Vault or the database cannot be used.
        """
        dataset_id = uuid.uuid4()
        with (
            self._recorder.decision(
                ctx, "dataset:upload", dataset_target(dataset_id), label=label
            ) as decision,
            self._uow() as uow,
        ):
            principal = ctx.principal
            found = uow.tenants.get(tenant)
            if found is None or tenant not in principal.tenants:
                raise NotFoundError(kind="tenant", ident=tenant)
            if not principal.has_role(Role.ANALYST):
                raise PolicyDeniedError(reason="only analysts upload datasets")
            if not principal.cleared_for(label):
                raise PolicyDeniedError(reason=f"your clearance does not dominate {label}")
            if not found.max_label.dominates(label):
                raise PolicyDeniedError(
                    reason=f"{label} is above the tenant's ceiling {found.max_label}"
                )
            check_name(name)
            if len(data) > self._limits.max_dataset_bytes:
                raise TooLargeError(
                    reason=f"a dataset holds at most {self._limits.max_dataset_bytes} bytes"
                )
            key = self._sealer.store.create_key(
                key_mount(found, self._prefix), dataset_key_name(found)
            )
            dataset = Dataset(
                id=dataset_id,
                tenant=tenant,
                name=name,
                label=label,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                uploaded_by=principal.subject,
                created_at=self._clock(),
                key_mount=key.mount,
                key_name=key.name,
            )
            uow.datasets.add(dataset)
            for blob in self._sealer.seal(
                key, dataset.id, label, BlobKind.DATASET, [(name, 0, data)]
            ):
                uow.blobs.put(blob)
            decision.allow(
                uow,
                details={
                    "tenant": tenant,
                    "name": name,
                    "size": dataset.size,
                    "sha256": dataset.sha256,
                    "key": f"{key.mount}/{key.name}",
                    "key_version": key.version,
                },
            )
            uow.commit()
        return dataset

    def list(self, ctx: CallContext) -> list[Dataset]:
        """Datasets the caller may know of, newest first."""
        with self._uow(readonly=True) as uow:
            everyone = bool(ctx.principal.roles & {Role.OFFICER, Role.AUDITOR})
            found = uow.datasets.list(None if everyone else ctx.principal.tenants)
        return [d for d in found if Readers.metadata(ctx.principal, d.tenant, d.label)]

    def get(self, ctx: CallContext, dataset_id: uuid.UUID) -> Dataset:
        """One dataset. :raises NotFoundError: missing, or not visible (the same answer)."""
        with self._uow(readonly=True) as uow:
            found = uow.datasets.get(dataset_id)
        if found is not None and Readers.metadata(ctx.principal, found.tenant, found.label):
            return found
        error = NotFoundError(kind="dataset", ident=str(dataset_id))
        self._recorder.denial(
            ctx,
            "dataset:read",
            dataset_target(dataset_id),
            error,
            label=found.label if found else None,
        )
        raise error
