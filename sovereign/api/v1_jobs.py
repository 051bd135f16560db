"""REST API v1, jobs and datasets: submit code to an enclave (multipart), follow its state and
log, fetch its outputs, cancel it; upload and list datasets. Thin views on the same ``api``
registry as :mod:`sovereign.api.v1`.

Owns those endpoints and the size limits of their uploads (from the JOB_* and DATASET_*
settings, with room for the multipart envelope; above them 413 before anything is parsed). As
everywhere in the API, views hold no policy and catch no domain errors: the services decide
and audit, the problem table answers.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from flask import Response

from sovereign.api import job_schemas as j
from sovereign.api.routing import Form
from sovereign.api.v1 import api
from sovereign.app_context import services
from sovereign.domain.jobs import JobManifest
from sovereign.errors import InvalidInputError
from sovereign.services.recording import CallContext

#: Room for the multipart envelope, the manifest and the text parts beside the files.
ENVELOPE_BYTES = 1 << 20
JOB_READERS = (
    "members of the job's tenant cleared for its label; officers and auditors cleared for it "
    "see its metadata"
)
CONTENT_READERS = "members of the job's tenant cleared for its label (others: 404)"


def _job_limit() -> int:
    return services().jobs.limits.max_code_bytes + ENVELOPE_BYTES


def _dataset_limit() -> int:
    return services().jobs.limits.max_dataset_bytes + ENVELOPE_BYTES


def _json_part(form: Form, name: str) -> Any:
    text = form.text(name)
    try:
        return json.loads(text or "")
    except (ValueError, RecursionError):
        raise InvalidInputError(reason=f"the part {name!r} is not valid JSON") from None


@api.route(
    "POST",
    "/enclaves/<uuid:enclave_id>/jobs",
    summary="Submit a job",
    tag="jobs",
    form=j.JobSubmitForm,
    body_limit=_job_limit,
    response=j.JobOut,
    status=201,
    roles="analysts of the enclave's tenant cleared for its label, while it runs",
)
def submit_job(ctx: CallContext, form: Form, enclave_id: uuid.UUID) -> j.JobOut:
    """Queue code (the ``files`` parts) with its manifest; the code is sealed under the
    enclave's key and run by the enclave's agent."""
    limits = services().jobs.limits
    manifest = JobManifest.parse(_json_part(form, "manifest"), max_runtime_s=limits.max_runtime_s)
    files = form.file_parts("files")
    if any(not name for name, _ in files):
        raise InvalidInputError(reason="every 'files' part needs a file name (its path)")
    return j.JobOut.of(services().jobs.submit(ctx, enclave_id, manifest, files))


@api.route(
    "GET",
    "/enclaves/<uuid:enclave_id>/jobs",
    summary="List an enclave's jobs",
    tag="jobs",
    response=j.JobList,
    roles=JOB_READERS,
)
def list_jobs(ctx: CallContext, enclave_id: uuid.UUID) -> j.JobList:
    """The enclave's jobs, newest first."""
    return j.JobList(items=[j.JobOut.of(x) for x in services().jobs.list(ctx, enclave_id)])


@api.route(
    "GET",
    "/jobs/<uuid:job_id>",
    summary="Get a job",
    tag="jobs",
    response=j.JobOut,
    roles=JOB_READERS,
)
def get_job(ctx: CallContext, job_id: uuid.UUID) -> j.JobOut:
    """One job's state and metadata."""
    return j.JobOut.of(services().jobs.get(ctx, job_id))


@api.route(
    "GET",
    "/jobs/<uuid:job_id>/logs",
    summary="Read a job's log",
    tag="jobs",
    response=None,
    query=j.LogQuery,
    media_type="text/plain",
    headers={
        "X-Next-Offset": "The offset to read from next (poll with it while the job runs)",
        "X-Job-State": "The job's state when the log was read",
    },
    roles=CONTENT_READERS,
)
def job_logs(ctx: CallContext, query: j.LogQuery, job_id: uuid.UUID) -> Response:
    """The job's stdout and stderr from ``offset`` (at most ``limit`` bytes)."""
    jobs = services().jobs
    data, following = jobs.logs(ctx, job_id, query.offset, query.limit)
    state = jobs.get(ctx, job_id).state
    return Response(
        data,
        mimetype="text/plain",
        headers={"X-Next-Offset": str(following), "X-Job-State": state.value},
    )


@api.route(
    "GET",
    "/jobs/<uuid:job_id>/outputs/<path:name>",
    summary="Download a job's output file",
    tag="jobs",
    response=None,
    media_type="application/octet-stream",
    headers={"X-Content-SHA256": "The file's SHA-256 (hex), as recorded when it was collected"},
    roles=CONTENT_READERS + "; audited; 410 once the enclave's key was crypto-erased",
)
def get_output(ctx: CallContext, job_id: uuid.UUID, name: str) -> Response:
    """One output file, decrypted in memory (``output:read`` in the audit log)."""
    data = services().jobs.output(ctx, job_id, name)
    return Response(
        data,
        mimetype="application/octet-stream",
        headers={
            "Content-Disposition": "attachment",
            "X-Content-SHA256": hashlib.sha256(data).hexdigest(),
        },
    )


@api.route(
    "POST",
    "/jobs/<uuid:job_id>/cancel",
    summary="Cancel a job",
    tag="jobs",
    response=j.JobOut,
    roles="analysts of the job's tenant cleared for it, and officers cleared for it",
)
def cancel_job(ctx: CallContext, job_id: uuid.UUID) -> j.JobOut:
    """Ask for the job to end; the runner stops it in the enclave."""
    return j.JobOut.of(services().jobs.cancel(ctx, job_id))


@api.route(
    "POST",
    "/datasets",
    summary="Upload a dataset",
    tag="datasets",
    form=j.DatasetUploadForm,
    body_limit=_dataset_limit,
    response=j.DatasetOut,
    status=201,
    roles="analysts of the tenant cleared for the label, at or below the tenant's ceiling",
)
def upload_dataset(ctx: CallContext, form: Form) -> j.DatasetOut:
    """Store the ``file`` part sealed under the tenant's key."""
    tenant = form.text("tenant") or ""
    name = form.text("name") or ""
    label = services().scheme.parse(_label(_json_part(form, "label")))
    files = form.file_parts("file")
    if len(files) != 1:
        raise InvalidInputError(reason="exactly one 'file' part is required")
    dataset = services().datasets.upload(ctx, tenant, name, label, files[0][1])
    return j.DatasetOut.of(dataset)


def _label(data: Any) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInputError(reason="the label must be a JSON object")
    return data


@api.route(
    "GET",
    "/datasets",
    summary="List datasets",
    tag="datasets",
    response=j.DatasetList,
    roles="members of the tenant cleared for the label; officers and auditors cleared for it",
)
def list_datasets(ctx: CallContext) -> j.DatasetList:
    """Datasets the caller may know of, newest first."""
    return j.DatasetList(items=[j.DatasetOut.of(d) for d in services().datasets.list(ctx)])


@api.route(
    "GET",
    "/datasets/<uuid:dataset_id>",
    summary="Get a dataset",
    tag="datasets",
    response=j.DatasetOut,
    roles="members of the tenant cleared for the label; officers and auditors cleared for it",
)
def get_dataset(ctx: CallContext, dataset_id: uuid.UUID) -> j.DatasetOut:
    """One dataset's metadata."""
    return j.DatasetOut.of(services().datasets.get(ctx, dataset_id))
