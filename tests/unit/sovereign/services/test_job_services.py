"""The job and dataset services and the job loop on the in-memory backends: fail-closed
auditing, how fast a submitted job's first log line appears with the loop running, and the
runner against a hostile or silent agent (refusals, deadlines, swapped code, chatty logs)."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from sovereign.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from sovereign.adapters.memory_secrets import MemorySecretStore
from sovereign.adapters.memory_workloads import FakeRun, MemoryWorkloads
from sovereign.domain.jobs import BlobKind, JobLimits, JobManifest, JobState, JobStep
from sovereign.domain.keys import EnclaveKeys
from sovereign.domain.labels import LabelScheme
from sovereign.domain.requests import RequestState
from sovereign.errors import AuditUnavailableError, DependencyUnavailableError, InvalidInputError
from sovereign.services import jobrunner
from sovereign.services.datasets import DatasetService
from sovereign.services.jobrunner import OVERDUE_GRACE_S, JobRunner
from sovereign.services.jobs import MAX_LOG_BLOBS_PER_READ, JobService
from sovereign.services.sealing import Sealer
from sovereign.worker import JobThread
from tests.contract.test_fleet_repositories import enclave, enclave_request, host
from tests.support.factories import ANALYST_DEFENCE, DEFENCE, RESEARCH, ctx
from tests.support.fleet import Clock

SCHEME = LabelScheme()
NATO = SCHEME.label("SECRET", ["NATO"])


@dataclass
class World:
    store: MemoryStore
    uow: MemoryUnitOfWorkFactory
    secrets: MemorySecretStore
    workloads: MemoryWorkloads
    jobs: JobService
    datasets: DatasetService
    signal: threading.Event
    enclave_id: uuid.UUID

    def runner(self, **kw: Any) -> JobRunner:
        return JobRunner(
            self.uow,
            self.secrets,
            self.workloads,
            SCHEME.highest,
            limits=JobLimits(),
            worker="w1",
            **kw,
        )


@pytest.fixture
def world() -> World:
    store = MemoryStore()
    uow = MemoryUnitOfWorkFactory(store)
    secrets = MemorySecretStore()
    with uow() as u:
        u.tenants.add(DEFENCE)
        u.tenants.add(RESEARCH)
        u.hosts.add(host("alpha"))
        rid = enclave_request(u, RequestState.RUNNING)
        u.enclaves.add(enclave(rid))
        key = secrets.create_key("sovereign-defence", f"enclave-{rid}")
        _, luks = secrets.data_key(key, b"luks")
        _, vtpm = secrets.data_key(key, b"vtpm")
        u.keys.add(EnclaveKeys(rid, key, luks, vtpm, datetime.now(UTC)))
        u.commit()
    workloads = MemoryWorkloads()
    signal = threading.Event()
    limits = JobLimits()
    return World(
        store,
        uow,
        secrets,
        workloads,
        JobService(uow, secrets, workloads, limits=limits, wake=signal.set),
        DatasetService(uow, secrets, limits=limits),
        signal,
        rid,
    )


def submit(world: World, manifest: JobManifest | None = None) -> uuid.UUID:
    job = world.jobs.submit(
        ctx(ANALYST_DEFENCE),
        world.enclave_id,
        manifest or JobManifest("main.py"),
        [("main.py", b"1")],
    )
    return job.id


def test_no_audit_no_upload(world: World):
    world.store.audit.fail = True
    with pytest.raises(AuditUnavailableError):
        world.datasets.upload(ctx(ANALYST_DEFENCE), "defence", "a.csv", NATO, b"data")
    assert world.store.datasets == {} and world.store.blobs == {}


def test_no_audit_no_job(world: World):
    world.store.audit.fail = True
    with pytest.raises(AuditUnavailableError):
        submit(world)
    assert world.store.jobs == {} and world.store.blobs == {}
    assert not world.signal.is_set()


def test_no_audit_no_output(world: World):
    job_id = submit(world)
    runner = world.runner()
    for _ in range(5):
        runner.run_once()
    assert world.store.jobs[job_id].state is JobState.SUCCEEDED
    world.store.audit.fail = True
    with pytest.raises(AuditUnavailableError):
        world.jobs.output(ctx(ANALYST_DEFENCE), job_id, "out/result.txt")


def test_no_audit_no_start(world: World, monkeypatch: pytest.MonkeyPatch):
    job_id = submit(world)
    store = world.store.audit
    append = store.append

    refusing = [True]

    def refuse_events(events: list[Any]) -> None:
        # The log refuses events at commit (the memory store's own switch would refuse the
        # runner's claims too, which write no event).
        events = list(events)
        if events and refusing[0]:
            raise OSError("audit store unavailable (simulated)")
        append(events)

    monkeypatch.setattr(store, "append", refuse_events)
    runner = world.runner()
    for _ in range(3):
        runner.run_once()
    # The runner could not record job:start, so the job did not start as far as anyone knows.
    assert world.store.jobs[job_id].state is JobState.QUEUED
    refusing[0] = False
    for _ in range(5):
        runner.run_once()
    assert world.store.jobs[job_id].state is JobState.SUCCEEDED


def test_vault_down_refuses_and_records_the_failure(world: World):
    world.secrets.down = True
    with pytest.raises(DependencyUnavailableError):
        world.datasets.upload(ctx(ANALYST_DEFENCE), "defence", "a.csv", NATO, b"data")
    (event,) = [e.event for e in world.store.audit.events]
    assert (event.action, event.outcome.value) == ("dataset:upload", "error")


@pytest.fixture
def loop(world: World) -> Iterator[JobThread]:
    thread = JobThread(world.runner(), world.signal, poll_s=0.1, idle_s=30)
    thread.start()
    yield thread
    thread.stop()


def test_the_first_log_line_is_visible_within_a_second(world: World, loop: JobThread):
    world.workloads.program = lambda code, inputs, args: __import__(
        "sovereign.adapters.memory_workloads", fromlist=["FakeRun"]
    ).FakeRun(0, b"epoch 1\n", {}, polls=1000)
    time.sleep(0.2)  # the loop is idle, waiting up to 30 s for a signal
    started = time.monotonic()
    job_id = submit(world)
    while time.monotonic() - started < 5:
        data, _ = world.jobs.logs(ctx(ANALYST_DEFENCE), job_id)
        if data:
            break
        time.sleep(0.01)
    elapsed = time.monotonic() - started
    assert data == b"epoch 1\n"
    assert elapsed < 1.0, elapsed


# -- the runner against a hostile or silent agent ---------------------------------------------


def finish_events(world: World) -> list[dict[str, Any]]:
    return [e.event.details for e in world.store.audit.events if e.event.action == "job:finish"]


def test_a_permanent_refusal_fails_the_job_and_does_not_wedge_the_runner(world: World):
    # An argument the agent client will not send is an InvalidInputError from the adapter:
    # not transient, so the job fails instead of being retried (holding a claim) for ever.
    def program(code: Any, inputs: Any, args: Any) -> FakeRun:
        if list(args) == ["unsendable"]:
            raise InvalidInputError(reason="run: the request header is too large")
        return FakeRun(0, b"ok\n")

    world.workloads.program = program
    bad = submit(world, JobManifest("main.py", ("unsendable",)))
    good = submit(world)
    runner = world.runner(batch=1)  # the bad job is claimed first on every pass
    for _ in range(10):
        runner.run_once()
    assert world.store.jobs[bad].state is JobState.FAILED
    assert "request header is too large" in world.store.jobs[bad].error
    assert world.store.jobs[good].state is JobState.SUCCEEDED


def running_job(world: World, clock: Clock, **manifest: Any) -> tuple[JobRunner, uuid.UUID]:
    world.workloads.paused = True  # it runs until the test ends it
    job_id = submit(world, JobManifest("main.py", **manifest))
    runner = world.runner(clock=clock)
    for _ in range(3):
        runner.run_once()
    assert world.store.jobs[job_id].state is JobState.RUNNING
    return runner, job_id


def test_a_silent_agent_cannot_keep_an_overdue_job_open(world: World):
    clock = Clock()
    runner, job_id = running_job(world, clock, max_runtime_s=10)
    world.workloads.down = True
    clock.advance(seconds=10 + OVERDUE_GRACE_S - 1)
    runner.run_once()
    assert world.store.jobs[job_id].state is JobState.RUNNING  # not yet due: retried
    clock.advance(seconds=2)
    runner.run_once()
    job = world.store.jobs[job_id]
    assert job.state is JobState.TIMED_OUT
    assert "ended without the enclave's agent (past its max_runtime_s)" in job.error
    assert finish_events(world)[-1]["state"] == "timed_out"
    # Its directory is discarded once the agent answers again.
    world.workloads.down = False
    runner.run_once()
    assert world.store.jobs[job_id].step is JobStep.DONE


def test_a_silent_agent_cannot_keep_a_cancelled_job_open(world: World):
    clock = Clock()
    runner, job_id = running_job(world, clock)
    world.workloads.down = True
    world.jobs.cancel(ctx(ANALYST_DEFENCE), job_id)
    runner.run_once()
    job = world.store.jobs[job_id]
    assert job.state is JobState.CANCELLED
    assert "ended without the enclave's agent (cancelled)" in job.error
    assert finish_events(world)[-1]["state"] == "cancelled"


def test_a_silent_agent_is_asked_once_per_pass(world: World, monkeypatch: pytest.MonkeyPatch):
    clock = Clock()
    runner, first = running_job(world, clock, max_runtime_s=10)
    second = submit(world, JobManifest("main.py", max_runtime_s=10))
    third = submit(world)
    for _ in range(3):
        runner.run_once()
    world.workloads.down = True
    session = world.workloads.session
    tries: list[uuid.UUID] = []

    def counted(enclave: Any, host: Any) -> Any:
        tries.append(enclave.id)
        return session(enclave, host)

    monkeypatch.setattr(world.workloads, "session", counted)
    runner.run_once()
    assert tries == [world.enclave_id]  # three jobs, one try
    clock.advance(seconds=10 + OVERDUE_GRACE_S + 1)
    runner.run_once()
    assert len(tries) == 2
    states = {j: world.store.jobs[j].state for j in (first, second, third)}
    # The two past their deadline end without the agent; the third waits for it.
    assert states == {
        first: JobState.TIMED_OUT,
        second: JobState.TIMED_OUT,
        third: JobState.RUNNING,
    }


def test_swapped_code_never_enters_the_enclave(world: World):
    job_id = submit(world)
    # An insider with the database swaps the code for other code sealed for the same job.
    sealer = Sealer(world.secrets)
    job = world.store.jobs[job_id]
    with world.uow() as uow:
        key = sealer.enclave_key(uow, job)
    (evil,) = sealer.seal(key, job.id, job.label, BlobKind.CODE, [("main.py", 0, b"2")])
    world.store.blobs[evil.owner, evil.kind, evil.name, evil.seq] = evil
    runner = world.runner()
    for _ in range(3):
        runner.run_once()
    job = world.store.jobs[job_id]
    assert job.state is JobState.FAILED
    assert "main.py does not match its hash" in job.error
    assert "put" not in world.workloads.agent(world.enclave_id).calls


def chatty(world: World, clock: Clock, lines: int) -> tuple[uuid.UUID, bytes]:
    """A job that prints one short line between two polls, ``lines`` times, then ends."""
    # Staged, started and polled in the first pass; one poll per line; it ends on the next.
    world.workloads.program = lambda code, inputs, args: FakeRun(0, b"", polls=lines + 2)
    job_id = submit(world)
    runner = world.runner(clock=clock)
    runner.run_once()
    assert world.store.jobs[job_id].state is JobState.RUNNING
    record = world.workloads.agent(world.enclave_id).jobs[str(job_id)]
    for i in range(lines):
        record.log += b"%d\n" % i
        clock.advance(seconds=0.1)
        runner.run_once()
    for _ in range(3):
        runner.run_once()
    assert world.store.jobs[job_id].state is JobState.SUCCEEDED
    return job_id, record.log


def log_blobs(world: World, job_id: uuid.UUID) -> int:
    return sum(1 for b in world.store.blobs.values() if b.owner == job_id and b.kind == "log")


def read_all(world: World, job_id: uuid.UUID) -> tuple[bytes, int]:
    data, offset, calls = b"", 0, 0
    while True:
        chunk, offset = world.jobs.logs(ctx(ANALYST_DEFENCE), job_id, offset)
        if not chunk:
            return data, calls
        data, calls = data + chunk, calls + 1


def test_a_chatty_job_makes_few_log_blobs(world: World):
    clock = Clock()
    job_id, log = chatty(world, clock, lines=200)  # 200 lines over 20 s
    # The first line at once, then at most one pull a second, and the rest at the end.
    assert log_blobs(world, job_id) <= 22
    assert read_all(world, job_id) == (log, 1)


def test_a_log_read_opens_a_bounded_number_of_blobs(world: World, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(jobrunner, "LOG_PULL_INTERVAL_S", 0.0)  # one blob per line
    clock = Clock()
    job_id, log = chatty(world, clock, lines=150)
    assert log_blobs(world, job_id) == 150
    opened: list[int] = []
    open_blobs = Sealer.open

    def counted(self: Sealer, blobs: Any, *args: Any) -> Any:
        opened.append(len(blobs))
        return open_blobs(self, blobs, *args)

    monkeypatch.setattr(Sealer, "open", counted)
    assert read_all(world, job_id) == (log, 3)
    assert opened == [MAX_LOG_BLOBS_PER_READ, MAX_LOG_BLOBS_PER_READ, 150 - 128]
    # Each read is audited with where it started and what it returned.
    reads = [e.event.details for e in world.store.audit.events if e.event.action == "job:logs"]
    ends = [sum(len(b"%d\n" % i) for i in range(n)) for n in (0, 64, 128, 150)]
    assert [(r["offset"], r["bytes"]) for r in reads] == [
        (start, end - start) for start, end in itertools.pairwise(ends)
    ]
    # The console's tail shows the newest chunks, not the oldest of its window.
    opened.clear()
    newest = sum(len(b"%d\n" % i) for i in range(150 - MAX_LOG_BLOBS_PER_READ))
    assert world.jobs.log_tail(ctx(ANALYST_DEFENCE), job_id, 1 << 20) == (log[newest:], newest)
    assert world.jobs.log_tail(ctx(ANALYST_DEFENCE), job_id, 6) == (log[-6:], len(log) - 6)
    assert opened == [MAX_LOG_BLOBS_PER_READ, 2]
