"""libvirt domain XML, one small class per element.

Owns the conversion between Python objects and the libvirt domain XML elements that Sovereign
writes (https://libvirt.org/formatdomain.html): each class is a frozen dataclass with
``to_xml() -> Element`` and a ``parse(element)`` class method, and :class:`DomainConfig` adds
a stable text form (:meth:`DomainConfig.to_string` / :meth:`DomainConfig.from_string`).

It must not make decisions: which elements an enclave gets, and with which values, is
:mod:`enclaves.designer`'s job. Parsing is strict on purpose: an element or device this module
does not model raises :class:`ValueError` rather than being dropped, so a parsed domain never
silently hides a device (a ``<graphics>`` or ``<filesystem>``) that nothing here can see.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Self
from xml.etree import ElementTree

from enclaves.spec import PciAddress

#: XML namespace of Sovereign's element inside the domain ``<metadata>`` (libvirt keeps one
#: element per namespace there and requires custom elements to be namespaced).
SOVEREIGN_NS = "https://sovereign.invalid/xmlns/libvirt/enclave/1.0"
_INDENT = "  "


def _expect(element: ElementTree.Element, tag: str) -> None:
    """:raises ValueError: if ``element`` is not a ``<tag>`` element."""
    if element.tag != tag:
        raise ValueError(f"expected <{tag}>, got <{element.tag}>")


def _attr(element: ElementTree.Element, name: str) -> str:
    """Return a required attribute.

    :raises ValueError: if ``element`` has no attribute ``name``.
    """
    value = element.get(name)
    if value is None:
        raise ValueError(f"<{element.tag}> has no {name!r} attribute")
    return value


def _child(element: ElementTree.Element, tag: str) -> ElementTree.Element:
    """Return the one required child ``<tag>``.

    :raises ValueError: if ``element`` has no such child.
    """
    child = element.find(tag)
    if child is None:
        raise ValueError(f"<{element.tag}> has no <{tag}>")
    return child


def _text(element: ElementTree.Element) -> str:
    """Return an element's stripped text, ``''`` when it has none."""
    return (element.text or "").strip()


def _child_text(element: ElementTree.Element, tag: str) -> str:
    """Return the text of the one required child ``<tag>``.

    :raises ValueError: if ``element`` has no such child.
    """
    return _text(_child(element, tag))


def _sub(
    parent: ElementTree.Element, tag: str, text: str | None = None, **attrs: str
) -> ElementTree.Element:
    """Append ``<tag attrs>text</tag>`` to ``parent`` and return it."""
    child = ElementTree.SubElement(parent, tag, attrs)
    if text is not None:
        child.text = text
    return child


def _yes_no(value: bool) -> str:
    """libvirt's spelling of a boolean attribute."""
    return "yes" if value else "no"


def _parse_yes_no(element: ElementTree.Element, name: str) -> bool:
    """Read a ``yes``/``no`` attribute.

    :raises ValueError: if the attribute is missing or neither ``yes`` nor ``no``.
    """
    value = _attr(element, name)
    if value not in ("yes", "no"):
        raise ValueError(f"<{element.tag} {name}> must be 'yes' or 'no', got {value!r}")
    return value == "yes"


def _only_children(element: ElementTree.Element, allowed: tuple[str, ...]) -> None:
    """:raises ValueError: if ``element`` has a child this module does not model."""
    for child in element:
        if child.tag not in allowed:
            raise ValueError(f"<{element.tag}> has an unsupported child <{child.tag}>")


@dataclass(frozen=True, slots=True)
class MetadataConfig:
    """``<metadata>`` holding Sovereign's ``<enclave>`` element (id, label, classified)."""

    enclave_id: uuid.UUID
    label: str
    classified: bool

    def to_xml(self) -> ElementTree.Element:
        """Build ``<metadata><enclave xmlns=SOVEREIGN_NS>...</enclave></metadata>``."""
        metadata = ElementTree.Element("metadata")
        # A literal xmlns attribute keeps the namespace declaration on this element (as
        # libvirt writes it back) instead of ElementTree hoisting an ns0 prefix to <domain>.
        enclave = _sub(metadata, "enclave", xmlns=SOVEREIGN_NS)
        _sub(enclave, "id", str(self.enclave_id))
        _sub(enclave, "label", self.label)
        _sub(enclave, "classified", _yes_no(self.classified))
        return metadata

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<metadata>``.

        :raises ValueError: if it lacks Sovereign's ``<enclave>`` element or a field.
        """
        _expect(element, "metadata")
        ns = f"{{{SOVEREIGN_NS}}}"
        enclave = _child(element, f"{ns}enclave")
        classified = _child_text(enclave, f"{ns}classified")
        if classified not in ("yes", "no"):
            raise ValueError(f"<enclave><classified> must be 'yes' or 'no', got {classified!r}")
        return cls(
            enclave_id=uuid.UUID(_child_text(enclave, f"{ns}id")),
            label=_child_text(enclave, f"{ns}label"),
            classified=classified == "yes",
        )


@dataclass(frozen=True, slots=True)
class MemoryConfig:
    """``<memory unit='MiB'>``: the guest's maximum (and, without a balloon, actual) memory."""

    mib: int

    def to_xml(self) -> ElementTree.Element:
        """Build ``<memory unit='MiB'>N</memory>``."""
        element = ElementTree.Element("memory", unit="MiB")
        element.text = str(self.mib)
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<memory>`` in MiB or KiB (libvirt's own unit).

        :raises ValueError: for another unit or a KiB amount that is not whole MiB.
        """
        _expect(element, "memory")
        unit = element.get("unit", "KiB")
        amount = int(_text(element))
        if unit == "MiB":
            return cls(mib=amount)
        if unit == "KiB" and amount % 1024 == 0:
            return cls(mib=amount // 1024)
        raise ValueError(f"unsupported <memory> amount {amount} {unit}")


@dataclass(frozen=True, slots=True)
class VcpuConfig:
    """``<vcpu placement='static'>``: the number of virtual CPUs."""

    count: int

    def to_xml(self) -> ElementTree.Element:
        """Build ``<vcpu placement='static'>N</vcpu>``."""
        element = ElementTree.Element("vcpu", placement="static")
        element.text = str(self.count)
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<vcpu>``.

        :raises ValueError: if its text is not an integer.
        """
        _expect(element, "vcpu")
        return cls(count=int(_text(element)))


@dataclass(frozen=True, slots=True)
class CpuConfig:
    """``<cpu mode=... check='none'>``: the guest's CPU model (libvirt's CPU model docs).

    ``host-passthrough`` under KVM, ``maximum`` under TCG (every feature QEMU can emulate).
    """

    mode: str

    def to_xml(self) -> ElementTree.Element:
        """Build ``<cpu mode=... check='none'/>``."""
        return ElementTree.Element("cpu", mode=self.mode, check="none")

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<cpu>``.

        :raises ValueError: if it has no ``mode`` or has children.
        """
        _expect(element, "cpu")
        _only_children(element, ())
        return cls(mode=_attr(element, "mode"))


@dataclass(frozen=True, slots=True)
class OsConfig:
    """``<os>``: ``<type>hvm</type>`` plus either direct kernel boot or ``<boot dev=...>``."""

    arch: str | None = None
    machine: str | None = None
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_dev: str | None = None

    def to_xml(self) -> ElementTree.Element:
        """Build ``<os>``."""
        element = ElementTree.Element("os")
        os_type = _sub(element, "type", "hvm")
        if self.arch is not None:
            os_type.set("arch", self.arch)
        if self.machine is not None:
            os_type.set("machine", self.machine)
        for tag, value in (
            ("kernel", self.kernel),
            ("initrd", self.initrd),
            ("cmdline", self.cmdline),
        ):
            if value is not None:
                _sub(element, tag, value)
        if self.boot_dev is not None:
            _sub(element, "boot", dev=self.boot_dev)
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<os>``.

        :raises ValueError: if it is not an ``hvm`` guest or has unsupported children.
        """
        _expect(element, "os")
        _only_children(element, ("type", "kernel", "initrd", "cmdline", "boot"))
        os_type = _child(element, "type")
        if _text(os_type) != "hvm":
            raise ValueError(f"unsupported <os><type> {_text(os_type)!r}")
        boots = element.findall("boot")
        if len(boots) > 1:
            raise ValueError("more than one <os><boot> is not supported")

        def optional(tag: str) -> str | None:
            child = element.find(tag)
            return None if child is None else (child.text or "")

        return cls(
            arch=os_type.get("arch"),
            machine=os_type.get("machine"),
            kernel=optional("kernel"),
            initrd=optional("initrd"),
            cmdline=optional("cmdline"),
            boot_dev=_attr(boots[0], "dev") if boots else None,
        )


@dataclass(frozen=True, slots=True)
class FeaturesConfig:
    """``<features>``: the ``<acpi/>`` and ``<apic/>`` flags."""

    acpi: bool = True
    apic: bool = True

    def to_xml(self) -> ElementTree.Element:
        """Build ``<features>``."""
        element = ElementTree.Element("features")
        if self.acpi:
            _sub(element, "acpi")
        if self.apic:
            _sub(element, "apic")
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<features>``.

        :raises ValueError: on a feature this module does not model.
        """
        _expect(element, "features")
        _only_children(element, ("acpi", "apic"))
        return cls(acpi=element.find("acpi") is not None, apic=element.find("apic") is not None)


@dataclass(frozen=True, slots=True)
class PmConfig:
    """``<pm>``: whether the guest may suspend to memory or to disk."""

    suspend_to_mem: bool
    suspend_to_disk: bool

    def to_xml(self) -> ElementTree.Element:
        """Build ``<pm><suspend-to-mem enabled=.../><suspend-to-disk enabled=.../></pm>``."""
        element = ElementTree.Element("pm")
        _sub(element, "suspend-to-mem", enabled=_yes_no(self.suspend_to_mem))
        _sub(element, "suspend-to-disk", enabled=_yes_no(self.suspend_to_disk))
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<pm>``.

        :raises ValueError: if either setting is missing.
        """
        _expect(element, "pm")
        _only_children(element, ("suspend-to-mem", "suspend-to-disk"))
        return cls(
            suspend_to_mem=_parse_yes_no(_child(element, "suspend-to-mem"), "enabled"),
            suspend_to_disk=_parse_yes_no(_child(element, "suspend-to-disk"), "enabled"),
        )


@dataclass(frozen=True, slots=True)
class DiskConfig:
    """``<disk type='file' device='disk'>`` with an optional LUKS ``<encryption>``."""

    source_file: str
    driver_type: str
    target_dev: str
    target_bus: str
    #: UUID of the ``<secret type='passphrase'>`` unlocking the LUKS volume, if encrypted.
    luks_secret_uuid: uuid.UUID | None = None
    #: ``<readonly/>``: the guest cannot write the disk at all.
    readonly: bool = False
    #: ``<transient shareBacking='yes'/>``: the guest writes to an overlay libvirt creates next
    #: to the source when the domain starts and deletes when it stops; the source itself is
    #: never written, and other domains may use it at the same time (``shareBacking``: libvirt
    #: opens it read-only and adds the disk once the overlay exists).
    transient: bool = False

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<disk>`` element."""
        element = ElementTree.Element("disk", type="file", device="disk")
        _sub(element, "driver", name="qemu", type=self.driver_type)
        _sub(element, "source", file=self.source_file)
        _sub(element, "target", dev=self.target_dev, bus=self.target_bus)
        if self.readonly:
            _sub(element, "readonly")
        if self.transient:
            _sub(element, "transient", shareBacking="yes")
        if self.luks_secret_uuid is not None:
            encryption = _sub(element, "encryption", format="luks")
            _sub(encryption, "secret", type="passphrase", uuid=str(self.luks_secret_uuid))
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read a file-backed ``<disk>``.

        :raises ValueError: for another disk type, or an encryption other than LUKS.
        """
        _expect(element, "disk")
        if element.get("type") != "file" or element.get("device") != "disk":
            raise ValueError("only <disk type='file' device='disk'> is supported")
        _only_children(
            element, ("driver", "source", "target", "readonly", "transient", "encryption")
        )
        readonly, transient = element.find("readonly"), element.find("transient")
        if readonly is not None and (len(readonly) or readonly.attrib):
            raise ValueError("only a plain <readonly/> is supported")
        shared = {"shareBacking": "yes"}
        if transient is not None and (len(transient) or transient.attrib != shared):
            raise ValueError("only <transient shareBacking='yes'/> is supported")
        target = _child(element, "target")
        secret_uuid = None
        encryption = element.find("encryption")
        if encryption is not None:
            if encryption.get("format") != "luks":
                raise ValueError("only <encryption format='luks'> is supported")
            secret = _child(encryption, "secret")
            if secret.get("type") != "passphrase":
                raise ValueError("only <secret type='passphrase'> is supported")
            secret_uuid = uuid.UUID(_attr(secret, "uuid"))
        return cls(
            source_file=_attr(_child(element, "source"), "file"),
            driver_type=_attr(_child(element, "driver"), "type"),
            target_dev=_attr(target, "dev"),
            target_bus=_attr(target, "bus"),
            luks_secret_uuid=secret_uuid,
            readonly=readonly is not None,
            transient=transient is not None,
        )


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """``<controller type=... model=.../>`` (e.g. ``type='usb' model='none'``: no USB bus)."""

    type: str
    model: str

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<controller>`` element."""
        return ElementTree.Element("controller", type=self.type, model=self.model)

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<controller>``.

        :raises ValueError: if ``type`` or ``model`` is missing.
        """
        _expect(element, "controller")
        _only_children(element, ())
        return cls(type=_attr(element, "type"), model=_attr(element, "model"))


@dataclass(frozen=True, slots=True)
class InterfaceConfig:
    """``<interface type='network'>`` on a named libvirt network."""

    network: str
    model: str = "virtio"

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<interface>`` element."""
        element = ElementTree.Element("interface", type="network")
        _sub(element, "source", network=self.network)
        _sub(element, "model", type=self.model)
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<interface type='network'>``.

        :raises ValueError: for any other interface type.
        """
        _expect(element, "interface")
        if element.get("type") != "network":
            raise ValueError("only <interface type='network'> is supported")
        _only_children(element, ("source", "model"))
        return cls(
            network=_attr(_child(element, "source"), "network"),
            model=_attr(_child(element, "model"), "type"),
        )


@dataclass(frozen=True, slots=True)
class SerialFileConfig:
    """``<serial type='file'>``: the guest's serial port written to a host file."""

    path: str
    port: int = 0

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<serial>`` element."""
        element = ElementTree.Element("serial", type="file")
        _sub(element, "source", path=self.path)
        _sub(element, "target", port=str(self.port))
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<serial type='file'>``.

        :raises ValueError: for any other serial type.
        """
        _expect(element, "serial")
        if element.get("type") != "file":
            raise ValueError("only <serial type='file'> is supported")
        _only_children(element, ("source", "target"))
        return cls(
            path=_attr(_child(element, "source"), "path"),
            port=int(_attr(_child(element, "target"), "port")),
        )


@dataclass(frozen=True, slots=True)
class ConsoleFileConfig:
    """``<console type='file'>`` aliasing the serial port (libvirt pairs it with serial 0)."""

    path: str
    port: int = 0

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<console>`` element."""
        element = ElementTree.Element("console", type="file")
        _sub(element, "source", path=self.path)
        _sub(element, "target", type="serial", port=str(self.port))
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<console type='file'>`` targeting a serial port.

        :raises ValueError: for any other console type or target.
        """
        _expect(element, "console")
        if element.get("type") != "file":
            raise ValueError("only <console type='file'> is supported")
        _only_children(element, ("source", "target"))
        target = _child(element, "target")
        if target.get("type") != "serial":
            raise ValueError("only <console><target type='serial'> is supported")
        return cls(path=_attr(_child(element, "source"), "path"), port=int(_attr(target, "port")))


@dataclass(frozen=True, slots=True)
class ChannelUnixConfig:
    """``<channel type='unix'><source mode='bind'/><target type='virtio' name=...>``.

    A virtio-serial port the host reaches through ``virDomainOpenChannel`` (libvirt picks the
    socket path when ``<source>`` has none); the guest sees ``/dev/virtio-ports/<name>``.
    """

    name: str

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<channel>`` element."""
        element = ElementTree.Element("channel", type="unix")
        _sub(element, "source", mode="bind")
        _sub(element, "target", type="virtio", name=self.name)
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<channel type='unix'>`` with a virtio target.

        :raises ValueError: for any other channel type, source mode or target type.
        """
        _expect(element, "channel")
        if element.get("type") != "unix":
            raise ValueError("only <channel type='unix'> is supported")
        _only_children(element, ("source", "target"))
        source = _child(element, "source")
        if source.get("mode") != "bind" or set(source.keys()) != {"mode"}:
            raise ValueError("only <channel><source mode='bind'/> is supported")
        target = _child(element, "target")
        if target.get("type") != "virtio":
            raise ValueError("only <channel><target type='virtio'> is supported")
        return cls(name=_attr(target, "name"))


@dataclass(frozen=True, slots=True)
class TpmConfig:
    """``<tpm>`` with an emulator (swtpm) backend, its state optionally encrypted."""

    model: str = "tpm-crb"
    version: str = "2.0"
    #: UUID of the libvirt secret whose passphrase encrypts the vTPM state.
    encryption_secret: uuid.UUID | None = None

    def to_xml(self) -> ElementTree.Element:
        """Build ``<tpm model=...><backend type='emulator' version=...>``."""
        element = ElementTree.Element("tpm", model=self.model)
        backend = _sub(element, "backend", type="emulator", version=self.version)
        if self.encryption_secret is not None:
            _sub(backend, "encryption", secret=str(self.encryption_secret))
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<tpm>``.

        :raises ValueError: for a backend other than ``emulator``.
        """
        _expect(element, "tpm")
        _only_children(element, ("backend",))
        backend = _child(element, "backend")
        if backend.get("type") != "emulator":
            raise ValueError("only <tpm><backend type='emulator'> is supported")
        _only_children(backend, ("encryption",))
        encryption = backend.find("encryption")
        return cls(
            model=_attr(element, "model"),
            version=_attr(backend, "version"),
            encryption_secret=(
                None if encryption is None else uuid.UUID(_attr(encryption, "secret"))
            ),
        )


@dataclass(frozen=True, slots=True)
class GraphicsVncConfig:
    """``<graphics type='vnc'>`` listening on one address only."""

    listen: str = "127.0.0.1"

    def to_xml(self) -> ElementTree.Element:
        """Build ``<graphics type='vnc' autoport='yes'><listen type='address' .../>``."""
        element = ElementTree.Element("graphics", type="vnc", autoport="yes")
        _sub(element, "listen", type="address", address=self.listen)
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<graphics type='vnc'>``.

        :raises ValueError: for another graphics type or listen kind.
        """
        _expect(element, "graphics")
        if element.get("type") != "vnc":
            raise ValueError("only <graphics type='vnc'> is supported")
        _only_children(element, ("listen",))
        listen = _child(element, "listen")
        if listen.get("type") != "address":
            raise ValueError("only <listen type='address'> is supported")
        return cls(listen=_attr(listen, "address"))


@dataclass(frozen=True, slots=True)
class VideoConfig:
    """``<video><model type=.../></video>``."""

    model: str = "virtio"

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<video>`` element."""
        element = ElementTree.Element("video")
        _sub(element, "model", type=self.model)
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<video>``.

        :raises ValueError: if it has no ``<model type>``.
        """
        _expect(element, "video")
        _only_children(element, ("model",))
        return cls(model=_attr(_child(element, "model"), "type"))


@dataclass(frozen=True, slots=True)
class HostdevPciConfig:
    """``<hostdev mode='subsystem' type='pci'>``: one host PCI function given to the guest."""

    address: PciAddress
    managed: bool = True
    #: ``<driver name='vfio'/>``: the only assignment backend libvirt still supports.
    driver: str = "vfio"

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<hostdev>`` element with its ``<source><address .../>``."""
        element = ElementTree.Element(
            "hostdev", mode="subsystem", type="pci", managed=_yes_no(self.managed)
        )
        _sub(element, "driver", name=self.driver)
        source = _sub(element, "source")
        _sub(
            source,
            "address",
            domain=f"{self.address.domain:#06x}",
            bus=f"{self.address.bus:#04x}",
            slot=f"{self.address.slot:#04x}",
            function=f"{self.address.function:#x}",
        )
        return element

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read a PCI ``<hostdev>``.

        :raises ValueError: for other hostdev kinds or a malformed address.
        """
        _expect(element, "hostdev")
        if element.get("mode") != "subsystem" or element.get("type") != "pci":
            raise ValueError("only <hostdev mode='subsystem' type='pci'> is supported")
        _only_children(element, ("driver", "source"))
        address = _child(_child(element, "source"), "address")
        return cls(
            address=PciAddress(
                domain=int(_attr(address, "domain"), 16),
                bus=int(_attr(address, "bus"), 16),
                slot=int(_attr(address, "slot"), 16),
                function=int(_attr(address, "function"), 16),
            ),
            managed=_parse_yes_no(element, "managed"),
            driver=_attr(_child(element, "driver"), "name"),
        )


@dataclass(frozen=True, slots=True)
class MemballoonConfig:
    """``<memballoon model=.../>`` (``none``: no balloon device at all)."""

    model: str = "none"

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<memballoon>`` element."""
        return ElementTree.Element("memballoon", model=self.model)

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<memballoon>``.

        :raises ValueError: if it has no model.
        """
        _expect(element, "memballoon")
        _only_children(element, ())
        return cls(model=_attr(element, "model"))


@dataclass(frozen=True, slots=True)
class SeclabelConfig:
    """``<seclabel type=... model=... relabel=.../>`` for one security driver."""

    type: str = "dynamic"
    model: str = "dac"
    relabel: bool = True

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<seclabel>`` element."""
        return ElementTree.Element(
            "seclabel", type=self.type, model=self.model, relabel=_yes_no(self.relabel)
        )

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read ``<seclabel>`` (without ``<label>``/``<imagelabel>`` children).

        :raises ValueError: if an attribute is missing or a child is present.
        """
        _expect(element, "seclabel")
        _only_children(element, ())
        return cls(
            type=_attr(element, "type"),
            model=_attr(element, "model"),
            relabel=_parse_yes_no(element, "relabel"),
        )


DeviceConfig = (
    DiskConfig
    | ControllerConfig
    | InterfaceConfig
    | SerialFileConfig
    | ConsoleFileConfig
    | ChannelUnixConfig
    | TpmConfig
    | GraphicsVncConfig
    | VideoConfig
    | HostdevPciConfig
    | MemballoonConfig
)

_DEVICE_PARSERS: dict[str, type[DeviceConfig]] = {
    "disk": DiskConfig,
    "controller": ControllerConfig,
    "interface": InterfaceConfig,
    "serial": SerialFileConfig,
    "console": ConsoleFileConfig,
    "channel": ChannelUnixConfig,
    "tpm": TpmConfig,
    "graphics": GraphicsVncConfig,
    "video": VideoConfig,
    "hostdev": HostdevPciConfig,
    "memballoon": MemballoonConfig,
}

_LIFECYCLE_ACTIONS = ("on_poweroff", "on_reboot", "on_crash")
_DOMAIN_CHILDREN = (
    "name",
    "uuid",
    "metadata",
    "memory",
    "vcpu",
    "cpu",
    "os",
    "features",
    *_LIFECYCLE_ACTIONS,
    "pm",
    "devices",
    "seclabel",
)


@dataclass(frozen=True, slots=True)
class DomainConfig:
    """``<domain type=...>``: the whole guest definition handed to ``virDomainDefineXML``."""

    type: str
    name: str
    uuid: uuid.UUID
    memory: MemoryConfig
    vcpu: VcpuConfig
    os: OsConfig
    features: FeaturesConfig
    devices: tuple[DeviceConfig, ...]
    seclabels: tuple[SeclabelConfig, ...] = ()
    metadata: MetadataConfig | None = None
    pm: PmConfig | None = None
    on_poweroff: str | None = None
    on_reboot: str | None = None
    on_crash: str | None = None
    cpu: CpuConfig | None = None

    def to_xml(self) -> ElementTree.Element:
        """Build the ``<domain>`` element, children in libvirt's own order."""
        domain = ElementTree.Element("domain", type=self.type)
        _sub(domain, "name", self.name)
        _sub(domain, "uuid", str(self.uuid))
        if self.metadata is not None:
            domain.append(self.metadata.to_xml())
        domain.append(self.memory.to_xml())
        domain.append(self.vcpu.to_xml())
        domain.append(self.os.to_xml())
        domain.append(self.features.to_xml())
        if self.cpu is not None:
            domain.append(self.cpu.to_xml())
        for action in _LIFECYCLE_ACTIONS:
            value = getattr(self, action)
            if value is not None:
                _sub(domain, action, value)
        if self.pm is not None:
            domain.append(self.pm.to_xml())
        devices = _sub(domain, "devices")
        for device in self.devices:
            devices.append(device.to_xml())
        for seclabel in self.seclabels:
            domain.append(seclabel.to_xml())
        return domain

    @classmethod
    def parse(cls, element: ElementTree.Element) -> Self:
        """Read a ``<domain>`` made of the elements this module models.

        :raises ValueError: on a missing required element or any unsupported element.
        """
        _expect(element, "domain")
        _only_children(element, _DOMAIN_CHILDREN)
        devices: list[DeviceConfig] = []
        for device in _child(element, "devices"):
            parser = _DEVICE_PARSERS.get(device.tag)
            if parser is None:
                raise ValueError(f"unsupported device <{device.tag}>")
            devices.append(parser.parse(device))
        metadata = element.find("metadata")
        pm = element.find("pm")
        cpu = element.find("cpu")
        lifecycle = {action: element.find(action) for action in _LIFECYCLE_ACTIONS}
        return cls(
            type=_attr(element, "type"),
            name=_child_text(element, "name"),
            uuid=uuid.UUID(_child_text(element, "uuid")),
            metadata=None if metadata is None else MetadataConfig.parse(metadata),
            memory=MemoryConfig.parse(_child(element, "memory")),
            vcpu=VcpuConfig.parse(_child(element, "vcpu")),
            os=OsConfig.parse(_child(element, "os")),
            features=FeaturesConfig.parse(_child(element, "features")),
            pm=None if pm is None else PmConfig.parse(pm),
            cpu=None if cpu is None else CpuConfig.parse(cpu),
            on_poweroff=_optional_text(lifecycle["on_poweroff"]),
            on_reboot=_optional_text(lifecycle["on_reboot"]),
            on_crash=_optional_text(lifecycle["on_crash"]),
            devices=tuple(devices),
            seclabels=tuple(SeclabelConfig.parse(s) for s in element.findall("seclabel")),
        )

    def to_string(self) -> str:
        """Serialise as indented XML text, identical for equal configs (golden files)."""
        return to_string(self.to_xml())

    @classmethod
    def from_string(cls, text: str) -> Self:
        """Parse domain XML text.

        :raises ValueError: if it is not well-formed or not a supported ``<domain>``.
        """
        return cls.parse(from_string(text))


def _optional_text(element: ElementTree.Element | None) -> str | None:
    """The text of an optional element, ``None`` when absent."""
    return None if element is None else _text(element)


def to_string(element: ElementTree.Element) -> str:
    """Serialise ``element`` with two-space indentation and a final newline."""
    ElementTree.indent(element, space=_INDENT)
    return ElementTree.tostring(element, encoding="unicode") + "\n"


def from_string(text: str) -> ElementTree.Element:
    """Parse XML text into an element.

    :raises ValueError: if ``text`` is not well-formed XML.
    """
    try:
        # Domain XML comes from this package or from libvirt, never from a user; the stdlib
        # parser neither resolves external entities nor (with expat >= 2.4) expands them
        # without bound.
        return ElementTree.fromstring(text)  # noqa: S314
    except ElementTree.ParseError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from exc
