"""The reconciler on a real database (SQLite and PostgreSQL) over an in-memory fleet: the whole
lifecycle, isolation on placement, crash recovery at every step, failures, drift, leases, two
workers, the kill switch and two-officer accreditation. The same reconciler over libvirt is in
``test_enclaves_libvirt.py`` (test driver) and ``tests/e2e/test_real_guests.py`` (QEMU)."""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from enclaves.steps import (
    HOST_TEARDOWN_STEPS,
    PROVISION_STEPS,
    TEARDOWN_STEPS,
    ProvisionStep,
    TeardownStep,
)
from sovereign.adapters.memory_hypervisor import MemoryHost
from sovereign.domain.actions import ActionState
from sovereign.errors import (
    AuditUnavailableError,
    ConflictError,
    DependencyUnavailableError,
    InvalidTransitionError,
    NotFoundError,
    PolicyDeniedError,
)
from sovereign.worker import PassLoop
from tests.support.factories import (
    ANALYST_DEFENCE,
    ANALYST_RESEARCH,
    OFFICER_1,
    OFFICER_2,
    ctx,
)
from tests.support.fleet import SECRET_NATO, UNCLASSIFIED, Fleet, gpus, make_fleet


@pytest.fixture
def new_fleet(database_url: str, tmp_path: Path) -> Iterator[Callable[..., Fleet]]:
    """``new_fleet(**options)``: a fleet on this test's database, closed afterwards."""
    made: list[Fleet] = []

    def make(**options: Any) -> Fleet:
        made.append(make_fleet(database_url, folder=tmp_path, **options))
        return made[-1]

    yield make
    for fleet in made:
        fleet.services.close()


@pytest.fixture
def fleet(new_fleet: Callable[..., Fleet]) -> Fleet:
    return new_fleet()


class Crash(BaseException):
    """The worker process dies here (not an Exception: nothing may catch and clean up)."""


def domains(fleet: Fleet, uri: str = "mem://secret-1") -> dict[uuid.UUID, Any]:
    return dict(fleet.hypervisor.hosts[uri].domains)


def test_new_hosts_gpus_are_sanitized_before_first_use(new_fleet: Callable[..., Fleet]):
    fleet = new_fleet()
    assert set(fleet.gpu_states().values()) == {"free"}
    sanitized = fleet.actions("gpu:")
    # Each of the 12 GPUs went dirty -> sanitizing -> free, with a clean certificate.
    assert sanitized.count("gpu:sanitize") == 12
    assert sanitized.count("gpu:handover") == 12
    certificates = [e.details["certificate"] for e in fleet.events("gpu:handover")]
    assert {c["verdict"] for c in certificates} == {"clean"}
    assert all(c["simulated"] for c in certificates), "no real GPU was scrubbed"
    assert {c["previous_enclave"] for c in certificates} == {None}, "never used before"


def test_approved_request_runs_then_terminates_and_its_gpus_go_dirty_then_free(fleet: Fleet):
    rid = fleet.request(gpus=2)
    report = fleet.reconciler().run_once()
    assert report.placed == 1
    assert report.running == 1
    assert fleet.state(rid) == "running"
    host = fleet.hypervisor.hosts["mem://secret-1"]
    assert host.domains[rid][1] is True, "the domain runs"
    assert len(host.volumes) == 1
    assert len(host.secrets) == 2
    states = fleet.gpu_states()
    allocated = [k for k, v in states.items() if v == "allocated"]
    assert len(allocated) == 2
    assert all(k.startswith("secret-1/") for k in allocated)
    # Both GPUs on one NUMA node (the first four are node 0).
    view = fleet.services.enclaves.get(ctx(ANALYST_DEFENCE), rid)
    assert view.enclave is not None
    assert {g.numa_node for g in view.gpus} == {0}

    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "done")
    assert fleet.state(rid) == "terminating"
    report = fleet.reconciler().run_once()
    assert report.terminated == 1
    assert fleet.state(rid) == "terminated"
    assert host.domains == {}
    assert host.volumes == set()
    assert host.secrets == set()
    assert host.networks == set()
    with fleet.services.uow(readonly=True) as uow:
        keys = uow.keys.get(rid)
    assert keys is not None
    assert keys.destroyed_at is not None, "the enclave's key was crypto-erased"
    with pytest.raises(NotFoundError):
        fleet.services.keys.secrets(rid)
    # Sanitized in the same pass, after being marked dirty by the teardown.
    assert set(fleet.gpu_states().values()) == {"free"}
    actions = fleet.actions("enclave:")
    assert actions == [
        "enclave:place",
        *["enclave:provision"] * len(PROVISION_STEPS),
        "enclave:running",
        "enclave:terminate",
        *["enclave:teardown"] * len(TEARDOWN_STEPS),
        "enclave:terminated",
    ]
    assert "key:destroy" in fleet.actions("key:")


def test_classified_and_civilian_never_share_a_host(new_fleet: Callable[..., Fleet]):
    # Only one host, accredited SECRET: a civilian request must not land on it, even though
    # UNCLASSIFIED is dominated, once it carries classified enclaves; and vice versa.
    fleet = new_fleet(
        hosts={
            "big": (
                "mem://big",
                {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]},
                MemoryHost(gpus=gpus(8)),
            )
        },
    )
    secret = fleet.request(gpus=1)
    fleet.settle()
    assert fleet.state(secret) == "running"
    civilian = fleet.request(UNCLASSIFIED, gpus=1, civilian=True)
    fleet.settle()
    assert fleet.state(civilian) == "approved", "it waits rather than share the host"
    preview = fleet.services.enclaves.preview(ctx(OFFICER_1), civilian)
    assert preview.host is None
    assert "dedicated per label" in preview.reasons["big"]
    # Once the SECRET enclave is gone the host is free for the civilian one.
    fleet.services.enclaves.terminate(ctx(OFFICER_1), secret, "make room")
    fleet.settle()
    assert fleet.state(civilian) == "running"
    placements = fleet.actions("enclave:place")
    assert len(placements) == 3  # placed, refused once (not repeated every pass), placed


def test_unplaceable_request_explains_every_host(new_fleet: Callable[..., Fleet]):
    secret = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}
    fleet = new_fleet(
        hosts={
            "secret-1": ("mem://secret-1", secret, MemoryHost(gpus=gpus(1))),
            "civil-1": ("mem://civil-1", UNCLASSIFIED, MemoryHost(gpus=gpus(4, 0x3A))),
        },
    )
    rid = fleet.request(gpus=2)
    fleet.settle()
    assert fleet.state(rid) == "approved"
    preview = fleet.services.enclaves.preview(ctx(OFFICER_2), rid)
    assert "only 1 free" in preview.reasons["secret-1"]
    assert "accreditation" in preview.reasons["civil-1"]


@pytest.mark.parametrize("step", PROVISION_STEPS)
@pytest.mark.parametrize("when", ["before-record", "after-record"])
def test_a_crash_at_any_provisioning_step_converges(
    new_fleet: Callable[..., Fleet], step: ProvisionStep, when: str
):
    fleet = new_fleet()
    rid = fleet.request(gpus=2)
    if when == "before-record":
        # The hypervisor did the step; the worker died before recording it.
        fleet.hypervisor.after_effect[f"provision:{step}"] = Crash()
        crashing = fleet.reconciler("doomed")
    else:

        def die(done: str) -> None:
            if done == f"provision:{step}":
                raise Crash

        crashing = fleet.reconciler("doomed", after_step=die)
    with pytest.raises(Crash):
        crashing.run_once()
    assert fleet.state(rid) == "provisioning"
    # The dead worker's claim holds until it lapses; then another worker resumes.
    fleet.settle("survivor")
    assert fleet.state(rid) == "provisioning", "claim not lapsed yet"
    fleet.clock.advance(minutes=2)
    fleet.settle("survivor")
    assert fleet.state(rid) == "running"
    host = fleet.hypervisor.hosts["mem://secret-1"]
    assert list(host.domains) == [rid], "exactly one domain, no orphan"
    assert sorted(fleet.gpu_states().values()).count("allocated") == 2
    # Then it comes down cleanly too.
    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "")
    fleet.settle("survivor")
    assert fleet.state(rid) == "terminated"
    assert host.domains == {}
    assert set(fleet.gpu_states().values()) == {"free"}


@pytest.mark.parametrize("step", HOST_TEARDOWN_STEPS)
def test_a_crash_at_any_teardown_step_converges(
    new_fleet: Callable[..., Fleet], step: TeardownStep
):
    fleet = new_fleet()
    rid = fleet.request(gpus=1)
    fleet.settle()
    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "")
    fleet.hypervisor.after_effect[f"teardown:{step}"] = Crash()
    with pytest.raises(Crash):
        fleet.reconciler("doomed").run_once()
    assert fleet.state(rid) == "terminating"
    fleet.clock.advance(minutes=2)
    fleet.settle("survivor")
    assert fleet.state(rid) == "terminated"
    host = fleet.hypervisor.hosts["mem://secret-1"]
    assert (host.domains, host.volumes, host.secrets, host.networks) == ({}, set(), set(), set())
    assert set(fleet.gpu_states().values()) == {"free"}


@pytest.mark.parametrize("step", PROVISION_STEPS)
def test_a_terminate_racing_provisioning_ends_consistent(
    new_fleet: Callable[..., Fleet], step: ProvisionStep
):
    fleet = new_fleet()
    rid = fleet.request(gpus=1)

    def terminate_now(done: str) -> None:
        if done == f"provision:{step}":
            fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "changed my mind")

    fleet.reconciler("racer", after_step=terminate_now).run_once()
    fleet.settle("racer")
    assert fleet.state(rid) == "terminated"
    host = fleet.hypervisor.hosts["mem://secret-1"]
    assert (host.domains, host.volumes, host.secrets, host.networks) == ({}, set(), set(), set())
    assert set(fleet.gpu_states().values()) == {"free"}
    assert "enclave:running" not in fleet.actions("enclave:")


def test_hypervisor_down_is_retried_with_backoff_then_succeeds(fleet: Fleet):
    rid = fleet.request(gpus=1)
    fleet.hypervisor.failures[f"provision:{ProvisionStep.DEFINE}"] = DependencyUnavailableError(
        "down", dependency="hypervisor"
    )
    report = fleet.reconciler().run_once()
    assert report.failed == 1
    assert fleet.state(rid) == "provisioning"
    with fleet.services.uow(readonly=True) as uow:
        enclave = uow.enclaves.get(rid)
    assert enclave is not None
    assert enclave.attempts == 1
    assert enclave.step == "provision:network"
    assert enclave.retry_at is not None
    fleet.settle()
    assert fleet.state(rid) == "provisioning", "backing off"
    fleet.clock.advance(seconds=3)
    fleet.settle()
    assert fleet.state(rid) == "running"
    failures = [e for e in fleet.events("enclave:provision") if e.outcome == "error"]
    assert len(failures) == 1
    assert failures[0].details["step"] == "define"
    assert failures[0].reason == "down"


def test_a_refused_step_fails_the_enclave_and_tears_it_down(fleet: Fleet):
    rid = fleet.request(gpus=1)
    fleet.hypervisor.failures[f"provision:{ProvisionStep.START}"] = ConflictError(
        reason="GPU in use elsewhere"
    )
    fleet.settle()
    assert fleet.state(rid) == "terminated"
    with fleet.services.uow(readonly=True) as uow:
        request = uow.requests.get(rid)
    assert request is not None
    assert "GPU in use elsewhere" in request.reason
    assert fleet.hypervisor.hosts["mem://secret-1"].domains == {}
    assert set(fleet.gpu_states().values()) == {"free"}
    assert "enclave:fail" in fleet.actions("enclave:")


def test_an_unknown_domain_quarantines_its_host_and_is_never_adopted(fleet: Fleet):
    stranger = uuid.uuid4()
    host = fleet.hypervisor.hosts["mem://civil-1"]
    host.domains[stranger] = ("intruder", True, None, frozenset())
    report = fleet.reconciler().run_once()
    assert any("intruder" in line for line in report.drift)
    civil = fleet.services.hosts.get(ctx(OFFICER_1), "civil-1")
    assert civil.state == "quarantined"
    assert "intruder" in civil.reason
    assert stranger in host.domains, "reported and quarantined, not destroyed or adopted"
    # Nothing is placed on a quarantined host (the empty SECRET host may take it instead).
    rid = fleet.request(UNCLASSIFIED, gpus=1, civilian=True)
    fleet.settle()
    view = fleet.services.enclaves.get(ctx(OFFICER_1), rid)
    assert view.enclave is not None
    assert view.enclave.host == "secret-1"


def test_a_foreign_domain_is_not_work_the_loop_waits_and_reports_it_once(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
):
    """A real hypervisor with one unrelated VM made the worker spin: drift counted as work."""
    host = fleet.hypervisor.hosts["mem://civil-1"]
    host.domains[uuid.uuid4()] = ("intruder", True, None, frozenset())
    reports: list[str] = []
    loop = PassLoop(fleet.reconciler(), interval_s=0, on_report=lambda r: reports.extend(r.drift))
    with caplog.at_level(logging.WARNING, logger="sovereign"):
        loop.run(max_passes=20)
    assert loop.passes == 20
    assert loop.waits == 20, "every pass that only found known drift waits the interval"
    assert [line for line in reports if "intruder" in line] == [
        "domain intruder on host civil-1 has no enclave record; not adopted"
    ]
    drift_lines = [r.getMessage() for r in caplog.records if "drift on host" in r.getMessage()]
    assert len(drift_lines) == 1
    assert fleet.actions("host:drift") == ["host:drift"]
    assert fleet.actions("host:quarantine") == ["host:quarantine"], "quarantined once"
    event = fleet.events("host:drift")[0]
    assert event.target == "host/civil-1"
    assert event.details["domain"] == "intruder"
    assert event.details["state"] == "new"


def test_drift_is_reported_again_when_it_changes_or_clears(fleet: Fleet):
    host = fleet.hypervisor.hosts["mem://civil-1"]
    first, second = uuid.uuid4(), uuid.uuid4()
    host.domains[first] = ("intruder", True, None, frozenset())
    reconciler = fleet.reconciler()
    assert len(reconciler.run_once().drift) == 1
    assert reconciler.run_once().drift == []

    host.domains[second] = ("intruder-2", False, None, frozenset())
    report = reconciler.run_once()
    assert report.drift == ["domain intruder-2 on host civil-1 has no enclave record; not adopted"]
    assert not report.busy
    assert reconciler.run_once().drift == []

    del host.domains[first]
    assert reconciler.run_once().drift == [
        "cleared: domain intruder on host civil-1 has no enclave record; not adopted"
    ]
    assert reconciler.run_once().drift == []
    states = [(e.details["domain"], e.details["state"]) for e in fleet.events("host:drift")]
    assert states == [("intruder", "new"), ("intruder-2", "new"), ("intruder", "cleared")]

    # It comes back at once, and goes, and comes back...: a condition that keeps changing is
    # reported at most three times a minute, then in the state it settled in.
    host.domains[first] = ("intruder", True, None, frozenset())
    assert len(reconciler.run_once().drift) == 1
    for present in (False, True, False):
        if present:
            host.domains[first] = ("intruder", True, None, frozenset())
        else:
            del host.domains[first]
        assert reconciler.run_once().drift == []
    assert first not in host.domains
    fleet.clock.advance(seconds=61)
    assert reconciler.run_once().drift == [
        "cleared: domain intruder on host civil-1 has no enclave record; not adopted "
        "[2 earlier changes not reported]"
    ]
    assert reconciler.run_once().drift == []
    assert len(fleet.actions("host:drift")) == 5


def test_drift_that_could_not_be_audited_is_reported_again(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
):
    host = fleet.hypervisor.hosts["mem://civil-1"]
    host.domains[uuid.uuid4()] = ("intruder", True, None, frozenset())
    reconciler = fleet.reconciler()

    def audit_down(*_args: Any) -> None:
        raise AuditUnavailableError

    with monkeypatch.context() as patched:
        patched.setattr(reconciler._recorder, "append", audit_down)
        with pytest.raises(AuditUnavailableError):
            reconciler.run_once()
    assert fleet.actions("host:drift") == []
    assert len(reconciler.run_once().drift) == 1
    assert fleet.actions("host:drift") == ["host:drift"]


def test_an_unreachable_host_is_logged_once_a_minute_not_every_pass(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
):
    fleet.hypervisor.hosts["mem://civil-1"].reachable = False
    reconciler = fleet.reconciler()
    with caplog.at_level(logging.WARNING, logger="sovereign"):
        for _ in range(10):
            reconciler.run_once()
        fleet.clock.advance(seconds=61)
        reconciler.run_once()
    skipped = [r.getMessage() for r in caplog.records if "drift check of civil-1" in r.getMessage()]
    assert len(skipped) == 2
    assert skipped[1].endswith("(9 like lines held back)")


def test_a_running_enclave_whose_domain_vanished_is_failed_and_cleaned_up(fleet: Fleet):
    rid = fleet.request(gpus=1)
    fleet.settle()
    host = fleet.hypervisor.hosts["mem://secret-1"]
    del host.domains[rid]  # someone ran virsh undefine behind our back
    fleet.settle()
    assert fleet.state(rid) == "terminated"
    assert host.volumes == set()
    assert set(fleet.gpu_states().values()) == {"free"}


def test_expired_leases_are_torn_down(fleet: Fleet):
    rid = fleet.request(gpus=1, lease_hours=1)
    fleet.settle()
    assert fleet.state(rid) == "running"
    fleet.clock.advance(hours=1, seconds=1)
    fleet.settle()
    assert fleet.state(rid) == "terminated"
    assert "enclave:expire" in fleet.actions("enclave:")


def test_two_workers_never_do_the_same_step_twice(new_fleet: Callable[..., Fleet]):
    fleet = new_fleet()
    ids = [fleet.request(gpus=1) for _ in range(6)]
    workers = [fleet.reconciler(f"w{i}") for i in range(3)]
    errors: list[Exception] = []

    def run(worker: Any) -> None:
        try:
            for _ in range(5):
                worker.run_once()
        except Exception as e:  # noqa: BLE001 - reported below, in the test thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(w,)) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    fleet.settle()
    assert {fleet.state(i) for i in ids} == {"running"}
    calls = [(step, enclave) for _uri, step, enclave in fleet.hypervisor.calls]
    assert len(calls) == len(set(calls)) == 6 * len(PROVISION_STEPS)
    assert list(fleet.gpu_states().values()).count("allocated") == 6


def test_kill_switch_on_a_classified_label_needs_two_officers(fleet: Fleet):
    a, b = fleet.request(gpus=1), fleet.request(gpus=1)
    civilian = fleet.request(UNCLASSIFIED, gpus=1, civilian=True)
    fleet.settle()
    label = fleet.services.scheme.parse(SECRET_NATO)
    result = fleet.services.enclaves.kill_switch(
        ctx(OFFICER_1), label=label, tenant=None, reason="compromise suspected"
    )
    assert result.ended == ()
    assert result.proposal is not None
    assert result.proposal.status() == "1 of 2 officers: officer-1"
    assert fleet.state(a) == "running"
    with pytest.raises(PolicyDeniedError, match="two-person"):
        fleet.services.actions.confirm(ctx(OFFICER_1), result.proposal.id)
    # Proposals are visible to officers only: anyone else is told it does not exist.
    with pytest.raises(NotFoundError):
        fleet.services.actions.confirm(ctx(ANALYST_DEFENCE), result.proposal.id)
    done = fleet.services.actions.confirm(ctx(OFFICER_2), result.proposal.id)
    assert done.state is ActionState.CONFIRMED
    assert {fleet.state(a), fleet.state(b)} == {"terminating"}
    # Keys are erased at once, before the domains are even gone.
    for rid in (a, b):
        with pytest.raises(NotFoundError):
            fleet.services.keys.secrets(rid)
    fleet.settle()
    assert {fleet.state(a), fleet.state(b)} == {"terminated"}
    assert fleet.state(civilian) == "running"
    with pytest.raises(ConflictError):
        fleet.services.actions.confirm(ctx(OFFICER_2), result.proposal.id)


def test_kill_switch_below_the_two_person_level_acts_at_once(fleet: Fleet):
    rid = fleet.request(UNCLASSIFIED, gpus=1, civilian=True)
    fleet.settle()
    result = fleet.services.enclaves.kill_switch(
        ctx(OFFICER_1), label=None, tenant="research", reason="tenant offboarded"
    )
    assert result.ended == (rid,)
    assert result.proposal is None
    fleet.settle()
    assert fleet.state(rid) == "terminated"
    with pytest.raises(PolicyDeniedError):
        fleet.services.enclaves.kill_switch(
            ctx(ANALYST_RESEARCH), label=None, tenant="research", reason="x"
        )


def test_terminate_rules(fleet: Fleet):
    rid = fleet.request(gpus=1)
    with pytest.raises(NotFoundError):
        fleet.services.enclaves.terminate(ctx(ANALYST_RESEARCH), rid, "not mine, not visible")
    # Approved but not yet placed: cancelled at once, its keys erased.
    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "changed my mind")
    assert fleet.state(rid) == "cancelled"
    with pytest.raises(NotFoundError):
        fleet.services.keys.secrets(rid)
    with pytest.raises(InvalidTransitionError):
        fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "again")
    fleet.settle()
    assert fleet.state(rid) == "cancelled", "the reconciler never places a cancelled request"


def test_accreditation_changes_take_two_officers(fleet: Fleet):
    secret = fleet.services.scheme.parse(
        {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}
    )
    proposal = fleet.services.hosts.propose_accreditation(
        ctx(OFFICER_1), "civil-1", secret, "hall B accredited"
    )
    assert fleet.services.hosts.get(ctx(OFFICER_1), "civil-1").accreditation.level == (
        "UNCLASSIFIED"
    )
    with pytest.raises(PolicyDeniedError):
        fleet.services.actions.confirm(ctx(OFFICER_1), proposal.id)
    fleet.services.actions.confirm(ctx(OFFICER_2), proposal.id)
    assert fleet.services.hosts.get(ctx(OFFICER_1), "civil-1").accreditation == secret


def test_accreditation_cannot_drop_below_what_the_host_carries(fleet: Fleet):
    rid = fleet.request(gpus=1)
    fleet.settle()
    assert fleet.state(rid) == "running"
    low = fleet.services.scheme.parse(UNCLASSIFIED)
    proposal = fleet.services.hosts.propose_accreditation(
        ctx(OFFICER_1), "secret-1", low, "downgrade"
    )
    with pytest.raises(ConflictError, match="terminate them first"):
        fleet.services.actions.confirm(ctx(OFFICER_2), proposal.id)


def test_gpu_last_label_is_hidden_from_readers_not_cleared(fleet: Fleet):
    rid = fleet.request(gpus=1)
    fleet.settle()
    fleet.services.enclaves.terminate(ctx(OFFICER_1), rid, "")
    fleet.settle()
    from tests.support.factories import OFFICER_LOW

    seen = fleet.services.hosts.gpus(ctx(OFFICER_1), "secret-1")
    assert any(g.last_label is not None for g in seen)
    hidden = fleet.services.hosts.gpus(ctx(OFFICER_LOW), "secret-1")
    assert all(g.last_label is None for g in hidden)
    with pytest.raises(PolicyDeniedError):
        fleet.services.hosts.list(ctx(ANALYST_DEFENCE))
