"""Hypervisors through :mod:`enclaves`: the :class:`~sovereign.services.ports.Hypervisor` port.

Owns :class:`LibvirtHypervisor`: one long-lived connection per libvirt URI (the test driver keeps
its state per connection, so reconnecting would forget every domain), the mapping from an
:class:`~sovereign.services.ports.EnclavePlan` to an :class:`~enclaves.spec.EnclaveSpec`, and the
translation of :mod:`enclaves.errors` into :mod:`sovereign.errors`, once, here. Every URI is
checked against the configured :class:`~enclaves.uri.UriPolicy` before a connection to it is even
created, and opened under a time limit; every (re)opened connection must answer with the host
identity it first had, or the one pinned by :meth:`LibvirtHypervisor.identify`. It also enforces
what libvirt's test driver does not: a passed-through GPU must exist on the host and no other
domain may hold it. The designer (:mod:`enclaves.designer`) makes every isolation decision; this
module never writes domain XML itself. Secrets are handed to libvirt and never logged.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from enclaves import designer
from enclaves import host as libvirt_host
from enclaves.errors import EnclaveError, HostIdentityChangedError, HypervisorUnavailableError
from enclaves.guest import Guests
from enclaves.host import LibvirtHost
from enclaves.inventory import inventory
from enclaves.resources import Networks, Secrets, Volumes
from enclaves.spec import (
    DirectKernel,
    DiskSpec,
    EnclaveSpec,
    GpuAssignment,
    ImageBoot,
    NetworkPolicy,
    PciAddress,
    TpmSpec,
)
from enclaves.uri import UriPolicy, UriRefusedError, check_uri
from sovereign.domain.fleet import HostIdentity
from sovereign.domain.keys import EnclaveSecrets
from sovereign.errors import (
    ConflictError,
    DependencyUnavailableError,
    HostIdentityError,
    InvalidInputError,
)
from sovereign.services.ports import DiscoveredGpu, DomainFacts, EnclavePlan, HostFacts
from sovereign.text import for_log

log = logging.getLogger(__name__)

#: Name of the libvirt storage pool holding enclave volumes on every host.
POOL_NAME = "sovereign-enclaves"


@contextlib.contextmanager
def _translated(uri: str, action: str) -> Iterator[None]:
    """Turn an :class:`EnclaveError` into the control plane's errors (the one place)."""
    try:
        yield
    except HypervisorUnavailableError as e:
        raise DependencyUnavailableError(
            f"hypervisor {uri} is unavailable ({action})", dependency="hypervisor"
        ) from e
    except HostIdentityChangedError as e:
        raise HostIdentityError(reason=e.message) from e
    except EnclaveError as e:
        raise ConflictError(reason=f"hypervisor {uri} refused to {action}: {e.message}") from e
    except ValueError as e:
        # The spec or the designer refused the enclave: an isolation rule, not an outage.
        raise ConflictError(reason=f"cannot {action} on {uri}: {e}") from e


def _secret_uuid(enclave_id: uuid.UUID, usage: str) -> uuid.UUID:
    """Stable libvirt secret UUIDs per enclave, so every step can find them again."""
    return uuid.uuid5(enclave_id, f"sovereign/{usage}")


def luks_passphrase(secrets: EnclaveSecrets) -> bytes:
    """The LUKS passphrase handed to libvirt: the 256-bit data key, base64-encoded.

    QEMU reads a LUKS passphrase secret as UTF-8 text and refuses raw key bytes; base64 keeps
    all 256 bits and is the same on every step, so the volume always unlocks.
    """
    return base64.b64encode(secrets.luks_passphrase)


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


class _Host:
    """The objects of one host, sharing its connection."""

    def __init__(self, uri: str, settings: GuestSettings) -> None:
        self.conn = LibvirtHost(uri, open_timeout=settings.connect_timeout_s)
        self.guests = Guests(self.conn)
        self.volumes = Volumes(self.conn, POOL_NAME, settings.pool_path)
        self.secrets = Secrets(self.conn)
        self.networks = Networks(self.conn)
        self._simulated: bool | None = None

    @property
    def simulated(self) -> bool:
        """Whether this is libvirt's test driver (simulated hosts of the embedded default)."""
        if self._simulated is None:
            self._simulated = self.conn.info().hypervisor_type.upper() == "TEST"
        return self._simulated


class LibvirtHypervisor:
    """The fleet's hypervisors over libvirt, one cached connection per URI."""

    def __init__(self, settings: GuestSettings, uris: UriPolicy | None = None) -> None:
        """``uris`` says which URIs may be opened (default: ``qemu+tls://`` only)."""
        self._settings = settings
        self._uris = uris if uris is not None else UriPolicy()
        self._hosts: dict[str, _Host] = {}
        self._lock = threading.Lock()

    def check_uri(self, uri: str) -> str:
        """The canonical form of ``uri`` if the policy allows it; nothing is opened.

        :raises InvalidInputError: saying why the URI is refused.
        """
        try:
            return check_uri(uri, self._uris)
        except UriRefusedError as e:
            raise InvalidInputError(reason=f"hypervisor URI refused: {e}") from e

    def _host(self, uri: str) -> _Host:
        # Defence in depth: a URI stored before the policy (or typed into the configuration)
        # is checked again here, so no connection to a refused URI is ever created; what is
        # opened is the canonical form.
        try:
            canonical = check_uri(uri, self._uris)
        except UriRefusedError as e:
            raise ConflictError(
                reason=f"hypervisor URI {uri} is not allowed by the URI policy ({e})"
            ) from e
        with self._lock:
            host = self._hosts.get(canonical)
            if host is None:
                host = self._hosts[canonical] = _Host(canonical, self._settings)
            return host

    def close(self) -> None:
        """Close every connection."""
        with self._lock:
            hosts, self._hosts = list(self._hosts.values()), {}
        for host in hosts:
            host.conn.close()

    def ping(self, uri: str) -> None:
        """:raises DependencyUnavailableError: if the host does not answer."""
        with _translated(uri, "answer"):
            self._host(uri).conn.ping()

    def discover(self, uri: str) -> HostFacts:
        """Capacity, GPUs and identity of the host."""
        host = self._host(uri)
        with _translated(uri, "describe itself"):
            found = inventory(host.conn)
            kind = host.conn.info().hypervisor_type
            identity = host.conn.identity()
        return HostFacts(
            hypervisor_type=kind,
            cpus=found.cpus,
            memory_mib=found.memory_mib,
            gpus=tuple(
                DiscoveredGpu(
                    address=gpu.address,
                    model=gpu.model,
                    numa_node=gpu.numa_node,
                    iommu_group=gpu.iommu_group,
                    group_members=gpu.group_members,
                )
                for gpu in found.gpus
            ),
            identity=HostIdentity(identity.host_uuid, identity.hostname),
        )

    def identify(self, uri: str, expected: HostIdentity | None = None) -> HostIdentity:
        """The host's identity; ``expected`` is required of every later (re)connection."""
        host = self._host(uri)
        with _translated(uri, "identify itself"):
            if expected is not None and expected.host_uuid is not None:
                host.conn.pin(libvirt_host.HostIdentity(expected.host_uuid, expected.hostname))
            found = host.conn.identity()
        identity = HostIdentity(found.host_uuid, found.hostname)
        if expected is not None and identity != expected:
            raise HostIdentityError(reason=f"{uri} answers with {identity}, recorded as {expected}")
        return identity

    def domains(self, uri: str) -> list[DomainFacts]:
        """Every domain defined on the host."""
        with _translated(uri, "list domains"):
            statuses = self._host(uri).guests.list()
        return [
            DomainFacts(
                domain_uuid=status.uuid,
                name=status.name,
                running=status.state in ("running", "paused"),
                enclave_id=status.enclave_id,
            )
            for status in statuses
        ]

    # -- provisioning ---------------------------------------------------------------------

    def provision(self, step: str, plan: EnclavePlan, secrets: EnclaveSecrets | None) -> str:
        """Do one idempotent provisioning step (secrets, volume, network, define, start)."""
        host = self._host(plan.uri)
        with _translated(plan.uri, f"{step} enclave {plan.domain_name}"):
            if step == "volume":
                return self._create_volume(host, plan)
            if step == "secrets":
                return self._define_secrets(host, plan, secrets)
            if step == "network":
                if self._settings.network != "isolated":
                    return "no network: the enclave gets no NIC"
                name = designer.isolated_network_name(plan.enclave_id)
                host.networks.ensure_isolated(name)
                return f"isolated network {name} (no forward, no ip)"
            if step == "define":
                self._check_gpus(host, plan)
                xml = designer.design(
                    self._spec(host, plan),
                    security_model=self._settings.security_model,
                    machine=self._settings.machine,
                ).to_string()
                host.guests.define(xml)
                return f"domain {plan.domain_name} defined"
            if step == "start":
                host.guests.start(plan.enclave_id)
                return f"domain {plan.domain_name} started"
        raise ValueError(f"unknown provisioning step {step!r}")

    @staticmethod
    def _create_volume(host: _Host, plan: EnclavePlan) -> str:
        if host.simulated:
            # The test driver's pools hold 100 GiB in all and it has no secrets to unlock a
            # LUKS volume with: its volumes are bookkeeping only.
            path = host.volumes.create(plan.domain_name, 1, luks_secret_uuid=None)
            return f"simulated volume {path} ({plan.disk_gib} GiB asked; test driver)"
        path = host.volumes.create(
            plan.domain_name,
            plan.disk_gib,
            luks_secret_uuid=_secret_uuid(plan.enclave_id, "luks"),
        )
        return f"LUKS qcow2 volume {path}, {plan.disk_gib} GiB"

    def _define_secrets(
        self, host: _Host, plan: EnclavePlan, secrets: EnclaveSecrets | None
    ) -> str:
        if not host.secrets.supported:
            return "simulated: this hypervisor driver has no secret store (libvirt test driver)"
        if secrets is None:
            raise ValueError("the enclave's keys are not available")
        host.secrets.define(
            _secret_uuid(plan.enclave_id, "luks"),
            "volume",
            self._volume_path(host, plan),
            luks_passphrase(secrets),
        )
        host.secrets.define(
            _secret_uuid(plan.enclave_id, "vtpm"),
            "vtpm",
            f"sovereign-vtpm-{plan.enclave_id}",
            secrets.vtpm_secret,
        )
        return "libvirt secrets for the LUKS volume and the vTPM state defined (private)"

    def _volume_path(self, host: _Host, plan: EnclavePlan) -> str:
        return host.volumes.path(plan.domain_name) or str(
            Path(self._settings.pool_path) / plan.domain_name
        )

    def _check_gpus(self, host: _Host, plan: EnclavePlan) -> None:
        """Refuse a GPU the host does not have, or one another domain already holds."""
        if not plan.gpus:
            return
        present = {gpu.address for gpu in inventory(host.conn).gpus}
        missing = sorted({gpu.address for gpu in plan.gpus} - present)
        if missing:
            raise ValueError(f"host has no GPU {', '.join(missing)}")
        wanted = {member for gpu in plan.gpus for member in gpu.group_members}
        held = host.guests.passthrough()
        taken = sorted(a for a in wanted if a in held and held[a][0] != plan.enclave_id)
        if taken:
            owners = ", ".join(sorted({held[a][1] for a in taken}))
            raise ValueError(f"GPU {', '.join(taken)} is already passed to domain {owners}")

    def _spec(self, host: _Host, plan: EnclavePlan) -> EnclaveSpec:
        settings = self._settings
        boot: DirectKernel | ImageBoot = ImageBoot()
        if settings.kernel and settings.initrd:
            boot = DirectKernel(settings.kernel, settings.initrd, settings.cmdline)
        isolated = settings.network == "isolated"
        return EnclaveSpec(
            name=plan.domain_name,
            uuid=plan.enclave_id,
            vcpus=plan.vcpus,
            memory_mib=plan.memory_mib,
            gpus=tuple(
                GpuAssignment(
                    address=PciAddress.parse(gpu.address),
                    iommu_group_members=tuple(PciAddress.parse(m) for m in gpu.group_members),
                )
                for gpu in plan.gpus
            ),
            disk=DiskSpec(
                path=self._volume_path(host, plan),
                luks_secret_uuid=_secret_uuid(plan.enclave_id, "luks"),
            ),
            # The XML names the secrets even on the test driver, which never starts QEMU: the
            # designer's rules (encrypted disk and vTPM state) hold on every driver.
            tpm=TpmSpec(secret_uuid=_secret_uuid(plan.enclave_id, "vtpm")),
            network=NetworkPolicy.ISOLATED if isolated else NetworkPolicy.NONE,
            network_name=designer.isolated_network_name(plan.enclave_id) if isolated else None,
            label=plan.label,
            classified=plan.classified,
            domain_type="qemu" if plan.domain_type == "qemu" else "kvm",
            boot=boot,
            serial_log=self.console_path(plan),
        )

    def console_path(self, plan: EnclavePlan) -> str:
        """Where the enclave's serial console is written on the host."""
        return str(Path(self._settings.console_dir) / f"{plan.domain_name}.log")

    # -- teardown -------------------------------------------------------------------------

    def teardown(self, step: str, plan: EnclavePlan) -> str:
        """Do one idempotent teardown step (stop, undefine, volume, secrets, network)."""
        host = self._host(plan.uri)
        with _translated(plan.uri, f"{step} enclave {plan.domain_name}"):
            if step == "stop":
                host.guests.stop(plan.enclave_id, timeout_s=self._settings.stop_timeout_s)
                return f"domain {plan.domain_name} stopped"
            if step == "undefine":
                host.guests.undefine(plan.enclave_id)
                return f"domain {plan.domain_name} undefined with its NVRAM and TPM state"
            if step == "volume":
                host.volumes.delete(plan.domain_name)
                return f"volume {plan.domain_name} deleted"
            if step == "secrets":
                if not host.secrets.supported:
                    return "simulated: no secret store on this driver"
                for usage in ("luks", "vtpm"):
                    host.secrets.undefine(_secret_uuid(plan.enclave_id, usage))
                return "libvirt secrets undefined"
            if step == "network":
                name = designer.isolated_network_name(plan.enclave_id)
                host.networks.remove(name)
                return f"network {name} removed"
        raise ValueError(f"unknown teardown step {step!r}")

    def watch(self, uri: str, callback: Callable[[uuid.UUID, str], None]) -> Callable[[], None]:
        """Subscribe to the host's domain lifecycle events (libvirt's event loop thread)."""
        with _translated(uri, "subscribe to domain events"):
            return self._host(uri).guests.watch(callback)

    def console(self, plan: EnclavePlan, max_bytes: int) -> str:
        """The tail of the serial console log, when this machine can read it."""
        path = Path(self.console_path(plan))
        try:
            with path.open("rb") as handle:
                size = handle.seek(0, 2)
                handle.seek(max(0, size - max_bytes))
                return handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""
        except OSError as e:
            log.warning("cannot read console log %s: %s", for_log(path), for_log(e))
            return ""


class HypervisorProbe:
    """Readiness of every configured libvirt URI."""

    name = "hypervisors"

    def __init__(self, uris: Sequence[str], *, timeout_s: float = 10.0) -> None:
        self._hosts = [LibvirtHost(uri, open_timeout=timeout_s) for uri in uris]

    def ping(self) -> None:
        """:raises DependencyUnavailableError: naming the first host that does not answer."""
        for host in self._hosts:
            try:
                host.ping()
            except EnclaveError as e:
                raise DependencyUnavailableError(
                    f"hypervisor {host.uri} is unavailable", dependency="hypervisors"
                ) from e
