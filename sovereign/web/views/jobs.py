"""Jobs and datasets in the console: the enclave page's jobs section and submit form, a job's
page (metadata, its log followed while it runs, output downloads), and the analyst's datasets.

Owns what each role is offered and turning the posted forms into the same service calls the API
makes (:class:`~sovereign.domain.jobs.JobManifest` is parsed by the domain, so the console
accepts exactly what the API accepts). Who may submit, see a job, read its log or an output is
decided (and recorded) by ``services().jobs`` and ``services().datasets``; officers and auditors
are offered a job's metadata only, tenant members cleared for its label its log and outputs.

A job's log, names and arguments are untrusted text from the analyst or the guest: they are only
ever put into the page through Jinja's autoescaping, served as ``text/plain`` (``nosniff``) or as
an attachment. No JavaScript: a running job's page reloads itself (``<meta http-equiv=refresh>``,
which the console's CSP allows since it runs no script).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from flask import Response, redirect, request, url_for
from flask.typing import ResponseReturnValue
from werkzeug.datastructures import FileStorage, Headers, MultiDict

from sovereign.app_context import services
from sovereign.domain.identity import Principal, Role
from sovereign.domain.jobs import Dataset, Job, JobLimits, JobManifest
from sovereign.domain.requests import RequestState
from sovereign.services.enclaves import EnclaveView
from sovereign.services.recording import CallContext
from sovereign.services.sealing import Readers
from sovereign.web.console import accepts_uploads, bp, caller, flash, page, retry_form
from sovereign.web.views.requests import require_role

#: How much of a job's log its page shows (the end of it); the whole log is a link away.
LOG_TAIL = 64 * 1024
#: Seconds between reloads of a running job's page.
REFRESH_S = 2
#: What a multipart body may hold beyond its files (headers of parts, the other fields).
FORM_OVERHEAD = 1 << 20


def limits() -> JobLimits:
    """The configured job and dataset bounds."""
    return services().jobs.limits


def may_submit(principal: Principal, view: EnclaveView) -> bool:
    """Whether to offer ``principal`` the submit form (the service still decides)."""
    r = view.request
    return (
        principal.has_role(Role.ANALYST)
        and Readers.content(principal, r.tenant, r.label)
        and r.state is RequestState.RUNNING
    )


def may_read_results(principal: Principal, job: Job) -> bool:
    """Whether to offer ``principal`` a job's log and outputs (the service still decides)."""
    return Readers.content(principal, job.tenant, job.label)


def may_cancel(principal: Principal, job: Job) -> bool:
    """Whether to offer ``principal`` the cancel button: the tenant's cleared analysts or an
    officer, while the job has not ended (the service still decides)."""
    analyst = principal.has_role(Role.ANALYST) and may_read_results(principal, job)
    return not job.state.terminal and (analyst or principal.has_role(Role.OFFICER))


# -- the submit form -----------------------------------------------------------------------------


@dataclass
class JobForm:
    """What was typed into the submit form (to show again) and what is wrong with it."""

    values: dict[str, Any] = field(
        default_factory=lambda: {
            "entrypoint": "main.py",
            "args": "",
            "outputs": "",
            "max_runtime_s": "600",
            "inputs": [],
        }
    )
    errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def parse_job_form(
    form: MultiDict[str, str], uploads: list[FileStorage], limit: JobLimits
) -> tuple[JobForm, dict[str, Any] | None, list[tuple[str, bytes]]]:
    """The form as typed, the manifest data (None if a field is wrong) and the files."""
    values: dict[str, Any] = {
        "entrypoint": form.get("entrypoint", "").strip(),
        "args": form.get("args", ""),
        "outputs": form.get("outputs", ""),
        "max_runtime_s": form.get("max_runtime_s", "").strip(),
        "inputs": form.getlist("inputs"),
    }
    found = JobForm(values=values)
    files = [(f.filename or "", f.read()) for f in uploads if f.filename]
    if not files:
        found.errors["files"] = "Choose at least one file: the entry point and what it imports."
    if not values["entrypoint"]:
        found.errors["entrypoint"] = "Name the file python3 runs."
    elif files and values["entrypoint"] not in {name for name, _ in files}:
        found.errors["entrypoint"] = "The entry point must be one of the files chosen."
    try:
        runtime = int(values["max_runtime_s"])
        if not 1 <= runtime <= limit.max_runtime_s:
            found.errors["max_runtime_s"] = f"From 1 to {limit.max_runtime_s} seconds."
    except ValueError:
        found.errors["max_runtime_s"] = "Enter a whole number of seconds."
    if found.errors:
        return found, None, files
    data = {
        "entrypoint": values["entrypoint"],
        "args": [line.rstrip("\r") for line in values["args"].split("\n") if line.strip()],
        "inputs": values["inputs"],
        "outputs": _lines(values["outputs"]),
        "max_runtime_s": runtime,
    }
    return found, data, files


def _datasets_for(ctx: CallContext, view: EnclaveView) -> list[Dataset]:
    """The datasets the analyst may offer this enclave: its tenant's, within its label."""
    r = view.request
    return [
        d
        for d in services().datasets.list(ctx)
        if d.tenant == r.tenant and r.label.dominates(d.label)
    ]


def jobs_section(ctx: CallContext, view: EnclaveView) -> dict[str, Any]:
    """What the enclave page shows about jobs."""
    submit = may_submit(ctx.principal, view)
    return {
        "jobs": services().jobs.list(ctx, view.request.id),
        "can_submit": submit,
        "job_form": JobForm(),
        "datasets": _datasets_for(ctx, view) if submit else [],
        "max_runtime_s": limits().max_runtime_s,
    }


def _form_page(ctx: CallContext, enclave_id: uuid.UUID, form: JobForm) -> Response:
    view = services().enclaves.get(ctx, enclave_id)
    return page(
        "console/jobs/new.html",
        title="Submit a job",
        shown=[view.request.label],
        r=view.request,
        job_form=form,
        datasets=_datasets_for(ctx, view),
        max_runtime_s=limits().max_runtime_s,
        status=422 if form.errors or form.error else 200,
    )


@bp.get("/enclaves/<uuid:enclave_id>/jobs/new")
def new_job(enclave_id: uuid.UUID) -> ResponseReturnValue:
    """The submit form on its own page (the enclave page carries it too)."""
    ctx = caller()
    require_role(ctx.principal, Role.ANALYST, "Submitting a job")
    return _form_page(ctx, enclave_id, JobForm())


@bp.post("/enclaves/<uuid:enclave_id>/jobs")
def submit_job(enclave_id: uuid.UUID) -> ResponseReturnValue:
    """Queue the uploaded files as a job; the service checks membership, clearance, the
    enclave's state and the inputs' labels."""
    ctx = caller()
    limit = limits()
    form, data, files = parse_job_form(request.form, request.files.getlist("files"), limit)
    if data is None:
        return _form_page(ctx, enclave_id, form)

    def again(error: Any) -> Response:
        form.error = error.message
        return _form_page(ctx, enclave_id, form)

    retry_form(again)
    manifest = JobManifest.parse(data, max_runtime_s=limit.max_runtime_s)
    job = services().jobs.submit(ctx, enclave_id, manifest, files)
    flash(f"Job submitted with {len(files)} file(s); it starts within seconds.")
    return redirect(url_for("console.job_detail", job_id=job.id), 303)


accepts_uploads("console.submit_job", lambda _: limits().max_code_bytes + FORM_OVERHEAD)


# -- a job ---------------------------------------------------------------------------------------


def _log_text(data: bytes) -> str:
    # Untrusted bytes: decoded leniently, escaped by Jinja where shown.
    return data.decode("utf-8", errors="replace")


@bp.get("/jobs/<uuid:job_id>")
def job_detail(job_id: uuid.UUID) -> ResponseReturnValue:
    """One job: its manifest and files, state, exit code and runtime, the end of its log (the
    page reloads itself while the job runs) and its outputs to download."""
    ctx = caller()
    job = services().jobs.get(ctx, job_id)
    readable = may_read_results(ctx.principal, job)
    log, start = "", 0
    if readable:
        # The newest bytes, however small the chunks they were stored in (one audited read).
        data, start = services().jobs.log_tail(ctx, job_id, LOG_TAIL)
        log = _log_text(data)
    return page(
        "console/jobs/detail.html",
        title=f"Job {job.id}",
        shown=[job.label],
        job=job,
        readable=readable,
        log=log,
        log_start=start,
        refresh_s=None if job.state.terminal else REFRESH_S,
        can_cancel=may_cancel(ctx.principal, job),
    )


@bp.get("/jobs/<uuid:job_id>/log")
def job_log(job_id: uuid.UUID) -> ResponseReturnValue:
    """The job's whole log so far, as plain text (never rendered as HTML)."""
    ctx = caller()
    chunks: list[bytes] = []
    offset = 0
    # Each read returns at least a byte until the end, and a log holds at most max_log_bytes;
    # a read may stop short of its limit (it opens a bounded number of stored chunks).
    while offset < limits().max_log_bytes:
        data, offset = services().jobs.logs(ctx, job_id, offset, 1 << 20)
        if not data:
            break
        chunks.append(data)
    return Response(b"".join(chunks), content_type="text/plain; charset=utf-8")


@bp.get("/jobs/<uuid:job_id>/outputs/<path:name>")
def job_output(job_id: uuid.UUID, name: str) -> ResponseReturnValue:
    """One output file as an attachment (each download is an ``output:read`` event)."""
    ctx = caller()
    data = services().jobs.output(ctx, job_id, name)
    headers = Headers()
    # Werkzeug quotes the name (RFC 6266 filename*); the download is never shown inline.
    headers.set("Content-Disposition", "attachment", filename=name.rsplit("/", 1)[-1])
    return Response(data, mimetype="application/octet-stream", headers=headers)


@bp.post("/jobs/<uuid:job_id>/cancel")
def cancel_job(job_id: uuid.UUID) -> ResponseReturnValue:
    """Cancel the job: a queued one never starts, a running one is killed."""
    ctx = caller()
    job = services().jobs.cancel(ctx, job_id)
    flash(f"Job {job.id} is {job.state.value}." if job.state.terminal else "Cancelling the job.")
    return redirect(url_for("console.job_detail", job_id=job_id), 303)


# -- datasets ------------------------------------------------------------------------------------


@dataclass
class DatasetForm:
    """What was typed into the upload form and what is wrong with it."""

    values: dict[str, Any] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    error: str | None = None


def _datasets_page(ctx: CallContext, form: DatasetForm | None = None) -> Response:
    found = services().datasets.list(ctx)
    principal = ctx.principal
    top = principal.clearance.rank if principal.clearance is not None else -1
    if form is None:
        tenants = sorted(principal.tenants)
        form = DatasetForm(
            values={"tenant": tenants[0] if tenants else "", "level": "", "compartments": []}
        )
    return page(
        "console/datasets/list.html",
        title="Datasets",
        shown=[d.label for d in found],
        datasets=found,
        can_upload=principal.has_role(Role.ANALYST) and bool(principal.tenants) and top >= 0,
        tenants=sorted(principal.tenants),
        levels=services().scheme.levels[: top + 1],
        compartments=sorted(principal.clearance.compartments) if principal.clearance else [],
        form=form,
        max_bytes=limits().max_dataset_bytes,
        status=422 if form.errors or form.error else 200,
    )


@bp.get("/datasets")
def datasets() -> ResponseReturnValue:
    """The datasets the user may see, and the upload form for analysts."""
    ctx = caller()
    return _datasets_page(ctx)


@bp.post("/datasets")
def upload_dataset() -> ResponseReturnValue:
    """Seal and store the uploaded file for a tenant at a label; the service checks the
    tenant membership and that the analyst's clearance dominates the label."""
    ctx = caller()
    upload = request.files.get("file")
    values: dict[str, Any] = {
        "tenant": request.form.get("tenant", "").strip(),
        "name": request.form.get("name", "").strip(),
        "level": request.form.get("level", "").strip(),
        "compartments": request.form.getlist("compartments"),
    }
    form = DatasetForm(values=values)
    if upload is None or not upload.filename:
        form.errors["file"] = "Choose a file to upload."
    if not values["tenant"]:
        form.errors["tenant"] = "Choose a tenant."
    if not values["level"]:
        form.errors["level"] = "Choose a level."
    if form.errors or upload is None:
        return _datasets_page(ctx, form)

    def again(error: Any) -> Response:
        form.error = error.message
        return _datasets_page(ctx, form)

    retry_form(again)
    label = services().scheme.parse(
        {"level": values["level"], "compartments": values["compartments"]}
    )
    name = values["name"] or (upload.filename or "").rsplit("/", 1)[-1]
    found = services().datasets.upload(ctx, values["tenant"], name, label, upload.read())
    flash(f"Dataset {found.name} uploaded at {found.label}: id {found.id}.")
    return redirect(url_for("console.datasets"), 303)


accepts_uploads("console.upload_dataset", lambda _: limits().max_dataset_bytes + FORM_OVERHEAD)
