"""The Hypervisor port, held to one behaviour on both backends: the in-memory fleet and
LibvirtHypervisor on libvirt's real test driver (bundled simulated hosts). Every step is
idempotent, teardown tolerates what is already gone, and the checks the test driver does not
make (the GPU exists, no other domain holds it) are made by the adapter."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from enclaves.hosts import bundled_host_path
from enclaves.inventory import GpuDevice
from enclaves.steps import HOST_TEARDOWN_STEPS, PROVISION_STEPS, ProvisionStep
from sovereign.adapters.hypervisor import GuestSettings, LibvirtHypervisor
from sovereign.adapters.memory_hypervisor import MemoryHost, MemoryHypervisor
from sovereign.domain.fleet import HostIdentity
from sovereign.domain.keys import EnclaveSecrets
from sovereign.errors import (
    ConflictError,
    DependencyUnavailableError,
    HostIdentityError,
    InvalidInputError,
)
from sovereign.services.ports import EnclavePlan
from tests.support.fleet import gpus
from tests.support.hostfiles import uri_policy_for

SECRETS = EnclaveSecrets(luks_passphrase=b"l" * 32, vtpm_secret=b"v" * 32)
STEPS = PROVISION_STEPS
TEARDOWN = HOST_TEARDOWN_STEPS


@pytest.fixture(params=["memory", pytest.param("libvirt", marks=pytest.mark.libvirt)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, str]]:
    if request.param == "memory":
        hypervisor = MemoryHypervisor()
        hypervisor.add_host("mem://h", MemoryHost(gpus=gpus(8)))
        yield hypervisor, "mem://h"
        return
    # A private copy: each test:///FILE open has its own state.
    host_file = tmp_path / "secret-h100x8.xml"
    shutil.copy(bundled_host_path("secret-h100x8"), host_file)
    libvirt = LibvirtHypervisor(
        GuestSettings(
            pool_path=str(tmp_path / "pool"),
            console_dir=str(tmp_path / "console"),
            connect_timeout_s=5,
        ),
        uri_policy_for(tmp_path),
    )
    yield libvirt, f"test://{host_file}"
    libvirt.close()


def plan(uri: str, found: tuple[GpuDevice, ...], count: int = 2) -> EnclavePlan:
    enclave_id = uuid.uuid4()
    return EnclavePlan(
        enclave_id=enclave_id,
        uri=uri,
        domain_name=f"sov-{enclave_id.hex[:16]}",
        domain_type="kvm",
        vcpus=2,
        memory_mib=2048,
        disk_gib=10,
        gpus=found[:count],
        label="SECRET//NATO",
        classified=True,
    )


def test_discover_reports_capacity_and_gpus(backend: tuple[Any, str]):
    hypervisor, uri = backend
    facts = hypervisor.discover(uri)
    assert facts.cpus > 0
    assert facts.memory_mib > 0
    assert len(facts.gpus) == 8
    assert {g.model for g in facts.gpus} == {"H100-SXM5-80GB"}
    assert all(g.address in g.group_members for g in facts.gpus)


def test_every_step_is_idempotent_and_teardown_leaves_nothing(backend: tuple[Any, str]):
    hypervisor, uri = backend
    p = plan(uri, hypervisor.discover(uri).gpus)
    for step in STEPS:
        hypervisor.provision(step, p, SECRETS)
        hypervisor.provision(step, p, SECRETS)  # again: no error, no duplicate
    found = [d for d in hypervisor.domains(uri) if d.enclave_id == p.enclave_id]
    assert len(found) == 1
    assert found[0].running
    assert found[0].domain_uuid == p.enclave_id
    for step in TEARDOWN:
        hypervisor.teardown(step, p)
        hypervisor.teardown(step, p)
    assert [d for d in hypervisor.domains(uri) if d.enclave_id == p.enclave_id] == []


def test_teardown_of_something_never_provisioned_succeeds(backend: tuple[Any, str]):
    hypervisor, uri = backend
    p = plan(uri, hypervisor.discover(uri).gpus)
    for step in TEARDOWN:
        hypervisor.teardown(step, p)


def test_a_gpu_held_by_another_domain_is_refused(backend: tuple[Any, str]):
    hypervisor, uri = backend
    found = hypervisor.discover(uri).gpus
    first = plan(uri, found, 2)
    second = plan(uri, found[1:], 1)  # shares the second GPU
    for step in STEPS:
        hypervisor.provision(step, first, SECRETS)
    for step in (ProvisionStep.VOLUME, ProvisionStep.SECRETS, ProvisionStep.NETWORK):
        hypervisor.provision(step, second, SECRETS)
    with pytest.raises(ConflictError, match="already passed to domain"):
        hypervisor.provision(ProvisionStep.DEFINE, second, SECRETS)


def test_a_gpu_the_host_does_not_have_is_refused(backend: tuple[Any, str]):
    hypervisor, uri = backend
    ghost = GpuDevice("0000:77:00.0", "H100-SXM5-80GB", 0, 99, ("0000:77:00.0",))
    p = plan(uri, (ghost,), 1)
    with pytest.raises(ConflictError, match="has no GPU"):
        hypervisor.provision(ProvisionStep.DEFINE, p, SECRETS)


def test_an_unreachable_host_is_a_dependency_failure(backend: tuple[Any, str]):
    hypervisor, _uri = backend
    missing = (
        "mem://nowhere"
        if isinstance(hypervisor, MemoryHypervisor)
        # Allowed by the policy (TLS, port 16514) but nothing answers (TEST-NET-1).
        else "qemu+tls://192.0.2.1/system"
    )
    with pytest.raises(DependencyUnavailableError):
        hypervisor.discover(missing)


@pytest.mark.libvirt
def test_libvirt_domain_xml_is_the_designers(tmp_path: Path):
    """The defined domain carries our metadata, hostdevs for the GPUs, no balloon, a vTPM."""
    host_file = tmp_path / "h.xml"
    shutil.copy(bundled_host_path("secret-h100x8"), host_file)
    uri = f"test://{host_file}"
    hypervisor = LibvirtHypervisor(
        GuestSettings(pool_path=str(tmp_path / "pool"), console_dir=str(tmp_path / "c")),
        uri_policy_for(tmp_path),
    )
    try:
        p = plan(uri, hypervisor.discover(uri).gpus, 2)
        for step in STEPS:
            hypervisor.provision(step, p, SECRETS)
        # A second open of a test:/// file would see its own, empty state: read through ours.
        xml = hypervisor._host(uri).conn.connect().lookupByUUID(p.enclave_id.bytes).XMLDesc(0)
        assert "<hostdev mode='subsystem' type='pci' managed='yes'>" in xml
        assert xml.count("<hostdev ") == 2
        assert "<memballoon model='none'/>" in xml
        assert "tpm-crb" in xml
        assert "sovereign" in xml  # our metadata namespace
    finally:
        hypervisor.close()


def test_check_uri_refuses_before_connecting(backend: tuple[Any, str]):
    hypervisor, uri = backend
    assert hypervisor.check_uri(uri) == uri
    for refused in (
        "qemu+ext:///system?command=/bin/true",
        "qemu+ssh://root@node1.example/system?command=/bin/true",
        "qemu+tls://node1.example:1/system",
    ):
        with pytest.raises(InvalidInputError, match="hypervisor URI refused"):
            hypervisor.check_uri(refused)
        # Whatever call names a refused URI, the adapter creates no connection to it.
        with pytest.raises(ConflictError, match="not allowed by the URI policy"):
            hypervisor.discover(refused)
    if isinstance(hypervisor, MemoryHypervisor):
        assert hypervisor.connected == []
    else:
        assert hypervisor._hosts == {}


def test_identify_pins_the_identity(backend: tuple[Any, str]):
    hypervisor, uri = backend
    found = hypervisor.identify(uri)
    assert found.host_uuid
    assert hypervisor.discover(uri).identity == found
    assert hypervisor.identify(uri, found) == found
    other = HostIdentity(str(uuid.uuid4()), found.hostname)
    with pytest.raises(HostIdentityError):
        hypervisor.identify(uri, other)


def test_a_stored_spelling_of_an_allowed_uri_opens_the_canonical_one(backend: tuple[Any, str]):
    """Hosts recorded before URIs were made canonical keep working, through one connection."""
    hypervisor, uri = backend
    if isinstance(hypervisor, MemoryHypervisor):
        spelled = uri.upper().replace("MEM://", "mem://").lower()
    else:
        folder, _, name = uri.rpartition("/")
        spelled = f"TEST{folder[4:]}/./{name}"
    assert hypervisor.discover(spelled).identity == hypervisor.discover(uri).identity
    if isinstance(hypervisor, LibvirtHypervisor):
        assert list(hypervisor._hosts) == [uri]
