"""Jobs and datasets in the console: the analyst submits a job through the enclave page's upload
form, follows it on its page and downloads its outputs; officers and auditors see metadata up to
their clearance and no content; other tenants see nothing. Real tokens from the dev IdP, real
SQLite, the libvirt test driver's simulated hosts, the reconciler and the job runner run
in-process between requests."""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.datastructures import FileStorage, MultiDict
from werkzeug.test import TestResponse, encode_multipart

from devstack.cli import _register_bundled_hosts
from sovereign.adapters.memory_workloads import FakeRun, MemoryWorkloads
from sovereign.domain.identity import Principal, Role
from sovereign.services.auditing import EventFilter
from sovereign.services.recording import CallContext
from tests.web.conftest import (
    CIVIL_FORM,
    SECRET_FORM,
    Users,
    banners,
    csrf,
    make_app,
    post,
    request_id_from,
    sequence,
    text,
)

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]

SECRET = {**SECRET_FORM, "disk_gib": "50"}
CIVIL = {**CIVIL_FORM, "disk_gib": "50"}
HOSTILE = "<script>alert('x')</script>"


#: What the fake agent's job does (the console is under test here, not the agent: the CLI's
#: integration test runs real code in a process enclave): it logs its arguments, hostile markup,
#: a terminal escape and its inputs, and leaves two outputs.
def program(code: Mapping[str, bytes], inputs: Mapping[str, bytes], args: Sequence[str]) -> FakeRun:
    assert "main.py" in code
    log = [f"hello from the job {list(args)}".encode(), b"<script>alert(1)</script>\x1b[2J"]
    log += [b"input " + name.encode() + b": " + data for name, data in sorted(inputs.items())]
    files = {"out/metrics.json": b'{"accuracy": 0.97}', "model.bin": bytes(range(256))}
    return FakeRun(0, b"\n".join(log) + b"\n", files)


MAIN = b"print('the fake agent does not run this')\n"

Settle = Callable[[], None]


@pytest.fixture
def app(tmp_path: Path, console_idp: Any) -> Iterator[Flask]:
    """The console app with the embedded default's two simulated hosts registered."""
    app = make_app(tmp_path, console_idp.url, backends={"workloads": MemoryWorkloads(program)})
    _register_bundled_hosts(app.extensions["sovereign"])
    yield app
    app.extensions["sovereign"].close()


@pytest.fixture
def settle(app: Flask) -> Settle:
    """Run the reconciler, then the job runner, until neither has more to do (what the worker
    does continuously)."""
    svc = app.extensions["sovereign"]
    reconciler = svc.reconciler(worker="t")

    def run() -> None:
        for _ in range(50):
            if not reconciler.run_once().busy:
                break
        else:
            raise AssertionError("the reconciler never settled")
        run_jobs(svc)

    run()  # the new hosts' GPUs start dirty: sanitize them
    return run


def run_jobs(svc: Any) -> None:
    """Drive every open job to its end through the configured workloads."""
    runner = svc.jobrunner(worker="t")
    for _ in range(400):
        report = runner.run_once()
        if not report.active and not report.progressed:
            return
    raise AssertionError("the job runner never settled")


def running(users: Users, settle: Settle, *, civil: bool = False) -> str:
    """An enclave the analyst requested, approved and brought up by the reconciler."""
    analyst = users("analyst-research" if civil else "analyst-defence")
    done = post(analyst, "/requests", CIVIL if civil else SECRET)
    assert done.status_code == 303, text(done)
    rid = request_id_from(done)
    for officer in ("officer-1",) if civil else ("officer-1", "officer-2"):
        assert post(users(officer), f"/requests/{rid}/approve").status_code == 303
    settle()
    return rid


def submit(
    client: FlaskClient,
    enclave: str,
    files: dict[str, bytes] | None = None,
    *,
    token: str | None = None,
    **fields: Any,
) -> TestResponse:
    """Post the enclave page's job form as a browser would (multipart)."""
    data: dict[str, Any] = {
        "entrypoint": "main.py",
        "args": "",
        "outputs": "out/*.json\nmodel.bin",
        "max_runtime_s": "60",
        **fields,
        "files": [(io.BytesIO(body), name) for name, body in (files or {"main.py": MAIN}).items()],
    }
    data["csrf_token"] = csrf(client, f"/enclaves/{enclave}") if token is None else token
    return post_multipart(client, f"/enclaves/{enclave}/jobs", data)


def post_multipart(client: FlaskClient, path: str, data: dict[str, Any]) -> TestResponse:
    """Post ``data`` as ``multipart/form-data``, encoded in memory (the test client's own
    encoder spools bodies above 500 KiB to a temporary file it never closes)."""
    fields: MultiDict[str, Any] = MultiDict()
    for name, value in data.items():
        for item in value if isinstance(value, list) else [value]:
            # (stream, file name), as the test client takes files.
            is_file = isinstance(item, tuple)
            fields.add(name, FileStorage(item[0], filename=item[1], name=name) if is_file else item)
    boundary, body = encode_multipart(fields)
    return client.post(path, data=body, content_type=f"multipart/form-data; boundary={boundary}")


def job_id_from(response: TestResponse) -> str:
    assert response.status_code == 303, text(response)
    path = response.headers["Location"]
    found = re.fullmatch(r"/jobs/([0-9a-f-]{36})", path)
    assert found, path
    return found.group(1)


def events(app: Flask, action: str) -> list[Any]:
    sequence(app)
    svc = app.extensions["sovereign"]
    reader = CallContext(
        principal=Principal(
            subject="t", username="t", roles=frozenset({Role.AUDITOR}), clearance=svc.scheme.highest
        )
    )
    return list(svc.audit.events(reader, EventFilter(limit=200, action=action)).items)


# -- submitting ------------------------------------------------------------------------------


def test_the_analyst_submits_a_job_and_reads_its_log_and_outputs(
    app: Flask, users: Users, settle: Settle
):
    rid = running(users, settle)
    analyst = users("analyst-defence")
    enclave_page = text(analyst.get(f"/enclaves/{rid}"))
    assert 'enctype="multipart/form-data"' in enclave_page
    assert "No jobs in this enclave yet." in enclave_page

    job = job_id_from(submit(analyst, rid, args=f"--epochs\n3\n{HOSTILE}"))
    queued = text(analyst.get(f"/jobs/{job}"))
    assert '<span class="state state-queued">queued</span>' in queued
    assert '<meta http-equiv="refresh" content="2">' in queued  # followed while not ended
    assert HOSTILE not in queued and "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in queued
    assert banners(queued) == ["SECRET//NATO", "SECRET//NATO"]
    listed = text(analyst.get(f"/enclaves/{rid}"))
    assert f"/jobs/{job}" in listed
    assert 'id="jobs-simulated"' in listed and 'id="job-simulated"' in queued

    settle()
    done = text(analyst.get(f"/jobs/{job}"))
    assert '<span class="state state-succeeded">succeeded</span>' in done, done
    assert "http-equiv" not in done  # ended: no more reloading
    assert "hello from the job" in done and "[&#39;--epochs&#39;, &#39;3&#39;," in done
    # The job's own markup and escapes reach the page only as text.
    assert "<script>alert(1)</script>" not in done
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in done

    log = analyst.get(f"/jobs/{job}/log")
    assert log.status_code == 200
    assert log.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert log.headers["X-Content-Type-Options"] == "nosniff"
    assert b"<script>alert(1)</script>" in log.data

    model = analyst.get(f"/jobs/{job}/outputs/model.bin")
    assert model.status_code == 200
    assert model.data == bytes(range(256))
    assert model.headers["Content-Type"] == "application/octet-stream"
    assert model.headers["Content-Disposition"] == "attachment; filename=model.bin"
    assert hashlib.sha256(model.data).hexdigest() in done
    metrics = analyst.get(f"/jobs/{job}/outputs/out/metrics.json")
    assert metrics.status_code == 200 and b"accuracy" in metrics.data
    assert f'href="/jobs/{job}/outputs/out/metrics.json"' in done

    reads = [e.event for e in events(app, "output:read") if e.event.target.endswith(job)]
    assert sorted(e.details["name"] for e in reads) == ["model.bin", "out/metrics.json"]
    assert [e.event.outcome for e in events(app, "job:submit")] == ["allow"]


def test_a_form_without_its_csrf_token_changes_nothing(app: Flask, users: Users, settle: Settle):
    rid = running(users, settle)
    analyst = users("analyst-defence")
    refused = submit(analyst, rid, token="forged")
    assert refused.status_code == 400
    assert "security token" in text(refused)
    assert "No jobs in this enclave yet." in text(analyst.get(f"/enclaves/{rid}"))
    assert events(app, "job:submit") == []
    upload = post_multipart(
        analyst,
        "/datasets",
        {"tenant": "defence", "level": "SECRET", "file": (io.BytesIO(b"x"), "d.csv")},
    )
    assert upload.status_code == 400


def test_form_mistakes_are_shown_with_the_form(users: Users, settle: Settle):
    rid = running(users, settle)
    analyst = users("analyst-defence")
    missing = submit(analyst, rid, entrypoint="train.py")
    assert missing.status_code == 422
    assert "The entry point must be one of the files chosen." in text(missing)
    assert 'value="train.py"' in text(missing)

    hostile = submit(analyst, rid, {f"{HOSTILE}.py": b"x", "main.py": MAIN})
    assert hostile.status_code == 422
    html = text(hostile)
    assert HOSTILE not in html and "&lt;script&gt;" in html
    assert "Nothing was submitted" in html

    runtime = submit(analyst, rid, max_runtime_s="ten")
    assert runtime.status_code == 422
    assert "Enter a whole number of seconds." in text(runtime)


def test_officers_and_auditors_see_metadata_but_no_content(users: Users, settle: Settle):
    rid = running(users, settle)
    job = job_id_from(submit(users("analyst-defence"), rid))
    settle()
    for user in ("officer-1", "auditor"):
        client = users(user)
        enclave = text(client.get(f"/enclaves/{rid}"))
        assert f"/jobs/{job}" in enclave
        assert "Submit the job" not in enclave  # no form for them
        page = client.get(f"/jobs/{job}")
        html = text(page)
        assert page.status_code == 200
        assert '<span class="state state-succeeded">succeeded</span>' in html
        assert "main.py" in html
        assert "hello from the job" not in html
        assert "shown only to members of tenant defence" in html
        assert client.get(f"/jobs/{job}/log").status_code == 404
        assert client.get(f"/jobs/{job}/outputs/model.bin").status_code == 404


def test_other_tenants_and_lower_clearances_see_no_job(users: Users, settle: Settle):
    rid = running(users, settle)
    job = job_id_from(submit(users("analyst-defence"), rid))
    settle()
    for user in ("analyst-research", "auditor-low", "officer-restricted"):
        client = users(user)
        page = client.get(f"/jobs/{job}")
        assert page.status_code == 404, user
        assert "SECRET" not in text(page)
        assert client.get(f"/jobs/{job}/outputs/model.bin").status_code == 404
        assert post(client, f"/jobs/{job}/cancel").status_code == 404
    assert post(users("analyst-research"), f"/enclaves/{rid}/jobs").status_code in {400, 404}


def test_an_unknown_output_or_one_escaping_is_not_found(users: Users, settle: Settle):
    rid = running(users, settle)
    analyst = users("analyst-defence")
    job = job_id_from(submit(analyst, rid))
    settle()
    for name in ("nope.bin", "../model.bin", "out/../model.bin", "%2e%2e/x"):
        assert analyst.get(f"/jobs/{job}/outputs/{name}").status_code == 404, name
    assert analyst.get(f"/jobs/{uuid.uuid4()}").status_code == 404


def test_a_queued_job_can_be_cancelled(users: Users, settle: Settle):
    rid = running(users, settle)
    analyst = users("analyst-defence")
    job = job_id_from(submit(analyst, rid))
    page = text(analyst.get(f"/jobs/{job}"))
    assert 'id="cancel-job"' in page
    done = post(analyst, f"/jobs/{job}/cancel")
    assert done.status_code == 303
    settle()
    html = text(analyst.get(f"/jobs/{job}"))
    assert '<span class="state state-cancelled">cancelled</span>' in html
    assert 'id="cancel-job"' not in html


# -- datasets --------------------------------------------------------------------------------


def upload(client: FlaskClient, **fields: Any) -> TestResponse:
    data = {
        "tenant": "defence",
        "level": "SECRET",
        "compartments": ["NATO"],
        "name": "",
        "file": (io.BytesIO(b"a,b\n1,2\n"), "table.csv"),
        **fields,
        "csrf_token": csrf(client, "/datasets"),
    }
    return post_multipart(client, "/datasets", data)


def test_the_analyst_uploads_a_dataset_and_uses_it_as_an_input(
    app: Flask, users: Users, settle: Settle
):
    analyst = users("analyst-defence")
    page = text(analyst.get("/datasets"))
    assert "No datasets you may see yet." in page and 'id="dataset-form"' in page
    done = upload(analyst)
    assert done.status_code == 303, text(done)
    listed = text(analyst.get("/datasets"))
    assert "table.csv" in listed and hashlib.sha256(b"a,b\n1,2\n").hexdigest() in listed
    assert banners(listed) == ["SECRET//NATO", "SECRET//NATO"]
    dataset = re.search(r"<code>([0-9a-f-]{36})</code>", listed)
    assert dataset
    assert [e.event.outcome for e in events(app, "dataset:upload")] == ["allow"]

    rid = running(users, settle)
    form = text(analyst.get(f"/enclaves/{rid}"))
    assert f'value="{dataset.group(1)}"' in form
    job = job_id_from(submit(analyst, rid, inputs=[dataset.group(1)]))
    settle()
    assert "input table.csv: a,b\n1,2" in text(analyst.get(f"/jobs/{job}/log"))

    # Other tenants do not see it; an upload above one's clearance is refused with the form.
    assert "table.csv" not in text(users("analyst-research").get("/datasets"))
    above = upload(users("analyst-research"), tenant="research", level="SECRET", compartments=[])
    assert above.status_code in {403, 422}
    assert "Nothing was stored" in text(above)


def test_datasets_are_offered_to_analysts_only(users: Users):
    nav = text(users("analyst-defence").get("/"))
    assert ">Datasets</a>" in nav
    assert ">Datasets</a>" not in text(users("officer-1").get("/"))


def test_uploads_stay_in_memory_and_are_bounded(
    tmp_path: Path, console_idp: Any, monkeypatch: pytest.MonkeyPatch
):
    """Werkzeug spools an uploaded file above 500 KiB to a temporary file: plaintext on the
    control plane's disk. The console's upload forms parse in memory, within their own bound
    (the app's 64 KiB for other forms would refuse any real upload)."""

    def no_disk(*args: object, **kwargs: object) -> None:
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr("werkzeug.wrappers.request.default_stream_factory", no_disk)
    app = make_app(tmp_path, console_idp.url, DATASET_MAX_BYTES=2 << 20)
    try:
        analyst = Users(app, {})("analyst-defence")
        big = bytes(range(256)) * 4096  # 1 MiB
        done = upload(analyst, file=(io.BytesIO(big), "big.bin"))
        assert done.status_code == 303, text(done)
        assert hashlib.sha256(big).hexdigest() in text(analyst.get("/datasets"))
        too_big = upload(analyst, file=(io.BytesIO(big * 4), "huge.bin"))
        assert too_big.status_code == 413
        assert "huge.bin" not in text(analyst.get("/datasets"))
    finally:
        app.extensions["sovereign"].close()
