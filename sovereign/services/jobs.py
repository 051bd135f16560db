"""Use cases for jobs as users see them: submit, list, read, logs, outputs, cancel.

Placeholder: the implementation follows (branch fix/jobs).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sovereign.domain.jobs import Job, JobManifest
from sovereign.services.recording import CallContext


class JobService:
    """Jobs in enclaves (signatures; implementation follows)."""

    def submit(
        self,
        ctx: CallContext,
        enclave_id: uuid.UUID,
        manifest: JobManifest,
        files: Sequence[tuple[str, bytes]],
    ) -> Job:
        """Queue ``manifest`` with its code ``files`` in the enclave (audited ``job:submit``)."""
        raise NotImplementedError

    def list(self, ctx: CallContext, enclave_id: uuid.UUID) -> list[Job]:
        """The enclave's jobs the caller may see, newest first."""
        raise NotImplementedError

    def get(self, ctx: CallContext, job_id: uuid.UUID) -> Job:
        """One job. :raises NotFoundError: missing or not visible."""
        raise NotImplementedError

    def logs(
        self, ctx: CallContext, job_id: uuid.UUID, offset: int = 0, limit: int = 1 << 20
    ) -> tuple[bytes, int]:
        """Log bytes from ``offset`` and the offset that follows them."""
        raise NotImplementedError

    def output(self, ctx: CallContext, job_id: uuid.UUID, name: str) -> bytes:
        """One output file's plaintext (audited ``output:read``)."""
        raise NotImplementedError

    def cancel(self, ctx: CallContext, job_id: uuid.UUID) -> Job:
        """Ask for the job to be cancelled (audited ``job:cancel``)."""
        raise NotImplementedError
