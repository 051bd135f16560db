"""Use cases for datasets: upload (sealed under the tenant's key), list, read.

Placeholder: the implementation follows (branch fix/jobs).
"""

from __future__ import annotations

import uuid

from sovereign.domain.jobs import Dataset
from sovereign.domain.labels import Label
from sovereign.services.recording import CallContext


class DatasetService:
    """Datasets of tenants (signatures; implementation follows)."""

    def upload(
        self, ctx: CallContext, tenant: str, name: str, label: Label, data: bytes
    ) -> Dataset:
        """Seal and store ``data`` for ``tenant`` at ``label`` (audited ``dataset:upload``)."""
        raise NotImplementedError

    def list(self, ctx: CallContext) -> list[Dataset]:
        """Datasets the caller may see, newest first."""
        raise NotImplementedError

    def get(self, ctx: CallContext, dataset_id: uuid.UUID) -> Dataset:
        """One dataset. :raises NotFoundError: missing or not visible."""
        raise NotImplementedError
