"""The fleet's repositories (hosts, GPUs, enclaves, two-person actions), held to one behaviour on
every backend: in-memory, SQLite, PostgreSQL.

SQLite takes the write lock when a unit begins (``BEGIN IMMEDIATE``), so two writing units
cannot overlap in one thread there; the tests that interleave two open units run on the
backends that allow it, and the threaded race runs everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sovereign.adapters.database import SqlUnitOfWorkFactory, create_engine
from sovereign.adapters.memory import MemoryUnitOfWorkFactory
from sovereign.domain.actions import ActionKind, ActionState, DualAction
from sovereign.domain.fleet import Enclave, Gpu, Host, domain_name
from sovereign.domain.labels import LabelScheme
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.domain.tenants import Resources
from sovereign.errors import ConcurrentUpdateError
from sovereign.services.ports import UnitOfWork, UnitOfWorkFactory
from tests.conftest import make_database
from tests.support.factories import DEFENCE, RESEARCH, image
from tests.support.fleet import gpus as discovered_gpus

SCHEME = LabelScheme()
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET_NATO = SCHEME.label("SECRET", ["NATO"])
SECRET_ALL = SCHEME.label("SECRET", ["CRYPTO", "EU", "NATO"])
WORK = ["provisioning", "terminating", "expired", "failed"]

MEMORY, SQLITE = "memory", "sqlite"
POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)


def _factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UnitOfWorkFactory]:
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
        u.commit()
    yield factory
    if engine is not None:
        engine.dispose()


@pytest.fixture(params=[MEMORY, SQLITE, POSTGRES])
def uow(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UnitOfWorkFactory]:
    """Every backend, seeded with tenants, an image and host ``alpha``."""
    yield from _factory(request, tmp_path)


@pytest.fixture(params=[MEMORY, POSTGRES])
def overlapping(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UnitOfWorkFactory]:
    """The backends on which two writing units may be open at once in one thread."""
    yield from _factory(request, tmp_path)


# -- builders ---------------------------------------------------------------------------------


def host(name: str, *, state: Any = "active", reason: str = "", uri: str = "") -> Host:
    return Host(
        id=uuid.uuid4(),
        name=name,
        uri=uri or f"qemu+tls://{name}.example/system",
        site=f"site-{name}",
        accreditation=SECRET_ALL,
        domain_type="kvm",
        vcpus=128,
        memory_mib=1_048_576,
        created_at=T0,
        updated_at=T0 + timedelta(minutes=1),
        state=state,
        reason=reason,
    )


def gpu(on: str = "alpha", index: int = 0, **changes: Any) -> Gpu:
    found = discovered_gpus(index + 1)[index]
    made = Gpu(
        host=on,
        address=found.address,
        model=found.model,
        numa_node=found.numa_node,
        iommu_group=found.iommu_group,
        group_members=found.group_members,
        updated_at=T0,
    )
    return replace(made, **changes)


def enclave_request(u: UnitOfWork, state: RequestState = RequestState.PROVISIONING) -> uuid.UUID:
    """Store a request in ``state`` (an enclave's row references its request)."""
    made = EnclaveRequest(
        id=uuid.uuid4(),
        tenant="defence",
        requester="sub-analyst",
        requester_name="analyst",
        label=SECRET_NATO,
        resources=Resources(4, 8192, 1, 10),
        gpu_model="H100-SXM5-80GB",
        image="debian-12-cuda",
        purpose="contract test",
        lease_hours=8,
        state=state,
        created_at=T0,
        updated_at=T0,
    )
    u.requests.add(made)
    return made.id


def enclave(enclave_id: uuid.UUID, *, at: int = 0, on: str = "alpha", **changes: Any) -> Enclave:
    stamp = T0 + timedelta(seconds=at)
    made = Enclave(
        id=enclave_id,
        host=on,
        gpus=("0000:18:00.0", "0000:19:00.0"),
        domain_name=domain_name(enclave_id),
        label=SECRET_NATO,
        classified=True,
        tenant="defence",
        vcpus=4,
        memory_mib=8192,
        disk_gib=10,
        lease_expires_at=T0 + timedelta(hours=8),
        created_at=stamp,
        updated_at=stamp,
    )
    return replace(made, **changes)


def action(at: int = 0, **changes: Any) -> DualAction:
    made = DualAction(
        id=uuid.uuid4(),
        kind=ActionKind.ACCREDIT_HOST,
        params={"host": "alpha", "label": {"level": "SECRET", "compartments": ["EU", "NATO"]}},
        label=SECRET_ALL,
        reason="new accreditation",
        proposer="sub-officer-1",
        proposer_name="officer-1",
        created_at=T0 + timedelta(seconds=at),
        expires_at=T0 + timedelta(hours=1),
    )
    return replace(made, **changes)


def _aware(*values: datetime | None) -> bool:
    return all(v is None or v.utcoffset() is not None for v in values)


# -- hosts ------------------------------------------------------------------------------------


def test_hosts_round_trip_by_name(uow: UnitOfWorkFactory):
    drained = replace(host("charlie", state="draining", reason="firmware update"), version=4)
    drained.accreditation = SCHEME.label("CONFIDENTIAL")
    with uow() as u:
        u.hosts.add(drained)
        u.hosts.add(host("bravo"))
        u.commit()
    with uow() as u:
        loaded = u.hosts.get("charlie", for_update=True)
        assert loaded == drained
        assert _aware(loaded.created_at, loaded.updated_at)
        assert [h.name for h in u.hosts.list()] == ["alpha", "bravo", "charlie"]
        assert u.hosts.get("nobody") is None
        u.hosts.lock_all()


def test_host_names_and_uris_are_unique(uow: UnitOfWorkFactory):
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.hosts.add(host("alpha", uri="qemu+tls://elsewhere/system"))
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.hosts.add(host("delta", uri="qemu+tls://alpha.example/system"))
        u.commit()
    with uow() as u:
        assert [h.name for h in u.hosts.list()] == ["alpha"]


MACHINE = "5d3c9a4e-7f21-4c8b-9e0a-1b2c3d4e5f60"


def test_one_hypervisor_identity_has_one_host_record(uow: UnitOfWorkFactory):
    """Issue 10, item 2: the host UUID libvirt reports is unique, whatever the URI."""
    with uow() as u:
        u.hosts.add(replace(host("bravo"), host_uuid=MACHINE, hostname="node1"))
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.hosts.add(replace(host("delta"), host_uuid=MACHINE, hostname="node1"))
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        alpha = u.hosts.get("alpha")
        assert alpha is not None
        alpha.host_uuid = MACHINE
        u.hosts.update(alpha)
        u.commit()
    with uow() as u:
        bravo = u.hosts.get("bravo")
        assert bravo is not None
        assert (bravo.host_uuid, bravo.hostname) == (MACHINE, "node1")
        assert [h.name for h in u.hosts.list()] == ["alpha", "bravo"]


def test_no_two_gpu_records_are_one_device(uow: UnitOfWorkFactory):
    """(host identity, PCI address) and the GPU's own UUID are unique across host records."""
    with uow() as u:
        u.hosts.add(replace(host("bravo"), host_uuid=MACHINE))
        u.hosts.add(host("charlie"))
        u.gpus.add(gpu("bravo", host_uuid=MACHINE, uuid="GPU-1"))
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.gpus.add(gpu("charlie", host_uuid=MACHINE))
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.gpus.add(gpu("charlie", 1, uuid="GPU-1"))
        u.commit()
    with uow() as u:
        # Records without an identity (before migration 0006) do not collide with each other.
        u.gpus.add(gpu("charlie"))
        u.gpus.add(gpu("alpha"))
        u.commit()
        stored = [g for g in u.gpus.list() if g.host == "bravo"]
    assert [(g.host_uuid, g.uuid) for g in stored] == [(MACHINE, "GPU-1")]


def test_host_update_bumps_the_version_and_refuses_a_stale_one(uow: UnitOfWorkFactory):
    with uow() as u:
        first = u.hosts.get("alpha")
    with uow() as u:
        second = u.hosts.get("alpha")
        second.state, second.reason = "quarantined", "unknown domain"
        second.updated_at = T0 + timedelta(hours=1)
        u.hosts.update(second)
        assert second.version == 2
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        first.state = "draining"
        u.hosts.update(first)
        u.commit()
    with uow() as u:
        stored = u.hosts.get("alpha")
        assert stored == second
        assert (stored.state, stored.version, stored.created_at) == ("quarantined", 2, T0)


def test_overlapping_host_updates_one_wins(overlapping: UnitOfWorkFactory):
    with pytest.raises(ConcurrentUpdateError), overlapping() as late:
        stale = late.hosts.get("alpha")
        with overlapping() as early:
            current = early.hosts.get("alpha")
            current.state = "draining"
            early.hosts.update(current)
            early.commit()
        stale.state = "quarantined"
        late.hosts.update(stale)
        late.commit()
    with overlapping() as u:
        assert (u.hosts.get("alpha").state, u.hosts.get("alpha").version) == ("draining", 2)


def test_overlapping_adds_of_one_host_or_gpu_one_wins(overlapping: UnitOfWorkFactory):
    for add in (
        lambda u: u.hosts.add(host("delta")),
        lambda u: u.gpus.add(gpu()),
    ):
        with pytest.raises(ConcurrentUpdateError), overlapping() as late:
            with overlapping() as early:
                add(early)
                early.commit()
            add(late)
            late.commit()
    with overlapping() as u:
        assert [h.name for h in u.hosts.list()] == ["alpha", "delta"]
        assert len(u.gpus.list()) == 1


# -- GPUs -------------------------------------------------------------------------------------


def test_gpus_round_trip_with_every_field(uow: UnitOfWorkFactory):
    holder = uuid.uuid4()
    used = gpu(
        index=1,
        numa_node=None,
        iommu_group=None,
        group_members=("0000:19:00.0", "0000:19:00.1"),
        state="dirty",
        enclave_id=holder,
        last_label=SECRET_NATO,
        last_tenant="defence",
        updated_at=T0 + timedelta(minutes=5),
    )
    fresh = gpu(index=0)
    with uow() as u:
        u.hosts.add(host("bravo"))
        u.gpus.add(used)
        u.gpus.add(gpu("bravo", 0))
        u.gpus.add(fresh)
        u.commit()
    with uow() as u:
        assert u.gpus.list("alpha") == [fresh, used]
        assert [(g.host, g.address) for g in u.gpus.list()] == [
            ("alpha", "0000:18:00.0"),
            ("alpha", "0000:19:00.0"),
            ("bravo", "0000:18:00.0"),
        ]
        assert u.gpus.list("nobody") == []
        assert u.gpus.for_enclave(holder) == [used]
        assert u.gpus.for_enclave(uuid.uuid4()) == []
        loaded = u.gpus.list("alpha")[0]
        assert (loaded.last_label, loaded.last_tenant, loaded.enclave_id) == (None, None, None)
        assert _aware(*(g.updated_at for g in u.gpus.list()))


def test_a_gpu_is_recorded_once(uow: UnitOfWorkFactory):
    with uow() as u:
        u.gpus.add(gpu())
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.gpus.add(gpu(model="A100"))
        u.commit()
    with uow() as u:
        assert [g.model for g in u.gpus.list()] == ["H100-SXM5-80GB"]


def test_gpu_compare_and_set_refuses_a_stale_expected_state(uow: UnitOfWorkFactory):
    with uow() as u:
        u.gpus.add(gpu())
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        taken = u.gpus.list()[0]
        taken.move("allocated", T0)
        taken.enclave_id = uuid.uuid4()
        u.gpus.update(taken, "dirty")
    with uow() as u:
        g = u.gpus.list()[0]
        g.move("quarantined", T0 + timedelta(minutes=1))
        u.gpus.update(g, "free")
        # The unit reads its own write: the stored state is now "quarantined".
        assert u.gpus.list()[0].state == "quarantined"
        with pytest.raises(ConcurrentUpdateError):
            u.gpus.update(g, "free")
        u.commit()
    with uow() as u:
        assert u.gpus.list()[0] == replace(gpu(), state="quarantined", updated_at=g.updated_at)


def test_two_units_racing_to_allocate_a_gpu_one_wins(uow: UnitOfWorkFactory):
    with uow() as u:
        u.gpus.add(gpu())
        u.commit()
    # Both read the GPU free, then each tries to take it in its own unit, at the same time.
    with uow(readonly=True) as u:
        seen = u.gpus.list()[0]
    contenders = [uuid.uuid4() for _ in range(4)]
    barrier = threading.Barrier(len(contenders))
    outcome: dict[uuid.UUID, str] = {}

    def allocate(enclave_id: uuid.UUID) -> None:
        mine = replace(seen)
        mine.move("allocated", T0)
        mine.enclave_id = enclave_id
        barrier.wait()
        try:
            with uow() as u:
                u.gpus.update(mine, "free")
                u.commit()
            outcome[enclave_id] = "won"
        except ConcurrentUpdateError:
            outcome[enclave_id] = "lost"

    threads = [threading.Thread(target=allocate, args=(c,)) for c in contenders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    winners = [c for c in contenders if outcome.get(c) == "won"]
    assert len(winners) == 1
    assert sorted(outcome.values()) == ["lost"] * (len(contenders) - 1) + ["won"]
    with uow() as u:
        stored = u.gpus.list()[0]
        assert (stored.state, stored.enclave_id) == ("allocated", winners[0])


def test_overlapping_units_allocating_a_gpu_one_wins(overlapping: UnitOfWorkFactory):
    with overlapping() as u:
        u.gpus.add(gpu())
        u.commit()
    first, second = uuid.uuid4(), uuid.uuid4()
    with pytest.raises(ConcurrentUpdateError), overlapping() as late:
        mine = late.gpus.list()[0]
        assert mine.state == "free"
        with overlapping() as early:
            theirs = early.gpus.list()[0]
            theirs.move("allocated", T0)
            theirs.enclave_id = first
            early.gpus.update(theirs, "free")
            early.commit()
        mine.move("allocated", T0)
        mine.enclave_id = second
        late.gpus.update(mine, "free")
        late.commit()
    with overlapping() as u:
        assert u.gpus.for_enclave(first)[0].state == "allocated"
        assert u.gpus.for_enclave(second) == []


def test_an_allocated_gpu_names_its_enclave(uow: UnitOfWorkFactory):
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.gpus.add(gpu(state="allocated"))
        u.commit()
    with uow() as u:
        assert u.gpus.list() == []
        u.gpus.add(gpu())
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        g = u.gpus.list()[0]
        g.move("allocated", T0)
        u.gpus.update(g, "free")
        u.commit()
    with uow() as u:
        assert u.gpus.list()[0].state == "free"


def test_gpu_rows_need_a_known_host_and_a_timestamp(uow: UnitOfWorkFactory):
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.gpus.add(gpu("nobody"))
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.gpus.add(gpu(updated_at=None))
        u.commit()
    with uow() as u:
        assert u.gpus.list() == []


# -- enclaves ---------------------------------------------------------------------------------


def test_enclaves_round_trip_and_list_oldest_first(uow: UnitOfWorkFactory):
    with uow() as u:
        u.hosts.add(host("bravo"))
        ids = [enclave_request(u) for _ in range(4)]
        full = enclave(
            ids[0],
            at=10,
            gpus=("0000:18:00.0",),
            classified=False,
            label=SCHEME.label("UNCLASSIFIED"),
            step="provision:volume",
            attempts=2,
            error="host unreachable",
            claimed_by="w1",
            claim_until=T0 + timedelta(minutes=1),
            retry_at=T0 + timedelta(seconds=30),
            version=7,
        )
        ended = enclave(ids[1], at=5, ended_at=T0 + timedelta(hours=1), gpus=())
        # Same creation time: the id breaks the tie.
        tied = sorted([enclave(ids[2], at=10, on="bravo"), enclave(ids[3], at=10)], key=_id)
        for e in (full, ended, *tied):
            u.enclaves.add(e)
        u.commit()
    with uow() as u:
        assert u.enclaves.get(full.id, for_update=True) == full
        assert u.enclaves.get(ended.id) == ended
        assert u.enclaves.get(uuid.uuid4()) is None
        loaded = u.enclaves.get(full.id)
        assert _aware(loaded.created_at, loaded.claim_until, loaded.retry_at, loaded.updated_at)
        assert u.enclaves.get(ended.id).gpus == ()
        assert [e.id for e in u.enclaves.list()] == [e.id for e in sorted([full, *tied], key=_key)]
        assert [e.id for e in u.enclaves.list(open_only=False)] == [
            ended.id,
            *[e.id for e in sorted([full, *tied], key=_key)],
        ]
        assert [e.id for e in u.enclaves.list(host="bravo")] == [
            e.id for e in tied if e.host == "bravo"
        ]
        assert u.enclaves.list(open_only=False, host="nobody") == []


def _id(e: Enclave) -> uuid.UUID:
    return e.id


def _key(e: Enclave) -> tuple[datetime, uuid.UUID]:
    return (e.created_at, e.id)


def test_enclave_errors_are_cut_to_the_column(uow: UnitOfWorkFactory):
    with uow() as u:
        e = enclave(enclave_request(u), error="x" * 2500)
        u.enclaves.add(e)
        u.commit()
    with uow() as u:
        assert u.enclaves.get(e.id).error == "x" * 2000


def test_enclave_update_bumps_the_version_and_refuses_a_stale_one(uow: UnitOfWorkFactory):
    with uow() as u:
        e = enclave(enclave_request(u))
        u.enclaves.add(e)
        u.commit()
    with uow() as u:
        stale = u.enclaves.get(e.id)
    with uow() as u:
        current = u.enclaves.get(e.id)
        current.claim("w1", T0, timedelta(minutes=1))
        current.created_at = T0 + timedelta(days=1)  # not a column that changes
        u.enclaves.update(current)
        assert current.version == 2
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        stale.claim("w2", T0, timedelta(minutes=1))
        u.enclaves.update(stale)
        u.commit()
    with uow() as u:
        stored = u.enclaves.get(e.id)
        assert (stored.claimed_by, stored.version, stored.created_at) == ("w1", 2, T0)


def test_enclave_rows_reference_their_request_and_host(uow: UnitOfWorkFactory):
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.enclaves.add(enclave(uuid.uuid4()))
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.enclaves.add(enclave(enclave_request(u), on="nobody"))
        u.commit()
    with uow() as u:
        assert u.enclaves.list(open_only=False) == []


def test_claimable_filters_and_orders(uow: UnitOfWorkFactory):
    now = T0 + timedelta(minutes=10)
    later, earlier = now + timedelta(minutes=1), now - timedelta(minutes=1)
    cases: dict[str, tuple[RequestState, dict[str, Any], bool]] = {
        # name: (request state, enclave fields, claimable by w1 now)
        "fresh": (RequestState.PROVISIONING, {"at": 5}, True),
        "terminating": (RequestState.TERMINATING, {"at": 3}, True),
        "expired": (RequestState.EXPIRED, {"at": 4}, True),
        "mine": (RequestState.FAILED, {"claimed_by": "w1", "claim_until": later}, True),
        "theirs": (RequestState.PROVISIONING, {"claimed_by": "w2", "claim_until": later}, False),
        "lapsed": (RequestState.PROVISIONING, {"claimed_by": "w2", "claim_until": now}, True),
        "no-until": (RequestState.PROVISIONING, {"claimed_by": "w2"}, False),
        "backoff": (RequestState.PROVISIONING, {"retry_at": later}, False),
        "backoff-mine": (
            RequestState.PROVISIONING,
            {"retry_at": later, "claimed_by": "w1", "claim_until": later},
            False,
        ),
        "retry-due": (RequestState.TERMINATING, {"retry_at": now, "at": 8}, True),
        "retry-past": (RequestState.PROVISIONING, {"retry_at": earlier, "at": 8}, True),
        "running": (RequestState.RUNNING, {}, False),
        "approved": (RequestState.APPROVED, {}, False),
        "ended": (RequestState.TERMINATING, {"ended_at": earlier}, False),
    }
    made: dict[str, Enclave] = {}
    with uow() as u:
        for name, (state, fields, _) in cases.items():
            at = fields.pop("at", 1)
            made[name] = enclave(enclave_request(u, state), at=at, **fields)
            u.enclaves.add(made[name])
        u.commit()
    expected = sorted(
        (made[name] for name, case in cases.items() if case[2]), key=lambda e: (e.updated_at, e.id)
    )
    with uow() as u:
        found = u.enclaves.claimable("w1", now, 100, states=WORK)
        assert [e.id for e in found] == [e.id for e in expected]
        assert found[0] == expected[0]
        assert [e.id for e in u.enclaves.claimable("w1", now, 3, states=WORK)] == [
            e.id for e in expected[:3]
        ]
        only = u.enclaves.claimable("w1", now, 100, states=["terminating"])
        assert {e.id for e in only} == {made["terminating"].id, made["retry-due"].id}
        assert u.enclaves.claimable("w1", now, 100, states=[]) == []
        # Another worker sees its own claim and the unclaimed ones, not w1's.
        theirs = {e.id for e in u.enclaves.claimable("w2", now, 100, states=WORK)}
        assert made["theirs"].id in theirs
        assert made["no-until"].id in theirs
        assert made["mine"].id not in theirs


def test_claimable_sees_the_units_own_request_changes(uow: UnitOfWorkFactory):
    with uow() as u:
        rid = enclave_request(u, RequestState.RUNNING)
        u.enclaves.add(enclave(rid))
        u.commit()
    with uow() as u:
        assert u.enclaves.claimable("w1", T0, 10, states=WORK) == []
        request = u.requests.get(rid)
        request.transition(RequestState.TERMINATING, T0)
        u.requests.update(request)
        assert [e.id for e in u.enclaves.claimable("w1", T0, 10, states=WORK)] == [rid]


def test_overlapping_claims_one_wins(overlapping: UnitOfWorkFactory):
    with overlapping() as u:
        e = enclave(enclave_request(u))
        u.enclaves.add(e)
        u.commit()
    committed: list[str] = []

    def claim(u: UnitOfWork, found: list[Enclave], worker: str) -> None:
        for each in found:
            each.claim(worker, T0, timedelta(minutes=1))
            u.enclaves.update(each)
        u.commit()
        if found:
            committed.append(worker)

    # PostgreSQL hands the row locked by the first unit to no one else (SKIP LOCKED), so the
    # first one wins; the memory backend hands it to both and refuses the later commit.
    with contextlib.suppress(ConcurrentUpdateError), overlapping() as first:
        mine = first.enclaves.claimable("w2", T0, 10, states=WORK)
        with overlapping() as second:
            claim(second, second.enclaves.claimable("w1", T0, 10, states=WORK), "w1")
        claim(first, mine, "w2")
    assert len(committed) == 1
    with overlapping() as u:
        assert u.enclaves.get(e.id).claimed_by == committed[0]


# -- two-person actions -----------------------------------------------------------------------


def test_actions_round_trip_and_list_newest_first(uow: UnitOfWorkFactory):
    old, new = action(at=0), action(at=60, kind=ActionKind.KILL_SWITCH, params={"ids": []})
    tied = sorted([action(at=30), action(at=30)], key=lambda a: a.id)
    decided = action(
        at=90,
        state=ActionState.CONFIRMED,
        confirmer="sub-officer-2",
        confirmer_name="officer-2",
        decided_at=T0 + timedelta(minutes=2),
        version=3,
    )
    with uow() as u:
        for a in (old, *tied, new, decided):
            u.actions.add(a)
        u.commit()
    with uow() as u:
        assert u.actions.get(old.id, for_update=True) == old
        assert u.actions.get(decided.id) == decided
        assert u.actions.get(uuid.uuid4()) is None
        loaded = u.actions.get(decided.id)
        assert _aware(loaded.created_at, loaded.expires_at, loaded.decided_at)
        # Newest first; equal times by id (ascending), as the SQL query orders them.
        assert [a.id for a in u.actions.list()] == [
            decided.id,
            new.id,
            *[a.id for a in tied],
            old.id,
        ]
        pending = u.actions.list(ActionState.PENDING)
        assert [a.id for a in pending] == [new.id, *[a.id for a in tied], old.id]
        assert [a.id for a in u.actions.list(ActionState.CONFIRMED)] == [decided.id]
        assert u.actions.list(ActionState.EXPIRED) == []


def test_action_params_are_stored_as_json_and_notes_are_not_stored(uow: UnitOfWorkFactory):
    a = action(params={"ids": ("a", "b"), "nested": {"n": 1}}, notes={"ended": ["x"]})
    with uow() as u:
        u.actions.add(a)
        u.commit()
    with uow() as u:
        loaded = u.actions.get(a.id)
        assert loaded.params == {"ids": ["a", "b"], "nested": {"n": 1}}
        assert loaded.notes == {}


def test_action_update_stores_the_decision_only(uow: UnitOfWorkFactory):
    a = action()
    with uow() as u:
        u.actions.add(a)
        u.commit()
    with uow() as u:
        stale = u.actions.get(a.id)
    with uow() as u:
        current = u.actions.get(a.id)
        current.state = ActionState.CONFIRMED
        current.confirmer, current.confirmer_name = "sub-officer-2", "officer-2"
        current.decided_at = T0 + timedelta(minutes=1)
        current.reason = "rewritten"  # fixed once proposed
        current.notes = {"done": True}
        u.actions.update(current)
        assert current.version == 2
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        stale.state = ActionState.EXPIRED
        u.actions.update(stale)
        u.commit()
    with uow() as u:
        stored = u.actions.get(a.id)
        assert stored == replace(
            a,
            state=ActionState.CONFIRMED,
            confirmer="sub-officer-2",
            confirmer_name="officer-2",
            decided_at=T0 + timedelta(minutes=1),
            version=2,
        )


def test_an_action_needs_two_people(uow: UnitOfWorkFactory):
    a = action()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.actions.add(replace(a, confirmer=a.proposer, state=ActionState.CONFIRMED))
        u.commit()
    with uow() as u:
        u.actions.add(a)
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        same = u.actions.get(a.id)
        same.state, same.confirmer, same.confirmer_name = ActionState.CONFIRMED, a.proposer, "x"
        u.actions.update(same)
        u.commit()
    with uow() as u:
        assert u.actions.get(a.id) == a


# -- the unit of work -------------------------------------------------------------------------


def _fill(u: UnitOfWork) -> tuple[uuid.UUID, uuid.UUID]:
    """A host, a GPU, an enclave and an action; returns the enclave's and the action's id."""
    u.hosts.add(host("bravo"))
    u.gpus.add(gpu("bravo"))
    e = enclave(enclave_request(u), on="bravo")
    u.enclaves.add(e)
    a = action()
    u.actions.add(a)
    return e.id, a.id


def _snapshot(u: UnitOfWork) -> tuple[Any, ...]:
    # A deep copy: the point is to compare with what callers may have changed since.
    return copy.deepcopy(
        (u.hosts.list(), u.gpus.list(), u.enclaves.list(open_only=False), u.actions.list())
    )


def test_work_not_committed_is_rolled_back(uow: UnitOfWorkFactory):
    with uow() as u:
        _fill(u)
    with pytest.raises(RuntimeError), uow() as u:
        _fill(u)
        raise RuntimeError("boom")
    with uow() as u:
        assert _snapshot(u) == ([u.hosts.get("alpha")], [], [], [])
        enclave_id, action_id = _fill(u)
        u.commit()
    with uow() as u:
        before = _snapshot(u)
    with uow() as u:
        changed_host = u.hosts.get("bravo")
        changed_host.state = "draining"
        u.hosts.update(changed_host)
        changed_gpu = u.gpus.list("bravo")[0]
        changed_gpu.move("quarantined", T0)
        u.gpus.update(changed_gpu, "free")
        changed_enclave = u.enclaves.get(enclave_id)
        changed_enclave.ended_at = T0
        u.enclaves.update(changed_enclave)
        changed_action = u.actions.get(action_id)
        changed_action.state = ActionState.EXPIRED
        u.actions.update(changed_action)
        assert _snapshot(u) != before
    with uow() as u:
        assert _snapshot(u) == before


def test_objects_handed_in_are_not_kept(uow: UnitOfWorkFactory):
    added, found = host("bravo"), gpu()
    with uow() as u:
        u.hosts.add(added)
        u.gpus.add(found)
        added.state, found.model = "quarantined", "changed after add"
        assert (u.hosts.get("bravo").state, u.gpus.list()[0].model) == ("active", gpu().model)
        found.model = gpu().model
        found.move("quarantined", T0)
        u.gpus.update(found, "free")
        found.state = "dirty"
        assert u.gpus.list()[0].state == "quarantined"
        u.commit()
    with uow() as u:
        assert u.hosts.get("bravo").state == "active"
        assert u.gpus.list()[0].state == "quarantined"


def test_callers_mutating_objects_do_not_change_the_store(uow: UnitOfWorkFactory):
    with uow() as u:
        enclave_id, action_id = _fill(u)
        u.commit()
    with uow() as u:
        before = _snapshot(u)
        for mutate in _mutations(u, enclave_id, action_id):
            mutate()
        # Read again in the same unit: nothing was updated, nothing changed.
        assert _snapshot(u) == before
        u.commit()
    with uow() as u:
        assert _snapshot(u) == before


def _mutations(
    u: UnitOfWork, enclave_id: uuid.UUID, action_id: uuid.UUID
) -> list[Callable[[], None]]:
    h, g, e, a = (
        u.hosts.get("bravo"),
        u.gpus.list("bravo")[0],
        u.enclaves.get(enclave_id),
        u.actions.get(action_id),
    )
    listed_host, listed_enclave = u.hosts.list()[0], u.enclaves.list()[0]

    def host_state() -> None:
        h.state = "quarantined"
        listed_host.reason = "changed"

    def gpu_state() -> None:
        g.state = "dirty"
        u.gpus.for_enclave(enclave_id)  # a read in between must not publish anything

    def enclave_claim() -> None:
        e.claim("w9", T0, timedelta(hours=1))
        listed_enclave.error = "changed"

    def action_params() -> None:
        a.params["host"] = "elsewhere"
        a.state = ActionState.CONFIRMED

    return [host_state, gpu_state, enclave_claim, action_params]
