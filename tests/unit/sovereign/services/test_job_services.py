"""The job and dataset services and the job loop on the in-memory backends: fail-closed
auditing, and how fast a submitted job's first log line appears with the loop running."""

from __future__ import annotations

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
from sovereign.adapters.memory_workloads import MemoryWorkloads
from sovereign.domain.jobs import JobLimits, JobManifest, JobState
from sovereign.domain.keys import EnclaveKeys
from sovereign.domain.labels import LabelScheme
from sovereign.domain.requests import RequestState
from sovereign.errors import AuditUnavailableError, DependencyUnavailableError
from sovereign.services.datasets import DatasetService
from sovereign.services.jobrunner import JobRunner
from sovereign.services.jobs import JobService
from sovereign.worker import JobThread
from tests.contract.test_fleet_repositories import enclave, enclave_request, host
from tests.support.factories import ANALYST_DEFENCE, DEFENCE, RESEARCH, ctx

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

    def runner(self) -> JobRunner:
        return JobRunner(
            self.uow,
            self.secrets,
            self.workloads,
            SCHEME.highest,
            limits=JobLimits(),
            worker="w1",
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


def submit(world: World) -> uuid.UUID:
    job = world.jobs.submit(
        ctx(ANALYST_DEFENCE), world.enclave_id, JobManifest("main.py"), [("main.py", b"1")]
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
