"""The GPU hand-over state machine on a real database (SQLite and PostgreSQL) over an in-memory
fleet and the in-memory sanitizer: clean -> free; failed -> quarantined; no answer within the
deadline -> quarantined; a host that cannot be reached -> retried; a worker killed mid-hand-over
-> the GPU is never handed out, and another worker redoes the hand-over; the certificate in
``gpu:handover`` (same unit of work as the move); the canary nonce of the previous enclave
planted by the job runner and passed to the hand-over; a sanitizer domain is not drift while
its GPU is being handed over."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from audit import AuditEvent
from enclaves.hosts import bundled_host_path
from enclaves.inventory import GpuDevice
from enclaves.plan import sanitizer_uuid
from enclaves.uri import UriPolicy
from sovereign.adapters.memory_hypervisor import MemoryHost, MemoryHypervisor
from sovereign.adapters.memory_sanitizer import MemorySanitizer
from sovereign.adapters.memory_workloads import MemoryWorkloads
from sovereign.bootstrap import build_sanitizer
from sovereign.config import DEFAULTS
from sovereign.domain.fleet import sanitizer_domain_name
from sovereign.domain.jobs import JobManifest, JobStep
from sovereign.errors import DependencyUnavailableError, GpuHandoverError
from sovereign.services.ports import HandoverRequest
from tests.support.factories import ANALYST_DEFENCE, ctx
from tests.support.fleet import SECRET_NATO, Fleet, gpus, make_fleet

DEADLINE_S = 30
CLAIM_TTL_S = 60  # make_fleet's RECONCILER_CLAIM_TTL_S


class Crash(BaseException):
    """The worker process dies here (not an Exception: nothing may catch it and clean up)."""


@pytest.fixture
def sanitizer() -> MemorySanitizer:
    return MemorySanitizer()


@pytest.fixture
def workloads() -> MemoryWorkloads:
    return MemoryWorkloads()


@pytest.fixture
def fleet(
    database_url: str, tmp_path: Path, sanitizer: MemorySanitizer, workloads: MemoryWorkloads
) -> Iterator[Fleet]:
    made = make_fleet(
        database_url,
        folder=tmp_path,
        sanitizer=sanitizer,
        workloads=workloads,
        SANITIZER_DEADLINE_S=DEADLINE_S,
    )
    yield made
    made.services.close()


def used_gpus(fleet: Fleet, sanitizer: MemorySanitizer) -> tuple[uuid.UUID, list[str]]:
    """Run a 2-GPU SECRET//NATO enclave, terminate it; its GPUs' addresses (now dirty, the
    hand-over not yet run). The sanitizer's requests so far are forgotten."""
    rid = fleet.request(gpus=2)
    fleet.reconciler().run_once()
    assert fleet.state(rid) == "running"
    with fleet.services.uow(readonly=True) as uow:
        addresses = [g.address for g in uow.gpus.for_enclave(rid)]
    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "done")
    sanitizer.requests.clear()
    return rid, addresses


def handovers(fleet: Fleet, address: str | None = None) -> list[AuditEvent]:
    """The ``gpu:handover`` events after an enclave (not the first ones of new GPUs)."""
    return [
        e
        for e in fleet.events("gpu:handover")
        if (address is None or e.target == f"gpu/secret-1/{address}")
        and e.details["certificate"]["previous_enclave"] is not None
    ]


def state(fleet: Fleet, address: str, host: str = "secret-1") -> str:
    return fleet.gpu_states()[f"{host}/{address}"]


def canary_nonce(fleet: Fleet, rid: uuid.UUID) -> bytes:
    with fleet.services.uow(readonly=True) as uow:
        enclave = uow.enclaves.get(rid)
    assert enclave is not None
    assert enclave.canary_nonce is not None
    return enclave.canary_nonce


def test_clean_hand_over_frees_the_gpu_with_its_certificate_in_the_log(
    fleet: Fleet, sanitizer: MemorySanitizer
):
    rid, addresses = used_gpus(fleet, sanitizer)
    report = fleet.reconciler().run_once()
    assert report.terminated == 1
    assert report.sanitized == 2
    assert report.quarantined == 0
    assert all(state(fleet, a) == "free" for a in addresses)
    # What the port was asked: this GPU, a fresh nonce each, the previous enclave's canary.
    asked = {r.address: r for r in sanitizer.requests}
    assert set(asked) == set(addresses)
    nonce = canary_nonce(fleet, rid)
    for address, request in asked.items():
        assert request.host == "secret-1"
        assert request.uri == "mem://secret-1"
        assert request.group_members == (address,)
        assert request.canary_nonce == nonce
        assert len(request.nonce) == 32
        assert request.deadline_s == DEADLINE_S
        assert request.domain_name == sanitizer_domain_name(address)
    assert asked[addresses[0]].nonce != asked[addresses[1]].nonce
    for address in addresses:
        (event,) = handovers(fleet, address)
        assert event.label == {"level": "SECRET", "compartments": ["NATO"]}
        assert event.details["from"] == "sanitizing"
        assert event.details["to"] == "free"
        cert = event.details["certificate"]
        assert cert["verdict"] == "clean"
        assert cert["gpu"]["address"] == address
        assert cert["host"] == "secret-1"
        assert cert["previous_enclave"] == str(rid)
        assert cert["previous_label"] == "SECRET//NATO"
        assert cert["scrub"]["coverage"] == 1.0
        assert cert["canary_checked"] is True
        assert cert["canary_hits"] == 0
        assert cert["simulated"] is True
        # The canary nonce never reaches the log.
        assert nonce.hex() not in str(event.details)
    # Each GPU: gpu:sanitize then gpu:handover, nothing else.
    ours = [e.action for e in fleet.events("gpu:") if e.target.endswith(addresses[0])]
    assert ours[-2:] == ["gpu:sanitize", "gpu:handover"]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({"mismatches": 7}, "7 bytes did not read back as written"),
        ({"canary_hits": 2}, "2 words of the previous tenant's canary were found"),
        ({"bytes_covered": 1000}, "coverage"),
        ({"bytes_total": "lots"}, "malformed scrub report: bytes_total is not an integer"),
    ],
)
def test_a_failed_certificate_quarantines_the_gpu(
    fleet: Fleet, sanitizer: MemorySanitizer, tamper: dict[str, Any], reason: str
):
    _, (bad, good) = used_gpus(fleet, sanitizer)
    sanitizer.tamper[bad] = tamper
    report = fleet.reconciler().run_once()
    assert report.quarantined == 1
    assert state(fleet, bad) == "quarantined"
    assert state(fleet, good) == "free"
    (event,) = handovers(fleet, bad)
    assert event.details["to"] == "quarantined"
    assert event.details["certificate"]["verdict"] == "failed"
    assert reason in event.details["certificate"]["reason"]
    # Quarantined stays quarantined: later passes never hand it out nor retry it.
    sanitizer.tamper.clear()
    fleet.settle()
    assert state(fleet, bad) == "quarantined"
    assert len(handovers(fleet, bad)) == 1


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (GpuHandoverError("virNodeDeviceReset refused"), "virNodeDeviceReset refused"),
        (RuntimeError("bug"), "the sanitizer failed unexpectedly (RuntimeError)"),
    ],
)
def test_a_hand_over_that_fails_quarantines_the_gpu(
    fleet: Fleet, sanitizer: MemorySanitizer, failure: Exception, reason: str
):
    _, (bad, good) = used_gpus(fleet, sanitizer)
    sanitizer.failures[bad] = failure
    fleet.reconciler().run_once()
    assert state(fleet, bad) == "quarantined"
    assert state(fleet, good) == "free"
    cert = handovers(fleet, bad)[0].details["certificate"]
    assert cert["verdict"] == "failed"
    assert cert["reason"] == reason
    assert cert["scrub"] is None


def test_no_answer_within_the_deadline_quarantines_the_gpu(
    fleet: Fleet, sanitizer: MemorySanitizer
):
    _, (slow, fast) = used_gpus(fleet, sanitizer)

    def slow_answer(request: HandoverRequest) -> None:
        if request.address == slow:
            fleet.clock.advance(seconds=DEADLINE_S + 1)

    sanitizer.during = slow_answer
    fleet.reconciler().run_once()
    assert state(fleet, slow) == "quarantined"
    assert state(fleet, fast) == "free"
    cert = handovers(fleet, slow)[0].details["certificate"]
    assert cert["verdict"] == "failed"
    assert cert["reason"] == f"no answer within {DEADLINE_S} s"
    assert cert["scrub"] is None, "a late report is not trusted"
    assert cert["reset"] is None


def test_a_host_that_cannot_be_reached_is_retried_and_the_gpu_never_handed_out(
    fleet: Fleet, sanitizer: MemorySanitizer
):
    _, (address, _) = used_gpus(fleet, sanitizer)
    sanitizer.failures[address] = DependencyUnavailableError(dependency="hypervisor")
    report = fleet.reconciler().run_once()
    assert report.sanitized == 1
    assert state(fleet, address) == "sanitizing"
    assert handovers(fleet, address) == []
    # Not retaken before no live attempt can be running (claim TTL, deadline) ...
    fleet.reconciler().run_once()
    assert state(fleet, address) == "sanitizing"
    # ... then redone, from the start.
    fleet.clock.advance(seconds=max(CLAIM_TTL_S, DEADLINE_S) + 1)
    fleet.reconciler().run_once()
    assert state(fleet, address) == "free"
    (event,) = handovers(fleet, address)
    assert event.details["certificate"]["verdict"] == "clean"


def test_a_worker_killed_mid_hand_over_never_hands_out_the_gpu_and_another_resumes(
    fleet: Fleet, sanitizer: MemorySanitizer
):
    rid, (address, other) = used_gpus(fleet, sanitizer)
    sanitizer.failures[address] = Crash()
    with pytest.raises(Crash):
        fleet.reconciler("w1").run_once()
    assert state(fleet, address) == "sanitizing"
    assert handovers(fleet) == []
    # While it is sanitizing nobody gets it: a request for every GPU of the host waits.
    waiting = fleet.request(gpus=8)
    for worker in ("w2", "w3"):
        fleet.reconciler(worker).run_once()
    assert fleet.state(waiting) == "approved", "not placed: one GPU is still being handed over"
    assert state(fleet, address) == "sanitizing", "a live attempt may still run: not retaken"
    assert [r.address for r in sanitizer.requests].count(address) == 1
    # Once no attempt can still be running, another worker redoes the whole hand-over.
    fleet.clock.advance(seconds=max(CLAIM_TTL_S, DEADLINE_S) + 1)
    fleet.reconciler("w2").run_once()
    assert state(fleet, address) in ("free", "allocated")
    resumed = [
        e
        for e in fleet.events("gpu:sanitize")
        if e.target == f"gpu/secret-1/{address}" and e.details.get("resumed")
    ]
    assert len(resumed) == 1
    assert resumed[0].details["from"] == resumed[0].details["to"] == "sanitizing"
    (event,) = handovers(fleet, address)
    assert event.details["certificate"]["verdict"] == "clean"
    assert event.details["certificate"]["previous_enclave"] == str(rid)
    retried = [r for r in sanitizer.requests if r.address == address]
    assert len(retried) == 2
    assert retried[1].canary_nonce == retried[0].canary_nonce == canary_nonce(fleet, rid)
    assert retried[1].nonce != retried[0].nonce, "a fresh scrub nonce for the new attempt"
    assert state(fleet, other) in ("free", "allocated")


def test_a_retaken_hand_over_is_not_retaken_again_while_it_runs(
    fleet: Fleet, sanitizer: MemorySanitizer
):
    _, (address, _) = used_gpus(fleet, sanitizer)
    sanitizer.failures[address] = Crash()
    with pytest.raises(Crash):
        fleet.reconciler("w1").run_once()
    fleet.clock.advance(seconds=max(CLAIM_TTL_S, DEADLINE_S) + 1)
    others: list[int] = []

    # w3 runs a pass while w2 is in the middle of its retaken hand-over: the new attempt
    # began now, so w3 leaves it alone.
    def meanwhile(request: HandoverRequest) -> None:
        if request.address == address and not others:
            others.append(fleet.reconciler("w3").run_once().sanitized)

    sanitizer.during = meanwhile
    fleet.reconciler("w2").run_once()
    assert state(fleet, address) == "free"
    assert len(handovers(fleet, address)) == 1
    assert [r.address for r in sanitizer.requests].count(address) == 2


def test_a_sanitizer_domain_is_not_drift_while_its_gpu_is_handed_over(
    fleet: Fleet, sanitizer: MemorySanitizer
):
    _, (address, _) = used_gpus(fleet, sanitizer)
    host = fleet.hypervisor.hosts["mem://secret-1"]
    name = sanitizer_domain_name(address)

    def start_domain_then_die(request: HandoverRequest) -> None:
        if request.address == address:
            host.domains[sanitizer_uuid(name)] = (name, True, None, frozenset({address}))
            raise Crash

    sanitizer.during = start_domain_then_die
    with pytest.raises(Crash):
        fleet.reconciler("w1").run_once()
    sanitizer.during = None
    report = fleet.reconciler("w2").run_once()
    assert report.drift == []
    with fleet.services.uow(readonly=True) as uow:
        record = uow.hosts.get("secret-1")
    assert record is not None
    assert record.state == "active"
    # The same name while no hand-over of that GPU runs is drift like any other domain.
    fleet.clock.advance(seconds=max(CLAIM_TTL_S, DEADLINE_S) + 1)
    report = fleet.reconciler("w2").run_once()
    assert state(fleet, address) == "free"
    assert any(name in line for line in report.drift)
    with fleet.services.uow(readonly=True) as uow:
        record = uow.hosts.get("secret-1")
    assert record is not None
    assert record.state == "quarantined"


def test_the_job_runner_plants_the_enclave_canary_and_the_hand_over_gets_its_nonce(
    fleet: Fleet, sanitizer: MemorySanitizer, workloads: MemoryWorkloads
):
    rid = fleet.request(gpus=1)
    fleet.settle()
    assert fleet.state(rid) == "running"
    nonce = canary_nonce(fleet, rid)
    manifest = JobManifest("main.py", ("--epochs", "1"), (), ("out/*",), 60)
    job = fleet.services.jobs.submit(ctx(ANALYST_DEFENCE), rid, manifest, [("main.py", b"x=1\n")])
    runner = fleet.services.jobrunner(worker="r1")
    for _ in range(20):
        runner.run_once()
        with fleet.services.uow(readonly=True) as uow:
            found = uow.jobs.get(job.id)
        assert found is not None
        if found.step is JobStep.DONE:
            break
    assert workloads.canaries == [(rid, nonce)], "planted once, with the enclave's nonce"
    (finish,) = fleet.events("job:finish")
    assert finish.details["canary"] == {
        "planted": True,
        "planted_bytes": 1 << 20,
        "device": "simulated",
    }
    assert nonce.hex() not in str(finish.details)
    with fleet.services.uow(readonly=True) as uow:
        (gpu,) = uow.gpus.for_enclave(rid)
    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "done")
    sanitizer.requests.clear()
    fleet.settle()
    (request,) = sanitizer.requests
    assert request.address == gpu.address
    assert request.canary_nonce == nonce


def test_every_enclave_gets_its_own_canary_nonce(fleet: Fleet):
    first, second = fleet.request(gpus=1), fleet.request(gpus=1)
    fleet.settle()
    assert len({canary_nonce(fleet, first), canary_nonce(fleet, second)}) == 2


def test_an_agent_refusing_the_canary_does_not_fail_the_job(
    fleet: Fleet, workloads: MemoryWorkloads
):
    rid = fleet.request(gpus=1)
    fleet.settle()
    workloads.misbehave = "canary"
    manifest = JobManifest("main.py", (), (), (), 60)
    job = fleet.services.jobs.submit(ctx(ANALYST_DEFENCE), rid, manifest, [("main.py", b"x=1\n")])
    runner = fleet.services.jobrunner(worker="r1")
    for _ in range(20):
        runner.run_once()
    with fleet.services.uow(readonly=True) as uow:
        found = uow.jobs.get(job.id)
    assert found is not None
    assert found.state.value == "succeeded"
    (finish,) = fleet.events("job:finish")
    assert finish.details["canary"]["planted"] is False
    assert "garbage answer to canary" in finish.details["canary"]["reason"]


def test_the_assembly_scrubs_test_driver_gpus_with_the_scrub_program(
    database_url: str, tmp_path: Path
):
    """The embedded default's path: a ``test://`` host's GPUs handed over by the routing
    sanitizer the assembly builds, which runs the real scrub program on 1 MiB of host memory
    per GPU (``simulated: true``); a host outside the test driver without a libvirt connection
    gets no hand-over at all (quarantined, never free)."""
    hosts = tmp_path / "hosts"
    hosts.mkdir()
    shutil.copy(bundled_host_path("secret-h100x8"), hosts / "sim.xml")
    uri = f"test://{hosts / 'sim.xml'}"
    hypervisor = MemoryHypervisor(
        UriPolicy(transports=frozenset({"test"}), test_dirs=(str(hosts),))
    )
    config = {**DEFAULTS, "SANITIZER_SIMULATED_MIB": 1, "SANITIZER_DEADLINE_S": 60}
    made = make_fleet(
        database_url,
        folder=tmp_path,
        hypervisor=hypervisor,
        hosts={
            "sim-1": (uri, SECRET_NATO, MemoryHost(gpus=gpus(2))),
            "other-1": ("mem://other-1", SECRET_NATO, MemoryHost(gpus=gpus(1, 0x40))),
        },
        sanitizer=build_sanitizer(config, hypervisor),
    )
    try:
        states = made.gpu_states()
        assert states["sim-1/0000:18:00.0"] == states["sim-1/0000:19:00.0"] == "free"
        assert states["other-1/0000:40:00.0"] == "quarantined"
        by_target = {e.target: e.details["certificate"] for e in made.events("gpu:handover")}
        cert = by_target["gpu/sim-1/0000:18:00.0"]
        assert cert["verdict"] == "clean"
        assert cert["simulated"] is True
        assert cert["reset"]["type"] == "none"
        assert cert["scrub"]["device"] == "cpu"
        assert cert["scrub"]["bytes_total"] == 1 << 20
        assert cert["scrub"]["coverage"] >= 0.99
        assert cert["scrub"]["patterns"] == ["zeros", "nonce"]
        assert cert["canary_hits"] == 0
        other = by_target["gpu/other-1/0000:40:00.0"]
        assert other["verdict"] == "failed"
        assert "no sanitizer is configured" in other["reason"]
    finally:
        made.services.close()


def test_an_attempt_overtaken_by_a_newer_one_frees_nothing(
    fleet: Fleet, sanitizer: MemorySanitizer
):
    _, (address, _) = used_gpus(fleet, sanitizer)

    # While w1's attempt runs, the GPU is retaken (a newer attempt starts, as a worker resuming
    # it, or an officer's return followed by a new hand-over, would do).
    def retaken(request: HandoverRequest) -> None:
        if request.address != address:
            return
        with fleet.services.uow() as uow:
            (gpu,) = [g for g in uow.gpus.list("secret-1") if g.address == address]
            gpu.updated_at = fleet.clock() + timedelta(seconds=1)
            uow.gpus.update(gpu, "sanitizing")
            uow.commit()

    sanitizer.during = retaken
    fleet.reconciler("w1").run_once()
    # w1's answer was clean, but its attempt is no longer the GPU's: it frees nothing and
    # records no certificate; the newer attempt decides.
    assert [r.address for r in sanitizer.requests].count(address) == 1
    assert state(fleet, address) == "sanitizing"
    assert handovers(fleet, address) == []


def test_a_gpu_sharing_its_iommu_group_with_another_gpu_is_never_certified(
    database_url: str, tmp_path: Path, sanitizer: MemorySanitizer
):
    # Two GPUs behind one PCIe switch without ACS: one IOMMU group holds both.
    first, second = "0000:18:00.0", "0000:19:00.0"
    shared = tuple(
        GpuDevice(
            address=address,
            model="H100-SXM5-80GB",
            numa_node=0,
            iommu_group=10,
            group_members=(first, second),
        )
        for address in (first, second)
    )
    made = make_fleet(
        database_url,
        folder=tmp_path,
        sanitizer=sanitizer,
        hosts={
            "secret-1": (
                "mem://secret-1",
                {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]},
                MemoryHost(gpus=(*shared, *gpus(2, 0x30))),
            )
        },
    )
    try:
        # A sanitizer domain would hold both and could not prove which one it scrubbed.
        for address in (first, second):
            assert state(made, address) == "quarantined"
            (event,) = [
                e for e in made.events("gpu:handover") if e.target == f"gpu/secret-1/{address}"
            ]
            cert = event.details["certificate"]
            assert cert["verdict"] == "failed"
            assert "IOMMU group also holds GPU" in cert["reason"]
        assert {r.address for r in sanitizer.requests} == {"0000:30:00.0", "0000:31:00.0"}
        assert state(made, "0000:30:00.0") == "free"
    finally:
        made.services.close()


def test_a_domain_named_like_a_sanitizer_without_its_uuid_is_drift(
    fleet: Fleet, sanitizer: MemorySanitizer
):
    _, (address, _) = used_gpus(fleet, sanitizer)
    host = fleet.hypervisor.hosts["mem://secret-1"]
    name = sanitizer_domain_name(address)

    # During the GPU's hand-over someone starts a domain under the sanitizer's name, but not
    # the sanitizer's UUID: it is not the hand-over's, so it is drift.
    def impostor_then_die(request: HandoverRequest) -> None:
        if request.address == address:
            host.domains[uuid.uuid4()] = (name, True, None, frozenset())
            raise Crash

    sanitizer.during = impostor_then_die
    with pytest.raises(Crash):
        fleet.reconciler("w1").run_once()
    sanitizer.during = None
    report = fleet.reconciler("w2").run_once()
    assert state(fleet, address) == "sanitizing"
    assert any(name in line for line in report.drift)
