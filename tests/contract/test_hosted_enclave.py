"""enclaves' one entry point for "this enclave on this host", on libvirt's test driver: every
step through :class:`HostedEnclave`, the GPU checks the test driver does not make raising
:class:`GpuUnavailableError`, and a refused spec raising :class:`EnclaveRefusedError` (an
:class:`EnclaveError`, never a bare ``ValueError``)."""

from __future__ import annotations

import shutil
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from enclaves.enclave import EnclaveHost, EnclavePlan, GuestSettings
from enclaves.errors import EnclaveError, EnclaveRefusedError, GpuUnavailableError
from enclaves.hosts import bundled_host_path
from enclaves.inventory import GpuDevice
from enclaves.steps import HOST_TEARDOWN_STEPS, PROVISION_STEPS, ProvisionStep, TeardownStep

pytestmark = pytest.mark.libvirt


@pytest.fixture
def host(tmp_path: Path) -> Iterator[EnclaveHost]:
    """A private copy of the bundled SECRET host (each test:///FILE open has its own state)."""
    copy = tmp_path / "secret-h100x8.xml"
    shutil.copyfile(bundled_host_path("secret-h100x8"), copy)
    settings = GuestSettings(pool_path=str(tmp_path / "pool"), console_dir=str(tmp_path / "c"))
    opened = EnclaveHost("test://" + urllib.parse.quote(copy.as_posix()), settings)
    yield opened
    opened.close()


def plan(gpus: tuple[GpuDevice, ...], **changes: object) -> EnclavePlan:
    enclave_id = uuid.uuid4()
    base = EnclavePlan(
        enclave_id=enclave_id,
        domain_name=f"sov-{enclave_id.hex[:16]}",
        domain_type="kvm",
        vcpus=2,
        memory_mib=2048,
        disk_gib=10,
        gpus=gpus,
        label="SECRET//NATO",
        classified=True,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def ids(host: EnclaveHost, enclave_id: uuid.UUID) -> list[uuid.UUID]:
    return [d.uuid for d in host.domains() if d.enclave_id == enclave_id]


def test_every_step_is_idempotent_and_the_simulated_ones_say_so(host: EnclaveHost):
    p = plan(host.inventory().gpus[:2])
    enclave = host.enclave(p)
    notes = {}
    for step in PROVISION_STEPS:
        notes[step] = enclave.provision(step, None)
        assert enclave.provision(step, None) == notes[step]
    assert host.simulated
    assert notes[ProvisionStep.SECRETS].startswith("simulated")
    assert notes[ProvisionStep.VOLUME].startswith("simulated volume")
    assert ids(host, p.enclave_id) == [p.enclave_id]
    for step in HOST_TEARDOWN_STEPS:
        enclave.teardown(step)
        enclave.teardown(step)
    assert ids(host, p.enclave_id) == []


def test_a_gpu_the_host_does_not_have_is_unavailable(host: EnclaveHost):
    ghost = GpuDevice("0000:77:00.0", "H100-SXM5-80GB", 0, 99, ("0000:77:00.0",))
    with pytest.raises(GpuUnavailableError, match="host has no GPU"):
        host.enclave(plan((ghost,))).provision(ProvisionStep.DEFINE, None)


def test_a_gpu_held_by_another_domain_is_unavailable(host: EnclaveHost):
    found = host.inventory().gpus
    first = host.enclave(plan(found[:2]))
    for step in PROVISION_STEPS:
        first.provision(step, None)
    second = host.enclave(plan(found[1:2]))
    with pytest.raises(GpuUnavailableError, match="already passed to domain"):
        second.provision(ProvisionStep.DEFINE, None)


def test_a_refused_spec_is_an_enclave_error(host: EnclaveHost):
    enclave = host.enclave(plan((), label="bad\x07label"))
    with pytest.raises(EnclaveRefusedError, match="label") as caught:
        enclave.provision(ProvisionStep.DEFINE, None)
    assert isinstance(caught.value, EnclaveError)
    assert isinstance(caught.value.__cause__, ValueError)


def test_the_key_erase_is_not_a_host_step(host: EnclaveHost):
    with pytest.raises(ValueError, match="unknown teardown step"):
        host.enclave(plan(())).teardown(TeardownStep.KEYS)


def test_console_reads_the_tail_of_the_log(host: EnclaveHost):
    enclave = host.enclave(plan(()))
    assert enclave.console(100) == ""
    log = Path(enclave.console_path)
    log.parent.mkdir(parents=True)
    log.write_bytes(b"boot\nready\n")
    assert enclave.console(6) == "ready\n"


def test_a_simulated_host_keeps_its_bookkeeping_volume_for_an_image_plan(
    host: EnclaveHost, tmp_path: Path
):
    """The test driver cannot hold an image's bytes nor unlock LUKS: an image plan provisions
    as before there, and its domain boots no image kernel from a pool."""
    from enclaves.imagestore import ImageStore
    from enclaves.plan import PlanImage
    from tests.unit.enclaves.test_imagebuild import qcow2

    stored = ImageStore(tmp_path / "images").add(qcow2(tmp_path / "disk.qcow2"))
    settings = replace(host.settings, image_dir=str(tmp_path / "images"))
    imaged = EnclaveHost(host.uri, settings)
    try:
        hosted = imaged.enclave(plan((), image=PlanImage("guest", stored.checksum)))
        notes = [hosted.provision(step, None) for step in PROVISION_STEPS]
        assert notes[1].startswith("simulated volume")
        assert "sovereign-image-" not in hosted.domain_xml()
        for step in HOST_TEARDOWN_STEPS:
            hosted.teardown(step)
    finally:
        imaged.close()
