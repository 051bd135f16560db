"""The read model of the listings, held to the domain path and to the OpenAPI document.

The request and audit event listings answer from :mod:`sovereign.adapters.readmodel` (rows to
JSON, no domain objects, no pydantic per item). Here, over seeded rows that fill every optional
field (and leave each one empty somewhere), every page a caller can walk is compared with what
the domain path makes of the same rows (the repositories, then the API's ``*Out.of``
builders): the same items, fields and values, in the same order, with the same cursors, for
callers of every role and clearance, so visibility cannot drift. Each page is also validated
against the response schema the served OpenAPI document states (formats included).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from flask import Flask

from audit import AuditEvent, AuditQuery, Outcome
from sovereign.api import fleet_schemas, routing, schemas, v1
from sovereign.api.ops import TITLE, VERSION
from sovereign.api.routing import openapi
from sovereign.domain.fleet import Enclave
from sovereign.domain.identity import Role
from sovereign.domain.policy import Visibility
from sovereign.domain.requests import Approval, Decision, EnclaveRequest, RequestState
from sovereign.domain.tenants import Resources
from sovereign.errors import PolicyDeniedError
from sovereign.services.auditing import EventFilter
from sovereign.services.ports import RequestFilter
from sovereign.services.recording import CallContext
from sovereign.services.registry import Services
from tests.support.apps import make_app
from tests.support.factories import (
    ANALYST_DEFENCE,
    ANALYST_RESEARCH,
    AUDITOR,
    OFFICER_1,
    OFFICER_LOW,
    OPERATOR,
    SCHEME,
    ctx,
    principal,
)
from tests.support.fleet import make_fleet

BOTH_TENANTS = principal(
    "analyst-both", Role.ANALYST, compartments=("NATO", "EU"), tenants=("defence", "research")
)
OFFICER_EU = principal("officer-eu", Role.OFFICER, level="CONFIDENTIAL", compartments=("EU",))
READERS = [ANALYST_DEFENCE, ANALYST_RESEARCH, BOTH_TENANTS, OFFICER_1, OFFICER_LOW, OFFICER_EU]
AUDIT_READERS = [AUDITOR, OFFICER_1, OFFICER_LOW, OFFICER_EU]
#: Small pages, so that every caller walks several with the keyset cursor.
PAGE = 4
BASE = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)

#: (tenant, level, compartments) of the seeded requests, cycled.
LABELS = [
    ("defence", "SECRET", ("NATO",)),
    ("defence", "SECRET", ("CRYPTO", "NATO")),
    ("defence", "CONFIDENTIAL", ("EU",)),
    ("defence", "RESTRICTED", ()),
    ("research", "UNCLASSIFIED", ()),
    ("defence", "UNCLASSIFIED", ()),
    ("defence", "SECRET", ("EU", "NATO")),
]
STATES = [
    RequestState.PENDING,
    RequestState.APPROVED,
    RequestState.REJECTED,
    RequestState.RUNNING,
    RequestState.CANCELLED,
]


@pytest.fixture
def services(database_url: str, tmp_path: Path) -> Iterator[Services]:
    """The services on each real database (SQLite and PostgreSQL hand back different types:
    text or datetimes, hex or UUIDs), with the demo catalog."""
    fleet = make_fleet(database_url, folder=tmp_path)
    yield fleet.services
    fleet.services.close()


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The OpenAPI document the app serves (the contract tests hold the two equal)."""
    return openapi(v1.api, v1.PREFIX, title=TITLE, version=VERSION)


def _time(i: int) -> datetime:
    # Every fourth pair shares a timestamp (the id breaks the tie); some have no microseconds.
    seconds = (i // 2) * 60 if i % 4 < 2 else i * 60
    return BASE + timedelta(seconds=seconds, microseconds=0 if i % 3 == 0 else 1000 * i + 7)


def seed_requests(services: Services, count: int = 42) -> None:
    """Requests of every label, state and shape: GPUs or none, a residency narrowing or none,
    a pinned country or none, approvals (both decisions) or none, a reason or none."""
    with services.uow() as uow:
        for i in range(count):
            tenant, level, compartments = LABELS[i % len(LABELS)]
            state = STATES[i % len(STATES)]
            created = _time(i)
            decisions = [
                Approval(
                    officer=f"sub-officer-{k}",
                    officer_name=f"officer-{k}",
                    decision=Decision.REJECT
                    if state is RequestState.REJECTED
                    else Decision.APPROVE,
                    reason="" if k else "looks justified",
                    decided_at=created + timedelta(minutes=k + 1, microseconds=k * 17),
                )
                for k in range(i % 3 if state is not RequestState.CANCELLED else 0)
            ]
            uow.requests.add(
                EnclaveRequest(
                    id=uuid.uuid4(),
                    tenant=tenant,
                    requester=f"sub-analyst-{i % 2}",
                    requester_name=f"analyst-{i % 2}",
                    label=SCHEME.label(level, compartments),
                    resources=Resources(vcpus=4 + i, memory_mib=8192, gpus=i % 3, disk_gib=10),
                    gpu_model="H100-SXM5-80GB" if i % 3 else None,
                    image="debian-12-cuda" if tenant == "defence" else "ubuntu-24.04-research",
                    purpose=f'purpose {i}: \u00e9t\u00e9 "quoted" \\ </script>',
                    lease_hours=1 + i,
                    state=state,
                    created_at=created,
                    updated_at=created + timedelta(hours=1),
                    approvals=decisions,
                    reason="withdrawn" if state is RequestState.CANCELLED else "",
                    residency=("ES",) if i % 4 == 1 else None,
                    country="ES"
                    if state in (RequestState.APPROVED, RequestState.RUNNING)
                    else None,
                )
            )
        uow.commit()


def seed_enclaves(services: Services) -> None:
    """Enclaves for half the requests past approval: on either host, with GPUs or none, a step
    and an error or none, the country they were placed in or none recorded (an old one)."""
    with services.uow() as uow:
        placed = [
            r
            for r in uow.requests.list(
                Visibility.everything(services.policy.scheme), RequestFilter(limit=200)
            ).items
            if r.state in (RequestState.APPROVED, RequestState.RUNNING)
        ]
        for i, r in enumerate(placed[::2]):
            uow.enclaves.add(
                Enclave(
                    id=r.id,
                    host="secret-1" if r.tenant == "defence" else "civil-1",
                    gpus=("0000:3a:00.0", "0000:3b:00.0")[: i % 3],
                    domain_name=f"enc-{r.id.hex[:12]}",
                    label=r.label,
                    classified=r.tenant == "defence",
                    tenant=r.tenant,
                    vcpus=r.resources.vcpus,
                    memory_mib=r.resources.memory_mib,
                    disk_gib=r.resources.disk_gib,
                    lease_expires_at=r.created_at + timedelta(hours=r.lease_hours),
                    created_at=r.created_at,
                    updated_at=r.updated_at,
                    step="provision:boot" if i % 2 else "",
                    error="" if i % 2 else "host unreachable",
                    country="ES" if i % 2 else "",
                )
            )
        uow.commit()


def seed_events(services: Services, count: int = 40) -> None:
    """Sequenced events: labelled at every level and compartment set, and unlabelled; with and
    without details, reasons and microseconds."""
    events = []
    for i in range(count):
        _, level, compartments = LABELS[i % len(LABELS)]
        label = None if i % 5 == 0 else SCHEME.label(level, compartments).to_dict()
        events.append(
            AuditEvent(
                actor=f"user:analyst-{i % 3}",
                action=("request:create", "request:approve", "enclave:terminate")[i % 3],
                target=f"request/{uuid.UUID(int=i % 4)}",
                outcome=(Outcome.ALLOW, Outcome.DENY, Outcome.ERROR)[i % 3],
                reason="" if i % 2 else f"reason {i} \u00fc",
                label=label,
                request_id=f"req-{i}",
                source="127.0.0.1",
                details={} if i % 4 == 0 else {"n": i, "nested": {"list": [1, "two", None]}},
                time=BASE + timedelta(minutes=i, microseconds=0 if i % 2 else 123 * i),
            )
        )
    with services.uow() as uow:
        uow.audit.append(events)
        uow.commit()
    services.audit.log.sequence()


def validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator of the document's ``name`` schema, formats (date-time, uuid) checked."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def _read(page: Any) -> dict[str, Any]:
    """The read model's page as the API sends it, parsed."""
    found: dict[str, Any] = json.loads(
        routing.encode({"items": page.items, "next_cursor": page.next_cursor}).body
    )
    return found


def _times_are_rfc3339(node: Any) -> None:
    # jsonschema checks date-time only when rfc3339-validator is installed: say it here too.
    if isinstance(node, dict):
        for key, value in node.items():
            if key in {"created_at", "updated_at", "decided_at", "time", "lease_expires_at"}:
                assert value is None or schemas.RFC3339_DATE_TIME.fullmatch(value), value
            _times_are_rfc3339(value)
    elif isinstance(node, list):
        for value in node:
            _times_are_rfc3339(value)


def request_pages(
    services: Services, caller: CallContext, flt: RequestFilter
) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(read model page, domain page) pairs, walking the cursor to the end."""
    cursor = None
    while True:
        query = RequestFilter(state=flt.state, tenant=flt.tenant, limit=flt.limit, cursor=cursor)
        read = _read(services.requests.page(caller, query))
        page = services.requests.list(caller, query)
        residencies = services.requests.residency(page.items)
        domain = schemas.RequestPage(
            items=[
                schemas.RequestOut.of(r, services.policy, residency)
                for r, residency in zip(page.items, residencies, strict=True)
            ],
            next_cursor=page.next_cursor,
        ).model_dump(mode="json")
        yield read, domain
        cursor = domain["next_cursor"]
        if cursor is None:
            return


@pytest.mark.parametrize(
    "flt",
    [
        RequestFilter(limit=PAGE),
        RequestFilter(limit=PAGE, state=RequestState.PENDING),
        RequestFilter(limit=PAGE, tenant="defence"),
        RequestFilter(limit=PAGE, tenant="research", state=RequestState.APPROVED),
        RequestFilter(limit=200),
    ],
    ids=["all", "pending", "defence", "research-approved", "one-page"],
)
def test_request_pages_equal_the_domain_paths_for_every_caller(
    services: Services, document: dict[str, Any], flt: RequestFilter
):
    seed_requests(services)
    check = validator(document, "RequestPage")
    for who in READERS:
        caller = ctx(who)
        seen = 0
        for read, domain in request_pages(services, caller, flt):
            check.validate(read)
            _times_are_rfc3339(read)
            assert read == domain, who.username
            seen += len(read["items"])
        # Each caller sees exactly what the policy lets them see, read model and domain alike.
        expected = sum(
            1
            for i in range(42)
            if services.policy.can_see(caller.principal, _seeded(services, i))
            and (flt.state is None or STATES[i % len(STATES)] is flt.state)
            and (flt.tenant is None or LABELS[i % len(LABELS)][0] == flt.tenant)
        )
        assert seen == expected, who.username


def _seeded(services: Services, i: int) -> EnclaveRequest:
    """A stand-in for seeded request ``i`` with what visibility reads (tenant and label)."""
    tenant, level, compartments = LABELS[i % len(LABELS)]
    return EnclaveRequest(
        id=uuid.UUID(int=i),
        tenant=tenant,
        requester="",
        requester_name="",
        label=services.policy.scheme.label(level, compartments),
        resources=Resources(1, 1, 0, 1),
        gpu_model=None,
        image="",
        purpose="",
        lease_hours=1,
        state=STATES[i % len(STATES)],
        created_at=BASE,
        updated_at=BASE,
    )


@pytest.mark.parametrize(
    "flt",
    [RequestFilter(limit=PAGE), RequestFilter(limit=PAGE, tenant="defence")],
    ids=["all", "defence"],
)
def test_enclave_pages_equal_the_domain_paths_for_every_caller(
    services: Services, document: dict[str, Any], flt: RequestFilter
):
    seed_requests(services)
    seed_enclaves(services)
    check = validator(document, "EnclaveList")
    placed = 0
    for who in READERS:
        caller = ctx(who)
        cursor = None
        while True:
            query = RequestFilter(tenant=flt.tenant, limit=flt.limit, cursor=cursor)
            read = _read(services.enclaves.page(caller, query))
            page = services.enclaves.list(caller, query)
            domain = fleet_schemas.EnclaveList(
                items=[fleet_schemas.EnclaveOut.of(v, services.policy) for v in page.items],
                next_cursor=page.next_cursor,
            ).model_dump(mode="json")
            check.validate(read)
            _times_are_rfc3339(read)
            assert read == domain, who.username
            placed += sum(1 for item in read["items"] if item["host"] is not None)
            cursor = domain["next_cursor"]
            if cursor is None:
                break
    assert placed  # the seed's enclaves were compared, not only requests without one


def test_the_seed_fills_every_optional_field_and_leaves_each_empty_somewhere(
    services: Services,
):
    seed_requests(services)
    items = _read(services.requests.page(ctx(OFFICER_1), RequestFilter(limit=200)))["items"]
    for name in ("gpu_model", "country"):
        assert {item[name] is None for item in items} == {True, False}, name
    assert {bool(item["approvals"]) for item in items} == {True, False}
    assert {a["decision"] for item in items for a in item["approvals"]} == {"approve", "reject"}
    assert {bool(item["reason"]) for item in items} == {True, False}
    assert {len(item["residency"]) for item in items} == {1, 2}
    assert {item["label"]["compartments"] == [] for item in items} == {True, False}
    assert any(item["created_at"].endswith(":00Z") for item in items)  # no fraction
    assert any("." in item["created_at"] for item in items)


def test_a_refused_listing_is_recorded_as_the_domain_path_records_it(services: Services):
    caller = ctx(OPERATOR)
    before = _denials(services, "request:list")
    with pytest.raises(PolicyDeniedError):
        services.requests.page(caller, RequestFilter())
    assert _denials(services, "request:list") == before + 1
    with pytest.raises(PolicyDeniedError):
        services.requests.list(caller, RequestFilter())
    assert _denials(services, "request:list") == before + 2
    before = _denials(services, "audit:read")
    with pytest.raises(PolicyDeniedError):
        services.audit.event_page(ctx(ANALYST_DEFENCE), EventFilter())
    assert _denials(services, "audit:read") == before + 1
    # An allowed listing records nothing, on either path.
    seed_requests(services, 3)
    everything = _count(services)
    services.requests.page(ctx(OFFICER_1), RequestFilter())
    services.requests.list(ctx(OFFICER_1), RequestFilter())
    services.audit.event_page(ctx(AUDITOR), EventFilter())
    services.audit.events(ctx(AUDITOR), EventFilter())
    assert _count(services) == everything


def _denials(services: Services, action: str) -> int:
    services.audit.log.sequence()
    with services.uow(readonly=True) as uow:
        found = uow.audit.query(AuditQuery(action=action, limit=10_000))
    return sum(1 for e in found if e.event.outcome is Outcome.DENY)


def _count(services: Services) -> int:
    services.audit.log.sequence()
    with services.uow(readonly=True) as uow:
        return len(uow.audit.query(AuditQuery(limit=100_000)))


EVENT_FILTERS: list[Callable[[], EventFilter]] = [
    lambda: EventFilter(limit=PAGE),
    lambda: EventFilter(limit=PAGE, actor="user:analyst-1"),
    lambda: EventFilter(limit=PAGE, action="request:approve"),
    lambda: EventFilter(limit=PAGE, target=f"request/{uuid.UUID(int=2)}"),
    lambda: EventFilter(limit=PAGE, since=BASE + timedelta(minutes=9)),
    lambda: EventFilter(limit=PAGE, until=BASE + timedelta(minutes=31)),
    lambda: EventFilter(
        limit=PAGE,
        actor="user:analyst-0",
        since=BASE + timedelta(minutes=3),
        until=BASE + timedelta(minutes=36),
    ),
]


@pytest.mark.parametrize(
    "make", EVENT_FILTERS, ids=["all", "actor", "action", "target", "since", "until", "combined"]
)
def test_event_pages_equal_the_domain_paths_for_every_reader(
    services: Services, document: dict[str, Any], make: Callable[[], EventFilter]
):
    seed_events(services)
    check = validator(document, "AuditEventPage")
    flt = make()
    for who in AUDIT_READERS:
        caller = ctx(who)
        before = None
        pages = 0
        while True:
            step = EventFilter(
                actor=flt.actor,
                action=flt.action,
                target=flt.target,
                since=flt.since,
                until=flt.until,
                before=before,
                limit=flt.limit,
            )
            read = _read(services.audit.event_page(caller, step))
            page = services.audit.events(caller, step)
            domain = schemas.AuditEventPage(
                items=[schemas.AuditEventOut.of(e) for e in page.items],
                next_cursor=page.next_cursor,
            ).model_dump(mode="json")
            check.validate(read)
            _times_are_rfc3339(read)
            assert read == domain, who.username
            for item in read["items"]:
                label = item["label"]
                if label is not None:  # nothing above the reader's clearance
                    assert services.policy.audit_visibility(who).covers(
                        services.policy.scheme.parse(label)
                    )
            pages += 1
            if read["next_cursor"] is None:
                break
            before = int(read["next_cursor"])
        assert pages >= 1


@pytest.mark.idp
def test_the_http_listings_answer_the_read_models_pages(
    tmp_path: Path, idp: Any, document: dict[str, Any], token: Callable[[str], str]
):
    app = make_app(tmp_path, idp.url)
    try:
        _http_listings(app, document, token)
    finally:
        app.extensions["sovereign"].close()


def _http_listings(app: Flask, document: dict[str, Any], token: Callable[[str], str]) -> None:
    services: Services = app.extensions["sovereign"]
    seed_requests(services)
    seed_events(services)
    client = app.test_client()
    for user, path, name in (
        ("analyst-defence", "/api/v1/requests?limit=5", "RequestPage"),
        ("officer-1", "/api/v1/requests?limit=5&state=pending", "RequestPage"),
        ("auditor", "/api/v1/audit/events?limit=5&action=request:create", "AuditEventPage"),
    ):
        bearer = token(user)
        r = client.get(path, headers={"Authorization": f"Bearer {bearer}"})
        assert r.status_code == 200, r.get_data(as_text=True)
        assert r.mimetype == "application/json"
        body = r.get_json()
        validator(document, name).validate(body)
        caller = CallContext(principal=services.identity.authenticate(bearer))
        if name == "RequestPage":
            state = RequestState.PENDING if "state" in path else None
            page = services.requests.list(caller, RequestFilter(limit=5, state=state))
            residencies = services.requests.residency(page.items)
            domain = schemas.RequestPage(
                items=[
                    schemas.RequestOut.of(r, services.policy, residency)
                    for r, residency in zip(page.items, residencies, strict=True)
                ],
                next_cursor=page.next_cursor,
            )
        else:
            events = services.audit.events(caller, EventFilter(limit=5, action="request:create"))
            domain = schemas.AuditEventPage(
                items=[schemas.AuditEventOut.of(e) for e in events.items],
                next_cursor=events.next_cursor,
            )
        assert body == domain.model_dump(mode="json"), user
        assert len(body["items"]) == 5
