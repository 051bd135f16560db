"""Reading GPU hand-over certificates on the in-memory backend: who reads which, pages, and a
log read back defensively (events without a certificate, fields of the wrong type, a document
naming a label beyond the event's)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import pytest

from audit import AuditEvent, Outcome, StoredEvent
from sovereign.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from sovereign.domain.fleet import Gpu, Host
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.errors import InvalidInputError, NotFoundError, PolicyDeniedError
from sovereign.services.certificates import (
    CertificateService,
    GpuCertificate,
    certificate_query,
    checked,
)
from sovereign.services.recording import CallContext, Recorder
from tests.support.factories import (
    ANALYST_DEFENCE,
    AUDITOR,
    OFFICER_1,
    OFFICER_LOW,
    OPERATOR,
    ctx,
)

SCHEME = LabelScheme()
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HOST, GPU = "h1", "0000:18:00.0"
SYSTEM = CallContext(principal=OFFICER_1, actor="system:reconciler")


def cert(verdict: str = "clean", previous: str | None = None, **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "version": 1,
        "host": HOST,
        "gpu": {"address": GPU, "uuid": None, "serial": None},
        "previous_label": previous,
        "scrub": {"coverage": 1.0, "gb_per_s": 12.5, "mismatches": 0},
        "simulated": True,
        "issued_at": "2026-12-01T12:00:00Z",
        "verdict": verdict,
    }
    if verdict == "failed":
        document["reason"] = "3 bytes did not read back as written"
    return {**document, **extra}


@pytest.fixture
def uow() -> MemoryUnitOfWorkFactory:
    store = MemoryStore()
    host = Host(
        id=uuid.uuid4(),
        name=HOST,
        uri="mem://h1",
        site="a",
        accreditation=SCHEME.parse({"level": "SECRET", "compartments": ["NATO"]}),
        domain_type="kvm",
        vcpus=8,
        memory_mib=8192,
        created_at=NOW,
        updated_at=NOW,
    )
    store.hosts[host.id] = host
    for address in (GPU, "0000:2a:00.0"):
        store.gpus[(HOST, address)] = Gpu(
            host=HOST,
            address=address,
            model="H100",
            numa_node=0,
            iommu_group=1,
            group_members=(address,),
        )
    return MemoryUnitOfWorkFactory(store)


@pytest.fixture
def service(uow: MemoryUnitOfWorkFactory) -> CertificateService:
    return CertificateService(uow, AccessPolicy(SCHEME), lambda: NOW)


def record(
    uow: MemoryUnitOfWorkFactory,
    details: dict[str, Any],
    *,
    label: str | None = None,
    target: str = f"gpu/{HOST}/{GPU}",
    action: str = "gpu:handover",
    outcome: Outcome = Outcome.ALLOW,
) -> None:
    with uow() as unit:
        Recorder(uow, lambda: NOW).record(
            unit,
            SYSTEM,
            action,
            target,
            outcome,
            label=SCHEME.parse(label) if label else None,
            details=details,
        )
        unit.commit()


def handover(uow: MemoryUnitOfWorkFactory, document: dict[str, Any], label: str | None = None):
    to = "free" if document.get("verdict") == "clean" else "quarantined"
    record(uow, {"from": "sanitizing", "to": to, "certificate": document}, label=label)


def test_readers_see_certificates_up_to_their_clearance(
    uow: MemoryUnitOfWorkFactory, service: CertificateService
):
    handover(uow, cert())
    handover(uow, cert("failed", "SECRET//NATO"), "SECRET//NATO")
    seen = service.list(ctx(OFFICER_1), HOST, GPU).items
    assert [c.verdict for c in seen] == ["failed", "clean"]
    assert seen[0].reason == "3 bytes did not read back as written"
    assert seen[0].to == "quarantined" and seen[1].to == "free"
    assert [c.verdict for c in service.list(ctx(AUDITOR), HOST, GPU).items] == ["failed", "clean"]
    assert [c.verdict for c in service.list(ctx(OFFICER_LOW), HOST, GPU).items] == ["clean"]
    latest = service.latest(ctx(OFFICER_LOW), HOST, GPU)
    assert latest is not None and latest.verdict == "clean"


def test_a_document_naming_a_label_above_its_events_is_hidden(
    uow: MemoryUnitOfWorkFactory, service: CertificateService
):
    # Written wrongly (unlabelled event, SECRET previous tenant): the stricter label wins.
    handover(uow, cert(previous="SECRET//NATO"))
    handover(uow, cert(previous="NOT//A/LABEL"))
    assert service.list(ctx(OFFICER_LOW), HOST, GPU).items == []
    # Who is cleared for SECRET//NATO sees the first; an unparseable label is never shown.
    assert len(service.list(ctx(OFFICER_1), HOST, GPU).items) == 1


def test_events_without_a_certificate_and_other_gpus_are_skipped(
    uow: MemoryUnitOfWorkFactory, service: CertificateService
):
    record(uow, {"from": "sanitizing", "to": "free"})  # no certificate
    record(uow, {"certificate": "not an object"})
    record(uow, {"certificate": cert()}, outcome=Outcome.DENY)
    record(uow, {"certificate": cert()}, target=f"gpu/{HOST}/0000:2a:00.0")
    record(uow, {"certificate": cert()}, action="gpu:sanitized")
    assert service.list(ctx(AUDITOR), HOST, GPU).items == []
    assert [c.address for c in service.list(ctx(AUDITOR), HOST, "0000:2a:00.0").items] == [
        "0000:2a:00.0"
    ]


def test_pages_of_certificates_follow_the_cursor(
    uow: MemoryUnitOfWorkFactory, service: CertificateService
):
    for i in range(5):
        handover(uow, cert(issued_at=f"2026-12-01T12:00:0{i}Z"))
        record(uow, {"from": "sanitizing", "to": "free"})  # interleaved noise
    seen: list[str] = []
    before = None
    while True:
        page = service.list(ctx(AUDITOR), HOST, GPU, limit=2, before=before)
        seen += [c.issued_at for c in page.items]
        if page.next_cursor is None:
            break
        before = int(page.next_cursor)
    assert seen == [f"2026-12-01T12:00:0{i}Z" for i in reversed(range(5))]


@pytest.mark.parametrize("principal", [ANALYST_DEFENCE, OPERATOR])
def test_who_is_neither_officer_nor_auditor_is_refused_and_recorded(
    uow: MemoryUnitOfWorkFactory, service: CertificateService, principal: Any
):
    handover(uow, cert())
    with pytest.raises(PolicyDeniedError):
        service.list(ctx(principal), HOST, GPU)
    with pytest.raises(PolicyDeniedError):
        service.latest_of_host(ctx(principal), HOST)
    denials = [e for e in uow.store.audit.events if e.event.action == "gpu:certificates"]
    assert [e.event.outcome for e in denials] == [Outcome.DENY, Outcome.DENY]


def test_unknown_gpus_and_hosts_are_not_found_and_bad_names_refused(service: CertificateService):
    with pytest.raises(NotFoundError):
        service.list(ctx(AUDITOR), HOST, "0000:99:00.0")
    with pytest.raises(NotFoundError):
        service.list(ctx(AUDITOR), "nowhere", GPU)
    with pytest.raises(NotFoundError):
        service.latest_of_host(ctx(AUDITOR), "nowhere")
    for host, address in ((HOST, "18:00.0"), ("../x", GPU), (HOST, "0000:18:00.0\n"), ("", GPU)):
        with pytest.raises(InvalidInputError):
            service.list(ctx(AUDITOR), host, address)
    for limit in (0, 201):
        with pytest.raises(InvalidInputError):
            service.list(ctx(AUDITOR), HOST, GPU, limit=limit)
    with pytest.raises(InvalidInputError):
        service.list(ctx(AUDITOR), HOST, GPU, before=-1)


def test_latest_of_host_maps_each_gpu_to_its_newest(
    uow: MemoryUnitOfWorkFactory, service: CertificateService
):
    handover(uow, cert())
    handover(uow, cert("failed"))
    latest = service.latest_of_host(ctx(AUDITOR), HOST)
    assert set(latest) == {GPU}
    assert latest[GPU].verdict == "failed"


def test_a_document_is_read_defensively():
    def of(document: dict[str, Any]) -> GpuCertificate:
        event = AuditEvent(
            actor="system:reconciler",
            action="gpu:handover",
            target=f"gpu/{HOST}/{GPU}",
            outcome=Outcome.ALLOW,
            details={"to": 3, "certificate": document},
            time=NOW,
        )
        found = GpuCertificate.of(StoredEvent(seq=7, event=event, leaf_hash=b"\x01"))
        assert found is not None
        return found

    odd = of({"verdict": "CLEAN", "scrub": {"coverage": True, "gb_per_s": "fast"}, "reason": 5})
    assert odd.verdict == "failed"  # anything but "clean" is failed
    assert odd.coverage is None and odd.gb_per_s is None and odd.reason == ""
    assert odd.simulated is True  # unless it says false, nobody claims a real GPU
    assert odd.to == "" and odd.issued_at == ""
    assert (odd.seq, odd.leaf_hash, odd.host, odd.address) == (7, "01", HOST, GPU)
    real = of({"verdict": "clean", "simulated": False, "scrub": None})
    assert real.simulated is False and real.coverage is None


def test_the_command_lines_query_and_names():
    query = certificate_query("secret-1", "0000:2A:00.0")
    assert query.action == "gpu:handover"
    assert query.target == "gpu/secret-1/0000:2a:00.0"
    assert query.levels is None and query.limit == 1
    assert checked("h", "FFFF:ff:1f.7") == ("h", "ffff:ff:1f.7")
    for host, address in (
        ("h", "0000:18:20.0"),
        ("h", "0000:18:00.8"),
        ("h/x", GPU),
        ("a" * 65, GPU),
    ):
        with pytest.raises(InvalidInputError):
            checked(host, address)
