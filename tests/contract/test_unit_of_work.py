"""The unit-of-work port, held to one behaviour on every backend: in-memory, SQLite, PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from audit import AuditEvent, AuditQuery, Outcome
from sovereign.adapters.database import SqlUnitOfWorkFactory, create_engine
from sovereign.adapters.memory import MemoryUnitOfWorkFactory
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import Approval, Decision, EnclaveRequest, RequestState
from sovereign.domain.tenants import Resources
from sovereign.errors import ConcurrentUpdateError, InvalidInputError
from sovereign.services.ports import RequestFilter, UnitOfWorkFactory
from tests.conftest import make_database
from tests.support.audit import sequence
from tests.support.factories import (
    ANALYST_DEFENCE,
    ANALYST_RESEARCH,
    AUDITOR,
    DEFENCE,
    OFFICER_LOW,
    RESEARCH,
    image,
)

SCHEME = LabelScheme()
POLICY = AccessPolicy(SCHEME)
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def uow(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UnitOfWorkFactory]:
    engine = None
    if request.param == "memory":
        factory: UnitOfWorkFactory = MemoryUnitOfWorkFactory()
    else:
        engine = create_engine(make_database(request, request.param, tmp_path))
        factory = SqlUnitOfWorkFactory(engine, SCHEME)
    with factory() as u:
        u.tenants.add(DEFENCE)
        u.tenants.add(RESEARCH)
        u.images.add(image())
        u.images.add(image("civ", "UNCLASSIFIED", ()))
        u.commit()
    yield factory
    if engine is not None:
        engine.dispose()


def make(
    i: int = 0, tenant: str = "defence", level: str = "SECRET", comps=("NATO",)
) -> EnclaveRequest:
    stamp = T0 + timedelta(seconds=i)
    return EnclaveRequest(
        id=uuid.uuid4(),
        tenant=tenant,
        requester="sub-analyst",
        requester_name="analyst",
        label=SCHEME.label(level, comps),
        resources=Resources(4, 8192, 1, 10),
        gpu_model="H100-SXM5-80GB",
        image="debian-12-cuda" if tenant == "defence" else "civ",
        purpose=f"purpose {i}",
        lease_hours=8,
        state=RequestState.PENDING,
        created_at=stamp,
        updated_at=stamp,
    )


def test_tenants_and_images_round_trip(uow: UnitOfWorkFactory):
    with uow() as u:
        assert u.tenants.get("defence") == replace(DEFENCE, id=u.tenants.get("defence").id)
        assert [t.name for t in u.tenants.list()] == ["defence", "research"]
        assert u.tenants.get("nope") is None
        assert u.images.get("civ").max_label == SCHEME.label("UNCLASSIFIED")
        assert [i.name for i in u.images.list()] == ["civ", "debian-12-cuda"]


def test_request_round_trip_with_approvals(uow: UnitOfWorkFactory):
    r = make()
    with uow() as u:
        u.requests.add(r)
        u.commit()
    with uow() as u:
        loaded = u.requests.get(r.id, for_update=True)
        assert loaded == r
        loaded.record(Approval("sub-o1", "officer-1", Decision.APPROVE, "ok", T0))
        u.requests.update(loaded)
        u.commit()
    with uow() as u:
        again = u.requests.get(r.id)
        assert again.approvals == [Approval("sub-o1", "officer-1", Decision.APPROVE, "ok", T0)]
        assert again.version == r.version + 1
        assert again.label == SCHEME.label("SECRET", ["NATO"])


def test_uncommitted_work_is_rolled_back_with_its_audit_events(uow: UnitOfWorkFactory):
    r = make()
    event = AuditEvent(actor="a", action="request:create", target="t", outcome=Outcome.ALLOW)
    with uow() as u:
        u.requests.add(r)
        u.audit.append([event])
    with pytest.raises(RuntimeError), uow() as u:
        u.requests.add(make(1))
        u.audit.append([event])
        raise RuntimeError("boom")
    with uow() as u:
        assert u.requests.get(r.id) is None
        assert u.audit.query(AuditQuery()) == []


def test_stale_update_is_refused(uow: UnitOfWorkFactory):
    r = make()
    with uow() as u:
        u.requests.add(r)
        u.commit()
    with uow() as u:
        first = u.requests.get(r.id)
    with uow() as u:
        second = u.requests.get(r.id)
        second.transition(RequestState.CANCELLED, T0)
        u.requests.update(second)
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        first.transition(RequestState.APPROVED, T0)
        u.requests.update(first)
        u.commit()
    with uow() as u:
        assert u.requests.get(r.id).state is RequestState.CANCELLED


def test_listing_filters_pages_and_orders(uow: UnitOfWorkFactory):
    made = [make(i) for i in range(7)] + [
        make(10, tenant="research", level="UNCLASSIFIED", comps=()),
        make(11, comps=("NATO", "EU")),
    ]
    with uow() as u:
        for r in made:
            u.requests.add(r)
        u.commit()
    with uow() as u:
        # The analyst holds NATO only: the NATO+EU request is hidden, and so is research.
        page = u.requests.list(POLICY.request_visibility(ANALYST_DEFENCE), RequestFilter(limit=3))
        seen = [r.id for r in page.items]
        while page.next_cursor:
            page = u.requests.list(
                POLICY.request_visibility(ANALYST_DEFENCE),
                RequestFilter(limit=3, cursor=page.next_cursor),
            )
            seen += [r.id for r in page.items]
        assert seen == [r.id for r in reversed(made[:7])]
        everything = u.requests.list(POLICY.request_visibility(AUDITOR), RequestFilter(limit=50))
        assert {r.id for r in everything.items} == {r.id for r in made}
        assert everything.next_cursor is None
        low = u.requests.list(POLICY.request_visibility(OFFICER_LOW), RequestFilter())
        assert [r.tenant for r in low.items] == ["research"]
        research = u.requests.list(POLICY.request_visibility(ANALYST_RESEARCH), RequestFilter())
        assert [r.id for r in research.items] == [made[7].id]
        by_state = u.requests.list(
            POLICY.request_visibility(AUDITOR), RequestFilter(state=RequestState.APPROVED)
        )
        assert by_state.items == []
        by_tenant = u.requests.list(
            POLICY.request_visibility(AUDITOR), RequestFilter(tenant="research")
        )
        assert len(by_tenant.items) == 1


def test_bad_cursor_is_an_input_error(uow: UnitOfWorkFactory):
    with pytest.raises(InvalidInputError), uow() as u:
        u.requests.list(POLICY.request_visibility(AUDITOR), RequestFilter(cursor="garbage!"))


def test_committed_usage_counts_committed_states_only(uow: UnitOfWorkFactory):
    states = [
        RequestState.PENDING,
        RequestState.APPROVED,
        RequestState.RUNNING,
        RequestState.REJECTED,
    ]
    with uow() as u:
        for i, state in enumerate(states):
            r = make(i)
            r.state = state
            u.requests.add(r)
        u.commit()
    with uow() as u:
        assert u.requests.committed_usage("defence") == Resources(8, 16384, 2, 20)
        assert u.requests.committed_usage("research") == Resources()


def test_audit_store_filters(uow: UnitOfWorkFactory):
    secret = {"level": "SECRET", "compartments": ["NATO"]}
    events = [
        AuditEvent(
            actor="user:a",
            action="request:create",
            target="request/1",
            outcome=Outcome.ALLOW,
            label=secret,
            time=T0,
        ),
        AuditEvent(
            actor="user:b",
            action="request:approve",
            target="request/1",
            outcome=Outcome.DENY,
            time=T0 + timedelta(minutes=1),
        ),
        AuditEvent(
            actor="user:a",
            action="request:cancel",
            target="request/2",
            outcome=Outcome.ALLOW,
            label={"level": "UNCLASSIFIED", "compartments": []},
            time=T0 + timedelta(minutes=2),
        ),
    ]
    with uow() as u:
        u.audit.append(events)
        u.commit()
    sequence(uow)
    with uow() as u:
        q = u.audit.query
        assert [s.event.action for s in q(AuditQuery())] == [
            "request:cancel",
            "request:approve",
            "request:create",
        ]
        assert [s.event.id for s in q(AuditQuery(actor="user:a"))] == [events[2].id, events[0].id]
        assert [
            s.event.id for s in q(AuditQuery(target="request/1", action="request:approve"))
        ] == [events[1].id]
        assert [
            s.event.id
            for s in q(
                AuditQuery(since=T0 + timedelta(seconds=30), until=T0 + timedelta(minutes=2))
            )
        ] == [events[1].id]
        no_nato = q(AuditQuery(levels=SCHEME.levels, compartments=frozenset()))
        assert {s.event.id for s in no_nato} == {events[1].id, events[2].id}
        low = q(AuditQuery(levels=("UNCLASSIFIED",), compartments=frozenset({"NATO"})))
        assert {s.event.id for s in low} == {events[1].id, events[2].id}
        newest = q(AuditQuery(limit=1))
        older = q(AuditQuery(before_seq=newest[0].seq))
        assert [s.event.id for s in older] == [events[1].id, events[0].id]
        assert q(AuditQuery())[-1].event == events[0]
