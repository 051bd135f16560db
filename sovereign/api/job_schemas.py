"""The API's schemas for jobs and datasets (pydantic): the multipart forms they are submitted
with, and the job and dataset answers.

Owns the shape of those bodies and answers, with limits; the multipart forms document the parts
(``bytes`` parts are files) while :mod:`sovereign.api.v1_jobs` reads them. The manifest itself
is validated by :meth:`sovereign.domain.jobs.JobManifest.parse` (the same rules the console and
CLI meet).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from sovereign.api.schemas import LabelOut, Strict
from sovereign.domain.jobs import Dataset, Job, JobState, OutputFile


class JobSubmitForm(BaseModel):
    """A job: the ``manifest`` part (JSON: ``entrypoint``, ``args``, ``inputs`` (dataset ids),
    ``outputs`` (glob patterns), ``max_runtime_s``) and one ``files`` part per code file, its
    file name the relative path in the job's work directory."""

    manifest: Annotated[
        str,
        Field(
            description='JSON, e.g. {"entrypoint": "main.py", "args": [], "inputs": [], '
            '"outputs": ["out/*"], "max_runtime_s": 3600}',
            json_schema_extra={"contentMediaType": "application/json"},
        ),
    ]
    files: Annotated[list[bytes], Field(min_length=1, description="The code files")]


class DatasetUploadForm(BaseModel):
    """A dataset: its ``tenant``, ``name`` (one path segment: the input's file name in the
    enclave), ``label`` (JSON, e.g. {"level": "SECRET", "compartments": ["NATO"]}) and the
    ``file`` part."""

    tenant: Annotated[str, Field(min_length=1, max_length=64)]
    name: Annotated[str, Field(min_length=1, max_length=128)]
    label: Annotated[str, Field(json_schema_extra={"contentMediaType": "application/json"})]
    file: bytes


class LogQuery(Strict):
    """Where to read a job's log from, and how much."""

    offset: Annotated[int, Field(ge=0, le=2**62)] = 0
    limit: Annotated[int, Field(ge=1, le=1 << 20)] = 1 << 20


class FileOut(BaseModel):
    """A file by name, size and SHA-256."""

    name: str
    size: int
    sha256: str

    @classmethod
    def of(cls, f: OutputFile) -> FileOut:
        """From the domain."""
        return cls(name=f.name, size=f.size, sha256=f.sha256)


class JobOut(BaseModel):
    """A job: what was submitted, where it stands, what it left."""

    id: uuid.UUID
    enclave_id: uuid.UUID
    tenant: str
    label: LabelOut
    state: JobState
    submitted_by: str
    entrypoint: str
    args: list[str]
    inputs: list[uuid.UUID]
    outputs: list[str]
    max_runtime_s: int
    files: list[FileOut]
    exit_code: int | None
    runtime_s: float | None
    error: str
    results: list[FileOut]
    log_size: int
    cancel_requested: bool
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    simulated: bool

    @classmethod
    def of(cls, j: Job) -> JobOut:
        """From the domain."""
        m = j.manifest
        return cls(
            id=j.id,
            enclave_id=j.enclave_id,
            tenant=j.tenant,
            label=LabelOut.of(j.label),
            state=j.state,
            submitted_by=j.submitted_by,
            entrypoint=m.entrypoint,
            args=list(m.args),
            inputs=list(m.inputs),
            outputs=list(m.outputs),
            max_runtime_s=m.max_runtime_s,
            files=[FileOut.of(f) for f in j.files],
            exit_code=j.exit_code,
            runtime_s=j.runtime_s,
            error=j.error,
            results=[FileOut.of(f) for f in j.results],
            log_size=j.log_size,
            cancel_requested=j.cancel_requested,
            created_at=j.created_at,
            started_at=j.started_at,
            finished_at=j.finished_at,
            simulated=j.simulated,
        )


class JobList(BaseModel):
    """An enclave's jobs, newest first."""

    items: list[JobOut]


class DatasetOut(BaseModel):
    """A dataset's metadata (its bytes are sealed at rest)."""

    id: uuid.UUID
    tenant: str
    name: str
    label: LabelOut
    size: int
    sha256: str
    uploaded_by: str
    created_at: datetime

    @classmethod
    def of(cls, d: Dataset) -> DatasetOut:
        """From the domain."""
        return cls(
            id=d.id,
            tenant=d.tenant,
            name=d.name,
            label=LabelOut.of(d.label),
            size=d.size,
            sha256=d.sha256,
            uploaded_by=d.uploaded_by,
            created_at=d.created_at,
        )


class DatasetList(BaseModel):
    """Datasets the caller may know of, newest first."""

    items: list[DatasetOut]
