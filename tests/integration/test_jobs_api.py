"""Jobs and datasets over HTTP: multipart uploads, problem+json for every bad input, size
limits (413), logs with their headers, outputs as bytes, and the OpenAPI document, with real
tokens from the dev IdP, real SQLite, the in-memory hypervisor and the in-memory agents; the
reconciler and the job runner run in-process between calls."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from sovereign.adapters.memory_hypervisor import MemoryHost, MemoryHypervisor
from sovereign.adapters.memory_workloads import MemoryWorkloads
from sovereign.cli_hosts import cli_context
from tests.support.apps import make_app
from tests.support.fleet import ensure_site, gpus

pytestmark = pytest.mark.idp

CIVIL: dict[str, Any] = {
    "tenant": "research",
    "label": {"level": "UNCLASSIFIED", "compartments": []},
    "resources": {
        "vcpus": 2,
        "memory_mib": 4096,
        "gpus": 1,
        "gpu_model": "H100-SXM5-80GB",
        "disk_gib": 20,
    },
    "image": "ubuntu-24.04-research",
    "purpose": "jobs api",
    "lease_hours": 8,
}
MANIFEST = {"entrypoint": "main.py", "args": ["--seed", "1"], "outputs": ["out/*"]}
PROBLEM = "application/problem+json"


@pytest.fixture
def limits(request: pytest.FixtureRequest) -> dict[str, int]:
    """The upload limits (small, so that 413s are cheap); a test may ask for others."""
    return getattr(request, "param", {"JOB_MAX_CODE_BYTES": 4096, "DATASET_MAX_BYTES": 8192})


@pytest.fixture
def app(tmp_path: Path, idp: Any, limits: dict[str, int]) -> Iterator[Flask]:
    hypervisor = MemoryHypervisor()
    hypervisor.add_host("mem://civil-1", MemoryHost(gpus=gpus(2)))
    app = make_app(
        tmp_path,
        idp.url,
        backends={"hypervisor": hypervisor, "workloads": MemoryWorkloads()},
        **limits,
    )
    services = app.extensions["sovereign"]
    ensure_site(services, "hall-b")
    services.hosts.add(
        cli_context(),
        name="civil-1",
        uri="mem://civil-1",
        site="hall-b",
        accreditation=services.scheme.parse("UNCLASSIFIED"),
    )
    yield app
    services.close()


Call = Callable[..., Any]


@pytest.fixture
def call(app: Flask, token: Callable[[str], str]) -> Call:
    client: FlaskClient = app.test_client()

    def do(user: str | None, method: str, path: str, **kw: Any) -> Any:
        headers = kw.pop("headers", {})
        if user:
            headers["Authorization"] = f"Bearer {token(user)}"
        return client.open(path, method=method, headers=headers, **kw)

    return do


def settle(app: Flask) -> None:
    services = app.extensions["sovereign"]
    reconciler = services.reconciler(worker="test")
    runner = services.jobrunner(worker="test")
    for _ in range(20):
        busy = reconciler.run_once().busy
        report = runner.run_once()
        if not (busy or report.progressed or report.logged):
            return


@pytest.fixture
def enclave(app: Flask, call: Call) -> str:
    settle(app)  # sanitize the host's GPUs
    r = call("analyst-research", "POST", "/api/v1/requests", json=CIVIL)
    assert r.status_code == 201, r.get_json()
    rid = r.get_json()["id"]
    assert call("officer-1", "POST", f"/api/v1/requests/{rid}/approve", json={}).status_code == 200
    settle(app)
    assert (
        call("analyst-research", "GET", f"/api/v1/enclaves/{rid}").get_json()["state"] == "running"
    )
    return str(rid)


def job_form(manifest: Any = MANIFEST, files: dict[str, bytes] | None = None) -> dict[str, Any]:
    import io

    parts: dict[str, Any] = {}
    if manifest is not None:
        parts["manifest"] = manifest if isinstance(manifest, str) else json.dumps(manifest)
    chosen = {"main.py": b"print('hi')\n"} if files is None else files
    parts["files"] = [(io.BytesIO(data), name) for name, data in chosen.items()]
    return parts


def dataset_form(data: bytes = b"a,b\n1,2\n", **over: Any) -> dict[str, Any]:
    import io

    parts: dict[str, Any] = {
        "tenant": "research",
        "name": "train.csv",
        "label": json.dumps({"level": "UNCLASSIFIED", "compartments": []}),
        "file": (io.BytesIO(data), "train.csv"),
    }
    parts.update(over)
    return {k: v for k, v in parts.items() if v is not None}


def test_upload_submit_follow_and_download(app: Flask, call: Call, enclave: str):
    r = call("analyst-research", "POST", "/api/v1/datasets", data=dataset_form())
    assert r.status_code == 201, r.get_json()
    dataset = r.get_json()
    assert dataset["label"] == {"level": "UNCLASSIFIED", "compartments": []}
    assert dataset["sha256"] == hashlib.sha256(b"a,b\n1,2\n").hexdigest()
    listed = call("analyst-research", "GET", "/api/v1/datasets").get_json()["items"]
    assert [d["id"] for d in listed] == [dataset["id"]]
    assert call("analyst-research", "GET", f"/api/v1/datasets/{dataset['id']}").status_code == 200
    assert call("analyst-defence", "GET", f"/api/v1/datasets/{dataset['id']}").status_code == 404

    manifest = {**MANIFEST, "inputs": [dataset["id"]]}
    r = call(
        "analyst-research", "POST", f"/api/v1/enclaves/{enclave}/jobs", data=job_form(manifest)
    )
    assert r.status_code == 201, r.get_json()
    job = r.get_json()
    assert job["state"] == "queued" and job["inputs"] == [dataset["id"]]
    assert job["files"] == [
        {"name": "main.py", "size": 12, "sha256": hashlib.sha256(b"print('hi')\n").hexdigest()}
    ]
    settle(app)
    got = call("analyst-research", "GET", f"/api/v1/jobs/{job['id']}").get_json()
    assert got["state"] == "succeeded" and got["exit_code"] == 0
    assert [x["name"] for x in got["results"]] == ["out/result.txt"]
    listed = call("analyst-research", "GET", f"/api/v1/enclaves/{enclave}/jobs").get_json()
    assert [x["id"] for x in listed["items"]] == [job["id"]]

    log = call("analyst-research", "GET", f"/api/v1/jobs/{job['id']}/logs")
    assert log.status_code == 200 and log.mimetype == "text/plain"
    assert log.data.startswith(b"args --seed 1\ninput train.csv 8\n")
    assert log.headers["X-Next-Offset"] == str(len(log.data))
    assert log.headers["X-Job-State"] == "succeeded"
    tail = call("analyst-research", "GET", f"/api/v1/jobs/{job['id']}/logs?offset=5&limit=3")
    assert tail.data == log.data[5:8] and tail.headers["X-Next-Offset"] == "8"

    out = call("analyst-research", "GET", f"/api/v1/jobs/{job['id']}/outputs/out/result.txt")
    assert out.status_code == 200 and out.mimetype == "application/octet-stream"
    assert out.data == b"result of --seed 1"
    assert out.headers["X-Content-SHA256"] == hashlib.sha256(out.data).hexdigest()
    # Others learn nothing; officers see the metadata but never the content.
    for user in ("analyst-defence", "officer-1", "auditor"):
        missing = call(user, "GET", f"/api/v1/jobs/{job['id']}/outputs/out/result.txt")
        assert missing.status_code == 404 and missing.mimetype == PROBLEM
    assert call("analyst-defence", "GET", f"/api/v1/jobs/{job['id']}").status_code == 404
    assert call("auditor", "GET", f"/api/v1/jobs/{job['id']}").status_code == 200
    done = call("analyst-research", "POST", f"/api/v1/jobs/{job['id']}/cancel")
    assert done.status_code == 409 and done.mimetype == PROBLEM


@pytest.mark.parametrize(
    ("form", "status", "detail"),
    [
        (lambda: job_form(manifest=None), 422, "manifest"),
        (lambda: job_form(manifest="{not json"), 422, "not valid JSON"),
        (lambda: job_form(manifest=[1]), 422, "JSON object"),
        (lambda: job_form(manifest={"entrypoint": "../main.py"}), 422, "entrypoint"),
        (lambda: job_form(manifest={**MANIFEST, "bogus": 1}), 422, "unknown manifest field"),
        (lambda: job_form(manifest={**MANIFEST, "max_runtime_s": 10**9}), 422, "max_runtime_s"),
        (lambda: job_form(manifest={**MANIFEST, "inputs": ["nope"]}), 422, "dataset ids"),
        (lambda: job_form(manifest={**MANIFEST, "outputs": ["/etc/*"]}), 422, "output pattern"),
        # Within each argument's bounds, but too much for one request to the agent.
        (lambda: job_form(manifest={**MANIFEST, "args": ["x" * 1024] * 64}), 422, "bytes of JSON"),
        (lambda: job_form(files={}), 422, "at least one file"),
        (lambda: job_form(files={"x/../main.py": b"1"}), 422, "file name"),
        (lambda: job_form(files={"main.py": b"x" * 5000}), 413, None),
        (lambda: job_form(files={"other.py": b"1"}), 422, "entrypoint"),
    ],
)
def test_bad_job_submissions_are_problems(
    call: Call, enclave: str, form: Callable[[], Any], status: int, detail: str | None
):
    r = call(
        "analyst-research",
        "POST",
        f"/api/v1/enclaves/{enclave}/jobs",
        data=form(),
        content_type="multipart/form-data",
    )
    assert r.status_code == status, r.get_json()
    assert r.mimetype == PROBLEM
    if detail:
        assert detail in r.get_json()["detail"]


def encoded(parts: dict[str, Any]) -> dict[str, Any]:
    """``parts`` as a multipart body built in memory (the test client's own encoder spools a
    large body to a temporary file on the client side)."""
    boundary = "sovereign-test-boundary"
    body = bytearray()
    for name, value in parts.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, tuple):
                stream, filename = item
                head = f'name="{name}"; filename="{filename}"'
                data = stream.read()
            else:
                head, data = f'name="{name}"', str(item).encode()
            body += f"--{boundary}\r\nContent-Disposition: form-data; {head}\r\n\r\n".encode()
            body += data + b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return {"data": bytes(body), "content_type": f"multipart/form-data; boundary={boundary}"}


@pytest.mark.parametrize(
    "limits", [{"JOB_MAX_CODE_BYTES": 2 << 20, "DATASET_MAX_BYTES": 2 << 20}], indirect=True
)
def test_a_large_upload_never_touches_the_disk(
    call: Call, enclave: str, monkeypatch: pytest.MonkeyPatch
):
    # werkzeug's default parser spools a file part above 500 KiB to a temporary file; an
    # upload is plaintext, so neither the job's code nor a dataset may take that path.
    import tempfile

    import werkzeug.formparser

    spooled: list[str] = []

    def refuse(*_: Any, **__: Any) -> Any:
        spooled.append("temporary file")
        raise AssertionError("an upload was spooled to a temporary file")

    for name in ("SpooledTemporaryFile", "TemporaryFile", "NamedTemporaryFile", "mkstemp"):
        monkeypatch.setattr(tempfile, name, refuse)
    monkeypatch.setattr(werkzeug.formparser, "SpooledTemporaryFile", refuse)
    big = b"x" * (600 << 10)
    r = call("analyst-research", "POST", "/api/v1/datasets", **encoded(dataset_form(big)))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["sha256"] == hashlib.sha256(big).hexdigest()
    code = b"#" + b"x" * (600 << 10) + b"\n"
    form = job_form(files={"main.py": code})
    r = call("analyst-research", "POST", f"/api/v1/enclaves/{enclave}/jobs", **encoded(form))
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["files"][0]["sha256"] == hashlib.sha256(code).hexdigest()
    assert spooled == []


def test_oversized_bodies_are_refused_with_413_before_parsing(call: Call, enclave: str):
    big = b"x" * (2 << 20)
    r = call(
        "analyst-research",
        "POST",
        f"/api/v1/enclaves/{enclave}/jobs",
        data=big,
        content_type="multipart/form-data; boundary=x",
    )
    assert r.status_code == 413 and r.mimetype == PROBLEM
    r = call("analyst-research", "POST", "/api/v1/datasets", data=dataset_form(b"y" * 10_000))
    assert r.status_code == 413 and r.mimetype == PROBLEM
    assert "detail" in r.get_json()


def test_a_job_body_must_be_multipart(call: Call, enclave: str):
    r = call("analyst-research", "POST", f"/api/v1/enclaves/{enclave}/jobs", json=MANIFEST)
    assert r.status_code == 415 and r.mimetype == PROBLEM


@pytest.mark.parametrize(
    ("over", "status"),
    [
        ({"file": None}, 422),
        ({"tenant": None}, 422),
        ({"label": "nope"}, 422),
        ({"label": json.dumps({"level": "COSMIC"})}, 422),
        ({"label": json.dumps({"level": "RESTRICTED"})}, 403),
        ({"name": "../x"}, 422),
        ({"tenant": "defence"}, 404),
    ],
)
def test_bad_dataset_uploads_are_problems(call: Call, over: dict[str, Any], status: int):
    r = call(
        "analyst-research",
        "POST",
        "/api/v1/datasets",
        data=dataset_form(**over),
        content_type="multipart/form-data",
    )
    assert r.status_code == status, r.get_json()
    assert r.mimetype == PROBLEM


def test_the_document_describes_the_multipart_bodies(app: Flask):
    doc = app.test_client().get("/api/openapi.json").get_json()
    submit = doc["paths"]["/api/v1/enclaves/{enclave_id}/jobs"]["post"]
    assert list(submit["requestBody"]["content"]) == ["multipart/form-data"]
    form = doc["components"]["schemas"]["JobSubmitForm"]
    assert form["properties"]["files"]["items"]["format"] == "binary"
    assert "413" in submit["responses"]
    output = doc["paths"]["/api/v1/jobs/{job_id}/outputs/{name}"]["get"]
    assert "application/octet-stream" in output["responses"]["200"]["content"]
    logs = doc["paths"]["/api/v1/jobs/{job_id}/logs"]["get"]["responses"]["200"]
    assert set(logs["headers"]) == {"X-Next-Offset", "X-Job-State"}
