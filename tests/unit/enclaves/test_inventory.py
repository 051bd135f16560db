"""Unit tests for enclaves.inventory: node device XML -> PCI devices, GPUs and host inventory.

The XML strings below follow libvirt's node device format (``virsh nodedev-dumpxml``); a fake
host stands in for LibvirtHost so these run without libvirt. The contract tests
(tests/contract/test_inventory_libvirt.py) read the bundled hosts through the real test driver.
"""

from __future__ import annotations

import pytest

from enclaves.errors import EnclaveError
from enclaves.host import HostInfo
from enclaves.inventory import (
    KNOWN_GPUS,
    GpuDevice,
    HostInventory,
    InventoryError,
    PciDevice,
    as_gpu,
    discover_gpus,
    inventory,
    parse_pci_device,
)


def pci_xml(
    bus: int,
    function: int = 0,
    *,
    product: str = "0x2330",
    vendor: str = "0x10de",
    group: int | None = 30,
    members: tuple[tuple[int, int], ...] | None = None,
    numa: str | None = "0",
) -> str:
    """A ``<device>`` as libvirt describes a PCI function at 0000:BUS:00.FUNCTION."""
    group_xml = ""
    if group is not None:
        addresses = "".join(
            f"<address domain='0x0000' bus='{b:#04x}' slot='0x00' function='{f:#x}'/>"
            for b, f in (members if members is not None else ((bus, function),))
        )
        group_xml = f"<iommuGroup number='{group}'>{addresses}</iommuGroup>"
    numa_xml = "" if numa is None else f"<numa node='{numa}'/>"
    return (
        f"<device><name>pci_0000_{bus:02x}_00_{function}</name><parent>computer</parent>"
        f"<capability type='pci'><class>0x030200</class><domain>0</domain><bus>{bus}</bus>"
        f"<slot>0</slot><function>{function}</function>"
        f"<product id='{product}'>GH100 [H100 SXM5 80GB]</product>"
        f"<vendor id='{vendor}'>NVIDIA Corporation</vendor>{group_xml}{numa_xml}"
        "</capability></device>"
    )


class FakeHost:
    """Answers list_pci_devices and info from fixed data, like LibvirtHost would."""

    def __init__(self, devices: list[str]) -> None:
        self.devices = devices

    def list_pci_devices(self) -> list[str]:
        return list(self.devices)

    def info(self) -> HostInfo:
        return HostInfo(
            uri="test:///fake.xml",
            hostname="fake",
            cpus=96,
            memory_mib=1024 * 1024,
            numa_nodes=2,
            libvirt_version=(10, 0, 0),
            hypervisor_type="TEST",
        )


def test_parses_address_ids_names_group_and_numa():
    device = parse_pci_device(pci_xml(0x18, group=30, numa="1"))
    assert device == PciDevice(
        address="0000:18:00.0",
        vendor_id=0x10DE,
        product_id=0x2330,
        vendor="NVIDIA Corporation",
        product="GH100 [H100 SXM5 80GB]",
        iommu_group=30,
        group_members=("0000:18:00.0",),
        numa_node=1,
    )


def test_shared_iommu_group_lists_every_member_sorted():
    shared = ((0x3B, 1), (0x3B, 0))
    gpu = parse_pci_device(pci_xml(0x3B, 0, group=38, members=shared))
    audio = parse_pci_device(pci_xml(0x3B, 1, product="0x1aef", group=38, members=shared))
    assert gpu.group_members == ("0000:3b:00.0", "0000:3b:00.1")
    assert audio.group_members == gpu.group_members
    assert audio.iommu_group == gpu.iommu_group == 38


def test_device_is_added_to_its_group_even_if_libvirt_omits_it():
    device = parse_pci_device(pci_xml(0x3B, 0, members=((0x3B, 1),)))
    assert device.group_members == ("0000:3b:00.0", "0000:3b:00.1")


@pytest.mark.parametrize("numa", [None, "-1"])
def test_missing_or_unknown_numa_node_is_none(numa):
    assert parse_pci_device(pci_xml(0x18, numa=numa)).numa_node is None


def test_no_iommu_group_is_none_with_no_members():
    device = parse_pci_device(pci_xml(0x18, group=None))
    assert device.iommu_group is None
    assert device.group_members == ()


def test_only_known_nvidia_products_are_gpus():
    h100 = parse_pci_device(pci_xml(0x18))
    audio = parse_pci_device(pci_xml(0x18, 1, product="0x1aef"))
    other_vendor = parse_pci_device(pci_xml(0x19, vendor="0x8086"))
    gpu = as_gpu(h100)
    assert gpu == GpuDevice(h100.address, "H100-SXM5-80GB", 0, 30, ("0000:18:00.0",))
    assert gpu.address == "0000:18:00.0"
    assert gpu.iommu_group == 30
    assert gpu.numa_node == 0
    assert gpu.group_members == ("0000:18:00.0",)
    assert as_gpu(audio) is None
    assert as_gpu(other_vendor) is None
    assert KNOWN_GPUS[0x2330] == "H100-SXM5-80GB"


def test_model_table_is_configurable():
    device = parse_pci_device(pci_xml(0x18, product="0x1aef"))
    found = as_gpu(device, {0x1AEF: "TEST-AUDIO"})
    assert found == GpuDevice(
        device.address, "TEST-AUDIO", device.numa_node, device.iommu_group, device.group_members
    )
    assert as_gpu(parse_pci_device(pci_xml(0x18)), {0x1AEF: "TEST-AUDIO"}) is None


def test_discover_gpus_sorted_by_address_with_group_members_kept():
    shared = ((0x3B, 0), (0x3B, 1))
    host = FakeHost(
        [
            pci_xml(0x9B, group=88, numa="1"),
            pci_xml(0x3B, 1, product="0x1aef", group=38, members=shared),
            pci_xml(0x3B, 0, group=38, members=shared),
            pci_xml(0x19, group=21),
            pci_xml(0x20, vendor="0x8086", group=22),
        ]
    )
    gpus = discover_gpus(host)
    assert [gpu.address for gpu in gpus] == ["0000:19:00.0", "0000:3b:00.0", "0000:9b:00.0"]
    assert gpus[1].group_members == ("0000:3b:00.0", "0000:3b:00.1")
    assert [gpu.numa_node for gpu in gpus] == [0, 0, 1]
    assert discover_gpus(host, {}) == []


def test_inventory_combines_host_info_and_gpus():
    host = FakeHost([pci_xml(0x18)])
    assert inventory(host) == HostInventory(
        uri="test:///fake.xml",
        hostname="fake",
        cpus=96,
        memory_mib=1024 * 1024,
        numa_nodes=2,
        gpus=tuple(discover_gpus(host)),
    )


@pytest.mark.parametrize(
    ("xml", "message"),
    [
        ("<device><name>pci_0000_18_00_0</name", "PCI device <unknown>: malformed"),
        ("<device><name>pci_0000_18_00_0</name></device>", "pci_0000_18_00_0: no <capability"),
        (
            pci_xml(0x18).replace("<bus>24</bus>", ""),
            "pci_0000_18_00_0: missing <bus>",
        ),
        (
            pci_xml(0x18).replace("<bus>24</bus>", "<bus>x</bus>"),
            "pci_0000_18_00_0: <bus> 'x' is not a number",
        ),
        (
            pci_xml(0x18).replace("<vendor id='0x10de'>NVIDIA Corporation</vendor>", ""),
            "pci_0000_18_00_0: missing <vendor> or <product>",
        ),
        (
            pci_xml(0x18).replace("number='30'", "number='thirty'"),
            "pci_0000_18_00_0: iommuGroup number 'thirty' is not a number",
        ),
        (
            pci_xml(0x18).replace("<numa node='0'/>", "<numa/>"),
            "pci_0000_18_00_0: missing numa node",
        ),
        ("<node><name>pci_0000_18_00_0</name></node>", "root element is <node>"),
    ],
)
def test_malformed_xml_raises_inventory_error_naming_the_device(xml, message):
    with pytest.raises(InventoryError, match=r"^PCI device ") as caught:
        parse_pci_device(xml)
    assert message in caught.value.message
    assert isinstance(caught.value, EnclaveError)


def test_discover_gpus_propagates_inventory_errors():
    host = FakeHost([pci_xml(0x18), "<device><name>pci_0000_19_00_0</name></device>"])
    with pytest.raises(InventoryError, match="pci_0000_19_00_0"):
        discover_gpus(host)
