"""Races between officers on real databases with real concurrent connections.

Two officers approving at the same moment, or an approval racing a cancellation, must end in
one consistent state: the request row, its approvals and the audit log agree.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from audit import AuditQuery, Outcome
from sovereign.adapters.database import SqlUnitOfWorkFactory, create_engine
from sovereign.domain.identity import Role
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import RequestState
from sovereign.errors import ConflictError, QuotaExceededError, SovereignError
from sovereign.services.requests import RequestService
from tests.conftest import make_database
from tests.support.audit import sequence
from tests.support.factories import (
    ANALYST_DEFENCE,
    DEFENCE,
    OFFICER_1,
    OFFICER_2,
    ctx,
    draft,
    image,
    principal,
)

SCHEME = LabelScheme()
ROUNDS = 8
Service = tuple[RequestService, SqlUnitOfWorkFactory]


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Service]:
    engine = create_engine(make_database(request, request.param, tmp_path), pool_size=10)
    uow = SqlUnitOfWorkFactory(engine, SCHEME)
    with uow() as u:
        u.tenants.add(DEFENCE)
        u.images.add(image())
        u.commit()
    yield RequestService(uow, AccessPolicy(SCHEME), gpu_models=["H100-SXM5-80GB"]), uow
    engine.dispose()


def race(*calls: Callable[[], object]) -> list[object]:
    """Run ``calls`` at the same moment in threads; return each result or exception."""
    barrier = threading.Barrier(len(calls))
    results: list[object] = [None] * len(calls)

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = calls[i]()
        except SovereignError as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return results


def test_two_officers_approving_at_once(service):
    svc, uow = service
    for _ in range(ROUNDS):
        rid = svc.create(ctx(ANALYST_DEFENCE), draft(gpus=0)).id
        results = race(
            lambda rid=rid: svc.approve(ctx(OFFICER_1), rid, "a"),
            lambda rid=rid: svc.approve(ctx(OFFICER_2), rid, "b"),
        )
        assert not [x for x in results if isinstance(x, Exception)], results
        final = svc.get(ctx(OFFICER_1), rid)
        assert final.state is RequestState.APPROVED
        assert sorted(final.approvers) == sorted([OFFICER_1.subject, OFFICER_2.subject])
        sequence(uow)
        with uow() as u:
            events = u.audit.query(AuditQuery(target=f"request/{rid}", action="request:approve"))
        assert sorted(e.event.details["to"] for e in events) == ["approved", "pending"]


def test_same_officer_twice_at_once_counts_once(service):
    svc, _ = service
    officer_3 = principal("officer-3", Role.OFFICER)
    for _ in range(ROUNDS):
        rid = svc.create(ctx(ANALYST_DEFENCE), draft(gpus=0)).id
        results = race(
            lambda rid=rid: svc.approve(ctx(officer_3), rid, ""),
            lambda rid=rid: svc.approve(ctx(officer_3), rid, ""),
        )
        assert sum(isinstance(x, ConflictError) for x in results) == 1
        final = svc.get(ctx(OFFICER_1), rid)
        assert final.approvers == [officer_3.subject]
        assert final.state is RequestState.PENDING


def test_approve_racing_cancel_ends_consistent(service):
    svc, uow = service
    outcomes = set()
    for _ in range(ROUNDS):
        rid = svc.create(
            ctx(ANALYST_DEFENCE), draft(level="RESTRICTED", compartments=(), gpus=0)
        ).id
        approve, cancel = race(
            lambda rid=rid: svc.approve(ctx(OFFICER_1), rid, ""),
            lambda rid=rid: svc.cancel(ctx(ANALYST_DEFENCE), rid, "race"),
        )
        final = svc.get(ctx(OFFICER_1), rid)
        # Exactly one wins; the loser sees a conflict; the log records what happened.
        if final.state is RequestState.APPROVED:
            assert isinstance(cancel, ConflictError) and not isinstance(approve, Exception)
        else:
            assert final.state is RequestState.CANCELLED
            assert isinstance(approve, ConflictError) and not isinstance(cancel, Exception)
            assert final.approvals == []
        outcomes.add(final.state)
        sequence(uow)
        with uow() as u:
            allowed = [
                e.event.action
                for e in u.audit.query(AuditQuery(target=f"request/{rid}"))
                if e.event.outcome is Outcome.ALLOW
            ]
        assert sorted(allowed) == sorted(
            [
                "request:create",
                "request:approve" if final.state is RequestState.APPROVED else "request:cancel",
            ]
        )


def test_approvals_racing_for_the_last_quota_never_overrun_it(service):
    svc, uow = service
    # The defence quota holds 8 GPUs; two requests of 5 each fit alone, never together.
    for _ in range(ROUNDS // 2):
        ids = [
            svc.create(ctx(ANALYST_DEFENCE), draft(gpus=5, level="RESTRICTED", compartments=())).id
            for _ in range(2)
        ]
        results = race(*(lambda rid=rid: svc.approve(ctx(OFFICER_1), rid, "") for rid in ids))
        assert sum(isinstance(x, QuotaExceededError) for x in results) == 1, results
        with uow() as u:
            assert u.requests.committed_usage("defence").gpus == 5
        # Free the quota for the next round.
        approved = next(r for r in results if not isinstance(r, Exception))
        with uow() as u:
            r = u.requests.get(approved.id)
            r.state = RequestState.TERMINATED
            u.requests.update(r)
            u.commit()
