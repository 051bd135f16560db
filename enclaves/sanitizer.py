"""The sanitizer domain: a short-lived guest that scrubs one GPU between tenants.

Owns two things.

:func:`design_sanitizer` turns a :class:`SanitizerSpec` into a
:class:`~enclaves.config.DomainConfig`, with these rules:

* the GPU's whole IOMMU group as ``<hostdev mode='subsystem' type='pci' managed='yes'>``
  (VFIO), one per function, each once, and nothing else from the host;
* no NIC, no disk of any tenant: the one disk is the sanitizer image's root file system from
  the host's pool, ``<transient/>`` (the guest writes to an overlay libvirt creates when the
  domain starts and deletes when it stops; the image itself is never written) or
  ``<readonly/>``;
* direct kernel boot of the image's kernel and initramfs with the image's command line plus
  ``sovereign.mode=sanitize``, in which the agent answers only ``hello`` and ``scrub``;
* the agent channel ``org.sovereign.agent.0`` (the only way in), the serial console to a host
  file, no balloon, no USB bus, no graphics or video, no vTPM (it keeps no state), no suspend,
  and every lifecycle event ends the domain (``on_crash destroy``: no crash dump of a GPU's
  memory on the host's disk);
* a dynamic ``<seclabel>``; no Sovereign ``<metadata>``: it is not an enclave (the control
  plane knows it by its name, ``sov-sanitize-<address>``).

:func:`hand_over` runs one hand-over on a host: it destroys a leftover sanitizer domain of the
same name (a worker killed mid-hand-over), refuses a GPU another domain still holds, resets the
GPU's functions (:func:`enclaves.nodedev.reset_functions`), uploads the image into the pool
(once, verified), starts the domain as a transient one (``virDomainCreateXML``, validated
against libvirt's schema), waits for its agent's ``hello`` on the channel, asks it to ``scrub``
and always destroys the domain (a transient domain then disappears). All of it within one
deadline.

It must not decide which GPU is handed over or judge the scrub report (the control plane
validates it and writes the certificate), import the control plane, or catch
``libvirt.libvirtError`` (:func:`enclaves.host._translate` does).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from enclaves import config
from enclaves.agent.client import AgentClient
from enclaves.channel import ChannelTransport
from enclaves.designer import AGENT_CHANNEL, GUEST_ARCH, SECURITY_MODELS
from enclaves.enclave import EnclaveHost, image_volume, pool_volume_path, upload_image
from enclaves.errors import (
    AgentProtocolError,
    AgentTimeoutError,
    DomainNotFoundError,
    EnclaveError,
    GpuUnavailableError,
)
from enclaves.host import _import_libvirt, _translate
from enclaves.imagestore import StoredImage
from enclaves.nodedev import reset_functions
from enclaves.plan import sanitizer_uuid
from enclaves.spec import CPU_MODES, PciAddress

log = logging.getLogger(__name__)

#: Every sanitizer domain's name starts with this (``sov-sanitize-0000-18-00-0``).
NAME_PREFIX = "sov-sanitize-"
#: Appended to the image's kernel command line: the agent answers only hello and scrub.
SANITIZE_ARGUMENT = "sovereign.mode=sanitize"
_NAME_RE = re.compile(r"^sov-sanitize-[0-9a-f-]{1,48}$")
#: What a kernel command line may hold (it is written into XML and read by the guest kernel).
_CMDLINE_RE = re.compile(r"^[A-Za-z0-9 _./:=,+@-]{0,1024}$")
DiskMode = Literal["transient", "readonly"]
_DISK_MODES: tuple[str, ...] = ("transient", "readonly")
#: How long the channel is retried while the guest boots, between tries.
_CHANNEL_RETRY_S = 1.0
#: Per-call limit of the agent client before the scrub (hello).
_HELLO_TIMEOUT_S = 5.0


def _check_name(name: str) -> None:
    """:raises ValueError: unless ``name`` is a sanitizer domain's name (never an enclave's)."""
    if not _NAME_RE.fullmatch(name):
        raise ValueError(f"a sanitizer domain is named {NAME_PREFIX}<address>: {name!r}")


def _absolute(what: str, path: str) -> None:
    """:raises ValueError: unless ``path`` is a clean absolute path."""
    if not path.startswith("/") or "\x00" in path or ".." in Path(path).parts:
        raise ValueError(f"{what} must be a clean absolute path, got {path!r}")


@dataclass(frozen=True, slots=True)
class SanitizerSettings:
    """How sanitizer domains are laid out on hosts (from configuration, and the host's domain
    type)."""

    domain_type: Literal["kvm", "qemu"] = "kvm"
    memory_mib: int = 4096
    vcpus: int = 2
    machine: str | None = None
    cpu_mode: str | None = None
    security_model: str = "dac"
    disk_mode: DiskMode = "transient"
    #: The agent's simulated device memory in MiB: only for a domain with no GPU (tests).
    simulate_mib: int | None = None

    def __post_init__(self) -> None:
        if self.domain_type not in ("kvm", "qemu"):
            raise ValueError(f"domain type must be kvm or qemu, got {self.domain_type!r}")
        if not 256 <= self.memory_mib <= 1 << 22 or not 1 <= self.vcpus <= 256:
            raise ValueError("memory_mib must be 256..4194304 and vcpus 1..256")
        if self.cpu_mode is not None and self.cpu_mode not in CPU_MODES:
            raise ValueError(f"cpu mode must be one of {CPU_MODES}, got {self.cpu_mode!r}")
        if self.security_model not in SECURITY_MODELS:
            raise ValueError(f"security model must be one of {SECURITY_MODELS}")
        if self.disk_mode not in _DISK_MODES:
            raise ValueError(f"disk mode must be one of {_DISK_MODES}, got {self.disk_mode!r}")


@dataclass(frozen=True, slots=True)
class SanitizerSpec:
    """What one sanitizer domain gets."""

    name: str
    #: Every function of the GPU's IOMMU group (empty only where no GPU is passed through:
    #: a scrub of simulated device memory, as the QEMU tests do).
    functions: tuple[PciAddress, ...]
    #: The sanitizer image's root disk (qcow2) and direct-boot files on the host.
    disk: str
    kernel: str
    initrd: str
    #: The image's own kernel command line (``sovereign.mode=sanitize`` is appended).
    cmdline: str
    serial_log: str
    #: Domain type, memory, vCPUs, machine, CPU mode, security model and disk mode.
    layout: SanitizerSettings = SanitizerSettings()

    def __post_init__(self) -> None:
        _check_name(self.name)
        if len(set(self.functions)) != len(self.functions):
            raise ValueError("a PCI function is passed through twice")
        for what, path in (
            ("disk", self.disk),
            ("kernel", self.kernel),
            ("initrd", self.initrd),
            ("serial log", self.serial_log),
        ):
            _absolute(what, path)
        if not _CMDLINE_RE.fullmatch(self.cmdline) or "sovereign.mode=" in self.cmdline:
            raise ValueError(f"unsuitable image kernel command line {self.cmdline!r}")


def design_sanitizer(spec: SanitizerSpec) -> config.DomainConfig:
    """The sanitizer domain of ``spec`` (see the module's rules)."""
    layout = spec.layout
    devices: list[config.DeviceConfig] = [
        config.DiskConfig(
            source_file=spec.disk,
            driver_type="qcow2",
            target_dev="vda",
            target_bus="virtio",
            readonly=layout.disk_mode == "readonly",
            transient=layout.disk_mode == "transient",
        ),
        config.ControllerConfig(type="usb", model="none"),
        config.SerialFileConfig(path=spec.serial_log),
        config.ConsoleFileConfig(path=spec.serial_log),
        config.ChannelUnixConfig(name=AGENT_CHANNEL),
    ]
    devices.extend(config.HostdevPciConfig(address=a) for a in spec.functions)
    devices.append(config.MemballoonConfig(model="none"))
    return config.DomainConfig(
        type=layout.domain_type,
        name=spec.name,
        uuid=sanitizer_uuid(spec.name),
        memory=config.MemoryConfig(mib=layout.memory_mib),
        vcpu=config.VcpuConfig(count=layout.vcpus),
        os=config.OsConfig(
            arch=GUEST_ARCH,
            machine=layout.machine,
            kernel=spec.kernel,
            initrd=spec.initrd,
            cmdline=f"{spec.cmdline} {SANITIZE_ARGUMENT}".strip(),
        ),
        features=config.FeaturesConfig(acpi=True, apic=True),
        cpu=None if layout.cpu_mode is None else config.CpuConfig(mode=layout.cpu_mode),
        pm=config.PmConfig(suspend_to_mem=False, suspend_to_disk=False),
        # A sanitizer runs once: whatever ends it ends the domain.
        on_poweroff="destroy",
        on_reboot="destroy",
        on_crash="destroy",
        devices=tuple(devices),
        seclabels=(config.SeclabelConfig(type="dynamic", model=layout.security_model),),
    )


@dataclass(frozen=True, slots=True)
class HandoverResult:
    """What one hand-over did: the reset's record and the agent's (unchecked) scrub report."""

    domain: str
    reset: dict[str, Any]
    report: dict[str, Any]
    #: Seconds from the domain's start to the agent's hello, and of the scrub call.
    boot_s: float
    scrub_s: float
    leftover_destroyed: bool = False
    timings: dict[str, float] = field(default_factory=dict)


def destroy_leftover(host: EnclaveHost, name: str) -> bool:
    """Destroy (and undefine) a sanitizer domain called ``name``; whether there was one.

    :raises ValueError: if ``name`` is not a sanitizer domain's (an enclave is never touched).
    :raises EnclaveError: if libvirt refuses.
    """
    _check_name(name)
    conn = host.conn.connect()
    libvirt = _import_libvirt()
    try:
        with _translate(f"looking up domain {name} on {host.uri}"):
            domain = conn.lookupByName(name)
    except DomainNotFoundError:
        return False
    with contextlib.suppress(DomainNotFoundError):
        with _translate(f"destroying leftover domain {name} on {host.uri}"):
            if domain.isActive():
                domain.destroy()
        with _translate(f"undefining leftover domain {name} on {host.uri}"):
            if domain.isPersistent():
                domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE)
    return True


def _check_not_held(host: EnclaveHost, name: str, functions: Sequence[PciAddress]) -> None:
    """:raises GpuUnavailableError: if another domain passes one of ``functions`` through."""
    held = host.guests.passthrough()
    taken = sorted(str(a) for a in functions if str(a) in held and held[str(a)][1] != name)
    if taken:
        owners = ", ".join(sorted({held[a][1] for a in taken}))
        raise GpuUnavailableError(
            f"PCI function {', '.join(taken)} is still passed to domain {owners}; a GPU is "
            f"handed over only once no domain holds it"
        )


def _left(deadline: float, what: str) -> float:
    """Seconds left before ``deadline``.

    :raises AgentTimeoutError: if none are.
    """
    left = deadline - time.monotonic()
    if left <= 0:
        raise AgentTimeoutError(f"the hand-over ran out of time before {what}")
    return left


def hand_over(
    host: EnclaveHost,
    *,
    name: str,
    functions: Sequence[PciAddress],
    image: StoredImage,
    nonce: bytes,
    canary_nonce: bytes | None,
    settings: SanitizerSettings,
    timeout_s: float,
) -> HandoverResult:
    """Reset the GPU whose IOMMU group is ``functions`` and scrub it in a sanitizer domain.

    ``functions`` may be empty only with ``settings.simulate_mib`` (a scrub of simulated
    device memory, no GPU passed through: QEMU tests on machines without a GPU).

    :raises ValueError: for bad arguments.
    :raises GpuUnavailableError: if another domain still holds a function of the GPU.
    :raises UnsupportedError: if the host cannot reset PCI functions (libvirt's test driver).
    :raises AgentTimeoutError: if the whole hand-over did not finish within ``timeout_s``.
    :raises AgentError: if the agent did not answer properly.
    :raises HypervisorUnavailableError: if the host cannot be reached.
    :raises EnclaveError: for any other refusal.
    """
    if not timeout_s > 0:
        raise ValueError("timeout_s must be positive")
    _check_name(name)
    if not functions and settings.simulate_mib is None:
        raise ValueError("a hand-over without a GPU function scrubs simulated memory only")
    if image.kernel is None or image.initrd is None:
        raise ValueError(f"image {image.checksum} has no kernel and initramfs to boot directly")
    deadline = time.monotonic() + timeout_s
    timings: dict[str, float] = {}
    started = time.monotonic()
    leftover = destroy_leftover(host, name)
    _check_not_held(host, name, functions)
    if functions:
        reset = reset_functions(host.conn, functions).as_dict()
    else:
        reset = {
            "type": "none",
            "simulated": True,
            "functions": [],
            "duration_ms": 0.0,
            "note": "no GPU passed through: the scrub ran on simulated device memory",
        }
    timings["reset_s"] = time.monotonic() - started
    _left(deadline, "uploading the sanitizer image")
    at = time.monotonic()
    upload_image(host, image)
    timings["upload_s"] = time.monotonic() - at
    spec = SanitizerSpec(
        name=name,
        functions=tuple(functions),
        disk=pool_volume_path(host, image_volume(image, "qcow2")),
        kernel=pool_volume_path(host, image_volume(image, "vmlinuz")),
        initrd=pool_volume_path(host, image_volume(image, "initrd")),
        cmdline=image.cmdline,
        serial_log=str(Path(host.settings.console_dir) / f"{name}.log"),
        layout=settings,
    )
    xml = design_sanitizer(spec).to_string()
    _left(deadline, "starting the sanitizer domain")
    libvirt = _import_libvirt()
    conn = host.conn.connect()
    with _translate(f"starting sanitizer domain {name} on {host.uri}"):
        domain = conn.createXML(xml, libvirt.VIR_DOMAIN_START_VALIDATE)
    booted = time.monotonic()
    try:
        client = _wait_for_agent(host, spec, image, deadline)
        boot_s = time.monotonic() - booted
        try:
            at = time.monotonic()
            report = client.scrub(
                nonce=nonce,
                canary_nonce=canary_nonce,
                simulate_mib=settings.simulate_mib,
                timeout_s=_left(deadline, "the scrub"),
            )
            scrub_s = time.monotonic() - at
        finally:
            client.close()
    finally:
        _destroy(host, name, domain)
    timings["total_s"] = time.monotonic() - started
    timings["boot_s"], timings["scrub_s"] = boot_s, scrub_s
    log.info(
        "sanitizer %s on %s: reset %.2f s, image upload %.2f s, boot to hello %.2f s, "
        "scrub %.2f s, total %.2f s",
        name,
        host.uri,
        timings["reset_s"],
        timings["upload_s"],
        boot_s,
        scrub_s,
        timings["total_s"],
    )
    return HandoverResult(
        domain=name,
        reset=reset,
        report=report,
        boot_s=boot_s,
        scrub_s=scrub_s,
        leftover_destroyed=leftover,
        timings=timings,
    )


def _destroy(host: EnclaveHost, name: str, domain: Any) -> None:
    """Destroy the transient sanitizer domain; one that already ended is fine.

    :raises EnclaveError: if libvirt refuses and the domain still runs.
    """
    try:
        with _translate(f"destroying sanitizer domain {name} on {host.uri}"):
            domain.destroy()
    except DomainNotFoundError:
        return
    except EnclaveError:
        # "domain is not running": it ended (a crash, a power-off) before it was destroyed.
        try:
            with _translate(f"reading the state of sanitizer domain {name}"):
                active = bool(domain.isActive())
        except DomainNotFoundError:
            return  # a transient domain that ended is gone
        if active:
            raise


def _wait_for_agent(
    host: EnclaveHost, spec: SanitizerSpec, image: StoredImage, deadline: float
) -> AgentClient:
    """Open the channel and wait for the agent's ``hello``, in sanitize mode, from the image
    it booted.

    :raises AgentTimeoutError: if it does not answer before ``deadline``.
    :raises AgentError: if it answers in another mode or from another image.
    """
    domain_uuid = sanitizer_uuid(spec.name)
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            client = AgentClient(
                ChannelTransport.open(host.conn, domain_uuid), timeout_s=_HELLO_TIMEOUT_S
            )
        except DomainNotFoundError:
            raise
        except EnclaveError as e:
            last = e.message
            time.sleep(_CHANNEL_RETRY_S)
            continue
        try:
            hello = client.hello()
        except EnclaveError as e:
            # Not up yet: QEMU holds the host end, nothing reads in the guest.
            last = e.message
            with contextlib.suppress(EnclaveError):
                client.close()
            time.sleep(_CHANNEL_RETRY_S)
            continue
        if hello.mode != "sanitize":
            client.close()
            raise AgentProtocolError(
                f"the sanitizer domain's agent runs in {hello.mode!r} mode, not 'sanitize'"
            )
        if image.recipe_digest and hello.image_digest != image.recipe_digest:
            client.close()
            raise AgentProtocolError(
                f"the sanitizer domain's agent reports image {hello.image_digest!r}, not the "
                f"sanitizer image's {image.recipe_digest!r}"
            )
        return client
    raise AgentTimeoutError(
        f"the sanitizer domain {spec.name}'s agent did not answer in time (last: {last})"
    )
