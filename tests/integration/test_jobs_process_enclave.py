"""A job through the real stack of the embedded default: the job service and runner over a real
database, the real Workloads adapter and the real agent in a process enclave (bubblewrap) of a
simulated (test driver) host, running real Python.

Proves the pieces fit: the code and dataset reach the job, its log comes back while it runs
(the first line within a second of submission, with the job loop running), its outputs are
collected, sealed and readable, a runner killed mid-job is replaced by one that finishes it
exactly once, and the process enclave is stopped when the enclave ends.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclaves.hosts import bundled_host_path
from enclaves.uri import UriPolicy
from sovereign.adapters.memory_hypervisor import MemoryHost, MemoryHypervisor
from sovereign.adapters.workloads import AgentWorkloads
from sovereign.domain.jobs import Job, JobManifest, JobState, JobStep
from sovereign.worker import JobThread
from tests.support.factories import ANALYST_DEFENCE, ctx
from tests.support.fleet import Fleet, gpus, make_fleet

JOB = b"""\
import os, sys, time
print("started", " ".join(sys.argv[1:]), flush=True)
inputs = os.environ["SOVEREIGN_INPUTS"]
for name in sorted(os.listdir(inputs)):
    print("input", name, os.path.getsize(os.path.join(inputs, name)), flush=True)
time.sleep(float(sys.argv[1]))
os.makedirs("out", exist_ok=True)
with open("out/answer.txt", "w") as f:
    f.write("42\\n")
print("done", flush=True)
"""
ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}


class Crash(BaseException):
    """The runner dies here."""


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: the sandbox's unprivileged user must traverse to its socket.
    path = Path(tempfile.mkdtemp(prefix="sov-jobs-test-"))
    path.chmod(0o711)
    yield path / "run"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def fleet(database_url: str, tmp_path: Path, run_dir: Path) -> Iterator[Fleet]:
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    shutil.copy(bundled_host_path("secret-h100x8"), hosts / "sim.xml")
    uri = f"test://{hosts / 'sim.xml'}"
    policy = UriPolicy(transports=frozenset({"test"}), test_dirs=(str(hosts),))
    workloads = AgentWorkloads(run_dir=run_dir, timeout_s=30)
    made = make_fleet(
        database_url,
        folder=tmp_path,
        hypervisor=MemoryHypervisor(policy),
        hosts={"sim-1": (uri, ALL, MemoryHost(gpus=gpus(2)))},
        workloads=workloads,
    )
    yield made
    for entry in run_dir.iterdir() if run_dir.exists() else ():
        if entry.is_dir():
            workloads.release(uuid.UUID(entry.name))
    made.services.close()


def job_state(fleet: Fleet, job_id: uuid.UUID) -> Job:
    with fleet.services.uow(readonly=True) as uow:
        found = uow.jobs.get(job_id)
    assert found is not None
    return found


def submit(fleet: Fleet, enclave: uuid.UUID, sleep: str, inputs: tuple[uuid.UUID, ...]) -> Job:
    manifest = JobManifest("main.py", (sleep,), inputs, ("out/*",), 60)
    return fleet.services.jobs.submit(ctx(ANALYST_DEFENCE), enclave, manifest, [("main.py", JOB)])


def test_a_real_job_in_a_process_enclave(fleet: Fleet, run_dir: Path, database_url: str):
    enclave = fleet.request()
    fleet.settle()
    assert fleet.state(enclave) == "running"
    dataset = fleet.services.datasets.upload(
        ctx(ANALYST_DEFENCE),
        "defence",
        "train.csv",
        fleet.services.scheme.parse("SECRET//NATO"),
        b"a,b\n1,2\n",
    )
    services = fleet.services
    thread = JobThread(services.jobrunner(worker="w1"), services.job_signal, poll_s=0.1, idle_s=5)
    thread.start()
    try:
        time.sleep(0.3)  # idle: only the submission's signal wakes it
        started = time.monotonic()
        job = submit(fleet, enclave, "0.5", (dataset.id,))
        first = b""
        while time.monotonic() - started < 20 and not first:
            first, _ = services.jobs.logs(ctx(ANALYST_DEFENCE), job.id)
            time.sleep(0.02)
        latency = time.monotonic() - started
        assert first.startswith(b"started")
        deadline = time.monotonic() + 30
        while job_state(fleet, job.id).step is not JobStep.DONE:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        thread.stop()
    done = job_state(fleet, job.id)
    assert done.state is JobState.SUCCEEDED and done.exit_code == 0, done.error
    log, _ = services.jobs.logs(ctx(ANALYST_DEFENCE), job.id)
    assert log == b"started 0.5\ninput train.csv 8\ndone\n"
    assert services.jobs.output(ctx(ANALYST_DEFENCE), job.id, "out/answer.txt") == b"42\n"
    # The goal is for the embedded default (SQLite); this includes starting the process
    # enclave, the enclave's first job.
    bound = 1.0 if database_url.startswith("sqlite") else 2.0
    assert latency < bound, f"first log line after {latency:.2f} s"
    # The enclave ends: its process enclave is stopped (by a runner that saw it running).
    runner = services.jobrunner(worker="w3")
    runner.run_once()
    pid_file = run_dir / str(enclave) / "pid.json"
    assert pid_file.exists()
    services.enclaves.terminate(ctx(ANALYST_DEFENCE), enclave, "done")
    fleet.clock.advance(seconds=2)
    runner.run_once()
    assert not pid_file.exists()


def test_a_killed_runner_is_replaced_and_the_job_runs_once(fleet: Fleet):
    enclave = fleet.request()
    fleet.settle()
    job = submit(fleet, enclave, "0.3", ())

    def die(step: str) -> None:
        if step == "job:start":
            raise Crash(step)

    with pytest.raises(Crash):
        for _ in range(5):
            fleet.services.jobrunner(worker="w1", after_step=die).run_once()
    fleet.clock.advance(seconds=45)
    runner = fleet.services.jobrunner(worker="w2")
    deadline = time.monotonic() + 30
    while job_state(fleet, job.id).step is not JobStep.DONE:
        assert time.monotonic() < deadline
        runner.run_once()
        time.sleep(0.05)
    done = job_state(fleet, job.id)
    assert done.state is JobState.SUCCEEDED, done.error
    log, _ = fleet.services.jobs.logs(ctx(ANALYST_DEFENCE), job.id)
    assert log.count(b"started") == 1 and log.endswith(b"done\n")
    # One start and one finish; the log read above is audited too.
    assert fleet.actions("job:") == ["job:submit", "job:start", "job:finish", "job:logs"]
