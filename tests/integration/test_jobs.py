"""Jobs and datasets end to end over a real database: the label flow, visibility, sealing at
rest, the runner's state machine with crashes at every step, and the audit trail.

The enclaves' agents are :class:`~sovereign.adapters.memory_workloads.MemoryWorkloads` (the
real process enclave has its own contract test); everything else is the real stack.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sovereign.adapters.memory_workloads import FakeRun, MemoryWorkloads, echo_program
from sovereign.domain.identity import Role
from sovereign.domain.jobs import Dataset, Job, JobManifest, JobState, JobStep
from sovereign.domain.labels import Label
from sovereign.errors import (
    ConflictError,
    GoneError,
    InvalidInputError,
    InvalidTransitionError,
    NotFoundError,
    PolicyDeniedError,
    TooLargeError,
)
from sovereign.services.jobrunner import JobRunner
from tests.support.factories import (
    ANALYST_DEFENCE,
    ANALYST_RESEARCH,
    AUDITOR,
    OFFICER_1,
    OFFICER_LOW,
    ctx,
    principal,
)
from tests.support.fleet import Fleet, make_fleet

DATASET_TEXT = b"feature,label\n0.125,plaintext-dataset-marker\n"
CODE_TEXT = b"print('plaintext-code-marker')\n"
#: A defence analyst cleared for every compartment (can upload above a NATO enclave).
ANALYST_ALL = principal("analyst-all", Role.ANALYST, tenants=("defence",))
#: An analyst of both tenants.
ANALYST_BOTH = principal("analyst-both", Role.ANALYST, tenants=("defence", "research"))


class Crash(BaseException):
    """The runner dies here (not an Exception: nothing may catch it and clean up)."""


@pytest.fixture
def workloads() -> MemoryWorkloads:
    return MemoryWorkloads()


@pytest.fixture
def fleet(database_url: str, tmp_path: Path, workloads: MemoryWorkloads) -> Iterator[Fleet]:
    made = make_fleet(database_url, folder=tmp_path, workloads=workloads)
    yield made
    made.services.close()


@pytest.fixture
def enclave(fleet: Fleet) -> uuid.UUID:
    """A running SECRET//NATO enclave of tenant defence."""
    eid = fleet.request()
    fleet.settle()
    assert fleet.state(eid) == "running"
    return eid


def label(fleet: Fleet, text: str) -> Label:
    return fleet.services.scheme.parse(text)


def upload(fleet: Fleet, who: Any = ANALYST_DEFENCE, **kw: Any) -> Dataset:
    args = {"tenant": "defence", "name": "train.csv", "label": "SECRET//NATO", **kw}
    return fleet.services.datasets.upload(
        ctx(who), args["tenant"], args["name"], label(fleet, args["label"]), DATASET_TEXT
    )


def submit(
    fleet: Fleet,
    eid: uuid.UUID,
    inputs: Sequence[uuid.UUID] = (),
    who: Any = ANALYST_DEFENCE,
    files: Sequence[tuple[str, bytes]] = (("main.py", CODE_TEXT),),
    **manifest: Any,
) -> Job:
    made = JobManifest(
        manifest.pop("entrypoint", "main.py"),
        tuple(manifest.pop("args", ("--epochs", "2"))),
        tuple(inputs),
        tuple(manifest.pop("outputs", ("out/*",))),
        manifest.pop("max_runtime_s", 60),
    )
    return fleet.services.jobs.submit(ctx(who), eid, made, list(files))


def runner(fleet: Fleet, worker: str = "w1", **kw: Any) -> JobRunner:
    return fleet.services.jobrunner(worker=worker, **kw)


def drive(fleet: Fleet, job_id: uuid.UUID, worker: str = "w1", passes: int = 20) -> Job:
    run = runner(fleet, worker)
    for _ in range(passes):
        run.run_once()
        with fleet.services.uow(readonly=True) as uow:
            found = uow.jobs.get(job_id)
        assert found is not None
        if found.step is JobStep.DONE:
            return found
    raise AssertionError(f"job not done after {passes} passes: {found}")


def events(fleet: Fleet, prefix: str) -> list[tuple[str, str]]:
    return [(e.action, e.outcome.value) for e in fleet.events(prefix)]


# -- the happy path ---------------------------------------------------------------------------


def test_a_job_runs_to_success_with_logs_outputs_and_audit(fleet: Fleet, enclave: uuid.UUID):
    dataset = upload(fleet)
    job = submit(fleet, enclave, [dataset.id])
    assert job.state is JobState.QUEUED and job.simulated
    assert job.files[0].name == "main.py" and job.label == label(fleet, "SECRET//NATO")
    done = drive(fleet, job.id)
    assert done.state is JobState.SUCCEEDED and done.exit_code == 0
    assert [r.name for r in done.results] == ["out/result.txt"]
    assert done.started_at is not None and done.finished_at is not None
    me = ctx(ANALYST_DEFENCE)
    log, nxt = fleet.services.jobs.logs(me, job.id)
    assert log == b"args --epochs 2\ninput train.csv %d\n" % len(DATASET_TEXT)
    assert nxt == len(log) == done.log_size
    assert fleet.services.jobs.logs(me, job.id, offset=5, limit=4) == (log[5:9], 9)
    assert fleet.services.jobs.logs(me, job.id, offset=nxt) == (b"", nxt)
    assert fleet.services.jobs.output(me, job.id, "out/result.txt") == b"result of --epochs 2"
    assert events(fleet, "dataset:") == [("dataset:upload", "allow")]
    assert events(fleet, "job:") == [
        ("job:submit", "allow"),
        ("job:start", "allow"),
        ("job:finish", "allow"),
        # Each read that returned bytes (the empty one at the end is not recorded).
        ("job:logs", "allow"),
        ("job:logs", "allow"),
    ]
    reads = [(e.details["offset"], e.details["bytes"]) for e in fleet.events("job:logs")]
    assert reads == [(0, len(log)), (5, 4)]
    assert fleet.events("job:logs")[0].label == {"level": "SECRET", "compartments": ["NATO"]}
    assert events(fleet, "output:") == [("output:read", "allow")]
    finish = fleet.events("job:finish")[0]
    assert finish.details["exit_code"] == 0 and finish.details["state"] == "succeeded"
    assert finish.details["outputs"] == [r.to_dict() for r in done.results]
    assert finish.label == {"level": "SECRET", "compartments": ["NATO"]}
    assert finish.actor == "system:jobrunner"
    # The embedded default's process enclave is simulated, and every job event says so.
    assert [fleet.events(a)[0].details["simulated"] for a in ("job:submit", "job:start")] == [
        True,
        True,
    ]
    assert finish.details["simulated"] is True
    # The job's directory in the enclave was discarded.
    assert str(job.id) not in fleet.services.workloads.agent(enclave).jobs  # type: ignore[attr-defined]


def test_nothing_is_stored_in_plaintext(fleet: Fleet, enclave: uuid.UUID, database_url: str):
    dataset = upload(fleet)
    job = submit(fleet, enclave, [dataset.id], args=("plaintext-arg-output",))
    drive(fleet, job.id)
    output = fleet.services.jobs.output(ctx(ANALYST_DEFENCE), job.id, "out/result.txt")
    assert b"plaintext-arg-output" in output
    log, _ = fleet.services.jobs.logs(ctx(ANALYST_DEFENCE), job.id)
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            blobs = conn.execute(sa.text("SELECT kind, data FROM blobs")).all()
            everything = b"".join(
                bytes(v) if isinstance(v, bytes | memoryview) else str(v).encode()
                for table in ("blobs", "datasets", "jobs")
                for row in conn.execute(sa.text(f"SELECT * FROM {table}"))  # noqa: S608
                for v in row
            )
    finally:
        engine.dispose()
    assert sorted({kind for kind, _ in blobs}) == ["code", "dataset", "log", "output"]
    assert all(bytes(data).startswith(b"SOV1") for _, data in blobs)
    for secret in (DATASET_TEXT, CODE_TEXT, b"plaintext-dataset-marker", b"plaintext-code-marker"):
        assert secret not in everything
    # The output and the log (which hold the marker) are sealed too; the manifest's args are
    # metadata, stored as submitted, so look for the output's own text.
    assert output not in everything and log not in everything


# -- crashes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "step", ["job:staged", "job:start", "job:log", "job:finish", "job:discard"]
)
def test_a_runner_killed_after_any_step_is_finished_by_another_exactly_once(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads, step: str
):
    dataset = upload(fleet)
    job = submit(fleet, enclave, [dataset.id])

    def die(done: str) -> None:
        if done == step:
            raise Crash(done)

    doomed = runner(fleet, "w1", after_step=die)
    with pytest.raises(Crash):
        for _ in range(10):
            doomed.run_once()
    # The dead runner's claim lapses; another worker takes the job over.
    fleet.clock.advance(seconds=45)
    done = drive(fleet, job.id, worker="w2")
    assert done.state is JobState.SUCCEEDED
    assert [r.name for r in done.results] == ["out/result.txt"]
    assert events(fleet, "job:") == [
        ("job:submit", "allow"),
        ("job:start", "allow"),
        ("job:finish", "allow"),
    ]
    log, _ = fleet.services.jobs.logs(ctx(ANALYST_DEFENCE), job.id)
    assert log.startswith(b"args --epochs 2\n") and len(log) == done.log_size
    assert fleet.services.jobs.output(ctx(ANALYST_DEFENCE), job.id, "out/result.txt")
    runs = workloads.exit_codes
    assert list(runs) == [str(job.id)]  # run once: a second run call answered its status


def test_a_job_whose_enclave_ends_fails_and_the_enclave_is_released(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads
):
    workloads.paused = True
    job = submit(fleet, enclave)
    runner(fleet).run_once()
    with fleet.services.uow(readonly=True) as uow:
        assert uow.jobs.get(job.id).state is JobState.RUNNING  # type: ignore[union-attr]
    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), enclave, "done")
    done = drive(fleet, job.id)
    assert done.state is JobState.FAILED and done.error == "the enclave ended"
    assert enclave in workloads.released
    assert events(fleet, "job:")[-1] == ("job:finish", "allow")
    with pytest.raises(ConflictError):
        submit(fleet, enclave)


# -- misbehaving and missing agents -----------------------------------------------------------


@pytest.mark.parametrize("misbehave", ["put-hash", "status", "outputs"])
def test_a_misbehaving_agent_fails_the_job_not_the_runner(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads, misbehave: str
):
    workloads.misbehave = misbehave
    job = submit(fleet, enclave)
    done = drive(fleet, job.id)
    assert done.state is JobState.FAILED
    assert done.error
    assert "hash" in done.error or "garbage" in done.error
    assert events(fleet, "job:finish") == [("job:finish", "allow")]
    # The runner goes on with the next job.
    workloads.misbehave = None
    assert drive(fleet, submit(fleet, enclave).id).state is JobState.SUCCEEDED


def test_an_unreachable_agent_leaves_the_job_queued(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads
):
    workloads.down = True
    job = submit(fleet, enclave)
    run = runner(fleet)
    for _ in range(3):
        run.run_once()
    with fleet.services.uow(readonly=True) as uow:
        found = uow.jobs.get(job.id)
    assert found is not None and found.state is JobState.QUEUED and found.claimed_by is None
    workloads.down = False
    assert drive(fleet, job.id).state is JobState.SUCCEEDED


def test_outputs_over_the_limits_fail_the_job(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads
):
    def many(
        code: Mapping[str, bytes], inputs: Mapping[str, bytes], args: Sequence[str]
    ) -> FakeRun:
        return FakeRun(0, b"", {f"out/{i}.bin": b"x" for i in range(80)})

    workloads.program = many
    done = drive(fleet, submit(fleet, enclave).id)
    assert done.state is JobState.FAILED and "80 output files" in done.error
    assert done.results == ()


# -- cancelling -------------------------------------------------------------------------------


def test_cancel_a_queued_job_never_runs_it(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads
):
    job = submit(fleet, enclave)
    cancelled = fleet.services.jobs.cancel(ctx(ANALYST_DEFENCE), job.id)
    assert cancelled.cancel_requested
    done = drive(fleet, job.id)
    assert done.state is JobState.CANCELLED and workloads.exit_codes == {}
    assert events(fleet, "job:") == [
        ("job:submit", "allow"),
        ("job:cancel", "allow"),
        ("job:finish", "allow"),
    ]
    with pytest.raises(InvalidTransitionError):
        fleet.services.jobs.cancel(ctx(ANALYST_DEFENCE), job.id)


def test_cancel_a_running_job_stops_it_in_the_enclave(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads
):
    workloads.paused = True
    job = submit(fleet, enclave)
    runner(fleet).run_once()
    fleet.services.jobs.cancel(ctx(OFFICER_1), job.id)
    done = drive(fleet, job.id)
    assert done.state is JobState.CANCELLED
    assert "cancel" in workloads.agents[enclave].calls
    with pytest.raises(NotFoundError):
        fleet.services.jobs.cancel(ctx(ANALYST_RESEARCH), job.id)


def test_auditors_cannot_cancel(fleet: Fleet, enclave: uuid.UUID):
    job = submit(fleet, enclave)
    with pytest.raises(PolicyDeniedError):
        fleet.services.jobs.cancel(ctx(AUDITOR), job.id)
    assert events(fleet, "job:cancel") == [("job:cancel", "deny")]


# -- the label flow ---------------------------------------------------------------------------


def test_a_dataset_above_the_enclave_label_is_refused_and_audited(fleet: Fleet, enclave: uuid.UUID):
    above = upload(fleet, ANALYST_ALL, label="SECRET//CRYPTO/NATO")
    with pytest.raises(PolicyDeniedError, match="above the enclave"):
        submit(fleet, enclave, [above.id], who=ANALYST_ALL)
    assert events(fleet, "job:submit") == [("job:submit", "deny")]
    denied = fleet.events("job:submit")[0]
    assert denied.label == {"level": "SECRET", "compartments": ["NATO"]}
    # One the submitter may not read is as good as missing.
    with pytest.raises(NotFoundError):
        submit(fleet, enclave, [above.id])
    with pytest.raises(NotFoundError):
        submit(fleet, enclave, [uuid.uuid4()])


def test_a_dataset_of_another_tenant_is_refused(fleet: Fleet, enclave: uuid.UUID):
    theirs = upload(fleet, ANALYST_BOTH, tenant="research", label="UNCLASSIFIED")
    with pytest.raises(PolicyDeniedError, match="another tenant"):
        submit(fleet, enclave, [theirs.id], who=ANALYST_BOTH)


def test_dataset_uploads_respect_clearance_ceiling_and_membership(fleet: Fleet):
    with pytest.raises(PolicyDeniedError, match="clearance"):
        upload(fleet, ANALYST_DEFENCE, label="SECRET//EU")
    with pytest.raises(PolicyDeniedError, match="ceiling"):
        upload(fleet, ANALYST_BOTH, tenant="research", label="RESTRICTED")
    with pytest.raises(NotFoundError):
        upload(fleet, ANALYST_RESEARCH, tenant="defence", label="UNCLASSIFIED")
    with pytest.raises(PolicyDeniedError, match="analysts"):
        upload(fleet, replace(OFFICER_1, tenants=frozenset({"defence"})))
    with pytest.raises(InvalidInputError):
        upload(fleet, name="../etc/passwd")
    assert events(fleet, "dataset:") == [("dataset:upload", "deny")] * 5


def test_submission_rules(fleet: Fleet, enclave: uuid.UUID):
    with pytest.raises(NotFoundError):
        submit(fleet, enclave, who=ANALYST_RESEARCH)
    with pytest.raises(PolicyDeniedError):
        submit(fleet, enclave, who=OFFICER_1)
    with pytest.raises(InvalidInputError, match="entrypoint"):
        submit(fleet, enclave, entrypoint="other.py")
    with pytest.raises(TooLargeError):
        submit(fleet, enclave, max_runtime_s=10**9)
    with pytest.raises(InvalidInputError):
        submit(fleet, enclave, files=[("main.py", b"1"), ("main.py", b"2")])
    with pytest.raises(NotFoundError):
        submit(fleet, uuid.uuid4())
    pending = fleet.request(approve_last=False)
    with pytest.raises(NotFoundError):
        submit(fleet, pending)  # approved by one officer only: no enclave yet


def test_visibility_of_jobs_logs_and_outputs(fleet: Fleet, enclave: uuid.UUID):
    job = drive(fleet, submit(fleet, enclave).id)
    jobs = fleet.services.jobs
    # Officers and auditors cleared for the label see the metadata, never the content.
    for reader in (OFFICER_1, AUDITOR):
        assert jobs.get(ctx(reader), job.id).id == job.id
        assert [j.id for j in jobs.list(ctx(reader), enclave)] == [job.id]
        with pytest.raises(NotFoundError):
            jobs.logs(ctx(reader), job.id)
        with pytest.raises(NotFoundError):
            jobs.output(ctx(reader), job.id, "out/result.txt")
    # Other tenants and the uncleared learn nothing, not even that it exists.
    for stranger in (ANALYST_RESEARCH, OFFICER_LOW):
        for call in (
            lambda c: jobs.get(c, job.id),
            lambda c: jobs.list(c, enclave),
            lambda c: jobs.logs(c, job.id),
            lambda c: jobs.output(c, job.id, "out/result.txt"),
        ):
            with pytest.raises(NotFoundError) as missing:
                call(ctx(stranger))
            assert str(job.id) in str(missing.value) or str(enclave) in str(missing.value)
    with pytest.raises(NotFoundError):
        jobs.output(ctx(ANALYST_DEFENCE), job.id, "out/none.txt")
    with pytest.raises(NotFoundError):
        jobs.output(ctx(ANALYST_DEFENCE), job.id, "../x")
    reads = events(fleet, "output:read")
    assert reads == [("output:read", "deny")] * 6
    denial = fleet.events("output:read")[0]
    assert denial.label == {"level": "SECRET", "compartments": ["NATO"]}


def test_dataset_visibility(fleet: Fleet):
    dataset = upload(fleet)
    datasets = fleet.services.datasets
    assert [d.id for d in datasets.list(ctx(ANALYST_DEFENCE))] == [dataset.id]
    assert [d.id for d in datasets.list(ctx(AUDITOR))] == [dataset.id]
    assert datasets.get(ctx(OFFICER_1), dataset.id) == dataset
    assert datasets.list(ctx(ANALYST_RESEARCH)) == []
    assert datasets.list(ctx(OFFICER_LOW)) == []
    for stranger in (ANALYST_RESEARCH, OFFICER_LOW):
        with pytest.raises(NotFoundError):
            datasets.get(ctx(stranger), dataset.id)


def test_after_crypto_erase_outputs_and_logs_are_gone(fleet: Fleet, enclave: uuid.UUID):
    job = drive(fleet, submit(fleet, enclave).id)
    fleet.services.keys.crypto_erase(fleet.signed_in(OFFICER_1), enclave)
    with pytest.raises(GoneError, match="crypto-erased"):
        fleet.services.jobs.output(ctx(ANALYST_DEFENCE), job.id, "out/result.txt")
    with pytest.raises(GoneError):
        fleet.services.jobs.logs(ctx(ANALYST_DEFENCE), job.id)
    # The metadata stays readable.
    assert fleet.services.jobs.get(ctx(ANALYST_DEFENCE), job.id).results == job.results


def test_programs_see_inputs_by_name(fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads):
    seen: dict[str, bytes] = {}

    def grab(
        code: Mapping[str, bytes], inputs: Mapping[str, bytes], args: Sequence[str]
    ) -> FakeRun:
        seen.update(inputs)
        seen.update({f"code:{k}": v for k, v in code.items()})
        return echo_program(code, inputs, args)

    workloads.program = grab
    dataset = upload(fleet)
    drive(fleet, submit(fleet, enclave, [dataset.id]).id)
    assert seen == {"train.csv": DATASET_TEXT, "code:main.py": CODE_TEXT}


def test_an_agent_that_claims_more_log_than_it_gives_does_not_hold_the_job(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads
):
    workloads.misbehave = "log-size"
    done = drive(fleet, submit(fleet, enclave).id)
    assert done.state is JobState.SUCCEEDED
    assert done.log_size == len(b"args --epochs 2\n")


def test_a_job_the_agent_does_not_stop_at_its_deadline_is_stopped(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads
):
    workloads.paused = True
    job = submit(fleet, enclave, max_runtime_s=30)
    runner(fleet).run_once()
    fleet.clock.advance(seconds=60)
    runner(fleet).run_once()
    with fleet.services.uow(readonly=True) as uow:
        assert uow.jobs.get(job.id).state is JobState.RUNNING  # type: ignore[union-attr]
    fleet.clock.advance(seconds=60)
    done = drive(fleet, job.id)
    assert done.state is JobState.TIMED_OUT and "max_runtime_s" in done.error
    assert "cancel" in workloads.agents[enclave].calls


def test_cancel_after_a_crash_between_run_and_its_record_stops_the_job(
    fleet: Fleet, enclave: uuid.UUID, workloads: MemoryWorkloads
):
    workloads.paused = True
    job = submit(fleet, enclave)

    def die(done: str) -> None:
        if done == "job:staged":
            # Start it in the enclave as the dead runner would have, without recording it.
            workloads.agent(enclave).run(
                str(job.id), entrypoint="main.py", args=[], max_runtime_s=60
            )
            raise Crash(done)

    with pytest.raises(Crash):
        runner(fleet, after_step=die).run_once()
    fleet.services.jobs.cancel(ctx(ANALYST_DEFENCE), job.id)
    fleet.clock.advance(seconds=45)
    done = drive(fleet, job.id, worker="w2")
    assert done.state is JobState.CANCELLED
    assert workloads.agent(enclave).calls.count("cancel") == 1
