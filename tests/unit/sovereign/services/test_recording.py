"""The audited decision: allowed in the change's transaction, refusals and failures in their own."""

from __future__ import annotations

from dataclasses import replace

import pytest

from audit import Outcome
from audit.event import MAX_ACTOR, MAX_TARGET
from sovereign.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from sovereign.domain.labels import LabelScheme
from sovereign.errors import (
    AuditUnavailableError,
    ConcurrentUpdateError,
    DependencyUnavailableError,
    InvalidInputError,
    NotFoundError,
)
from sovereign.services.recording import Recorder
from tests.support.factories import OFFICER_1, ctx

SECRET = LabelScheme().parse("SECRET")


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def recorder(store: MemoryStore) -> Recorder:
    return Recorder(MemoryUnitOfWorkFactory(store))


def _recorded(store: MemoryStore) -> list[tuple[str, str, Outcome, object, object]]:
    """(action, target, outcome, label, error code) of each event written."""
    return [
        (
            e.event.action,
            e.event.target,
            e.event.outcome,
            e.event.label,
            e.event.details.get("error"),
        )
        for e in store.audit.events
    ]


def test_an_allowed_decision_commits_its_event_with_the_change(
    store: MemoryStore, recorder: Recorder
):
    with (
        recorder.decision(ctx(OFFICER_1), "host:add", "host/h1") as decision,
        MemoryUnitOfWorkFactory(store)() as uow,
    ):
        decision.allow(uow, label=SECRET, details={"site": "es-mad"})
        assert store.audit.events == [], "nothing is written before the commit"
        uow.commit()
    assert _recorded(store) == [("host:add", "host/h1", Outcome.ALLOW, SECRET.to_dict(), None)]
    assert store.audit.events[0].event.details["site"] == "es-mad"


def test_an_allow_in_a_unit_that_rolls_back_leaves_no_event(store: MemoryStore, recorder: Recorder):
    with (
        pytest.raises(RuntimeError),
        recorder.decision(ctx(OFFICER_1), "x:y", "t") as decision,
        MemoryUnitOfWorkFactory(store)() as uow,
    ):
        decision.allow(uow)
        raise RuntimeError("not a decision: a bug, passed on unrecorded")
    assert store.audit.events == []


def test_a_refusal_is_recorded_alone_with_the_label_set_once_known(
    store: MemoryStore, recorder: Recorder
):
    with (
        pytest.raises(NotFoundError),
        recorder.decision(ctx(OFFICER_1), "request:approve", "request/r1") as decision,
    ):
        decision.label = SECRET
        raise NotFoundError(kind="request", ident="r1")
    assert _recorded(store) == [
        ("request:approve", "request/r1", Outcome.DENY, SECRET.to_dict(), "not-found")
    ]


def test_a_dependency_failure_is_recorded_as_an_error(store: MemoryStore, recorder: Recorder):
    with (
        pytest.raises(DependencyUnavailableError),
        recorder.decision(ctx(OFFICER_1), "key:rotate", "request/r1"),
    ):
        raise DependencyUnavailableError(dependency="vault")
    assert _recorded(store) == [
        ("key:rotate", "request/r1", Outcome.ERROR, None, "dependency-unavailable")
    ]


def test_the_target_may_change_once_the_object_is_named(store: MemoryStore, recorder: Recorder):
    with (
        pytest.raises(NotFoundError),
        recorder.decision(ctx(OFFICER_1), "host:accredit", "proposal") as decision,
    ):
        decision.target = "action/a1"
        raise NotFoundError(kind="host", ident="h1")
    assert _recorded(store)[0][:2] == ("host:accredit", "action/a1")


@pytest.mark.parametrize(
    "error",
    [AuditUnavailableError(), ConcurrentUpdateError(kind="request", ident="r1")],
    ids=["audit-unavailable", "unrecorded"],
)
def test_an_audit_failure_and_the_unrecorded_errors_pass_untouched(
    store: MemoryStore, recorder: Recorder, error: Exception
):
    with (
        pytest.raises(type(error)) as raised,
        recorder.decision(
            ctx(OFFICER_1), "request:approve", "request/r1", unrecorded=(ConcurrentUpdateError,)
        ),
    ):
        raise error
    assert raised.value is error
    assert store.audit.events == []


def test_a_refusal_that_cannot_be_recorded_fails_closed(store: MemoryStore, recorder: Recorder):
    store.audit.fail = True
    with (
        pytest.raises(AuditUnavailableError),
        recorder.decision(ctx(OFFICER_1), "host:add", "host/h1"),
    ):
        raise NotFoundError(kind="host", ident="h1")


def test_an_actor_or_target_wider_than_the_log_columns_is_refused(recorder: Recorder):
    # It would fail the sequencer's copy of its batch on PostgreSQL, on every run.
    recorder.event(ctx(OFFICER_1), "host:read", "h" * MAX_TARGET, Outcome.DENY)
    with pytest.raises(InvalidInputError, match="target is longer than 255"):
        recorder.event(ctx(OFFICER_1), "host:read", "h" * (MAX_TARGET + 1), Outcome.DENY)
    long_name = replace(OFFICER_1, username="u" * MAX_ACTOR)
    with pytest.raises(InvalidInputError, match="actor is longer than 255"):
        recorder.event(ctx(long_name), "host:read", "host/h", Outcome.DENY)
