"""Use cases for jobs as users see them: submit, list, read, logs, outputs, cancel.

Owns who may submit a job (an analyst member of the enclave's tenant, cleared for its label,
while it runs; every input dataset of that tenant and dominated by the enclave's label), who may
know of a job and read its logs and outputs (:class:`~sovereign.services.sealing.Readers`:
content only to tenant members cleared for the label; metadata to officers and auditors
cleared for it; anyone else is told it does not exist), and the sealing of submitted code under
the enclave's key. Decisions are audited fail-closed (``job:submit``, ``job:cancel``,
``output:read``). Running the job is the runner's work
(:mod:`sovereign.services.jobrunner`); this module only queues it and wakes the runner.
"""

from __future__ import annotations

import builtins
import hashlib
import uuid
from collections.abc import Callable, Sequence

from sovereign.domain.identity import Role
from sovereign.domain.jobs import (
    Blob,
    BlobKind,
    Dataset,
    Job,
    JobLimits,
    JobManifest,
    JobState,
    OutputFile,
    check_files,
    check_path,
)
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.errors import (
    ConflictError,
    InvalidInputError,
    InvalidTransitionError,
    NotFoundError,
    PolicyDeniedError,
    TooLargeError,
)
from sovereign.services.ports import SecretStore, UnitOfWork, UnitOfWorkFactory, Workloads
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow
from sovereign.services.sealing import Readers, Sealer, job_target

#: Log bytes one read returns at most.
MAX_LOG_READ = 1 << 20
#: Stored log chunks one read opens at most (one key unwrap each): a log stored in many small
#: chunks is read in several calls, each from the offset the last one returned.
MAX_LOG_BLOBS_PER_READ = 64


class JobService:
    """Jobs in enclaves."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        store: SecretStore,
        workloads: Workloads,
        *,
        limits: JobLimits,
        wake: Callable[[], None] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._uow = uow_factory
        self._sealer = Sealer(store)
        self._workloads = workloads
        self._limits = limits
        self._wake = wake
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    @property
    def limits(self) -> JobLimits:
        """The configured bounds (the API sizes its request limits from them)."""
        return self._limits

    # -- submitting --------------------------------------------------------------------------

    def submit(
        self,
        ctx: CallContext,
        enclave_id: uuid.UUID,
        manifest: JobManifest,
        files: Sequence[tuple[str, bytes]],
    ) -> Job:
        """Queue ``manifest`` with its code ``files`` in the enclave; the code is sealed under
        the enclave's key.

        :raises NotFoundError: no such enclave, one the caller may not see, or an input
            dataset the caller may not see (the same answer as a missing one).
        :raises PolicyDeniedError: not an analyst member cleared for the enclave, or an input
            of another tenant or above the enclave's label.
        :raises ConflictError: the enclave is not running.
        :raises InvalidInputError: bad files or a manifest that does not fit them.
        :raises TooLargeError: the runtime or files are over the limits.
        """
        job_id = uuid.uuid4()
        principal = ctx.principal
        with (
            self._recorder.decision(ctx, "job:submit", job_target(job_id)) as decision,
            self._uow() as uow,
        ):
            request = uow.requests.get(enclave_id)
            enclave = uow.enclaves.get(enclave_id)
            if request is None or enclave is None:
                raise NotFoundError(kind="enclave", ident=str(enclave_id))
            decision.label = request.label
            if not Readers.metadata(principal, request.tenant, request.label):
                raise NotFoundError(kind="enclave", ident=str(enclave_id))
            if not (
                principal.has_role(Role.ANALYST)
                and Readers.content(principal, request.tenant, request.label)
            ):
                raise PolicyDeniedError(
                    reason="only analysts of the enclave's tenant cleared for it submit jobs"
                )
            if request.state is not RequestState.RUNNING or enclave.ended_at is not None:
                raise ConflictError(reason=f"the enclave is {request.state.value}, not running")
            checked = self._checked_code(manifest, files)
            inputs = self._checked_inputs(uow, ctx, request, manifest)
            host = uow.hosts.get(enclave.host)
            assert host is not None, "foreign key guarantees the host"
            now = self._clock()
            job = Job(
                id=job_id,
                enclave_id=enclave_id,
                tenant=request.tenant,
                label=request.label,
                submitted_by=principal.subject,
                manifest=manifest,
                files=tuple(
                    OutputFile(name, len(data), hashlib.sha256(data).hexdigest())
                    for name, data in checked
                ),
                state=JobState.QUEUED,
                created_at=now,
                updated_at=now,
                simulated=self._workloads.simulated(host),
            )
            key = self._sealer.enclave_key(uow, job)
            uow.jobs.add(job)
            for blob in self._sealer.seal(
                key, job.id, job.label, BlobKind.CODE, [(n, 0, d) for n, d in checked]
            ):
                uow.blobs.put(blob)
            decision.allow(
                uow,
                details={
                    "enclave": str(enclave_id),
                    "entrypoint": manifest.entrypoint,
                    "files": [f.to_dict() for f in job.files],
                    "inputs": [str(d.id) for d in inputs],
                    "max_runtime_s": manifest.max_runtime_s,
                    "simulated": job.simulated,
                },
            )
            uow.commit()
        self._poke()
        return job

    def _checked_code(
        self, manifest: JobManifest, files: Sequence[tuple[str, bytes]]
    ) -> builtins.list[tuple[str, bytes]]:
        if manifest.max_runtime_s > self._limits.max_runtime_s:
            raise TooLargeError(
                reason=f"max_runtime_s must be at most {self._limits.max_runtime_s}"
            )
        total = sum(len(data) for _, data in files)
        if total > self._limits.max_code_bytes:
            raise TooLargeError(
                reason=f"the files hold more than {self._limits.max_code_bytes} bytes"
            )
        checked = check_files(
            files, max_files=self._limits.max_files, max_bytes=self._limits.max_code_bytes
        )
        if manifest.entrypoint not in {name for name, _ in checked}:
            raise InvalidInputError(
                reason=f"the entrypoint {manifest.entrypoint!r} is not one of the files"
            )
        return checked

    @staticmethod
    def _checked_inputs(
        uow: UnitOfWork, ctx: CallContext, request: EnclaveRequest, manifest: JobManifest
    ) -> builtins.list[Dataset]:
        inputs = []
        for dataset_id in manifest.inputs:
            dataset = uow.datasets.get(dataset_id)
            # A dataset the caller may not read answers as a missing one.
            if dataset is None or not Readers.content(ctx.principal, dataset.tenant, dataset.label):
                raise NotFoundError(kind="dataset", ident=str(dataset_id))
            if dataset.tenant != request.tenant:
                raise PolicyDeniedError(reason=f"dataset {dataset_id} belongs to another tenant")
            if not request.label.dominates(dataset.label):
                raise PolicyDeniedError(
                    reason=f"dataset {dataset_id} is labelled {dataset.label}, "
                    f"above the enclave's {request.label}"
                )
            inputs.append(dataset)
        if len({d.name for d in inputs}) != len(inputs):
            raise InvalidInputError(reason="two input datasets have the same name")
        return inputs

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake()

    # -- reading -----------------------------------------------------------------------------

    def list(self, ctx: CallContext, enclave_id: uuid.UUID) -> builtins.list[Job]:
        """The enclave's jobs the caller may know of, newest first.

        :raises NotFoundError: no such enclave, or one the caller may not see.
        """
        with self._uow(readonly=True) as uow:
            request = uow.requests.get(enclave_id)
            if request is not None and Readers.metadata(
                ctx.principal, request.tenant, request.label
            ):
                return [
                    j
                    for j in uow.jobs.list(enclave_id)
                    if Readers.metadata(ctx.principal, j.tenant, j.label)
                ]
        error = NotFoundError(kind="enclave", ident=str(enclave_id))
        self._recorder.denial(
            ctx,
            "job:list",
            f"enclave/{enclave_id}",
            error,
            label=request.label if request else None,
        )
        raise error

    def get(self, ctx: CallContext, job_id: uuid.UUID) -> Job:
        """One job's metadata. :raises NotFoundError: missing or not visible (one answer)."""
        with self._uow(readonly=True) as uow:
            return self._visible(uow, ctx, job_id, "job:read", content=False)

    def _visible(
        self, uow: UnitOfWork, ctx: CallContext, job_id: uuid.UUID, action: str, *, content: bool
    ) -> Job:
        job = uow.jobs.get(job_id)
        check = Readers.content if content else Readers.metadata
        if job is not None and check(ctx.principal, job.tenant, job.label):
            return job
        error = NotFoundError(kind="job", ident=str(job_id))
        self._recorder.denial(
            ctx, action, job_target(job_id), error, label=job.label if job else None
        )
        raise error

    def logs(
        self, ctx: CallContext, job_id: uuid.UUID, offset: int = 0, limit: int = MAX_LOG_READ
    ) -> tuple[bytes, int]:
        """Log bytes from ``offset`` (at most ``limit``, from at most
        :data:`MAX_LOG_BLOBS_PER_READ` stored chunks: ask again from the offset returned) and
        the offset that follows them; only for members of the job's tenant cleared for its
        label. A read that returns bytes is audited (``job:logs``, fail-closed, with the offset
        and byte count), as a refusal is.

        :raises NotFoundError: missing or not readable. :raises GoneError: key erased.
        :raises InvalidInputError: a negative offset or limit.
        :raises AuditUnavailableError: the read could not be recorded (nothing is returned).
        """
        if offset < 0 or limit < 0:
            raise InvalidInputError(reason="offset and limit must not be negative")
        data, start = self._read_log(ctx, job_id, offset, min(limit, MAX_LOG_READ))
        return data, start + len(data)

    def log_tail(self, ctx: CallContext, job_id: uuid.UUID, limit: int) -> tuple[bytes, int]:
        """The end of the log: at most ``limit`` bytes from its at most
        :data:`MAX_LOG_BLOBS_PER_READ` newest stored chunks, and the offset they start at;
        readable and audited as :meth:`logs`.

        :raises NotFoundError: missing or not readable. :raises GoneError: key erased.
        :raises AuditUnavailableError: the read could not be recorded (nothing is returned).
        """
        return self._read_log(ctx, job_id, None, max(0, min(limit, MAX_LOG_READ)))

    def _read_log(
        self, ctx: CallContext, job_id: uuid.UUID, offset: int | None, limit: int
    ) -> tuple[bytes, int]:
        """Log bytes from ``offset`` (None: the tail) and the offset they start at."""
        with self._recorder.decision(ctx, "job:logs", job_target(job_id)) as decision:
            with self._uow(readonly=True) as uow:
                job = uow.jobs.get(job_id)
                decision.label = job.label if job else None
                if job is None or not Readers.content(ctx.principal, job.tenant, job.label):
                    raise NotFoundError(kind="job", ident=str(job_id))
                tail = offset is None
                start = max(0, job.log_size - limit) if offset is None else offset
                if start >= job.log_size or limit == 0:
                    return b"", min(start, job.log_size)
                self._sealer.enclave_key(uow, job)
                if tail:
                    blobs = self._last_log_blobs(uow, job, start)
                    start = max(start, blobs[0].seq) if blobs else start
                else:
                    blobs = self._log_blobs(uow, job, start, start + limit)
            if not blobs:
                return b"", start
            # One key unwrap per blob, so a bounded number per call.
            text = b"".join(self._sealer.open(blobs, job.id, job.label))
            chunk = text[start - blobs[0].seq :][:limit]
            if chunk:
                with self._uow() as uow:
                    decision.allow(uow, details={"offset": start, "bytes": len(chunk)})
                    uow.commit()
        return chunk, start

    @staticmethod
    def _log_blobs(uow: UnitOfWork, job: Job, offset: int, needed: int) -> builtins.list[Blob]:
        """The stored log chunks from the one holding ``offset`` up to ``needed`` (exclusive),
        at most :data:`MAX_LOG_BLOBS_PER_READ` of them."""
        first = uow.blobs.last(job.id, BlobKind.LOG, "log", offset)
        blobs = [first] if first is not None else []
        after = first.seq if first is not None else -1
        while len(blobs) < MAX_LOG_BLOBS_PER_READ and (
            not blobs or blobs[-1].seq + blobs[-1].size < needed
        ):
            more = uow.blobs.chunks(
                job.id, BlobKind.LOG, "log", after=after, limit=MAX_LOG_BLOBS_PER_READ
            )
            if not more:
                break
            blobs.extend(more)
            after = more[-1].seq
        return blobs[:MAX_LOG_BLOBS_PER_READ]

    @staticmethod
    def _last_log_blobs(uow: UnitOfWork, job: Job, start: int) -> builtins.list[Blob]:
        """The newest stored log chunks back to the one holding ``start``, at most
        :data:`MAX_LOG_BLOBS_PER_READ` of them, oldest first."""
        blobs: builtins.list[Blob] = []
        before = job.log_size - 1
        while len(blobs) < MAX_LOG_BLOBS_PER_READ and before >= start:
            blob = uow.blobs.last(job.id, BlobKind.LOG, "log", before)
            if blob is None:
                break
            blobs.append(blob)
            before = blob.seq - 1
        return blobs[::-1]

    def output(self, ctx: CallContext, job_id: uuid.UUID, name: str) -> bytes:
        """One output file's plaintext (audited ``output:read``), only for members of the
        job's tenant cleared for its label.

        :raises NotFoundError: no such job or output, or not readable (one answer).
        :raises GoneError: the enclave's key was crypto-erased.
        """
        with self._recorder.decision(ctx, "output:read", job_target(job_id)) as decision:
            with self._uow(readonly=True) as uow:
                job = uow.jobs.get(job_id)
                decision.label = job.label if job else None
                if job is None or not Readers.content(ctx.principal, job.tenant, job.label):
                    raise NotFoundError(kind="job", ident=str(job_id))
                try:
                    check_path(name, "output name")
                except InvalidInputError:
                    raise NotFoundError(kind="output", ident=name) from None
                result = next((r for r in job.results if r.name == name), None)
                blob = uow.blobs.get(job.id, BlobKind.OUTPUT, name)
                if result is None or blob is None:
                    raise NotFoundError(kind="output", ident=name)
                self._sealer.enclave_key(uow, job)
            data = self._sealer.open([blob], job.id, job.label)[0]
            if hashlib.sha256(data).hexdigest() != result.sha256:
                raise ConflictError(reason=f"output {name} does not match its recorded hash")
            with self._uow() as uow:
                decision.allow(
                    uow, details={"name": name, "size": len(data), "sha256": result.sha256}
                )
                uow.commit()
        return data

    # -- cancelling --------------------------------------------------------------------------

    def cancel(self, ctx: CallContext, job_id: uuid.UUID) -> Job:
        """Ask for the job to end (audited ``job:cancel``): its tenant's analysts cleared for
        it, or an officer cleared for it. The runner stops it in the enclave.

        :raises NotFoundError: not visible. :raises PolicyDeniedError: not allowed.
        :raises InvalidTransitionError: already ended.
        """
        with (
            self._recorder.decision(ctx, "job:cancel", job_target(job_id)) as decision,
            self._uow() as uow,
        ):
            job = uow.jobs.get(job_id, for_update=True)
            decision.label = job.label if job else None
            principal = ctx.principal
            if job is None or not Readers.metadata(principal, job.tenant, job.label):
                raise NotFoundError(kind="job", ident=str(job_id))
            analyst = principal.has_role(Role.ANALYST) and Readers.content(
                principal, job.tenant, job.label
            )
            if not (analyst or principal.has_role(Role.OFFICER)):
                raise PolicyDeniedError(
                    reason="only the tenant's analysts or a security officer cancel jobs"
                )
            if job.state.terminal:
                raise InvalidTransitionError(current=job.state.value, target="cancelled")
            before = job.state
            job.cancel_requested = True
            job.updated_at = self._clock()
            uow.jobs.update(job)
            decision.allow(uow, details={"state": before.value})
            uow.commit()
        self._poke()
        return job
