"""The job, dataset and blob repositories, held to one behaviour on every backend: in-memory,
SQLite, PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest

from sovereign.adapters.database import SqlUnitOfWorkFactory, create_engine
from sovereign.adapters.memory import MemoryUnitOfWorkFactory
from sovereign.domain.jobs import (
    Blob,
    BlobKind,
    Dataset,
    Job,
    JobManifest,
    JobState,
    JobStep,
    OutputFile,
)
from sovereign.errors import ConcurrentUpdateError
from sovereign.services.ports import UnitOfWorkFactory
from tests.conftest import make_database
from tests.contract.test_fleet_repositories import (
    SCHEME,
    SECRET_NATO,
    T0,
    enclave,
    enclave_request,
    host,
)
from tests.support.factories import DEFENCE, RESEARCH, image

MEMORY, SQLITE = "memory", "sqlite"
POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


@pytest.fixture(params=[MEMORY, SQLITE, POSTGRES])
def uow(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[UnitOfWorkFactory, uuid.UUID]]:
    """Every backend, seeded with tenants, host ``alpha`` and one enclave (its id)."""
    engine = None
    if request.param == MEMORY:
        factory: UnitOfWorkFactory = MemoryUnitOfWorkFactory()
    else:
        engine = create_engine(make_database(request, request.param, tmp_path))
        factory = SqlUnitOfWorkFactory(engine, SCHEME)
    with factory() as u:
        u.tenants.add(DEFENCE)
        u.tenants.add(RESEARCH)
        u.images.add(image())
        u.hosts.add(host("alpha"))
        rid = enclave_request(u)
        u.enclaves.add(enclave(rid))
        u.commit()
    yield factory, rid
    if engine is not None:
        engine.dispose()


def job(enclave_id: uuid.UUID, *, at: int = 0, **changes: object) -> Job:
    stamp = T0 + timedelta(seconds=at)
    made = Job(
        id=uuid.uuid4(),
        enclave_id=enclave_id,
        tenant="defence",
        label=SECRET_NATO,
        submitted_by="sub-analyst",
        manifest=JobManifest(
            "main.py", ("--epochs", "2"), (uuid.uuid4(),), ("out/*.json",), max_runtime_s=60
        ),
        files=(OutputFile("main.py", 12, "ab" * 32),),
        state=JobState.QUEUED,
        created_at=stamp,
        updated_at=stamp,
    )
    return replace(made, **changes)  # type: ignore[arg-type]


def test_jobs_round_trip_list_and_update(uow: tuple[UnitOfWorkFactory, uuid.UUID]):
    factory, eid = uow
    first, second = job(eid, at=0), job(eid, at=5, simulated=True)
    with factory() as u:
        u.jobs.add(first)
        u.jobs.add(second)
        u.commit()
    with factory() as u:
        loaded = u.jobs.get(first.id, for_update=True)
        assert loaded == first
        assert [j.id for j in u.jobs.list(eid)] == [second.id, first.id]
        assert u.jobs.list(uuid.uuid4()) == []
        assert u.jobs.get(uuid.uuid4()) is None
        loaded.transition(JobState.RUNNING, T0 + timedelta(seconds=9))
        loaded.step = JobStep.STARTED
        loaded.results = (OutputFile("out/a.json", 3, "cd" * 32),)
        loaded.exit_code, loaded.runtime_s, loaded.log_size = 0, 1.5, 1 << 33
        loaded.error = "x" * 800
        u.jobs.update(loaded)
        u.commit()
    with factory() as u:
        again = u.jobs.get(first.id)
        assert again is not None
        assert again.version == 2 and again.state is JobState.RUNNING
        assert again.results == loaded.results and again.log_size == 1 << 33
        assert again.started_at == T0 + timedelta(seconds=9)
        assert again.started_at.utcoffset() is not None
        assert len(again.error) == 500


def test_job_update_is_optimistically_locked(uow: tuple[UnitOfWorkFactory, uuid.UUID]):
    factory, eid = uow
    made = job(eid)
    with factory() as u:
        u.jobs.add(made)
        u.commit()
    with factory() as u:
        a = u.jobs.get(made.id)
        assert a is not None
        u.jobs.update(a)
        u.commit()
    stale = made  # version 1, the row is at 2
    with pytest.raises(ConcurrentUpdateError), factory() as u:
        u.jobs.update(replace(stale))
        u.commit()


def test_a_job_needs_its_enclave(uow: tuple[UnitOfWorkFactory, uuid.UUID]):
    factory, _eid = uow
    with pytest.raises(ConcurrentUpdateError), factory() as u:
        u.jobs.add(job(uuid.uuid4()))
        u.commit()


def test_claimable_skips_done_and_others_claims(uow: tuple[UnitOfWorkFactory, uuid.UUID]):
    factory, eid = uow
    now = T0 + timedelta(minutes=1)
    free, done = job(eid, at=0), job(eid, at=1, step=JobStep.DONE)
    mine = job(eid, at=2, claimed_by="w1", claim_until=now + timedelta(minutes=5))
    theirs = job(eid, at=3, claimed_by="w2", claim_until=now + timedelta(minutes=5))
    lapsed = job(eid, at=4, claimed_by="w2", claim_until=now - timedelta(seconds=1))
    with factory() as u:
        for j in (free, done, mine, theirs, lapsed):
            u.jobs.add(j)
        u.commit()
    with factory() as u:
        assert [j.id for j in u.jobs.claimable("w1", now, 10)] == [free.id, mine.id, lapsed.id]
        assert [j.id for j in u.jobs.claimable("w1", now, 1)] == [free.id]


def dataset(tenant: str = "defence", *, at: int = 0) -> Dataset:
    return Dataset(
        id=uuid.uuid4(),
        tenant=tenant,
        name="train.csv",
        label=SECRET_NATO,
        size=1 << 32,
        sha256="ef" * 32,
        uploaded_by="sub-analyst",
        created_at=T0 + timedelta(seconds=at),
        key_mount="sovereign-defence",
        key_name="datasets-defence",
    )


def test_datasets_round_trip_and_list_by_tenant(uow: tuple[UnitOfWorkFactory, uuid.UUID]):
    factory, _ = uow
    a, b, c = dataset(at=0), dataset("research", at=1), dataset(at=2)
    with factory() as u:
        for d in (a, b, c):
            u.datasets.add(d)
        u.commit()
    with factory() as u:
        assert u.datasets.get(a.id) == a
        assert u.datasets.get(uuid.uuid4()) is None
        assert [d.id for d in u.datasets.list()] == [c.id, b.id, a.id]
        assert [d.id for d in u.datasets.list({"defence"})] == [c.id, a.id]
        assert u.datasets.list(set()) == []
    with pytest.raises(ConcurrentUpdateError), factory() as u:
        u.datasets.add(dataset("nobody"))
        u.commit()


def test_blobs_are_stored_once_and_read_in_order(uow: tuple[UnitOfWorkFactory, uuid.UUID]):
    factory, _ = uow
    owner = uuid.uuid4()
    with factory() as u:
        for seq in (0, 10, 25):
            u.blobs.put(Blob(owner, BlobKind.LOG, "log", seq, 10 + seq, bytes([seq]) * 3))
        u.blobs.put(Blob(owner, BlobKind.OUTPUT, "out/a.bin", 0, 4, b"\x00sealed"))
        u.commit()
    with factory() as u:
        out = u.blobs.get(owner, BlobKind.OUTPUT, "out/a.bin")
        assert out is not None and out.data == b"\x00sealed" and out.size == 4
        assert u.blobs.get(owner, BlobKind.CODE, "out/a.bin") is None
        assert [b.seq for b in u.blobs.chunks(owner, BlobKind.LOG, "log")] == [0, 10, 25]
        assert [b.seq for b in u.blobs.chunks(owner, BlobKind.LOG, "log", after=0, limit=1)] == [10]
        last = u.blobs.last(owner, BlobKind.LOG, "log", 24)
        assert last is not None and last.seq == 10
        assert u.blobs.last(owner, BlobKind.LOG, "log", -1) is None
    with pytest.raises(ConcurrentUpdateError), factory() as u:
        u.blobs.put(Blob(owner, BlobKind.LOG, "log", 10, 1, b"again"))
        u.commit()


def test_blobs_roll_back_with_their_unit(uow: tuple[UnitOfWorkFactory, uuid.UUID]):
    factory, _ = uow
    owner = uuid.uuid4()
    with factory() as u:
        u.blobs.put(Blob(owner, BlobKind.CODE, "main.py", 0, 1, b"x"))
    with factory() as u:
        assert u.blobs.get(owner, BlobKind.CODE, "main.py") is None
