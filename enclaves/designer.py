"""Every isolation decision about an enclave's libvirt domain, in one place.

Owns the translation of an :class:`~enclaves.spec.EnclaveSpec` into a
:class:`~enclaves.config.DomainConfig`, and with it the rules of DESIGN.md "Isolation rules"
that live in the domain XML:

* whole GPUs only: one ``<hostdev mode='subsystem' type='pci' managed='yes'>`` (VFIO) per
  function of each GPU's IOMMU group, no function handed out twice;
* the disk is a LUKS volume unlocked by a libvirt secret (``<encryption format='luks'>``);
* a ``tpm-crb`` emulator vTPM always, its state encrypted (``<backend><encryption secret>``),
  which classified enclaves must have;
* no NIC (``NONE``), one NIC on the enclave's own isolated network (``ISOLATED``; a
  ``<network>`` with no ``<forward>`` and no ``<ip>``, see :func:`isolated_network_xml`), or
  an operator network for civilian enclaves only (``CIVILIAN_BRIDGE``);
* one virtio-serial ``<channel>``, ``org.sovereign.agent.0``, the only way in for work: the
  control plane reaches Sovereign's agent through ``virDomainOpenChannel`` (no NIC needed);
  no other channel (no QEMU guest agent, whose commands read and write guest files as root);
* no memory balloon, no shared ``<filesystem>``, no USB bus,
  no ``<graphics>``/``<video>`` unless a civilian spec allows them; no suspend to disk and no
  crash dump (``on_crash destroy``), which would write guest memory to the host;
* the serial console goes to a host file; a dynamic ``<seclabel>`` confines the QEMU process.

It must not talk to libvirt, read inventory or secrets, or build XML by hand (that is
:mod:`enclaves.config`). A refused spec raises :class:`IsolationError` saying which rule.
"""

from __future__ import annotations

import uuid
from xml.etree import ElementTree

from enclaves import config
from enclaves.spec import DirectKernel, EnclaveSpec, NetworkPolicy, PciAddress

#: Guest architecture; the bundled hosts and production hypervisors are x86_64.
GUEST_ARCH = "x86_64"
#: Security drivers a seclabel may name: ``dac`` everywhere, ``selinux`` (sVirt MCS
#: categories per domain) on SELinux hosts, ``apparmor`` on AppArmor hosts.
SECURITY_MODELS: tuple[str, ...] = ("dac", "selinux", "apparmor")
#: Prefix of the per-enclave isolated network's name (see :func:`isolated_network_name`).
ISOLATED_NETWORK_PREFIX = "sov-iso-"
#: The virtio-serial port of Sovereign's agent (:mod:`enclaves.channel` opens it).
AGENT_CHANNEL = "org.sovereign.agent.0"


class IsolationError(ValueError):
    """An enclave spec would break an isolation rule; the message names the rule."""


def isolated_network_name(enclave_uuid: uuid.UUID) -> str:
    """Return the name of the enclave's own isolated libvirt network."""
    return f"{ISOLATED_NETWORK_PREFIX}{enclave_uuid.hex[:12]}"


def isolated_network_xml(name: str) -> str:
    """Return a libvirt ``<network>`` with no ``<forward>`` and no ``<ip>`` called ``name``.

    Without ``<forward>`` the bridge reaches no host interface; without ``<ip>`` the host has
    no address on it and libvirt starts no dnsmasq (no DHCP, no DNS): guests on it can only
    reach each other, and each enclave gets its own.
    """
    network = ElementTree.Element("network")
    ElementTree.SubElement(network, "name").text = name
    return config.to_string(network)


def design(
    spec: EnclaveSpec, *, security_model: str = "dac", machine: str | None = None
) -> config.DomainConfig:
    """Return the isolated libvirt domain for ``spec``.

    ``security_model`` picks the seclabel's security driver (``selinux`` on SELinux hosts);
    ``machine`` the machine type (e.g. ``q35``; ``None`` lets libvirt choose its default).

    :raises IsolationError: if the spec breaks an isolation rule (the message says which).
    """
    if security_model not in SECURITY_MODELS:
        raise IsolationError(
            f"security model must be one of {SECURITY_MODELS}, got {security_model!r}"
        )
    if spec.classified and (spec.allow_graphics or spec.allow_usb):
        raise IsolationError(
            f"enclave {spec.name}: classified enclaves get no graphics console and no USB bus"
        )
    devices: list[config.DeviceConfig] = [
        _disk(spec),
        # No USB bus at all unless allowed: no passthrough of host USB devices, no tablet.
        config.ControllerConfig(type="usb", model="qemu-xhci" if spec.allow_usb else "none"),
    ]
    devices.extend(_interfaces(spec))
    devices += [
        config.SerialFileConfig(path=spec.serial_log),
        config.ConsoleFileConfig(path=spec.serial_log),
        config.ChannelUnixConfig(name=AGENT_CHANNEL),
        _tpm(spec),
    ]
    if spec.allow_graphics:
        devices += [config.GraphicsVncConfig(listen="127.0.0.1"), config.VideoConfig()]
    devices.extend(config.HostdevPciConfig(address=a) for a in _passthrough_functions(spec))
    # A balloon lets the host reclaim (and the guest leak) pages at runtime; GPU enclaves pin
    # all of their memory for VFIO anyway.
    devices.append(config.MemballoonConfig(model="none"))
    return config.DomainConfig(
        type=spec.domain_type,
        name=spec.name,
        uuid=spec.uuid,
        metadata=config.MetadataConfig(
            enclave_id=spec.uuid, label=spec.label, classified=spec.classified
        ),
        memory=config.MemoryConfig(mib=spec.memory_mib),
        vcpu=config.VcpuConfig(count=spec.vcpus),
        os=_os(spec, machine),
        features=config.FeaturesConfig(acpi=True, apic=True),
        # Suspend to disk would write the guest's memory to the host in clear.
        pm=config.PmConfig(suspend_to_mem=False, suspend_to_disk=False),
        on_poweroff="destroy",
        on_reboot="restart",
        # Never 'coredump-*': a crash dump is the guest's memory on the host's disk.
        on_crash="destroy",
        devices=tuple(devices),
        # Dynamic: libvirt gives each domain its own label (sVirt MCS pair under SELinux)
        # and relabels its disk, TPM state and VFIO devices for it alone.
        seclabels=(config.SeclabelConfig(type="dynamic", model=security_model, relabel=True),),
    )


def _passthrough_functions(spec: EnclaveSpec) -> list[PciAddress]:
    """Every function of every assigned GPU's IOMMU group, each once.

    :raises IsolationError: if a function belongs to two assignments' groups.
    """
    owner: dict[PciAddress, PciAddress] = {}
    functions: list[PciAddress] = []
    for gpu in spec.gpus:
        address = PciAddress.parse(gpu.address)
        members = [PciAddress.parse(member) for member in gpu.group_members]
        if address not in members:
            raise IsolationError(
                f"GPU {address} is not in the IOMMU group given for it; VFIO assigns whole "
                f"IOMMU groups, so the group's members must come from the host's inventory"
            )
        for member in members:
            if member in owner:
                raise IsolationError(
                    f"PCI function {member} is in the IOMMU group of both GPU {owner[member]} "
                    f"and GPU {address}; pass each IOMMU group through exactly once"
                )
            owner[member] = address
            functions.append(member)
    return functions


def _disk(spec: EnclaveSpec) -> config.DiskConfig:
    """The LUKS-encrypted root disk.

    :raises IsolationError: if the disk has no LUKS secret.
    """
    if spec.disk.luks_secret_uuid is None:
        raise IsolationError(
            f"enclave {spec.name}: the disk {spec.disk.path} has no LUKS secret; every enclave "
            f"disk must be encrypted with its own key (isolation rule 3)"
        )
    return config.DiskConfig(
        source_file=spec.disk.path,
        driver_type=spec.disk.format,
        target_dev="vda",
        target_bus="virtio",
        luks_secret_uuid=spec.disk.luks_secret_uuid,
    )


def _tpm(spec: EnclaveSpec) -> config.TpmConfig:
    """The enclave's own vTPM, with encrypted state when a secret is given.

    :raises IsolationError: if a classified enclave's vTPM has no state encryption secret.
    """
    if spec.classified and spec.tpm.secret_uuid is None:
        raise IsolationError(
            f"enclave {spec.name}: a classified enclave's vTPM state must be encrypted; "
            f"give the TPM a secret uuid (isolation rules 3 and 5)"
        )
    return config.TpmConfig(model="tpm-crb", version="2.0", encryption_secret=spec.tpm.secret_uuid)


def _interfaces(spec: EnclaveSpec) -> list[config.InterfaceConfig]:
    """The NICs the network policy allows: none, or one.

    :raises IsolationError: for a classified enclave on a civilian network, or an isolated
        network that is not the enclave's own.
    """
    if spec.network is NetworkPolicy.NONE:
        return []
    assert spec.network_name is not None  # EnclaveSpec requires it for these policies
    if spec.network is NetworkPolicy.ISOLATED:
        expected = isolated_network_name(spec.uuid)
        if spec.network_name != expected:
            raise IsolationError(
                f"enclave {spec.name}: an isolated network is per enclave and must be named "
                f"{expected!r}, got {spec.network_name!r}"
            )
    elif spec.classified:
        raise IsolationError(
            f"enclave {spec.name}: classified enclaves get no NIC or an isolated network, "
            f"never the civilian network {spec.network_name!r} (isolation rule 4)"
        )
    return [config.InterfaceConfig(network=spec.network_name, model="virtio")]


def _os(spec: EnclaveSpec, machine: str | None) -> config.OsConfig:
    """Direct kernel boot for test guests, else boot from the enclave's disk."""
    if isinstance(spec.boot, DirectKernel):
        return config.OsConfig(
            arch=GUEST_ARCH,
            machine=machine,
            kernel=spec.boot.kernel,
            initrd=spec.boot.initrd,
            cmdline=spec.boot.cmdline,
        )
    return config.OsConfig(arch=GUEST_ARCH, machine=machine, boot_dev="hd")
