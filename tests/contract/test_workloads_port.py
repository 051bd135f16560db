"""The Workloads port, on every backend: the in-memory fake and the real adapter on a simulated
host (the process enclave with the real agent in bubblewrap).

The job is the same on both: it logs its arguments and inputs and writes ``out/result.txt``
(``echo_program`` in the fake, ``ECHO_JOB`` for real). Real hosts (the libvirt channel) are
exercised by the image part's QEMU guest test.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sovereign.adapters.memory_workloads import MemoryWorkloads
from sovereign.adapters.workloads import AgentWorkloads
from sovereign.domain.fleet import Enclave, Host
from sovereign.domain.labels import Label
from sovereign.errors import (
    ConflictError,
    DependencyUnavailableError,
    InvalidInputError,
    WorkloadError,
)
from sovereign.services.ports import AgentSession, Workloads

ECHO_JOB = b"""\
import os, sys
print("args " + " ".join(sys.argv[1:]))
root = os.environ["SOVEREIGN_INPUTS"]
for folder, _, files in sorted(os.walk(root)):
    for name in sorted(files):
        path = os.path.join(folder, name)
        print("input", os.path.relpath(path, root), os.path.getsize(path))
os.makedirs("out", exist_ok=True)
with open("out/result.txt", "wb") as f:
    f.write(b"result of " + " ".join(sys.argv[1:]).encode())
"""
NOW = datetime(2026, 12, 6, tzinfo=UTC)
LABEL = Label("OFFICIAL", 1)


def make_host(uri: str = "test:///default") -> Host:
    return Host(
        id=uuid.uuid4(),
        name="sim-1",
        uri=uri,
        site="lab",
        accreditation=LABEL,
        domain_type="test",
        vcpus=8,
        memory_mib=16384,
        created_at=NOW,
        updated_at=NOW,
    )


def make_enclave(host: Host) -> Enclave:
    return Enclave(
        id=uuid.uuid4(),
        host=host.name,
        gpus=(),
        domain_name="sov-test",
        label=LABEL,
        classified=False,
        tenant="acme",
        vcpus=1,
        memory_mib=512,
        disk_gib=1,
        lease_expires_at=NOW + timedelta(days=1),
        created_at=NOW,
        updated_at=NOW,
    )


@pytest.fixture
def run_dir() -> Iterator[Path]:
    # Not pytest's tmp_path: the sandbox's unprivileged user must traverse to its socket.
    path = Path(tempfile.mkdtemp(prefix="sov-workloads-test-"))
    path.chmod(0o711)
    yield path / "run"
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["memory", "process-enclave"])
def workloads(request: pytest.FixtureRequest, run_dir: Path) -> Iterator[Workloads]:
    if request.param == "memory":
        yield MemoryWorkloads()
        return
    adapter = AgentWorkloads(run_dir=run_dir, timeout_s=30)
    yield adapter
    for entry in run_dir.iterdir() if run_dir.exists() else ():
        if entry.is_dir():  # an enclave's state directory (next to its lock file)
            adapter.release(uuid.UUID(entry.name))
    adapter.close()


def wait_done(session: AgentSession, job: str) -> str:
    deadline = time.monotonic() + 60
    while (status := session.status(job)).state in ("ready", "running"):
        assert time.monotonic() < deadline, status
        time.sleep(0.05)
    return status.state


def test_a_job_end_to_end(workloads: Workloads) -> None:
    host = make_host()
    enclave = make_enclave(host)
    assert workloads.simulated(host)
    job = str(uuid.uuid4())
    data = b"1,2\n3,4\n"
    with workloads.session(enclave, host) as session:
        hello = session.hello()
        assert hello.simulated
        assert hello.protocol == 1
        assert session.put(job, "code", "main.py", ECHO_JOB) == hashlib.sha256(ECHO_JOB).hexdigest()
        assert session.put(job, "input", "data/x.csv", data) == hashlib.sha256(data).hexdigest()
        # Idempotent: putting the same file again answers the same hash.
        assert session.put(job, "input", "data/x.csv", data) == hashlib.sha256(data).hexdigest()
        # Several chunks (each carries the hash of the file up to its end).
        big = bytes(range(256)) * ((5 << 20) // 512)
        assert session.put(job, "code", "weights.bin", big) == hashlib.sha256(big).hexdigest()
        status = session.run(job, entrypoint="main.py", args=["a", "b"], max_runtime_s=60)
        assert status.state in ("running", "succeeded")
        assert session.run(job, entrypoint="main.py", args=["a", "b"], max_runtime_s=60).state in (
            "running",
            "succeeded",
        )
    # A later session (the runner's next poll) sees the same job.
    with workloads.session(enclave, host) as session:
        assert wait_done(session, job) == "succeeded"
        status = session.status(job)
        assert status.exit_code == 0
        log = session.logs(job, 0)
        assert log == b"args a b\ninput data/x.csv 8\n"
        assert status.log_size == len(log)
        assert session.logs(job, 5, 3) == log[5:8]
        (output,) = session.outputs(job, ["out/*.txt"])
        assert output.name == "out/result.txt"
        body = session.get(
            job, output.name, size=output.size, sha256=output.sha256, max_bytes=1 << 20
        )
        assert body == b"result of a b"
        assert output.sha256 == hashlib.sha256(body).hexdigest()
        assert session.outputs(job, ["nothing/*"]) == []
        session.discard(job)
        assert session.status(job).state == "unknown"


def test_a_wrong_hash_on_get_is_a_workload_error(workloads: Workloads) -> None:
    host = make_host()
    enclave = make_enclave(host)
    job = str(uuid.uuid4())
    with workloads.session(enclave, host) as session:
        session.put(job, "code", "main.py", ECHO_JOB)
        session.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
        wait_done(session, job)
        (output,) = session.outputs(job, ["out/result.txt"])
        with pytest.raises(WorkloadError):
            session.get(job, output.name, size=output.size, sha256="0" * 64, max_bytes=1 << 20)


def test_release_forgets_the_enclaves_jobs(workloads: Workloads) -> None:
    host = make_host()
    enclave = make_enclave(host)
    job = str(uuid.uuid4())
    with workloads.session(enclave, host) as session:
        session.put(job, "code", "main.py", ECHO_JOB)
    workloads.release(enclave.id)
    workloads.release(enclave.id)  # idempotent
    with workloads.session(enclave, host) as session:
        assert session.status(job).state == "unknown"


# --- the real adapter only ---------------------------------------------------------------


def test_process_enclave_is_reused_and_found_after_a_restart(run_dir: Path) -> None:
    host = make_host()
    enclave = make_enclave(host)
    first = AgentWorkloads(run_dir=run_dir)
    job = str(uuid.uuid4())
    with first.session(enclave, host) as session:
        session.put(job, "code", "main.py", ECHO_JOB)
    pid_file = run_dir / str(enclave.id) / "pid.json"
    before = pid_file.read_text(encoding="utf-8")
    # A new adapter (a restarted control plane) reconnects to the same sandbox.
    second = AgentWorkloads(run_dir=run_dir)
    try:
        with second.session(enclave, host) as session:
            session.run(job, entrypoint="main.py", args=["x"], max_runtime_s=60)
            assert wait_done(session, job) == "succeeded"
        assert pid_file.read_text(encoding="utf-8") == before
    finally:
        second.release(enclave.id)
    assert not pid_file.exists()


def test_an_agent_that_cannot_start_is_unavailable(run_dir: Path) -> None:
    broken = run_dir.parent / "broken_agent"
    broken.mkdir(mode=0o755)
    (broken / "__main__.py").write_text("raise SystemExit(3)\n", encoding="utf-8")
    (broken / "__main__.py").chmod(0o644)
    adapter = AgentWorkloads(run_dir=run_dir, agent_package_dir=broken)
    host = make_host()
    with (
        pytest.raises(DependencyUnavailableError, match="unavailable") as info,
        adapter.session(make_enclave(host), host),
    ):
        pass
    assert info.value.dependency == "enclave agent"


def test_an_agent_refusal_is_a_workload_error(run_dir: Path) -> None:
    adapter = AgentWorkloads(run_dir=run_dir)
    host = make_host()
    enclave = make_enclave(host)
    try:
        with adapter.session(enclave, host) as session:
            with pytest.raises(WorkloadError):
                session.get(str(uuid.uuid4()), "out/x", size=1, sha256="0" * 64, max_bytes=10)
            with pytest.raises(InvalidInputError):
                session.put(str(uuid.uuid4()), "code", "../escape.py", b"")
    finally:
        adapter.release(enclave.id)


def test_real_hosts_are_not_simulated_and_refused_uris_open_nothing(run_dir: Path) -> None:
    adapter = AgentWorkloads(run_dir=run_dir)
    host = make_host("qemu+ssh://hv1.example/system")
    assert not adapter.simulated(host)
    enclave = make_enclave(host)
    with pytest.raises(ConflictError, match="URI policy"), adapter.session(enclave, host):
        pass
    adapter.release(uuid.uuid4())  # nothing to stop: a no-op
