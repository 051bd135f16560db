"""GPU hours per tenant and country on the in-memory backend: clipping to the period, who reads
them and up to which label, the parity shares, the ``report:usage`` event, and the order of a
tenant's countries placement asks for with parity on and off."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sovereign.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from sovereign.domain.fleet import Enclave, Host, domain_name
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.domain.tenants import Resources
from sovereign.errors import AuditUnavailableError, InvalidInputError, PolicyDeniedError
from sovereign.services.recording import CallContext
from sovereign.services.usage import (
    UsageService,
    country_order,
    gpu_hours,
)
from tests.support.factories import (
    ANALYST_DEFENCE,
    AUDITOR,
    DEFENCE,
    OFFICER_1,
    OFFICER_LOW,
    OPERATOR,
    RESEARCH,
    ctx,
    principal,
)

SCHEME = LabelScheme()
T0 = datetime(2026, 11, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=10)
HOUR = timedelta(hours=1)
SECRET = SCHEME.label("SECRET", ["NATO"])
OPEN = SCHEME.label("UNCLASSIFIED")
CLI = CallContext(principal=OFFICER_1, actor="system:cli", source="cli")
AUDITOR_LOW = principal("auditor-low", *AUDITOR.roles, level="UNCLASSIFIED", compartments=())


def _host(name: str, country: str) -> Host:
    return Host(
        id=uuid.uuid4(),
        name=name,
        uri=f"qemu+tls://{name}/system",
        site=f"site-{name}",
        accreditation=SCHEME.label("SECRET", ["CRYPTO", "EU", "NATO"]),
        domain_type="kvm",
        vcpus=64,
        memory_mib=65536,
        created_at=T0,
        updated_at=T0,
        country=country,
    )


class World:
    """A memory store with hosts in Spain and Portugal and enclaves added on demand."""

    def __init__(self) -> None:
        self.store = MemoryStore()
        self.uow = MemoryUnitOfWorkFactory(self.store)
        research = replace(RESEARCH, residency=("ES", "PT"))
        defence = replace(DEFENCE, residency=("ES",))
        self.store.tenants = {"defence": defence, "research": research}
        for host in (_host("es-1", "ES"), _host("pt-1", "PT"), _host("old", "")):
            self.store.hosts[host.id] = host

    def enclave(
        self,
        tenant: str,
        host: str,
        start: timedelta,
        end: timedelta | None,
        *,
        gpus: int = 1,
        label: Any = OPEN,
        country: str = "",
    ) -> Enclave:
        rid = uuid.uuid4()
        self.store.requests[rid] = EnclaveRequest(
            id=rid,
            tenant=tenant,
            requester="sub-analyst",
            requester_name="analyst",
            label=label,
            resources=Resources(4, 8192, gpus, 10),
            gpu_model="H100-SXM5-80GB",
            image="debian-12-cuda",
            purpose="usage",
            lease_hours=8,
            state=RequestState.RUNNING if end is None else RequestState.TERMINATED,
            created_at=T0 + start,
            updated_at=T0 + start,
        )
        made = Enclave(
            id=rid,
            host=host,
            gpus=tuple(f"0000:{18 + i:02x}:00.0" for i in range(gpus)),
            domain_name=domain_name(rid),
            label=label,
            classified=label.rank > 0,
            tenant=tenant,
            vcpus=4,
            memory_mib=8192,
            disk_gib=10,
            lease_expires_at=T0 + start + 100 * HOUR,
            created_at=T0 + start,
            updated_at=T0 + start,
            ended_at=None if end is None else T0 + end,
            country=country,
        )
        self.store.enclaves[rid] = made
        return made

    def service(self, *, parity: bool = False) -> UsageService:
        policy = AccessPolicy(SCHEME)
        return UsageService(
            self.uow, policy, parity=parity, window=timedelta(days=30), clock=lambda: NOW
        )

    def events(self) -> list[Any]:
        return [e.event for e in self.store.audit.events if e.event.action == "report:usage"]


@pytest.fixture
def world() -> World:
    return World()


def test_gpu_hours_are_clipped_to_the_period():
    w = World()
    e = w.enclave("research", "es-1", HOUR, 5 * HOUR, gpus=2)
    assert gpu_hours(e, None, NOW) == 8.0
    assert gpu_hours(e, T0 + 2 * HOUR, T0 + 3 * HOUR) == 2.0
    assert gpu_hours(e, T0 + 5 * HOUR, NOW) == 0.0
    running = w.enclave("research", "pt-1", HOUR, None, gpus=4)
    assert gpu_hours(running, None, T0 + 3 * HOUR) == 8.0


def test_a_report_sums_per_tenant_and_country_and_is_recorded(world: World):
    world.enclave("research", "es-1", 0 * HOUR, 10 * HOUR, gpus=2)  # 20 GPU h
    world.enclave("research", "pt-1", 0 * HOUR, 5 * HOUR, gpus=1)  # 5
    world.enclave("research", "es-1", 2 * HOUR, 4 * HOUR, gpus=4)  # 8
    world.enclave("defence", "es-1", 0 * HOUR, 3 * HOUR, gpus=8, label=SECRET)  # 24
    world.enclave("research", "old", 0 * HOUR, 1 * HOUR)  # a host with no country: 1
    report = world.service().report(ctx(AUDITOR), by="tenant", until=T0 + 24 * HOUR)
    got = [(r.tenant, r.country, r.gpu_hours, r.enclaves) for r in report.rows]
    assert got == [
        ("defence", "ES", 24.0, 1),
        ("research", "", 1.0, 1),
        ("research", "ES", 28.0, 2),
        ("research", "PT", 5.0, 1),
    ]
    assert [(t.key, t.gpu_hours, t.enclaves) for t in report.totals] == [
        ("defence", 24.0, 1),
        ("research", 34.0, 4),
    ]
    assert report.parity == {"research": {"ES": 28 / 33, "PT": 5 / 33}}
    assert report.gpu_hours == 58.0
    by_country = world.service().report(ctx(OFFICER_1), by="country", until=T0 + 24 * HOUR)
    assert [(r.country, r.tenant) for r in by_country.rows] == [
        ("", "research"),
        ("ES", "defence"),
        ("ES", "research"),
        ("PT", "research"),
    ]
    assert [(t.key, t.gpu_hours) for t in by_country.totals] == [
        ("", 1.0),
        ("ES", 52.0),
        ("PT", 5.0),
    ]
    (first, second) = world.events()
    assert first.actor == "user:auditor"
    assert first.target == "reports/usage"
    assert first.details["by"] == "tenant"
    assert first.details["until"] == (T0 + 24 * HOUR).isoformat()
    # The event names the query, never a figure another reader could learn from.
    assert set(first.details) == {"subject", "by", "since", "until", "tenant"}
    assert second.details["by"] == "country"


def test_the_period_clips_and_until_stops_at_now(world: World):
    world.enclave("research", "es-1", 0 * HOUR, 10 * HOUR, gpus=2)
    world.enclave("research", "pt-1", 20 * HOUR, None, gpus=1)  # still running
    service = world.service()
    window = service.report(CLI, since=T0 + 8 * HOUR, until=T0 + 22 * HOUR)
    assert [(r.country, r.gpu_hours) for r in window.rows] == [("ES", 4.0), ("PT", 2.0)]
    future = service.report(CLI, since=T0 + 9 * 24 * HOUR, until=NOW + 1000 * HOUR)
    assert future.until == NOW
    assert [(r.country, r.gpu_hours) for r in future.rows] == [("PT", 24.0)]
    assert service.report(CLI, tenant="defence").rows == ()
    # A query naming a tenant is recorded at that tenant's label; one naming none at none.
    *_, unnamed, named = world.events()
    assert (unnamed.label, named.details["tenant"]) == (None, "defence")
    assert named.label == {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}


def test_enclaves_above_the_readers_clearance_change_nothing(world: World):
    world.enclave("research", "es-1", 0 * HOUR, 2 * HOUR)
    service = world.service()
    before = service.report(ctx(AUDITOR_LOW))
    world.enclave("defence", "es-1", 0 * HOUR, 3 * HOUR, gpus=8, label=SECRET)
    world.enclave("research", "pt-1", 0 * HOUR, 3 * HOUR, label=SCHEME.label("RESTRICTED"))
    after = service.report(ctx(AUDITOR_LOW))
    assert after == before
    assert [r.tenant for r in after.rows] == ["research"]
    # The RESTRICTED officer sees the RESTRICTED enclave, not the SECRET one.
    low = service.report(ctx(OFFICER_LOW), by="tenant")
    assert [(r.tenant, r.country) for r in low.rows] == [("research", "ES"), ("research", "PT")]
    assert {r.tenant for r in service.report(ctx(AUDITOR)).rows} == {"defence", "research"}


def test_only_officers_and_auditors_read_usage_and_bad_input_is_refused(world: World):
    service = world.service()
    for who in (ANALYST_DEFENCE, OPERATOR):
        with pytest.raises(PolicyDeniedError):
            service.report(ctx(who))
    with pytest.raises(InvalidInputError, match="by must be one of"):
        service.report(ctx(AUDITOR), by="site")
    with pytest.raises(InvalidInputError, match="since must not be after until"):
        service.report(ctx(AUDITOR), since=T0 + HOUR, until=T0)
    with pytest.raises(InvalidInputError, match="offset"):
        service.report(ctx(AUDITOR), since=datetime(2026, 1, 1))  # noqa: DTZ001 - the point
    denied = [e for e in world.events() if e.outcome.value == "deny"]
    assert len(denied) == 5
    assert not [e for e in world.events() if e.outcome.value == "allow"]


def test_an_enclave_counts_where_it_was_placed_whatever_its_host_became(world: World):
    # Placed on pt-1 while it stood in Spain; the host was relocated to Portugal since.
    world.enclave("research", "pt-1", 0 * HOUR, 2 * HOUR, country="ES")
    world.enclave("research", "pt-1", 3 * HOUR, 4 * HOUR, country="PT")
    report = world.service().report(CLI, by="country", until=T0 + 24 * HOUR)
    assert [(r.country, r.gpu_hours) for r in report.rows] == [("ES", 2.0), ("PT", 1.0)]


def test_no_report_without_its_audit_event(world: World):
    world.store.audit.fail = True
    with pytest.raises(AuditUnavailableError):
        world.service().report(ctx(AUDITOR))


def test_country_order_puts_the_least_used_country_first_when_parity_is_on(world: World):
    # Research used Spain for 20 GPU hours in the window, Portugal for 5, France not at all.
    world.enclave("research", "es-1", 9 * 24 * HOUR, 9 * 24 * HOUR + 10 * HOUR, gpus=2)
    world.enclave("research", "pt-1", 9 * 24 * HOUR, 9 * 24 * HOUR + 5 * HOUR)
    # Long ago (outside 30 days) Portugal was used heavily: that does not count.
    world.enclave("research", "pt-1", -40 * 24 * HOUR, -35 * 24 * HOUR, gpus=8)
    # Another tenant's use of Portugal does not count either.
    world.enclave("defence", "pt-1", 9 * 24 * HOUR, None, gpus=8)
    with world.uow() as u:
        on = country_order(u, "research", ["PT", "ES", "FR"], NOW, timedelta(days=30))
        assert on == ["FR", "PT", "ES"]
        assert country_order(u, "research", ["PT", "ES"], NOW, None) == ["ES", "PT"]
        # Ties are broken by code.
        assert country_order(u, "nobody", ["PT", "ES"], NOW, timedelta(days=30)) == ["ES", "PT"]
        assert world.service(parity=True).country_order(u, "research", ["ES", "PT"], NOW) == [
            "PT",
            "ES",
        ]
        assert world.service().country_order(u, "research", ["PT", "ES"], NOW) == ["ES", "PT"]
    assert world.service(parity=True).parity_window == timedelta(days=30)
    assert world.service().parity_window is None


def test_the_report_as_json_values(world: World):
    world.enclave("research", "es-1", 0 * HOUR, 1 * HOUR + timedelta(seconds=1))
    far = datetime(467, 7, 5, 14, 16, 19, tzinfo=UTC)
    data = world.service().report(CLI, by="tenant", since=far).to_dict()
    assert data == {
        "by": "tenant",
        "since": "0467-07-05T14:16:19Z",
        "until": "2026-11-11T00:00:00Z",
        "gpu_hours": 1.0003,
        "rows": [{"tenant": "research", "country": "ES", "gpu_hours": 1.0003, "enclaves": 1}],
        "totals": [{"key": "research", "gpu_hours": 1.0003, "enclaves": 1}],
        "parity": [{"tenant": "research", "shares": {"ES": 1.0, "PT": 0.0}}],
    }
