"""The sanitizer domain and the node-device reset against libvirt itself.

``libvirt`` marker (the test driver over the bundled ``secret-h100x8`` host): the designed
sanitizer domain passes libvirt's RNG schema (``VIR_DOMAIN_START_VALIDATE``) and starts as a
transient domain; the reset of a GPU's functions is refused with a clear answer, since the test
driver has no node-device detach or reset; and :class:`LibvirtSanitizer` turns that refusal
into a failed hand-over (a :class:`GpuHandoverError` naming it), never a clean one.

``qemu`` marker (the real libvirtd of the session): the sanitizer domain, GPU hostdevs
included, is validated and defined by the real QEMU driver (defined and undefined, never
started: this machine has no GPU to give it), and a reset of a PCI function that does not
exist is a clear "not found". No test here resets, detaches or passes through a PCI device of
the machine it runs on.
"""

from __future__ import annotations

import dataclasses
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import libvirt
import pytest

from enclaves.enclave import EnclaveHost, GuestSettings
from enclaves.errors import NodeDeviceNotFoundError, UnsupportedError
from enclaves.host import LibvirtHost
from enclaves.hosts import bundled_host_uri
from enclaves.imagestore import ImageStore
from enclaves.inventory import inventory
from enclaves.nodedev import reset_functions
from enclaves.sanitizer import SanitizerSettings, SanitizerSpec, design_sanitizer, sanitizer_uuid
from enclaves.spec import PciAddress
from sovereign.adapters.sanitizer import LibvirtSanitizer
from sovereign.domain.fleet import sanitizer_domain_name
from sovereign.errors import GpuHandoverError
from sovereign.services.ports import HandoverRequest
from tests.support.libvirtd import Libvirtd
from tests.unit.enclaves.test_sanitizer_design import gpu_with_audio_function

SECRET_HOST = "secret-h100x8"


@pytest.fixture
def host() -> Iterator[LibvirtHost]:
    """A private test-driver connection to the bundled SECRET host."""
    connection = LibvirtHost(bundled_host_uri(SECRET_HOST))
    yield connection
    connection.close()


def first_gpu(host: LibvirtHost) -> tuple[str, tuple[str, ...]]:
    gpu = inventory(host).gpus[0]
    return gpu.address, tuple(gpu.group_members)


def sanitizer_spec(address: str, members: tuple[str, ...], **changes: Any) -> SanitizerSpec:
    """The golden spec for this GPU, with ``changes`` to it or to its layout."""
    base = gpu_with_audio_function()
    layout_fields = {f.name for f in dataclasses.fields(SanitizerSettings)}
    layout = {k: v for k, v in changes.items() if k in layout_fields}
    return dataclasses.replace(
        base,
        name=sanitizer_domain_name(address),
        functions=tuple(PciAddress.parse(m) for m in members),
        layout=dataclasses.replace(base.layout, **layout),
        **{k: v for k, v in changes.items() if k not in layout_fields},
    )


@pytest.mark.libvirt
def test_sanitizer_domain_validates_and_starts_transient_on_the_test_driver(
    host: LibvirtHost,
) -> None:
    address, members = first_gpu(host)
    spec = sanitizer_spec(address, members, machine=None, security_model="dac")
    conn = host.connect()
    domain = conn.createXML(design_sanitizer(spec).to_string(), libvirt.VIR_DOMAIN_START_VALIDATE)
    try:
        assert domain.isActive() == 1
        assert domain.isPersistent() == 0, "a sanitizer domain is transient"
        assert domain.UUIDString() == str(sanitizer_uuid(spec.name))
        live = ElementTree.fromstring(domain.XMLDesc(0))  # noqa: S314
        assert live.find("devices/interface") is None
        assert len(live.findall("devices/disk")) == 1
        assert live.find("devices/disk/transient[@shareBacking='yes']") is not None
        assert len(live.findall("devices/hostdev")) == len(members)
        assert live.findtext("on_crash") == "destroy"
    finally:
        domain.destroy()
    with pytest.raises(libvirt.libvirtError):
        conn.lookupByName(spec.name)  # destroyed, a transient domain is gone


@pytest.mark.libvirt
def test_schema_validation_is_real(host: LibvirtHost) -> None:
    address, members = first_gpu(host)
    xml = design_sanitizer(sanitizer_spec(address, members)).to_string()
    with pytest.raises(libvirt.libvirtError):
        host.connect().createXML(
            xml.replace('<transient shareBacking="yes" />', "<transient bogus='1' />"),
            libvirt.VIR_DOMAIN_START_VALIDATE,
        )


@pytest.mark.libvirt
def test_node_device_reset_is_unsupported_on_the_test_driver(host: LibvirtHost) -> None:
    address, members = first_gpu(host)
    with pytest.raises(UnsupportedError) as caught:
        reset_functions(host, [PciAddress.parse(m) for m in members])
    assert "test driver has no node device detach or reset" in caught.value.message
    assert "libvirt error code" in caught.value.message
    assert address  # the GPU exists there: the refusal is the driver's, not a missing device


@pytest.mark.libvirt
def test_unknown_function_is_not_found_on_the_test_driver(host: LibvirtHost) -> None:
    with pytest.raises(NodeDeviceNotFoundError, match=r"0000:fe:1f\.7"):
        reset_functions(host, [PciAddress.parse("0000:fe:1f.7")])


def tiny_image(folder: Path) -> str:
    """An image in a store under ``folder``: an empty qcow2 and stand-in boot files."""
    disk = folder / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True, timeout=30
    )
    (folder / "vmlinuz").write_bytes(b"kernel")
    (folder / "initrd").write_bytes(b"initrd")
    stored = ImageStore(folder / "images").add(
        disk,
        kernel=folder / "vmlinuz",
        initrd=folder / "initrd",
        cmdline="root=/dev/vda rw console=ttyS0",
    )
    return stored.checksum


@pytest.mark.libvirt
def test_libvirt_sanitizer_on_the_test_driver_fails_the_hand_over_clearly(
    host: LibvirtHost, tmp_path: Path
) -> None:
    address, members = first_gpu(host)
    uri = bundled_host_uri(SECRET_HOST)
    enclave_host = EnclaveHost(
        uri, GuestSettings(pool_path=str(tmp_path / "pool"), console_dir=str(tmp_path))
    )
    sanitizer = LibvirtSanitizer(
        lambda _uri: enclave_host, image_dir=str(tmp_path / "images"), image=tiny_image(tmp_path)
    )
    request = HandoverRequest(
        host="secret-1",
        uri=uri,
        host_uuid=None,
        address=address,
        gpu_uuid=None,
        model="H100-SXM5-80GB",
        group_members=members,
        nonce=secrets.token_bytes(32),
        canary_nonce=secrets.token_bytes(32),
        deadline_s=60.0,
        domain_name=sanitizer_domain_name(address),
    )
    try:
        with pytest.raises(GpuHandoverError) as caught:
            sanitizer.hand_over(request)
        assert "cannot reset PCI functions through libvirt" in caught.value.reason
        assert "test driver" in caught.value.reason
        names = {d.name() for d in enclave_host.conn.connect().listAllDomains(0)}
        assert request.domain_name not in names, "no sanitizer domain was started"
    finally:
        enclave_host.close()


@pytest.mark.libvirt
def test_libvirt_sanitizer_without_image_fails_before_touching_the_host() -> None:
    def no_host(_uri: str) -> EnclaveHost:
        raise AssertionError("no host may be reached without a sanitizer image")

    sanitizer = LibvirtSanitizer(no_host, image_dir="/nonexistent", image=None)
    request = HandoverRequest(
        host="h",
        uri="qemu+tls://h.example/system",
        host_uuid=None,
        address="0000:18:00.0",
        gpu_uuid=None,
        model="H100",
        group_members=("0000:18:00.0",),
        nonce=b"\0" * 32,
        canary_nonce=None,
        deadline_s=10.0,
        domain_name=sanitizer_domain_name("0000:18:00.0"),
    )
    with pytest.raises(GpuHandoverError, match="SANITIZER_IMAGE"):
        sanitizer.hand_over(request)


# --- the real libvirtd: validation and "not found" only, never a reset ----------------------


@pytest.mark.qemu
def test_real_qemu_driver_validates_and_defines_the_sanitizer_domain(
    libvirtd: Libvirtd, tmp_path: Path
) -> None:
    spec = sanitizer_spec(
        "0000:3b:00.0",
        ("0000:3b:00.0", "0000:3b:00.1"),
        domain_type="qemu",
        machine=None,
        cpu_mode="maximum",
        security_model="dac",
        serial_log=str(tmp_path / "console.log"),
    )
    conn = libvirt.open(libvirtd.uri)
    try:
        # Defined (schema and QEMU driver checks) and at once undefined: never started, so no
        # PCI device of this machine is detached or reset.
        domain = conn.defineXMLFlags(
            design_sanitizer(spec).to_string(), libvirt.VIR_DOMAIN_DEFINE_VALIDATE
        )
        try:
            live = ElementTree.fromstring(domain.XMLDesc(0))  # noqa: S314
            assert live.find("devices/disk/transient[@shareBacking='yes']") is not None
            assert len(live.findall("devices/hostdev[@managed='yes']")) == 2
            assert live.find("devices/interface") is None
        finally:
            domain.undefine()
    finally:
        conn.close()


@pytest.mark.qemu
def test_real_libvirtd_reset_of_a_missing_function_is_not_found(libvirtd: Libvirtd) -> None:
    host = LibvirtHost(libvirtd.uri)
    try:
        present = {
            str(d.name())
            for d in host.connect().listAllDevices(
                libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV
            )
        }
        missing = PciAddress.parse("00fe:fe:1f.7")
        assert "pci_00fe_fe_1f_7" not in present
        with pytest.raises(NodeDeviceNotFoundError, match=r"00fe:fe:1f\.7"):
            reset_functions(host, [missing])
    finally:
        host.close()
