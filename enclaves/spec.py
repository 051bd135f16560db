"""What an enclave is, independent of how libvirt is told about it.

Owns the enclave specification: frozen dataclasses with pure, structural validation (a bad
value raises :class:`ValueError` naming the field and the rule; an argument of the wrong type,
which is a caller's bug rather than bad input, raises :class:`TypeError`). A spec says *what* the
enclave gets (vCPUs, memory, whole GPUs with their IOMMU groups, an encrypted disk, a vTPM, a
network policy, a label); :mod:`enclaves.designer` decides *how* that becomes an isolated
libvirt domain and refuses combinations that would break isolation.

It must not build XML, talk to libvirt, read the host's inventory or know about the control
plane: the caller (the control plane's placement and provisioning) fills it from its records.
A GPU is the inventory's :class:`~enclaves.inventory.GpuDevice`, carried as it is (its IOMMU
group members included, VFIO hands a guest whole groups only); :class:`PciAddress` is only the
parsed form of an address, with which the spec validates and the designer formats.
"""

from __future__ import annotations

import enum
import re
import uuid
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal, Self

from enclaves.inventory import GpuDevice

#: ``DDDD:BB:SS.F`` as printed by ``lspci -D`` and used in libvirt node device names.
_PCI_ADDRESS_RE = re.compile(
    r"^(?P<domain>[0-9a-fA-F]{4}):(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})"
    r"\.(?P<function>[0-7])$"
)
#: Enclave names become libvirt domain names, log file names and network names: keep them to
#: a conservative charset that needs no quoting anywhere (no '/', no spaces, no leading dot).
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: A label is free text for the control plane (``SECRET//NATO``), but no control characters.
_LABEL_RE = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")
#: Highest valid PCI domain, bus, slot (device) and function numbers.
_PCI_LIMITS = {"domain": 0xFFFF, "bus": 0xFF, "slot": 0x1F, "function": 0x7}

DomainType = Literal["kvm", "qemu"]
DiskFormat = Literal["qcow2", "raw"]
_DOMAIN_TYPES: tuple[str, ...] = ("kvm", "qemu")
#: CPU models an enclave may get: the host's own (KVM) or everything QEMU emulates (TCG).
CPU_MODES: tuple[str, ...] = ("host-passthrough", "maximum")
_DISK_FORMATS: tuple[str, ...] = ("qcow2", "raw")


def _require_absolute(what: str, path: str) -> None:
    """Refuse a path that is empty, relative, or not normalised.

    :raises ValueError: naming ``what`` if ``path`` is not a clean absolute POSIX path.
    """
    if not path or "\x00" in path or not path.startswith("/"):
        raise ValueError(f"{what} must be an absolute path, got {path!r}")
    if str(PurePosixPath(path)) != path or ".." in PurePosixPath(path).parts:
        raise ValueError(f"{what} must be a normalised absolute path, got {path!r}")


@dataclass(frozen=True, slots=True, order=True)
class PciAddress:
    """A PCI function address: domain, bus, slot (device) and function numbers."""

    domain: int
    bus: int
    slot: int
    function: int

    def __post_init__(self) -> None:
        for name, limit in _PCI_LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
                raise ValueError(f"PCI {name} must be an integer in 0..{limit:#x}, got {value!r}")

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse ``DDDD:BB:SS.F`` (hexadecimal, e.g. ``0000:18:00.0``).

        :raises ValueError: if ``text`` is not a PCI address in that form.
        """
        match = _PCI_ADDRESS_RE.match(text)
        if match is None:
            raise ValueError(f"not a PCI address (expected DDDD:BB:SS.F): {text!r}")
        return cls(
            domain=int(match["domain"], 16),
            bus=int(match["bus"], 16),
            slot=int(match["slot"], 16),
            function=int(match["function"], 16),
        )

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@dataclass(frozen=True, slots=True)
class DiskSpec:
    """The enclave's root volume: a file on the host, LUKS-encrypted by a libvirt secret."""

    path: str
    format: DiskFormat = "qcow2"
    #: UUID of the libvirt ``<secret usage='volume'>`` holding the LUKS passphrase. The
    #: designer refuses a disk without one; ``None`` is representable so that it can say why.
    luks_secret_uuid: uuid.UUID | None = None

    def __post_init__(self) -> None:
        _require_absolute("disk path", self.path)
        if self.format not in _DISK_FORMATS:
            raise ValueError(f"disk format must be one of {_DISK_FORMATS}, got {self.format!r}")


@dataclass(frozen=True, slots=True)
class TpmSpec:
    """The enclave's emulated TPM 2.0; its state is encrypted when a secret is given."""

    #: UUID of the libvirt secret holding the vTPM state encryption passphrase.
    secret_uuid: uuid.UUID | None = None


class NetworkPolicy(enum.Enum):
    """Which network, if any, the enclave's single NIC joins."""

    #: No ``<interface>`` at all.
    NONE = "none"
    #: One NIC on the enclave's own libvirt network with no ``<forward>`` and no ``<ip>``.
    ISOLATED = "isolated"
    #: One NIC on an existing, operator-defined libvirt network; civilian enclaves only.
    CIVILIAN_BRIDGE = "civilian-bridge"


@dataclass(frozen=True, slots=True)
class ImageBoot:
    """Boot the enclave's own disk image (``<boot dev='hd'/>``)."""


@dataclass(frozen=True, slots=True)
class DirectKernel:
    """Boot a host-side kernel and initrd directly (test guests; ``<kernel>``/``<initrd>``)."""

    kernel: str
    initrd: str
    cmdline: str = ""

    def __post_init__(self) -> None:
        _require_absolute("kernel path", self.kernel)
        _require_absolute("initrd path", self.initrd)
        if any(ord(char) < 0x20 for char in self.cmdline):
            raise ValueError("kernel command line must not contain control characters")


BootSpec = ImageBoot | DirectKernel


@dataclass(frozen=True, slots=True)
class EnclaveSpec:
    """Everything needed to design one enclave's libvirt domain."""

    name: str
    uuid: uuid.UUID
    vcpus: int
    memory_mib: int
    #: Whole GPUs as the host's inventory reports them; the spec checks their addresses and
    #: IOMMU groups (each GPU a member of its own group, nothing listed twice).
    gpus: tuple[GpuDevice, ...]
    disk: DiskSpec
    tpm: TpmSpec
    network: NetworkPolicy
    network_name: str | None
    #: The enclave's security label as text, e.g. ``SECRET//NATO``; recorded in metadata.
    label: str
    classified: bool
    domain_type: DomainType
    boot: BootSpec
    #: Host file receiving the guest's serial console.
    serial_log: str
    allow_graphics: bool = False
    allow_usb: bool = False
    #: ``<cpu mode=...>``: one of :data:`CPU_MODES`, or None for QEMU's default model.
    cpu_mode: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise ValueError(
                f"enclave name must be 1-63 characters of letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit; got {self.name!r}"
            )
        if not isinstance(self.uuid, uuid.UUID):
            raise TypeError(f"enclave uuid must be a uuid.UUID, got {self.uuid!r}")
        for what, value in (("vcpus", self.vcpus), ("memory_mib", self.memory_mib)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"{what} must be a positive integer, got {value!r}")
        if not isinstance(self.label, str) or not _LABEL_RE.match(self.label):
            raise ValueError(f"label must be 1-128 printable characters, got {self.label!r}")
        if self.domain_type not in _DOMAIN_TYPES:
            raise ValueError(
                f"domain_type must be one of {_DOMAIN_TYPES}, got {self.domain_type!r}"
            )
        if self.cpu_mode is not None and self.cpu_mode not in CPU_MODES:
            raise ValueError(f"cpu_mode must be one of {CPU_MODES}, got {self.cpu_mode!r}")
        if not isinstance(self.boot, ImageBoot | DirectKernel):
            raise TypeError(f"boot must be ImageBoot or DirectKernel, got {self.boot!r}")
        _require_absolute("serial log path", self.serial_log)
        self._check_gpus()
        self._check_network()
        if self.classified and (self.allow_graphics or self.allow_usb):
            raise ValueError("classified enclaves may not allow graphics or USB")

    def _check_gpus(self) -> None:
        """Refuse a malformed address, a GPU outside its IOMMU group, or a GPU listed twice.

        :raises ValueError: naming the GPU (``PciAddress.parse`` names a malformed address).
        """
        addresses: list[PciAddress] = []
        for gpu in self.gpus:
            address = PciAddress.parse(gpu.address)
            members = [PciAddress.parse(member) for member in gpu.group_members]
            if not members:
                raise ValueError(f"GPU {address}: its IOMMU group members must not be empty")
            if len(set(members)) != len(members):
                raise ValueError(f"GPU {address}: IOMMU group members are listed twice")
            if address not in members:
                raise ValueError(
                    f"GPU {address} is not a member of the IOMMU group given for it "
                    f"({', '.join(str(member) for member in members)})"
                )
            addresses.append(address)
        duplicates = sorted({str(a) for a in addresses if addresses.count(a) > 1})
        if duplicates:
            raise ValueError(f"GPU assigned twice: {', '.join(duplicates)}")

    def _check_network(self) -> None:
        """Refuse a network policy without (or with a spurious) network name."""
        if not isinstance(self.network, NetworkPolicy):
            raise TypeError(f"network must be a NetworkPolicy, got {self.network!r}")
        if self.network is NetworkPolicy.NONE:
            if self.network_name is not None:
                raise ValueError("network policy NONE takes no network_name")
            return
        if not self.network_name or not _NAME_RE.match(self.network_name):
            raise ValueError(
                f"network policy {self.network.name} needs a network_name of letters, digits, "
                f"'.', '_' or '-'; got {self.network_name!r}"
            )
        if self.network is NetworkPolicy.CIVILIAN_BRIDGE and self.classified:
            raise ValueError("classified enclaves may not use the CIVILIAN_BRIDGE network")
