"""``sovereign jobs`` and ``sovereign datasets`` against a real control plane over HTTP: the app
served on a loopback port, real tokens from the dev IdP, real SQLite, the libvirt test driver's
simulated hosts with the configured workloads, and the job runner working in a thread as the
worker does. The CLI runs as a subprocess, as an analyst types it."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server

from devstack.cli import _register_bundled_hosts
from devstack.stack import free_port
from tests.support.apps import make_app

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]

SOVEREIGN = str(Path(sys.executable).with_name("sovereign"))
REQUEST: dict[str, Any] = {
    "tenant": "defence",
    "label": {"level": "SECRET", "compartments": ["NATO"]},
    "resources": {
        "vcpus": 8,
        "memory_mib": 16384,
        "gpus": 1,
        "gpu_model": "H100-SXM5-80GB",
        "disk_gib": 50,
    },
    "image": "debian-12-cuda",
    "purpose": "cli jobs",
    "lease_hours": 8,
}
MAIN = """import json, os, sys, time
print("epoch 1 of", sys.argv[1], flush=True)
time.sleep(0.3)
print("\\x1b]0;owned\\x07done", flush=True)
inputs = os.environ["SOVEREIGN_INPUTS"]
rows = open(os.path.join(inputs, "rows.csv")).read().splitlines()
os.makedirs("out", exist_ok=True)
json.dump({"rows": len(rows)}, open("out/metrics.json", "w"))
open("weights.bin", "wb").write(bytes(range(256)) * 4)
"""


@pytest.fixture
def app(tmp_path: Path, idp: Any) -> Iterator[Flask]:
    # Small code bound, so that a test can pass it cheaply.
    app = make_app(tmp_path, idp.url, JOB_MAX_CODE_BYTES=1 << 20)
    svc = app.extensions["sovereign"]
    _register_bundled_hosts(svc)
    yield app
    svc.close()


@pytest.fixture
def served(app: Flask) -> Iterator[str]:
    """The app on a loopback port, with the reconciler and the job runner working in a thread
    (as ``sovereign worker`` does)."""
    port = free_port()
    server = make_server("127.0.0.1", port, app, threaded=True)
    svc = app.extensions["sovereign"]
    stop = threading.Event()

    def work() -> None:
        reconciler = svc.reconciler(worker="t")
        runner = svc.jobrunner(worker="t")
        while not stop.is_set():
            busy = reconciler.run_once().busy
            report = runner.run_once()
            if not (busy or report.active or report.progressed):
                stop.wait(0.1)

    threads = [
        threading.Thread(target=server.serve_forever, daemon=True),
        threading.Thread(target=work, daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop.set()
        server.shutdown()
        for thread in threads:
            thread.join(timeout=30)


Run = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(served: str, token: Callable[[str], str], tmp_path: Path) -> Run:
    """``cli(user, *args)``: ``sovereign ARGS`` as ``user`` (token in SOVEREIGN_TOKEN)."""

    def run(user: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "SOVEREIGN_URL": served, "SOVEREIGN_TOKEN": token(user)}
        done = subprocess.run(
            [SOVEREIGN, *args],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check:
            assert done.returncode == 0, done.stderr
        return done

    return run


@pytest.fixture
def enclave(app: Flask, served: str, token: Callable[[str], str]) -> Iterator[Callable[[], str]]:
    """``enclave()``: a SECRET//NATO enclave of the defence tenant, approved and up. Its
    process enclave is stopped afterwards (they outlive the control plane on purpose, so that
    jobs survive a restart; terminating the enclave would stop it)."""
    made: list[str] = []

    def call(user: str, method: str, path: str, **kw: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token(user)}"}
        return requests.request(method, served + path, headers=headers, timeout=30, **kw)

    def make() -> str:
        created = call("analyst-defence", "POST", "/api/v1/requests", json=REQUEST)
        assert created.status_code == 201, created.text
        rid = str(created.json()["id"])
        made.append(rid)
        for officer in ("officer-1", "officer-2"):
            assert call(officer, "POST", f"/api/v1/requests/{rid}/approve").status_code == 200
        deadline = time.monotonic() + 60
        while call("analyst-defence", "GET", f"/api/v1/requests/{rid}").json()["state"] != (
            "running"
        ):
            assert time.monotonic() < deadline, "the enclave never came up"
            time.sleep(0.2)
        return rid

    yield make
    for rid in made:
        app.extensions["sovereign"].workloads.release(uuid.UUID(rid))


def test_an_analyst_runs_a_job_from_the_command_line(
    cli: Run, enclave: Callable[[], str], tmp_path: Path
):
    data = tmp_path / "rows.csv"
    data.write_text("a\nb\nc\n")
    uploaded = cli(
        "analyst-defence", "datasets", "upload", str(data), "--tenant", "defence",
        "--label", "SECRET:NATO",
    )  # fmt: skip
    dataset = uploaded.stdout.strip()
    assert "uploading rows.csv" in uploaded.stderr and "(100%)" in uploaded.stderr
    listed = cli("analyst-defence", "datasets", "list").stdout
    assert dataset in listed and "SECRET//NATO" in listed and "rows.csv" in listed

    rid = enclave()
    code = tmp_path / "job"
    (code / "lib").mkdir(parents=True)
    (code / "main.py").write_text(MAIN)
    (code / "lib" / "helper.py").write_text("X = 1\n")
    done = cli(
        "analyst-defence", "jobs", "submit", rid, str(code), "--entrypoint", "main.py",
        "--arg", "3", "--input", dataset, "--output", "out/*.json", "--output", "weights.bin",
        "--max-runtime", "60", "--wait",
    )  # fmt: skip
    job = done.stdout.splitlines()[0]
    assert "uploading 2 files" in done.stderr
    assert "epoch 1 of 3" in done.stdout
    # The job's terminal escape arrives escaped, not raw.
    assert "\\x1b]0;owned\\x07done" in done.stdout and "\x1b" not in done.stdout
    assert f"job {job} succeeded: exit code 0" in done.stderr

    assert job in cli("analyst-defence", "jobs", "list", rid).stdout
    shown = cli("analyst-defence", "jobs", "show", job).stdout
    assert "succeeded" in shown and "lib/helper.py" in shown and "weights.bin" in shown
    assert "epoch 1 of 3" in cli("analyst-defence", "jobs", "logs", job).stdout

    out = tmp_path / "results"
    fetched = cli("analyst-defence", "jobs", "outputs", job, "--out", str(out))
    weights = (out / "weights.bin").read_bytes()
    assert weights == bytes(range(256)) * 4
    assert hashlib.sha256(weights).hexdigest() in fetched.stdout
    assert json.loads((out / "out" / "metrics.json").read_text()) == {"rows": 3}

    # Errors are one line and exit 2: a job someone else may not see, an ended job's cancel.
    hidden = cli("analyst-research", "jobs", "show", job, check=False)
    assert hidden.returncode == 2
    assert hidden.stderr.count("\n") == 1 and "Not Found" in hidden.stderr
    ended = cli("analyst-defence", "jobs", "cancel", job, check=False)
    assert ended.returncode == 2 and "HTTP 409" in ended.stderr


def test_a_failing_job_makes_wait_exit_non_zero(
    cli: Run, enclave: Callable[[], str], tmp_path: Path
):
    rid = enclave()
    code = tmp_path / "job"
    code.mkdir()
    (code / "main.py").write_text("import sys\nprint('about to fail')\nsys.exit(3)\n")
    done = cli(
        "analyst-defence", "jobs", "submit", rid, str(code), "--entrypoint", "main.py",
        "--wait", "--quiet", check=False,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "about to fail" in done.stdout
    assert "failed: exit code 3" in done.stderr


def test_submit_refuses_a_symlink_before_sending(cli: Run, tmp_path: Path):
    code = tmp_path / "job"
    code.mkdir()
    (code / "main.py").write_text("print(1)\n")
    (tmp_path / "secret").write_text("do not send")
    (code / "data").symlink_to(tmp_path / "secret")
    rid = "00000000-0000-0000-0000-000000000000"
    done = cli(
        "analyst-defence", "jobs", "submit", rid, str(code), "--entrypoint", "main.py",
        check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "a symlink; refusing to follow it" in done.stderr


def test_outputs_never_follow_a_symlink_planted_in_the_target(
    cli: Run, enclave: Callable[[], str], tmp_path: Path
):
    rid = enclave()
    code = tmp_path / "job"
    code.mkdir()
    (code / "main.py").write_text("open('w.bin', 'wb').write(b'real weights')\n")
    done = cli(
        "analyst-defence", "jobs", "submit", rid, str(code), "--entrypoint", "main.py",
        "--output", "w.bin", "--wait", "--quiet",
    )  # fmt: skip
    job = done.stdout.splitlines()[0]
    out = tmp_path / "o"
    out.mkdir()
    (out / "w.bin").symlink_to(tmp_path / "victim")
    refused = cli("analyst-defence", "jobs", "outputs", job, "--out", str(out), check=False)
    assert refused.returncode == 2 and "outside" in refused.stderr
    assert not (tmp_path / "victim").exists()
    (out / "w.bin").unlink()
    cli("analyst-defence", "jobs", "outputs", job, "--out", str(out))
    assert (out / "w.bin").read_bytes() == b"real weights"


def test_a_running_job_is_cancelled_and_logs_follow_it_to_the_end(
    cli: Run, enclave: Callable[[], str], tmp_path: Path
):
    rid = enclave()
    code = tmp_path / "job"
    code.mkdir()
    (code / "main.py").write_text("import time\nprint('started', flush=True)\ntime.sleep(60)\n")
    done = cli(
        "analyst-defence", "jobs", "submit", rid, str(code), "--entrypoint", "main.py", "--quiet",
    )  # fmt: skip
    job = done.stdout.strip()
    deadline = time.monotonic() + 30
    while "started" not in cli("analyst-defence", "jobs", "logs", job).stdout:
        assert time.monotonic() < deadline, "the job never logged"
        time.sleep(0.2)
    cancelled = cli("analyst-defence", "jobs", "cancel", job)
    assert cancelled.stdout.startswith(f"job {job} is ")
    followed = cli("analyst-defence", "jobs", "logs", job, "-f", check=False)
    assert followed.returncode == 1
    assert followed.stdout == "started\n"
    assert f"job {job} cancelled" in followed.stderr


def test_a_submission_over_the_limit_is_one_line_of_error(
    cli: Run, enclave: Callable[[], str], tmp_path: Path
):
    rid = enclave()
    code = tmp_path / "job"
    code.mkdir()
    (code / "main.py").write_text("print(1)\n")
    (code / "weights.bin").write_bytes(bytes(3 << 20))
    done = cli(
        "analyst-defence", "jobs", "submit", rid, str(code), "--entrypoint", "main.py",
        "--quiet", check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert "HTTP 413" in done.stderr
