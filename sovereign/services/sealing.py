"""What the job, dataset and runner use cases share: audit targets, who may read a job's or a
dataset's metadata and content, and sealing their bytes at rest.

Owns :func:`job_target`, :func:`dataset_target`, :class:`Readers` (visibility: tenant members
cleared for the label read content; officers and auditors cleared for it read metadata only;
anyone else is told the object does not exist) and :class:`Sealer`, which seals and opens
blobs with :mod:`sovereign.envelope`, each bound to its owner (job or dataset id) and label:
job code, logs and outputs under the enclave's key, datasets under their tenant's key.
Plaintext exists only in the memory of the caller. Must not decide anything else, nor write
audit events.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sovereign.domain.identity import Principal, Role
from sovereign.domain.jobs import Blob, BlobKind, Dataset, Job
from sovereign.domain.keys import KeyRef
from sovereign.domain.labels import Label
from sovereign.domain.tenants import Tenant
from sovereign.envelope import Sealed, open_many, seal_many
from sovereign.errors import GoneError, NotFoundError
from sovereign.services.ports import SecretStore, UnitOfWork

#: Roles that read jobs' and datasets' metadata (never their content) up to their clearance.
METADATA_READERS = frozenset({Role.OFFICER, Role.AUDITOR})


def job_target(job_id: uuid.UUID) -> str:
    """The audit target name of a job."""
    return f"job/{job_id}"


def dataset_target(dataset_id: uuid.UUID) -> str:
    """The audit target name of a dataset."""
    return f"dataset/{dataset_id}"


def dataset_key_name(tenant: Tenant) -> str:
    """The transit key (in the tenant's key mount) that seals the tenant's datasets."""
    return f"datasets-{tenant.name}"


class Readers:
    """Who may know of, and read, a tenant's object at a label."""

    @staticmethod
    def content(principal: Principal, tenant: str, label: Label) -> bool:
        """A member of ``tenant`` cleared for ``label``: reads logs, outputs, datasets."""
        return tenant in principal.tenants and principal.cleared_for(label)

    @classmethod
    def metadata(cls, principal: Principal, tenant: str, label: Label) -> bool:
        """Content readers, and officers and auditors cleared for ``label``."""
        if cls.content(principal, tenant, label):
            return True
        return bool(principal.roles & METADATA_READERS) and principal.cleared_for(label)


class Sealer:
    """Seals and opens the blobs of jobs and datasets through the secret store."""

    def __init__(self, store: SecretStore) -> None:
        self.store = store

    def enclave_key(self, uow: UnitOfWork, job: Job) -> KeyRef:
        """The key of the job's enclave.

        :raises GoneError: the key was crypto-erased (the data can never be read again).
        """
        keys = uow.keys.get(job.enclave_id)
        if keys is None or keys.destroyed_at is not None:
            raise GoneError(
                kind="job data",
                ident=str(job.id),
                reason="the enclave's key was crypto-erased; its data can never be read again",
            )
        return keys.key

    def seal(
        self,
        key: KeyRef,
        owner: uuid.UUID,
        label: Label,
        kind: BlobKind,
        files: Sequence[tuple[str, int, bytes]],
    ) -> list[Blob]:
        """``(name, seq, plaintext)`` items sealed under one data key as blobs of ``owner``."""
        if not files:
            return []
        sealed = seal_many(self.store, key, owner, label, [data for _, _, data in files])
        return [
            Blob(owner, kind, name, seq, len(data), item.to_bytes())
            for (name, seq, data), item in zip(files, sealed, strict=True)
        ]

    def open(self, blobs: Sequence[Blob], owner: uuid.UUID, label: Label) -> list[bytes]:
        """The plaintexts of ``owner``'s blobs.

        :raises GoneError: the key that sealed them was crypto-erased.
        :raises EnvelopeError: a blob was tampered with or belongs to another owner or label.
        """
        if not blobs:
            return []
        try:
            return open_many(self.store, [Sealed.from_bytes(b.data) for b in blobs], owner, label)
        except NotFoundError as e:
            raise GoneError(
                kind="data",
                ident=str(owner),
                reason="the key that sealed it was crypto-erased; it can never be read again",
            ) from e

    def open_dataset(self, uow: UnitOfWork, dataset: Dataset) -> bytes:
        """A dataset's plaintext. :raises NotFoundError: its blob is missing."""
        blob = uow.blobs.get(dataset.id, BlobKind.DATASET, dataset.name)
        if blob is None:
            raise NotFoundError(kind="dataset", ident=str(dataset.id))
        return self.open([blob], dataset.id, dataset.label)[0]
