"""GPUs and capacity of one hypervisor, read from libvirt's PCI node devices.

Owns the interpretation of node device XML (``<device>`` with ``<capability type='pci'>``, see
libvirt's ``formatnode`` documentation): the PCI address, vendor and product, the IOMMU group
and its members (``<iommuGroup number>`` with one ``<address>`` per function), and the NUMA
node (``<numa node>``). From those it picks the GPUs, by a table of known datacenter models,
and assembles a :class:`HostInventory` with the capacities :class:`~enclaves.host.LibvirtHost`
reads.

It must not talk to libvirt itself (:mod:`enclaves.host` does, and translates its errors), make
placement or isolation decisions (that is the control plane's placement and the designer), or
import the control plane. Functions that share a GPU's IOMMU group (audio, bridges) are not GPUs
but stay visible as ``group_members``: VFIO can only hand a whole group to a guest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Protocol
from xml.etree import ElementTree

from enclaves.errors import EnclaveError

if TYPE_CHECKING:
    # Only the annotation of PciDeviceSource.info: at run time the inventory (and with it the
    # enclave spec, which carries GpuDevice) stays clear of the module that talks to libvirt.
    from enclaves.host import HostInfo

#: PCI vendor id of NVIDIA Corporation.
NVIDIA_VENDOR_ID = 0x10DE

#: NVIDIA datacenter GPUs by PCI product id -> the model name the control plane uses.
#: Other NVIDIA functions (HD audio, NVSwitch bridges, consumer cards) are not GPUs here.
KNOWN_GPUS: Mapping[int, str] = MappingProxyType(
    {
        0x20B0: "A100-SXM4-40GB",
        0x20B2: "A100-SXM4-80GB",
        0x20B5: "A100-PCIE-80GB",
        0x2330: "H100-SXM5-80GB",
        0x2331: "H100-PCIE-80GB",
        0x2335: "H200-SXM5-141GB",
    }
)


class InventoryError(EnclaveError):
    """A node device description could not be understood; the message names the device."""


class PciDeviceSource(Protocol):
    """What :func:`discover_gpus` and :func:`inventory` need of a host (a LibvirtHost)."""

    def list_pci_devices(self) -> list[str]:
        """Return the XML of every PCI node device, sorted by device name."""
        ...

    def info(self) -> HostInfo:
        """Return the host's URI, name, CPUs, memory and NUMA nodes."""
        ...


@dataclass(frozen=True, slots=True)
class PciDevice:
    """One PCI function as libvirt describes it."""

    #: ``DDDD:BB:SS.F`` in lower-case hex, as sysfs and ``virsh nodedev-list`` spell it.
    address: str
    vendor_id: int
    product_id: int
    #: Vendor and product names from libvirt's PCI database (may be empty).
    vendor: str
    product: str
    #: ``<iommuGroup number>``; None when the host has no IOMMU (no VFIO passthrough possible).
    iommu_group: int | None
    #: Addresses of every function in the IOMMU group, this one included, sorted.
    group_members: tuple[str, ...]
    #: ``<numa node>``; None when libvirt reports none (single-node hosts, some firmware).
    numa_node: int | None


@dataclass(frozen=True, slots=True)
class GpuDevice:
    """A whole GPU as the hypervisor reports it: a PCI function of a known datacenter model.

    The one type for a reported GPU: the control plane's hypervisor port hands it over as it is
    (discovery) and gives it back in an enclave's plan (the GPUs to pass through); the control
    plane's own record of a GPU (its state, its last tenant) is a different thing and lives
    there.
    """

    #: ``DDDD:BB:SS.F`` in lower-case hex (``0000:18:00.0``).
    address: str
    #: The model name from the GPU table, e.g. ``H100-SXM5-80GB``.
    model: str
    #: The NUMA node the GPU is attached to, or None when unknown.
    numa_node: int | None
    #: The GPU's IOMMU group number, or None without an IOMMU (no passthrough possible).
    iommu_group: int | None
    #: Every function of the GPU's IOMMU group, the GPU included, sorted.
    group_members: tuple[str, ...]
    #: The GPU's own UUID where NVML reports it (``GPU-...``); None from libvirt's node devices.
    uuid: str | None = None


@dataclass(frozen=True, slots=True)
class HostInventory:
    """What the control plane learns about a host when it is added or rediscovered."""

    uri: str
    hostname: str
    cpus: int
    memory_mib: int
    numa_nodes: int
    #: The host's GPUs, sorted by PCI address.
    gpus: tuple[GpuDevice, ...]


def _format_address(domain: int, bus: int, slot: int, function: int) -> str:
    """The canonical ``DDDD:BB:SS.F`` spelling of a PCI address."""
    return f"{domain:04x}:{bus:02x}:{slot:02x}.{function:x}"


def _number(text: str | None, what: str, device: str) -> int:
    """Parse a decimal or ``0x`` hexadecimal number from node device XML.

    :raises InventoryError: if it is missing or not a number.
    """
    if text is None or not text.strip():
        raise InventoryError(f"PCI device {device}: missing {what}")
    value = text.strip()
    try:
        # libvirt writes <domain>/<bus>/... in decimal and ids/<address> attributes in hex.
        if value.lower().startswith("0x"):
            return int(value, 16)
        return int(value, 10)
    except ValueError:
        raise InventoryError(f"PCI device {device}: {what} {value!r} is not a number") from None


def _member_address(element: ElementTree.Element, device: str) -> str:
    """The address of one ``<iommuGroup><address .../>`` element."""
    parts = [
        _number(element.get(name), f"iommuGroup address {name}", device)
        for name in ("domain", "bus", "slot", "function")
    ]
    return _format_address(*parts)


def parse_pci_device(xml: str) -> PciDevice:
    """Parse one node device ``<device>`` with a ``<capability type='pci'>``.

    :raises InventoryError: if the XML is malformed or lacks a required element; the message
        names the device (or says that its name is unknown).
    """
    try:
        # The XML comes from the libvirt daemon the control plane already trusts to run guests.
        root = ElementTree.fromstring(xml)  # noqa: S314
    except ElementTree.ParseError as exc:
        raise InventoryError(f"PCI device <unknown>: malformed node device XML: {exc}") from exc
    name = (root.findtext("name") or "").strip() or "<unnamed>"
    if root.tag != "device":
        raise InventoryError(f"PCI device {name}: root element is <{root.tag}>, not <device>")
    capability = root.find("capability[@type='pci']")
    if capability is None:
        raise InventoryError(f"PCI device {name}: no <capability type='pci'>")
    domain, bus, slot, function = (
        _number(capability.findtext(tag), f"<{tag}>", name)
        for tag in ("domain", "bus", "slot", "function")
    )
    vendor = capability.find("vendor")
    product = capability.find("product")
    if vendor is None or product is None:
        raise InventoryError(f"PCI device {name}: missing <vendor> or <product>")
    group = capability.find("iommuGroup")
    iommu_group: int | None = None
    members: tuple[str, ...] = ()
    address = _format_address(domain, bus, slot, function)
    if group is not None:
        iommu_group = _number(group.get("number"), "iommuGroup number", name)
        found = {_member_address(member, name) for member in group.findall("address")}
        # libvirt lists the device itself among its group's members; be sure it is there.
        members = tuple(sorted(found | {address}))
    numa = capability.find("numa")
    numa_node = None if numa is None else _number(numa.get("node"), "numa node", name)
    # libvirt writes node='-1' when the kernel does not know the device's node.
    if numa_node is not None and numa_node < 0:
        numa_node = None
    return PciDevice(
        address=address,
        vendor_id=_number(vendor.get("id"), "vendor id", name),
        product_id=_number(product.get("id"), "product id", name),
        vendor=(vendor.text or "").strip(),
        product=(product.text or "").strip(),
        iommu_group=iommu_group,
        group_members=members,
        numa_node=numa_node,
    )


def as_gpu(device: PciDevice, models: Mapping[int, str] = KNOWN_GPUS) -> GpuDevice | None:
    """Return ``device`` as a GPU if it is an NVIDIA function of a model in ``models``."""
    if device.vendor_id != NVIDIA_VENDOR_ID:
        return None
    model = models.get(device.product_id)
    if model is None:
        return None
    return GpuDevice(
        address=device.address,
        model=model,
        numa_node=device.numa_node,
        iommu_group=device.iommu_group,
        group_members=device.group_members,
    )


def discover_gpus(host: PciDeviceSource, models: Mapping[int, str] = KNOWN_GPUS) -> list[GpuDevice]:
    """Return the host's GPUs of the models in ``models``, sorted by PCI address.

    :raises InventoryError: if a node device's XML cannot be understood.
    :raises HypervisorUnavailableError: if the host cannot be reached.
    """
    gpus = []
    for xml in host.list_pci_devices():
        gpu = as_gpu(parse_pci_device(xml), models)
        if gpu is not None:
            gpus.append(gpu)
    return sorted(gpus, key=lambda gpu: gpu.address)


def inventory(host: PciDeviceSource, models: Mapping[int, str] = KNOWN_GPUS) -> HostInventory:
    """Return the host's capacities (``virNodeGetInfo``, capabilities) and its GPUs.

    :raises InventoryError: if a node device's XML cannot be understood.
    :raises HypervisorUnavailableError: if the host cannot be reached.
    :raises EnclaveError: if libvirt refuses one of the reads.
    """
    info = host.info()
    return HostInventory(
        uri=info.uri,
        hostname=info.hostname,
        cpus=info.cpus,
        memory_mib=info.memory_mib,
        numa_nodes=info.numa_nodes,
        gpus=tuple(discover_gpus(host, models)),
    )
