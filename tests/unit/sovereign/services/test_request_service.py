from __future__ import annotations

import pytest

from audit import Outcome
from sovereign.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import RequestState
from sovereign.errors import (
    AuditUnavailableError,
    ConflictError,
    InvalidInputError,
    LabelError,
    NotFoundError,
    PolicyDeniedError,
    QuotaExceededError,
)
from sovereign.services.auditing import AuditReadService, EventFilter
from sovereign.services.ports import RequestFilter
from sovereign.services.requests import RequestService
from tests.support.factories import (
    ANALYST_DEFENCE,
    ANALYST_RESEARCH,
    AUDITOR,
    DEFENCE,
    OFFICER_1,
    OFFICER_2,
    OFFICER_LOW,
    OPERATOR,
    RESEARCH,
    ctx,
    draft,
    image,
)


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.tenants = {"defence": DEFENCE, "research": RESEARCH}
    s.images = {i.name: i for i in (image(), image("civ", "UNCLASSIFIED", ()))}
    return s


@pytest.fixture
def service(store: MemoryStore) -> RequestService:
    return RequestService(
        MemoryUnitOfWorkFactory(store), AccessPolicy(LabelScheme()), gpu_models=["H100-SXM5-80GB"]
    )


def actions(store: MemoryStore) -> list[tuple[str, str, str]]:
    return [(e.event.action, e.event.outcome.value, e.event.actor) for e in store.audit.events]


def test_two_officer_flow_is_recorded(service: RequestService, store: MemoryStore):
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    assert r.state is RequestState.PENDING
    r = service.approve(ctx(OFFICER_1), r.id, "ok")
    assert r.state is RequestState.PENDING
    assert r.approvers == [OFFICER_1.subject]
    r = service.approve(ctx(OFFICER_2), r.id, "")
    assert r.state is RequestState.APPROVED
    assert actions(store) == [
        ("request:create", "allow", "user:analyst-defence"),
        ("request:approve", "allow", "user:officer-1"),
        ("request:approve", "allow", "user:officer-2"),
    ]
    last = store.audit.events[-1].event
    assert last.details["from"] == "pending" and last.details["to"] == "approved"
    assert last.label == {"level": "SECRET", "compartments": ["NATO"]}
    assert last.target == f"request/{r.id}"


def test_denied_attempts_are_recorded_with_reason(service: RequestService, store: MemoryStore):
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    with pytest.raises(PolicyDeniedError):
        service.approve(ctx(ANALYST_DEFENCE), r.id, "")
    with pytest.raises(NotFoundError):
        service.approve(ctx(OFFICER_LOW), r.id, "")
    with pytest.raises(PolicyDeniedError, match="clearance"):
        service.create(ctx(ANALYST_RESEARCH), draft(tenant="research"))
    with pytest.raises(InvalidInputError, match="unknown tenant 'defence'"):
        service.create(ctx(ANALYST_RESEARCH), draft())  # not a member: not known to them
    denied = [e.event for e in store.audit.events if e.event.outcome is Outcome.DENY]
    assert [(e.action, e.details["error"]) for e in denied] == [
        ("request:approve", "forbidden"),
        ("request:approve", "not-found"),
        ("request:create", "forbidden"),
        ("request:create", "invalid-input"),
    ]
    assert "only security officers" in denied[0].reason
    assert service.get(ctx(OFFICER_1), r.id).approvals == []


def test_requester_who_is_also_officer_cannot_approve(service: RequestService):
    from sovereign.domain.identity import Role
    from tests.support.factories import principal

    dual = principal(
        "dual", Role.ANALYST, Role.OFFICER, compartments=("NATO",), tenants=("defence",)
    )
    r = service.create(ctx(dual), draft())
    with pytest.raises(PolicyDeniedError, match="own requests"):
        service.approve(ctx(dual), r.id, "")


def test_invisible_request_is_not_found_not_forbidden(service: RequestService):
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    for who in (ANALYST_RESEARCH, OFFICER_LOW):
        with pytest.raises(NotFoundError):
            service.get(ctx(who), r.id)
    assert service.get(ctx(AUDITOR), r.id).id == r.id


def test_reject_needs_reason_and_is_final(service: RequestService):
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    with pytest.raises(InvalidInputError):
        service.reject(ctx(OFFICER_1), r.id, "  ")
    r = service.reject(ctx(OFFICER_1), r.id, "not justified")
    assert r.state is RequestState.REJECTED
    with pytest.raises(ConflictError):
        service.approve(ctx(OFFICER_2), r.id, "")


def test_cancel_only_by_requester_while_pending(service: RequestService):
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    with pytest.raises(PolicyDeniedError):
        service.cancel(ctx(OFFICER_1), r.id)
    r = service.cancel(ctx(ANALYST_DEFENCE), r.id, "changed my mind")
    assert r.state is RequestState.CANCELLED and r.reason == "changed my mind"
    with pytest.raises(ConflictError):
        service.cancel(ctx(ANALYST_DEFENCE), r.id)


def test_quota_at_request_and_at_approval(service: RequestService, store: MemoryStore):
    # The defence quota holds 8 GPUs: two approved 4-GPU requests fill it.
    first = service.create(ctx(ANALYST_DEFENCE), draft(gpus=4))
    second = service.create(ctx(ANALYST_DEFENCE), draft(gpus=4))
    third = service.create(ctx(ANALYST_DEFENCE), draft(gpus=4))  # pending does not count
    for r in (first, second):
        service.approve(ctx(OFFICER_1), r.id, "")
        service.approve(ctx(OFFICER_2), r.id, "")
    with pytest.raises(QuotaExceededError):
        service.approve(ctx(OFFICER_1), third.id, "")
    with pytest.raises(QuotaExceededError):
        service.create(ctx(ANALYST_DEFENCE), draft(gpus=1))
    assert service.get(ctx(OFFICER_1), third.id).state is RequestState.PENDING


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"tenant": "nope"}, InvalidInputError),
        ({"image": "nope"}, InvalidInputError),
        ({"level": "COSMIC"}, LabelError),
        ({"compartments": ("MARS",)}, LabelError),
    ],
)
def test_bad_references_are_input_errors(service: RequestService, kwargs, error):
    with pytest.raises(error):
        service.create(ctx(ANALYST_DEFENCE), draft(**kwargs))


def test_gpu_model_rules(service: RequestService):
    d = draft()
    with pytest.raises(InvalidInputError, match="unknown gpu_model"):
        service.create(ctx(ANALYST_DEFENCE), type(d)(**{**vars(d), "gpu_model": "A100"}))
    with pytest.raises(InvalidInputError, match="required when gpus > 0"):
        service.create(ctx(ANALYST_DEFENCE), type(d)(**{**vars(d), "gpu_model": None}))


def test_audit_failure_fails_the_change(service: RequestService, store: MemoryStore):
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    store.audit.fail = True
    with pytest.raises(AuditUnavailableError):
        service.approve(ctx(OFFICER_1), r.id, "")
    with pytest.raises(AuditUnavailableError):
        service.create(ctx(ANALYST_DEFENCE), draft())
    store.audit.fail = False
    assert service.get(ctx(OFFICER_1), r.id).approvals == []
    assert len(store.requests) == 1
    assert actions(store) == [("request:create", "allow", "user:analyst-defence")]


def test_listing_filters_by_tenant_and_clearance(service: RequestService):
    secret = service.create(ctx(ANALYST_DEFENCE), draft())
    civil = service.create(
        ctx(ANALYST_RESEARCH),
        draft(tenant="research", level="UNCLASSIFIED", compartments=(), image="civ"),
    )
    ids = lambda who: {r.id for r in service.list(ctx(who), RequestFilter()).items}  # noqa: E731
    assert ids(ANALYST_DEFENCE) == {secret.id}
    assert ids(ANALYST_RESEARCH) == {civil.id}
    assert ids(OFFICER_1) == {secret.id, civil.id}
    assert ids(OFFICER_LOW) == {civil.id}
    with pytest.raises(PolicyDeniedError):
        service.list(ctx(OPERATOR), RequestFilter())


def test_audit_read_filters_by_role_and_clearance(service: RequestService, store: MemoryStore):
    service.create(ctx(ANALYST_DEFENCE), draft())
    reader = AuditReadService(MemoryUnitOfWorkFactory(store), AccessPolicy(LabelScheme()))
    assert [e.event.action for e in reader.events(ctx(AUDITOR), EventFilter()).items] == [
        "request:create"
    ]
    assert reader.events(ctx(OFFICER_LOW), EventFilter()).items == []
    with pytest.raises(PolicyDeniedError):
        reader.events(ctx(ANALYST_DEFENCE), EventFilter())
    # ... and that denial was itself recorded.
    assert store.audit.events[-1].event.action == "audit:read"
