"""The lifecycle of libvirt domains on one host.

Owns what happens to a domain once its XML exists: defining it (``virDomainDefineXMLFlags``
with ``VIR_DOMAIN_DEFINE_VALIDATE``, which checks the document against libvirt's RNG schema),
starting it, stopping it (an ACPI power-button press, then ``virDomainDestroy`` after a
timeout), undefining it together with its NVRAM, vTPM state, managed save image and snapshot
and checkpoint metadata, reading its state and Sovereign's ``<metadata>`` element back
(:class:`DomainStatus`), and relaying lifecycle events (:meth:`Guests.watch`). Every call is
idempotent: asking for the state a domain is already in succeeds, so a reconciler may repeat
any step after a crash.

It must not decide what a domain contains (that is :mod:`enclaves.designer`), create the
volumes, secrets and networks a domain uses (:mod:`enclaves.resources`), or catch
``libvirt.libvirtError`` itself: every libvirt call runs under
:func:`enclaves.host._translate`, the one place libvirt errors become :mod:`enclaves.errors`.

libvirt's test driver supports all of it except some flags, for which this module falls back:
``VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN`` (a plain shutdown there), and ``NVRAM``, ``TPM`` and
``CHECKPOINTS_METADATA`` on undefine (it has none of those to remove).
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal
from uuid import UUID

from enclaves.config import SOVEREIGN_NS, from_string
from enclaves.errors import DomainNotFoundError, EnclaveError, UnsupportedError
from enclaves.host import LibvirtHost, _import_libvirt, _translate
from enclaves.spec import PciAddress

log = logging.getLogger(__name__)

DomainState = Literal["running", "paused", "shutoff", "crashed", "other"]

#: libvirt ``virDomainState`` names -> the states the control plane distinguishes. ``blocked``
#: (waiting on a resource) and ``shutdown`` (being shut down) are still running guests.
_STATES: tuple[tuple[str, DomainState], ...] = (
    ("VIR_DOMAIN_RUNNING", "running"),
    ("VIR_DOMAIN_BLOCKED", "running"),
    ("VIR_DOMAIN_SHUTDOWN", "running"),
    ("VIR_DOMAIN_PAUSED", "paused"),
    ("VIR_DOMAIN_SHUTOFF", "shutoff"),
    ("VIR_DOMAIN_CRASHED", "crashed"),
)

#: ``virDomainEventType`` suffixes -> the event names :meth:`Guests.watch` reports.
_LIFECYCLE_EVENTS: tuple[tuple[str, str], ...] = (
    ("DEFINED", "defined"),
    ("UNDEFINED", "undefined"),
    ("STARTED", "started"),
    ("SUSPENDED", "suspended"),
    ("RESUMED", "resumed"),
    ("STOPPED", "stopped"),
    ("SHUTDOWN", "shutdown"),
    ("PMSUSPENDED", "pmsuspended"),
    ("CRASHED", "crashed"),
)

#: Undefine flags, most complete first. ``TPM`` (libvirt >= 8.9) removes the vTPM state
#: directory (``/var/lib/libvirt/swtpm/<uuid>``); ``NVRAM`` the UEFI variable store; the
#: ``*_METADATA`` flags let libvirt undefine a domain that has snapshots or checkpoints
#: (their disk data belongs to the volume, which :mod:`enclaves.resources` deletes). A driver
#: that does not know a flag (the test driver knows only the first two below) gets the next
#: set; an unknown flag name in an older libvirt-python is simply left out.
_UNDEFINE_FLAG_SETS: tuple[tuple[str, ...], ...] = (
    ("MANAGED_SAVE", "SNAPSHOTS_METADATA", "CHECKPOINTS_METADATA", "NVRAM", "TPM"),
    ("MANAGED_SAVE", "SNAPSHOTS_METADATA", "CHECKPOINTS_METADATA", "NVRAM"),
    ("MANAGED_SAVE", "SNAPSHOTS_METADATA"),
)

#: How often :meth:`Guests.stop` looks whether the guest has powered off.
_STOP_POLL_S = 0.1


@dataclass(frozen=True, slots=True)
class DomainStatus:
    """What one domain on a host is, and whether Sovereign made it."""

    name: str
    uuid: UUID
    state: DomainState
    #: From Sovereign's ``<metadata><enclave><id>``; None for a domain that is not ours.
    enclave_id: UUID | None
    #: From Sovereign's ``<metadata><enclave><label>``; None for a domain that is not ours.
    label: str | None


def _flag_value(libvirt: Any, prefix: str, names: tuple[str, ...]) -> int:
    """OR together the libvirt constants ``prefix + name`` that this libvirt-python knows."""
    value = 0
    for name in names:
        value |= int(getattr(libvirt, prefix + name, 0))
    return value


def _state_name(libvirt: Any, state: int) -> DomainState:
    """Map a ``virDomainState`` number to a :data:`DomainState`."""
    for constant, name in _STATES:
        if state == getattr(libvirt, constant):
            return name
    return "other"


def _event_name(libvirt: Any, event: int, detail: int) -> str:
    """Name a lifecycle event; a stop because the guest crashed is reported as ``crashed``."""
    if event == libvirt.VIR_DOMAIN_EVENT_STOPPED and detail in (
        libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED,
        libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED,
    ):
        return "crashed"
    for suffix, name in _LIFECYCLE_EVENTS:
        if event == getattr(libvirt, f"VIR_DOMAIN_EVENT_{suffix}", None):
            return name
    return f"event-{event}"


def _sovereign_metadata(xml: str) -> tuple[uuid.UUID | None, str | None]:
    """Read the enclave id and label from domain XML; ``(None, None)`` if not ours.

    A domain whose Sovereign element is malformed is reported as not ours as well: nothing
    that cannot be read reliably may be matched to an enclave.
    """
    ns = f"{{{SOVEREIGN_NS}}}"
    enclave = from_string(xml).find(f"metadata/{ns}enclave")
    if enclave is None:
        return None, None
    text = enclave.findtext(f"{ns}id")
    label = enclave.findtext(f"{ns}label")
    try:
        enclave_id = uuid.UUID((text or "").strip())
    except ValueError:
        return None, None
    return enclave_id, None if label is None else label.strip()


def _hostdev_addresses(xml: str) -> set[str]:
    """PCI addresses (``DDDD:BB:SS.F``) of the ``<hostdev>`` sources in a domain's XML."""
    found = set()
    for address in from_string(xml).findall("./devices/hostdev/source/address"):
        parts = [int(address.get(name, "0"), 16) for name in ("domain", "bus", "slot", "function")]
        found.add(str(PciAddress(*parts)))
    return found


class Guests:
    """Domain lifecycle on one host."""

    def __init__(self, host: LibvirtHost) -> None:
        """Work on the domains of ``host``; nothing is opened until the first call."""
        self._host = host

    def __repr__(self) -> str:
        return f"Guests({self._host.uri!r})"

    def _lookup(self, conn: Any, domain_uuid: uuid.UUID) -> Any:
        """Return the ``virDomain`` with ``domain_uuid``.

        :raises DomainNotFoundError: if the host has no such domain.
        :raises EnclaveError: if libvirt fails otherwise.
        """
        with _translate(f"looking up domain {domain_uuid} on {self._host.uri}"):
            return conn.lookupByUUIDString(str(domain_uuid))

    def _find(self, conn: Any, domain_uuid: uuid.UUID) -> Any | None:
        """Return the ``virDomain`` with ``domain_uuid``, or None if there is none.

        :raises EnclaveError: if libvirt fails for another reason.
        """
        try:
            return self._lookup(conn, domain_uuid)
        except DomainNotFoundError:
            return None

    def _is_active(self, domain: Any, domain_uuid: uuid.UUID) -> bool:
        """Whether the domain runs (or is paused); False once it has been undefined.

        :raises EnclaveError: if libvirt fails for another reason.
        """
        try:
            with _translate(f"reading the state of domain {domain_uuid}"):
                return bool(domain.isActive())
        except DomainNotFoundError:
            return False

    def define(self, xml: str, *, validate: bool = True) -> None:
        """Define (or redefine, for the same name and UUID) the domain described by ``xml``.

        With ``validate`` libvirt checks the document against its RNG schema first.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt rejects the XML (schema, a name or UUID clash).
        """
        conn = self._host.connect()
        libvirt = _import_libvirt()
        flags = libvirt.VIR_DOMAIN_DEFINE_VALIDATE if validate else 0
        with _translate(f"defining a domain on {self._host.uri}"):
            conn.defineXMLFlags(xml, flags)

    def start(self, domain_uuid: uuid.UUID) -> None:
        """Start the domain; one that is already running (or paused) is left as it is.

        :raises DomainNotFoundError: if the domain is not defined.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if the domain fails to start (a disk that will not unlock, a
            missing network, QEMU exiting).
        """
        conn = self._host.connect()
        domain = self._lookup(conn, domain_uuid)
        if self._is_active(domain, domain_uuid):
            return
        try:
            with _translate(f"starting domain {domain_uuid} on {self._host.uri}"):
                domain.create()
        except EnclaveError:
            # Another worker may have started it between the check and the call.
            if self._is_active(domain, domain_uuid):
                return
            raise

    def stop(self, domain_uuid: uuid.UUID, *, timeout_s: float = 30.0) -> None:
        """Ask the guest to power off (ACPI), destroy it after ``timeout_s``; absent or off is fine.

        A paused guest cannot see a power button, so it is destroyed at once; so is any guest
        when ``timeout_s`` is 0.

        :raises ValueError: if ``timeout_s`` is negative.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails to shut down or destroy the domain.
        """
        if timeout_s < 0:
            raise ValueError(f"timeout_s must not be negative, got {timeout_s!r}")
        conn = self._host.connect()
        domain = self._find(conn, domain_uuid)
        if domain is None or not self._is_active(domain, domain_uuid):
            return
        if timeout_s > 0 and self._state(domain, domain_uuid) == "running":
            self._shutdown(domain, domain_uuid)
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                if not self._is_active(domain, domain_uuid):
                    return
                time.sleep(_STOP_POLL_S)
        self._destroy(domain, domain_uuid)

    def _state(self, domain: Any, domain_uuid: uuid.UUID) -> DomainState:
        """The domain's current state.

        :raises EnclaveError: if libvirt cannot read it.
        """
        libvirt = _import_libvirt()
        with _translate(f"reading the state of domain {domain_uuid}"):
            state, _reason = domain.state(0)
        return _state_name(libvirt, state)

    def _shutdown(self, domain: Any, domain_uuid: uuid.UUID) -> None:
        """Press the guest's ACPI power button (a plain shutdown where the flag is unknown).

        :raises EnclaveError: if libvirt refuses, unless the guest stopped meanwhile.
        """
        libvirt = _import_libvirt()
        action = f"shutting down domain {domain_uuid} on {self._host.uri}"
        try:
            try:
                with _translate(action):
                    domain.shutdownFlags(libvirt.VIR_DOMAIN_SHUTDOWN_ACPI_POWER_BTN)
            except UnsupportedError:
                with _translate(action):
                    domain.shutdown()
        except EnclaveError:
            if self._is_active(domain, domain_uuid):
                raise

    def _destroy(self, domain: Any, domain_uuid: uuid.UUID) -> None:
        """Power the guest off at once; one that already stopped is fine.

        :raises EnclaveError: if libvirt fails and the guest still runs.
        """
        try:
            with _translate(f"destroying domain {domain_uuid} on {self._host.uri}"):
                domain.destroy()
        except EnclaveError:
            # "domain is not running": it stopped (or was undefined) between check and call.
            if self._is_active(domain, domain_uuid):
                raise

    def undefine(self, domain_uuid: uuid.UUID) -> None:
        """Remove the domain with its NVRAM, vTPM state, managed save and snapshot metadata.

        A running domain is destroyed first rather than left running as a transient one.
        An absent domain is fine.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt refuses to destroy or undefine it.
        """
        conn = self._host.connect()
        domain = self._find(conn, domain_uuid)
        if domain is None:
            return
        if self._is_active(domain, domain_uuid):
            self._destroy(domain, domain_uuid)
        libvirt = _import_libvirt()
        action = f"undefining domain {domain_uuid} on {self._host.uri}"
        *fallbacks, last = _UNDEFINE_FLAG_SETS
        try:
            for names in fallbacks:
                with contextlib.suppress(UnsupportedError), _translate(action):
                    domain.undefineFlags(_flag_value(libvirt, "VIR_DOMAIN_UNDEFINE_", names))
                    return
            with _translate(action):
                domain.undefineFlags(_flag_value(libvirt, "VIR_DOMAIN_UNDEFINE_", last))
        except DomainNotFoundError:
            return  # undefined concurrently: the state asked for

    def status(self, domain_uuid: uuid.UUID) -> DomainStatus | None:
        """Return the domain's name, state and Sovereign metadata, or None if it is absent.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails to describe the domain.
        """
        conn = self._host.connect()
        domain = self._find(conn, domain_uuid)
        if domain is None:
            return None
        return self._describe(domain)

    def _describe(self, domain: Any) -> DomainStatus | None:
        """Read one domain's status; None if it vanished meanwhile.

        :raises EnclaveError: if libvirt fails to describe it.
        """
        libvirt = _import_libvirt()
        try:
            with _translate(f"describing a domain on {self._host.uri}"):
                name = str(domain.name())
                domain_uuid = uuid.UUID(str(domain.UUIDString()))
                state, _reason = domain.state(0)
                xml = str(domain.XMLDesc(0))
        except DomainNotFoundError:
            return None
        try:
            enclave_id, label = _sovereign_metadata(xml)
        except ValueError as exc:
            raise EnclaveError(f"libvirt described domain {name} in unreadable XML") from exc
        return DomainStatus(
            name=name,
            uuid=domain_uuid,
            state=_state_name(libvirt, state),
            enclave_id=enclave_id,
            label=label,
        )

    def list(self) -> list[DomainStatus]:
        """Return every domain on the host, ours or not, running or not, sorted by name.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails to list or describe the domains.
        """
        conn = self._host.connect()
        with _translate(f"listing domains on {self._host.uri}"):
            domains = conn.listAllDomains(0)
        statuses = [status for status in map(self._describe, domains) if status is not None]
        return sorted(statuses, key=lambda status: (status.name, str(status.uuid)))

    def passthrough(self) -> dict[str, tuple[uuid.UUID, str]]:
        """Return every PCI address passed through (``<hostdev>``) by any domain on the host,
        mapped to that domain's UUID and name.

        libvirt's test driver lets two domains name the same device; callers use this to
        refuse a GPU another domain already holds.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails to list or describe the domains.
        """
        conn = self._host.connect()
        held: dict[str, tuple[uuid.UUID, str]] = {}
        with _translate(f"listing passed-through devices on {self._host.uri}"):
            for domain in conn.listAllDomains(0):
                owner = (UUID(bytes=domain.UUID()), str(domain.name()))
                for address in _hostdev_addresses(domain.XMLDesc(0)):
                    held[address] = owner
        return held

    def watch(self, callback: Callable[[uuid.UUID, str], None]) -> Callable[[], None]:
        """Call ``callback(domain_uuid, event)`` for each lifecycle event; return an unsubscribe.

        ``event`` is one of ``defined``, ``undefined``, ``started``, ``suspended``,
        ``resumed``, ``stopped``, ``shutdown`` (the guest began shutting down), ``pmsuspended``
        and ``crashed`` (also reported for a stop whose reason was a crash or a QEMU failure).
        Callbacks run in the libvirt event loop thread (one per process): they must be quick
        and thread-safe; one that raises is logged and does not stop later events. The
        subscription lives on the current connection: if the host connection is reopened,
        watch again. Events are a hint; a reconciler still compares :meth:`list` with its
        records.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt refuses the subscription.
        """
        conn = self._host.connect()
        libvirt = _import_libvirt()

        def on_lifecycle(_conn: Any, domain: Any, event: int, detail: int, _opaque: Any) -> None:
            try:
                callback(uuid.UUID(str(domain.UUIDString())), _event_name(libvirt, event, detail))
            except Exception:
                # Raising into libvirt's C event loop would only print and drop the error.
                log.exception("domain event callback %r failed", callback)

        with _translate(f"subscribing to domain events on {self._host.uri}"):
            callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, on_lifecycle, None
            )
        subscribed = [callback_id]

        def unsubscribe() -> None:
            """Stop the callbacks; calling it twice, or after the connection died, is fine."""
            if not subscribed:
                return
            subscribed.clear()
            # A closed connection already dropped its callbacks: nothing is left to undo.
            with contextlib.suppress(libvirt.libvirtError):
                conn.domainEventDeregisterAny(callback_id)

        return unsubscribe
