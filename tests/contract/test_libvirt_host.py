"""LibvirtHost and the bundled host descriptions against libvirt's real test driver.

Needs libvirt-python (the ``libvirt`` marker); without it the import below fails the run
loudly instead of skipping. Each ``test:///FILE`` open has private state, so tests do not
leak into each other.
"""

from __future__ import annotations

import collections
import re
import shutil
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import libvirt
import pytest

from enclaves.errors import (
    DomainNotFoundError,
    HostIdentityChangedError,
    HypervisorUnavailableError,
    NodeDeviceNotFoundError,
)
from enclaves.host import HostIdentity, HostInfo, LibvirtHost, _translate
from enclaves.hosts import BUNDLED_HOSTS, bundled_host_path, bundled_host_uri

pytestmark = pytest.mark.libvirt

NVIDIA = "0x10de"
H100_SXM = "0x2330"
MIB_PER_TIB = 1024 * 1024

SECRET_GPUS = [
    "pci_0000_18_00_0",
    "pci_0000_2a_00_0",
    "pci_0000_3a_00_0",
    "pci_0000_5d_00_0",
    "pci_0000_9a_00_0",
    "pci_0000_ab_00_0",
    "pci_0000_ba_00_0",
    "pci_0000_db_00_0",
]
CIVILIAN_PCI = [
    "pci_0000_19_00_0",
    "pci_0000_3b_00_0",
    "pci_0000_3b_00_1",
    "pci_0000_9b_00_0",
    "pci_0000_bb_00_0",
]


def _parse(xml: str) -> ElementTree.Element:
    # XML produced by libvirt from our own bundled files.
    return ElementTree.fromstring(xml)  # noqa: S314


def _pci(xml: str) -> dict[str, Any]:
    """The fields of one node device ``<device>`` that these tests look at."""
    device = _parse(xml)
    capability = device.find("capability[@type='pci']")
    assert capability is not None
    vendor, product = capability.find("vendor"), capability.find("product")
    numa, group = capability.find("numa"), capability.find("iommuGroup")
    assert vendor is not None
    assert product is not None
    assert numa is not None
    assert group is not None
    return {
        "name": device.findtext("name"),
        "vendor": vendor.get("id"),
        "product": product.get("id"),
        "numa": numa.get("node"),
        "group": group.get("number"),
        "members": [
            (a.get("domain"), a.get("bus"), a.get("slot"), a.get("function"))
            for a in group.findall("address")
        ],
        "address": (
            f"0x{int(capability.findtext('domain', '-1')):04x}",
            f"0x{int(capability.findtext('bus', '-1')):02x}",
            f"0x{int(capability.findtext('slot', '-1')):02x}",
            f"0x{int(capability.findtext('function', '-1')):x}",
        ),
    }


@pytest.fixture
def secret() -> Iterator[LibvirtHost]:
    host = LibvirtHost(bundled_host_uri("secret-h100x8"))
    yield host
    host.close()


@pytest.fixture
def civilian() -> Iterator[LibvirtHost]:
    host = LibvirtHost(bundled_host_uri("civilian-h100x4"))
    yield host
    host.close()


@pytest.mark.parametrize("name", BUNDLED_HOSTS)
def test_bundled_host_opens_with_no_domains_networks_or_pools(name: str) -> None:
    conn = libvirt.open(bundled_host_uri(name))
    try:
        assert conn.listAllDomains() == []
        assert conn.listAllNetworks() == []
        assert conn.listAllStoragePools() == []
        assert _parse(conn.getCapabilities()).tag == "capabilities"
        assert conn.nodeDeviceLookupByName("computer").listCaps() == ["system"]
    finally:
        conn.close()


def test_secret_host_lists_eight_h100s_each_alone_in_its_iommu_group(
    secret: LibvirtHost,
) -> None:
    devices = [_pci(xml) for xml in secret.list_pci_devices()]

    assert [device["name"] for device in devices] == SECRET_GPUS
    assert {(device["vendor"], device["product"]) for device in devices} == {(NVIDIA, H100_SXM)}
    assert collections.Counter(device["numa"] for device in devices) == {"0": 4, "1": 4}
    assert len({device["group"] for device in devices}) == 8
    for device in devices:
        assert device["members"] == [device["address"]]


def test_civilian_host_has_one_gpu_sharing_its_iommu_group(civilian: LibvirtHost) -> None:
    devices = {device["name"]: device for device in map(_pci, civilian.list_pci_devices())}
    gpus = {
        name: device
        for name, device in devices.items()
        if (device["vendor"], device["product"]) == (NVIDIA, H100_SXM)
    }
    shared = devices["pci_0000_3b_00_0"]
    companion = devices["pci_0000_3b_00_1"]

    assert list(devices) == CIVILIAN_PCI
    assert len(gpus) == 4
    assert collections.Counter(gpu["numa"] for gpu in gpus.values()) == {"0": 2, "1": 2}
    assert len(shared["members"]) == 2
    assert set(shared["members"]) == {shared["address"], companion["address"]}
    assert companion["group"] == shared["group"]
    assert companion["vendor"] == NVIDIA
    assert companion["product"] != H100_SXM
    assert [name for name, gpu in gpus.items() if len(gpu["members"]) > 1] == ["pci_0000_3b_00_0"]


def test_pci_devices_are_sorted_although_libvirt_lists_them_unsorted(
    civilian: LibvirtHost,
) -> None:
    conn = civilian.connect()
    raw = [
        device.name()
        for device in conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)
    ]
    listed = [_pci(xml)["name"] for xml in civilian.list_pci_devices()]

    assert sorted(raw) == listed
    # The root device is a node device too, but not a PCI one.
    assert "computer" not in listed


@pytest.mark.parametrize(
    ("name", "cpus", "memory_mib"),
    [
        ("secret-h100x8", 128, 2 * MIB_PER_TIB),
        ("civilian-h100x4", 96, MIB_PER_TIB),
        ("civilian-pt-1", 64, MIB_PER_TIB // 2),
    ],
)
def test_info_reports_the_bundled_topology(name: str, cpus: int, memory_mib: int) -> None:
    with LibvirtHost(bundled_host_uri(name)) as host:
        info = host.info()

    assert isinstance(info, HostInfo)
    assert info.uri == bundled_host_uri(name)
    assert info.cpus == cpus
    assert info.memory_mib == memory_mib
    assert info.numa_nodes == 2
    assert info.hypervisor_type == "TEST"
    assert info.hostname
    packed = libvirt.getVersion()
    assert info.libvirt_version == (packed // 1_000_000, packed // 1_000 % 1_000, packed % 1_000)
    assert info.libvirt_version >= (9, 0, 0)


def test_connect_is_idempotent(secret: LibvirtHost) -> None:
    conn = secret.connect()

    assert secret.connect() is conn
    assert conn.isAlive() == 1


def test_ping_reopens_a_connection_closed_behind_its_back(secret: LibvirtHost) -> None:
    stale = secret.connect()
    stale.close()

    secret.ping()

    fresh = secret.connect()
    assert fresh is not stale
    assert fresh.isAlive() == 1


def test_ping_after_close_reopens(secret: LibvirtHost) -> None:
    secret.connect()
    secret.close()
    secret.close()  # twice is harmless

    secret.ping()

    assert secret.connect().isAlive() == 1


def test_context_manager_closes_the_connection() -> None:
    with LibvirtHost(bundled_host_uri("secret-h100x8")) as host:
        conn = host.connect()
        assert conn.isAlive() == 1

    with pytest.raises(libvirt.libvirtError):
        conn.isAlive()


def test_ping_raises_unavailable_when_the_host_cannot_be_reopened(tmp_path: Path) -> None:
    copy = tmp_path / "gone.xml"
    shutil.copyfile(bundled_host_path("secret-h100x8"), copy)
    host = LibvirtHost("test://" + urllib.parse.quote(copy.as_posix()))
    host.connect().close()
    copy.unlink()

    with pytest.raises(HypervisorUnavailableError, match=r"^opening ") as excinfo:
        host.ping()

    # The error comes from reopening the file, so the dead connection was noticed and dropped.
    cause = excinfo.value.__cause__
    assert isinstance(cause, libvirt.libvirtError)
    assert cause.get_error_code() == libvirt.VIR_ERR_XML_ERROR


@pytest.mark.parametrize("open_timeout", [None, 5.0])
def test_bogus_uri_raises_unavailable_not_libvirt_error(
    tmp_path: Path, open_timeout: float | None
) -> None:
    uri = "test://" + urllib.parse.quote(f"{tmp_path.as_posix()}/nonexistent.xml")
    host = LibvirtHost(uri, open_timeout=open_timeout)

    with pytest.raises(
        HypervisorUnavailableError, match=re.escape(f"opening {uri} failed")
    ) as excinfo:
        host.connect()
    with pytest.raises(HypervisorUnavailableError):
        host.ping()

    assert not isinstance(excinfo.value, libvirt.libvirtError)
    assert isinstance(excinfo.value.__cause__, libvirt.libvirtError)
    assert f"libvirt error code {libvirt.VIR_ERR_XML_ERROR}" in excinfo.value.message


def test_open_with_a_timeout_connects() -> None:
    host = LibvirtHost(bundled_host_uri("secret-h100x8"), open_timeout=5.0)
    try:
        assert host.info().cpus == 128
    finally:
        host.close()


def test_open_that_hangs_times_out_and_its_late_connection_is_closed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    release, closed = threading.Event(), threading.Event()

    class LateConnection:
        def close(self) -> int:
            closed.set()
            return 0

    def hanging_open(_uri: str) -> LateConnection:
        release.wait(10)
        return LateConnection()

    monkeypatch.setattr(libvirt, "open", hanging_open)
    host = LibvirtHost("qemu+tls://unreachable.invalid/system", open_timeout=0.05)
    try:
        with pytest.raises(HypervisorUnavailableError, match=r"did not finish within 0\.05 s"):
            host.connect()
        assert not closed.is_set()
    finally:
        release.set()

    # Nobody holds the connection that arrived too late, so the helper thread closes it.
    assert closed.wait(5)


def test_translate_maps_libvirt_error_codes(secret: LibvirtHost) -> None:
    conn = secret.connect()

    with (
        pytest.raises(DomainNotFoundError, match="libvirt error code") as missing_domain,
        _translate("looking up domain nope"),
    ):
        conn.lookupByName("nope")
    with (
        pytest.raises(NodeDeviceNotFoundError) as missing_device,
        _translate("looking up node device nope"),
    ):
        conn.nodeDeviceLookupByName("nope")
    conn.close()
    # A connection error, not a missing object: the class follows the code, not the call.
    with pytest.raises(HypervisorUnavailableError), _translate("reading the version"):
        conn.getLibVersion()

    assert missing_domain.value.message.startswith("looking up domain nope failed: ")
    assert f"code {libvirt.VIR_ERR_NO_DOMAIN})" in missing_domain.value.message
    assert type(missing_device.value) is NodeDeviceNotFoundError
    assert f"code {libvirt.VIR_ERR_NO_NODE_DEVICE})" in missing_device.value.message


# -- identity (issue 10, item 2) -------------------------------------------------------------


def test_each_bundled_host_is_a_distinct_machine() -> None:
    found = {}
    for name in BUNDLED_HOSTS:
        with LibvirtHost(bundled_host_uri(name)) as host:
            found[name] = host.identity()
    assert all(identity.host_uuid for identity in found.values())
    assert len({identity.host_uuid for identity in found.values()}) == len(BUNDLED_HOSTS)
    # The test driver reports no <host><uuid> in its capabilities: the computer device's
    # SMBIOS UUID stands for it.
    assert found["secret-h100x8"].host_uuid == "5d3c9a4e-7f21-4c8b-9e0a-1b2c3d4e5f60"


def test_every_spelling_of_a_host_file_is_one_identity(tmp_path: Path) -> None:
    path = bundled_host_path("civilian-h100x4")
    folder, name = path.parent.as_posix(), path.name
    (tmp_path / "link.xml").symlink_to(path)
    spellings = [
        bundled_host_uri("civilian-h100x4"),
        f"test://{folder}/./{name}",
        f"test://{folder}//{name}",
        f"test://{folder}/../hosts/{name}",
        f"test://{tmp_path.as_posix()}/link.xml",
    ]
    identities = set()
    for uri in spellings:
        with LibvirtHost(uri) as host:
            identities.add(host.identity())
    assert len(identities) == 1


def test_a_reopened_connection_that_answers_as_another_machine_is_refused(
    tmp_path: Path,
) -> None:
    copy = tmp_path / "swapped.xml"
    shutil.copyfile(bundled_host_path("secret-h100x8"), copy)
    host = LibvirtHost("test://" + urllib.parse.quote(copy.as_posix()))
    first = host.identity()
    # Another machine now answers at the same URI (the next open reads the changed file).
    copy.write_text(
        copy.read_text().replace(str(first.host_uuid), "0e0e0e0e-1111-4222-8333-444455556666")
    )
    host.connect().close()

    with pytest.raises(HostIdentityChangedError, match="another machine"):
        host.connect()
    with pytest.raises(HostIdentityChangedError):
        host.ping()


def test_a_pinned_identity_is_required_of_the_open_connection(tmp_path: Path) -> None:
    host = LibvirtHost(bundled_host_uri("secret-h100x8"))
    seen = host.identity()
    host.pin(seen)
    assert host.identity() == seen
    with pytest.raises(HostIdentityChangedError):
        host.pin(HostIdentity("0e0e0e0e-1111-4222-8333-444455556666", seen.hostname))
    # The connection was dropped; reopening finds the real machine, not the pinned one.
    with pytest.raises(HostIdentityChangedError):
        host.connect()
    host.close()
    pinned = LibvirtHost(
        bundled_host_uri("secret-h100x8"),
        identity=HostIdentity("0e0e0e0e-1111-4222-8333-444455556666", seen.hostname),
    )
    with pytest.raises(HostIdentityChangedError):
        pinned.connect()
