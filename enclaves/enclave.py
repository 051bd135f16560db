"""One enclave on one host: the entry point the control plane drives.

Owns :class:`EnclaveHost` (the objects of one hypervisor, sharing its one connection: domains,
volumes, secrets, networks and its inventory) and :class:`HostedEnclave`, "this enclave on this
host", which does one idempotent :class:`~enclaves.steps.ProvisionStep` or
:class:`~enclaves.steps.TeardownStep` at a time and reads the enclave's serial console (the
guest agent's channel will be opened here too). It owns what a step means on a host: the
stable libvirt secret UUIDs of an enclave, the LUKS passphrase's encoding, the pool the
volumes live in, the checks libvirt's test driver does not make (a passed-through GPU must be
on the host and no other domain may hold a function of its IOMMU group:
:class:`~enclaves.errors.GpuUnavailableError`), and what the test driver cannot do (its
volumes are bookkeeping only, it has no secret store): those steps are simulated and say so.

Images: when the plan names a catalog image whose files are in the control plane's image store
(:class:`~enclaves.imagestore.ImageStore`, ``GuestSettings.image_dir``), the VOLUME step uploads
the image's disk, kernel and initramfs into the host's pool once (``sovereign-image-<digest>.*``,
each hashed as it streams and compared with the image's manifest, whose own hash is the
catalog's checksum) and clones the enclave's LUKS volume from the disk; DEFINE boots the
image's kernel and initramfs from the pool with the image's command line. A plan without an
image, or whose image has no files in the store (catalog entries seeded without content),
gets an empty LUKS volume and the configured kernel, and the step's note says so.

Every refusal is an :class:`~enclaves.errors.EnclaveError`: a spec, designer or resource
refusal (``ValueError``) of the planned enclave becomes
:class:`~enclaves.errors.EnclaveRefusedError` here, once. It makes no isolation decision itself
(the designer does), writes no domain XML, and never logs a key.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from enclaves import designer
from enclaves.errors import EnclaveRefusedError, GpuUnavailableError
from enclaves.guest import DomainStatus, Guests
from enclaves.host import HostIdentity, LibvirtHost
from enclaves.imagestore import ImageStore, StoredImage, check_qcow2
from enclaves.inventory import HostInventory, inventory
from enclaves.plan import EnclavePlan
from enclaves.resources import Networks, Secrets, Volumes
from enclaves.spec import (
    DirectKernel,
    DiskSpec,
    EnclaveSpec,
    ImageBoot,
    NetworkPolicy,
    TpmSpec,
)
from enclaves.steps import ProvisionStep, TeardownStep

log = logging.getLogger(__name__)

#: Name of the libvirt storage pool holding enclave volumes on every host.
POOL_NAME = "sovereign-enclaves"
#: Prefix of the pool volumes holding approved images (``<prefix><digest>.qcow2`` and the
#: ``.vmlinuz`` / ``.initrd`` of direct kernel boot): uploaded once per host, never booted
#: directly, only cloned.
IMAGE_VOLUME_PREFIX = "sovereign-image-"


def image_volume(image: StoredImage, suffix: str) -> str:
    """The pool volume name of one file of ``image`` (``qcow2``, ``vmlinuz`` or ``initrd``)."""
    return f"{IMAGE_VOLUME_PREFIX}{image.digest}.{suffix}"


def secret_uuid(enclave_id: uuid.UUID, usage: str) -> uuid.UUID:
    """Stable libvirt secret UUIDs per enclave (``luks``, ``vtpm``), so every step finds them."""
    return uuid.uuid5(enclave_id, f"sovereign/{usage}")


class EnclaveKeys(Protocol):
    """The enclave's key material handed to libvirt (never stored or logged here)."""

    @property
    def luks_passphrase(self) -> bytes:
        """The 256-bit data key of the LUKS volume."""
        ...

    @property
    def vtpm_secret(self) -> bytes:
        """The key encrypting the vTPM state."""
        ...


def luks_passphrase(keys: EnclaveKeys) -> bytes:
    """The LUKS passphrase handed to libvirt: the 256-bit data key, base64-encoded.

    QEMU reads a LUKS passphrase secret as UTF-8 text and refuses raw key bytes; base64 keeps
    all 256 bits and is the same on every step, so the volume always unlocks.
    """
    return base64.b64encode(keys.luks_passphrase)


@dataclass(frozen=True)
class GuestSettings:
    """How enclaves are laid out on hosts (from configuration)."""

    pool_path: str
    console_dir: str
    #: "isolated" (one NIC on the enclave's own network) or "none" (no NIC at all).
    network: str = "isolated"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str = ""
    machine: str | None = None
    security_model: str = "dac"
    stop_timeout_s: float = 30.0
    #: How long opening a connection may take before the host counts as unavailable.
    connect_timeout_s: float = 10.0
    #: The control plane's image store (:class:`~enclaves.imagestore.ImageStore`); None: no
    #: images with content, enclave disks start empty.
    image_dir: str | None = None
    #: ``<cpu mode=...>``: ``host-passthrough`` (KVM) or ``maximum`` (TCG); None: QEMU's
    #: default model (qemu64), which lacks the SSE4.2 that numpy and PyTorch wheels need.
    cpu_mode: str | None = None


@contextlib.contextmanager
def _refused() -> Iterator[None]:
    """A ``ValueError`` of the spec, designer or resources refuses the planned enclave."""
    try:
        yield
    except ValueError as e:
        raise EnclaveRefusedError(str(e)) from e


class EnclaveHost:
    """One hypervisor's objects, sharing its connection (one per URI: the test driver keeps
    its state per connection, so reconnecting would forget every domain)."""

    def __init__(self, uri: str, settings: GuestSettings) -> None:
        self.settings = settings
        self.conn = LibvirtHost(uri, open_timeout=settings.connect_timeout_s)
        self.guests = Guests(self.conn)
        self.volumes = Volumes(self.conn, POOL_NAME, settings.pool_path)
        self.secrets = Secrets(self.conn)
        self.networks = Networks(self.conn)
        self._simulated: bool | None = None

    @property
    def uri(self) -> str:
        """The URI the connection opens."""
        return self.conn.uri

    @property
    def simulated(self) -> bool:
        """Whether this is libvirt's test driver (simulated hosts of the embedded default)."""
        if self._simulated is None:
            self._simulated = self.hypervisor_type().upper() == "TEST"
        return self._simulated

    def hypervisor_type(self) -> str:
        """The driver's name: ``QEMU`` in production, ``TEST`` in development."""
        return self.conn.info().hypervisor_type

    def inventory(self) -> HostInventory:
        """Capacity and GPUs of the host."""
        return inventory(self.conn)

    def identity(self, expected: HostIdentity | None = None) -> HostIdentity:
        """The host's identity; a given ``expected`` is required of every later (re)open."""
        if expected is not None and expected.host_uuid is not None:
            self.conn.pin(expected)
        return self.conn.identity()

    def domains(self) -> list[DomainStatus]:
        """Every domain defined on the host."""
        return self.guests.list()

    def watch(self, callback: Callable[[uuid.UUID, str], None]) -> Callable[[], None]:
        """Subscribe to the host's domain lifecycle events; returns the unsubscribe function."""
        return self.guests.watch(callback)

    def enclave(self, plan: EnclavePlan) -> HostedEnclave:
        """``plan``'s enclave on this host."""
        return HostedEnclave(self, plan)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def upload_image(host: EnclaveHost, image: StoredImage) -> str:
    """Upload ``image``'s disk, kernel and initramfs into ``host``'s pool once, each verified
    against the image's manifest as it streams; return the disk's volume name.

    :raises EnclaveError: if a file does not match its manifest hash or libvirt refuses.
    """
    for entry, suffix, fmt in (
        (image.disk, "qcow2", "qcow2"),
        (image.kernel, "vmlinuz", "raw"),
        (image.initrd, "initrd", "raw"),
    ):
        if entry is None:
            continue
        capacity = check_qcow2(entry.path) if fmt == "qcow2" else entry.size
        host.volumes.upload(
            image_volume(image, suffix),
            entry.path,
            sha256=entry.sha256,
            fmt="qcow2" if fmt == "qcow2" else "raw",
            capacity=capacity,
        )
    return image_volume(image, "qcow2")


def pool_volume_path(host: EnclaveHost, name: str) -> str:
    """Where the pool volume ``name`` lives on ``host`` (libvirt's answer, else the pool path)."""
    return host.volumes.path(name) or str(Path(host.settings.pool_path) / name)


class HostedEnclave:
    """One enclave on one host: its steps, each idempotent, and its console."""

    def __init__(self, host: EnclaveHost, plan: EnclavePlan) -> None:
        self._host = host
        self._plan = plan
        self._settings = host.settings

    @property
    def console_path(self) -> str:
        """Where the enclave's serial console is written on the host."""
        return str(Path(self._settings.console_dir) / f"{self._plan.domain_name}.log")

    # -- provisioning ---------------------------------------------------------------------

    def provision(self, step: ProvisionStep, keys: EnclaveKeys | None) -> str:
        """Do provisioning ``step``; returns a note for the record (never a secret).

        :raises EnclaveRefusedError: the plan may not be built (GpuUnavailableError: a GPU
            is missing or held by another domain).
        :raises EnclaveError: libvirt refused, or HypervisorUnavailableError: unreachable.
        """
        plan, host = self._plan, self._host
        with _refused():
            match step:
                case ProvisionStep.SECRETS:
                    return self._define_secrets(keys)
                case ProvisionStep.VOLUME:
                    return self._create_volume()
                case ProvisionStep.NETWORK:
                    if self._settings.network != "isolated":
                        return "no network: the enclave gets no NIC"
                    name = designer.isolated_network_name(plan.enclave_id)
                    host.networks.ensure_isolated(name)
                    return f"isolated network {name} (no forward, no ip)"
                case ProvisionStep.DEFINE:
                    self._check_gpus()
                    host.guests.define(self.domain_xml())
                    return f"domain {plan.domain_name} defined"
                case ProvisionStep.START:
                    host.guests.start(plan.enclave_id)
                    return f"domain {plan.domain_name} started"
        raise ValueError(f"unknown provisioning step {step!r}")

    def domain_xml(self) -> str:
        """The domain XML the designer makes of this enclave (what :attr:`ProvisionStep.DEFINE`
        defines), without touching the host's domains.

        :raises EnclaveRefusedError: the spec is invalid or breaks an isolation rule.
        """
        with _refused():
            return designer.design(
                self._spec(),
                security_model=self._settings.security_model,
                machine=self._settings.machine,
            ).to_string()

    def _create_volume(self) -> str:
        plan, host = self._plan, self._host
        if host.simulated:
            # The test driver's pools hold 100 GiB in all and it has no secrets to unlock a
            # LUKS volume with: its volumes are bookkeeping only.
            path = host.volumes.create(plan.domain_name, 1, luks_secret_uuid=None)
            return f"simulated volume {path} ({plan.disk_gib} GiB asked; test driver)"
        image = self._image()
        if image is None:
            path = host.volumes.create(
                plan.domain_name,
                plan.disk_gib,
                luks_secret_uuid=secret_uuid(plan.enclave_id, "luks"),
            )
            return f"LUKS qcow2 volume {path}, {plan.disk_gib} GiB (empty: {self._no_image()})"
        base = self._upload(image)
        path = host.volumes.clone(
            plan.domain_name,
            base,
            plan.disk_gib,
            luks_secret_uuid=secret_uuid(plan.enclave_id, "luks"),
        )
        assert plan.image is not None
        return (
            f"LUKS qcow2 volume {path}, {plan.disk_gib} GiB, cloned from image "
            f"{plan.image.name} ({image.checksum}, verified on upload)"
        )

    def _no_image(self) -> str:
        if self._plan.image is None:
            return "no image in the plan"
        if self._settings.image_dir is None:
            return "no image store configured"
        return f"image {self._plan.image.name} has no files in the image store"

    def _image(self) -> StoredImage | None:
        """The plan's image from the image store, None when it has no files there.

        :raises EnclaveError: if the store's manifest does not match the catalog's checksum.
        """
        image, directory = self._plan.image, self._settings.image_dir
        if image is None or directory is None:
            return None
        return ImageStore(directory).find(image.checksum)

    def _upload(self, image: StoredImage) -> str:
        """Upload the image's files into the host's pool once, verified; return the disk's
        volume name."""
        return upload_image(self._host, image)

    def _define_secrets(self, keys: EnclaveKeys | None) -> str:
        plan, host = self._plan, self._host
        if not host.secrets.supported:
            return "simulated: this hypervisor driver has no secret store (libvirt test driver)"
        if keys is None:
            raise EnclaveRefusedError("the enclave's keys are not available")
        host.secrets.define(
            secret_uuid(plan.enclave_id, "luks"),
            "volume",
            self._volume_path(),
            luks_passphrase(keys),
        )
        host.secrets.define(
            secret_uuid(plan.enclave_id, "vtpm"),
            "vtpm",
            f"sovereign-vtpm-{plan.enclave_id}",
            keys.vtpm_secret,
        )
        return "libvirt secrets for the LUKS volume and the vTPM state defined (private)"

    def _volume_path(self) -> str:
        return self._pool_volume_path(self._plan.domain_name)

    def _pool_volume_path(self, name: str) -> str:
        return pool_volume_path(self._host, name)

    def _check_gpus(self) -> None:
        """Refuse a GPU the host does not have, or one another domain already holds.

        :raises GpuUnavailableError: naming the GPUs (and the domain holding them).
        """
        plan, host = self._plan, self._host
        if not plan.gpus:
            return
        present = {gpu.address for gpu in host.inventory().gpus}
        missing = sorted({gpu.address for gpu in plan.gpus} - present)
        if missing:
            raise GpuUnavailableError(f"host has no GPU {', '.join(missing)}")
        wanted = {member for gpu in plan.gpus for member in gpu.group_members}
        held = host.guests.passthrough()
        taken = sorted(a for a in wanted if a in held and held[a][0] != plan.enclave_id)
        if taken:
            owners = ", ".join(sorted({held[a][1] for a in taken}))
            raise GpuUnavailableError(
                f"GPU {', '.join(taken)} is already passed to domain {owners}"
            )

    def _spec(self) -> EnclaveSpec:
        plan, settings = self._plan, self._settings
        boot: DirectKernel | ImageBoot = ImageBoot()
        image = None if self._host.simulated else self._image()
        if image is not None:
            if image.kernel is not None and image.initrd is not None:
                # The image's own kernel and initramfs, from the pool they were uploaded to.
                boot = DirectKernel(
                    self._pool_volume_path(image_volume(image, "vmlinuz")),
                    self._pool_volume_path(image_volume(image, "initrd")),
                    image.cmdline,
                )
        elif settings.kernel and settings.initrd:
            boot = DirectKernel(settings.kernel, settings.initrd, settings.cmdline)
        isolated = settings.network == "isolated"
        return EnclaveSpec(
            name=plan.domain_name,
            uuid=plan.enclave_id,
            vcpus=plan.vcpus,
            memory_mib=plan.memory_mib,
            gpus=plan.gpus,
            disk=DiskSpec(
                path=self._volume_path(),
                luks_secret_uuid=secret_uuid(plan.enclave_id, "luks"),
            ),
            # The XML names the secrets even on the test driver, which never starts QEMU: the
            # designer's rules (encrypted disk and vTPM state) hold on every driver.
            tpm=TpmSpec(secret_uuid=secret_uuid(plan.enclave_id, "vtpm")),
            network=NetworkPolicy.ISOLATED if isolated else NetworkPolicy.NONE,
            network_name=designer.isolated_network_name(plan.enclave_id) if isolated else None,
            label=plan.label,
            classified=plan.classified,
            domain_type="qemu" if plan.domain_type == "qemu" else "kvm",
            cpu_mode=settings.cpu_mode,
            boot=boot,
            serial_log=self.console_path,
        )

    # -- teardown -------------------------------------------------------------------------

    def teardown(self, step: TeardownStep) -> str:
        """Do teardown ``step`` (tolerating what is already gone); returns a note.

        :raises EnclaveError: libvirt refused, or HypervisorUnavailableError: unreachable.
        :raises ValueError: for :attr:`TeardownStep.KEYS`, which is not a host's step.
        """
        plan, host = self._plan, self._host
        with _refused():
            match step:
                case TeardownStep.STOP:
                    host.guests.stop(plan.enclave_id, timeout_s=self._settings.stop_timeout_s)
                    return f"domain {plan.domain_name} stopped"
                case TeardownStep.UNDEFINE:
                    host.guests.undefine(plan.enclave_id)
                    return f"domain {plan.domain_name} undefined with its NVRAM and TPM state"
                case TeardownStep.VOLUME:
                    host.volumes.delete(plan.domain_name)
                    return f"volume {plan.domain_name} deleted"
                case TeardownStep.SECRETS:
                    if not host.secrets.supported:
                        return "simulated: no secret store on this driver"
                    for usage in ("luks", "vtpm"):
                        host.secrets.undefine(secret_uuid(plan.enclave_id, usage))
                    return "libvirt secrets undefined"
                case TeardownStep.NETWORK:
                    name = designer.isolated_network_name(plan.enclave_id)
                    host.networks.remove(name)
                    return f"network {name} removed"
        raise ValueError(f"unknown teardown step {step!r}")

    # -- console --------------------------------------------------------------------------

    def console(self, max_bytes: int) -> str:
        """The tail of the serial console log ('' when this machine cannot read one)."""
        path = Path(self.console_path)
        try:
            with path.open("rb") as handle:
                size = handle.seek(0, 2)
                handle.seek(max(0, size - max_bytes))
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        except OSError as e:
            # ascii(): the path and the error come from outside; a log line holds no controls.
            log.warning("cannot read console log %s: %s", ascii(str(path)), ascii(str(e)))
            return ""
