"""One connection to a libvirt hypervisor.

Owns the ``virConnect`` of one host: opening it (``virConnectOpen``, optionally under a time
limit), noticing that it died (``virConnectIsAlive``) and opening it again, closing it, and the
few host-wide reads the control plane needs: ``virNodeGetInfo``, ``virConnectGetCapabilities``
(``<host><topology><cells>``), ``virConnectGetLibVersion``, ``virConnectGetType`` and the PCI
node devices (``virConnectListAllNodeDevices`` with ``CAP_PCI_DEV``). It reads the host's
identity (:class:`HostIdentity`: the host UUID of the capabilities' ``<host><uuid>``, else the
SMBIOS UUID of the ``computer`` node device, and ``virConnectGetHostname``) on every open, and
refuses a reopened connection that answers with another identity than the first open (or the
one pinned with :meth:`LibvirtHost.pin`) with
:class:`~enclaves.errors.HostIdentityChangedError`: a URI that now reaches another machine must
not be used as if it were the same host. It also owns the one translation of
``libvirt.libvirtError`` into :mod:`enclaves.errors` (:func:`_translate`), and the process's one
libvirt event loop: libvirt's default implementation, registered before the first connection
opens and run in a daemon thread, which delivers domain events
(:meth:`enclaves.guest.Guests.watch`) and the keepalive that notices a dead remote host.

It must not interpret PCI node device XML (GPUs, IOMMU groups and NUMA placement are
``enclaves.inventory``'s job), build domain XML, or make policy decisions. libvirt-python is
imported lazily, so this module imports on machines without it; connecting there raises
:class:`~enclaves.errors.HypervisorUnavailableError`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from xml.etree import ElementTree

from enclaves.errors import (
    DomainNotFoundError,
    EnclaveError,
    HostIdentityChangedError,
    HypervisorUnavailableError,
    NetworkNotFoundError,
    NodeDeviceNotFoundError,
    NotFoundError,
    SecretNotFoundError,
    StoragePoolNotFoundError,
    UnsupportedError,
    VolumeNotFoundError,
)

log = logging.getLogger(__name__)

#: libvirt error codes that mean "this connection is unusable", whatever the call was.
_CONNECTION_ERROR_CODES = (
    "VIR_ERR_NO_CONNECT",
    "VIR_ERR_INVALID_CONN",
    "VIR_ERR_AUTH_FAILED",
    "VIR_ERR_AUTH_CANCELLED",
    "VIR_ERR_AUTH_UNAVAILABLE",
)
#: Error domains of libvirt's client transport: an error raised there (rather than relayed from
#: the daemon, which keeps the daemon-side domain) means the channel to the host failed.
_TRANSPORT_ERROR_DOMAINS = ("VIR_FROM_REMOTE", "VIR_FROM_RPC")
#: libvirt error codes for "no such object", by the class that reports them.
_NOT_FOUND_ERROR_CODES: tuple[tuple[str, type[NotFoundError]], ...] = (
    ("VIR_ERR_NO_DOMAIN", DomainNotFoundError),
    ("VIR_ERR_NO_STORAGE_POOL", StoragePoolNotFoundError),
    ("VIR_ERR_NO_STORAGE_VOL", VolumeNotFoundError),
    ("VIR_ERR_NO_SECRET", SecretNotFoundError),
    ("VIR_ERR_NO_NETWORK", NetworkNotFoundError),
    ("VIR_ERR_NO_NODE_DEVICE", NodeDeviceNotFoundError),
)
#: What libvirt's ``virCheckFlags`` says (with ``VIR_ERR_INVALID_ARG``) when a driver does not
#: know a flag; the text has been stable since libvirt 0.9 and is the only way to tell this
#: case from a genuinely invalid argument.
_UNSUPPORTED_FLAGS_TEXT = "unsupported flags"


def _import_libvirt() -> Any:
    """Import libvirt-python on first use and silence its default error printer.

    :raises HypervisorUnavailableError: if libvirt-python is not installed.
    """
    try:
        # Imported here, not at the top, so that the control plane and the unit tests can
        # import this module on machines without libvirt's C library.
        import libvirt  # noqa: PLC0415
    except ImportError as exc:
        raise HypervisorUnavailableError(
            "libvirt-python is not installed; install the 'libvirt' extra "
            "(it compiles against the host's libvirt: apt-get install libvirt-dev pkg-config)"
        ) from exc
    _register_error_handler(libvirt)
    return libvirt


@functools.cache
def _register_error_handler(libvirt: Any) -> None:
    """Replace libvirt's default error handler, once per imported libvirt module."""

    # libvirt's default handler prints every error to stderr, including the ones this module
    # catches and translates; errors still reach Python as libvirtError either way.
    def ignore(_context: object, _error: object) -> None:
        return None

    libvirt.registerErrorHandler(ignore, None)


def _is_connection_error(libvirt: Any, exc: Any) -> bool:
    """Whether ``exc`` (a libvirtError) says the connection itself is unusable."""
    codes = {getattr(libvirt, name) for name in _CONNECTION_ERROR_CODES if hasattr(libvirt, name)}
    domains = {
        getattr(libvirt, name) for name in _TRANSPORT_ERROR_DOMAINS if hasattr(libvirt, name)
    }
    return exc.get_error_code() in codes or exc.get_error_domain() in domains


def _error_class(libvirt: Any, exc: Any) -> type[EnclaveError]:
    """Pick the :mod:`enclaves.errors` class for a libvirtError by its code."""
    if _is_connection_error(libvirt, exc):
        return HypervisorUnavailableError
    code = exc.get_error_code()
    for name, error_class in _NOT_FOUND_ERROR_CODES:
        if code == getattr(libvirt, name, None):
            return error_class
    if code == libvirt.VIR_ERR_NO_SUPPORT or (
        code == libvirt.VIR_ERR_INVALID_ARG and _UNSUPPORTED_FLAGS_TEXT in str(exc)
    ):
        return UnsupportedError
    return EnclaveError


@contextlib.contextmanager
def _translate(action: str, *, unavailable: bool = False) -> Iterator[None]:
    """Translate a ``libvirt.libvirtError`` raised in the block into an :class:`EnclaveError`.

    This is the only place libvirt errors are translated. ``action`` says what was being done
    ("opening test:///...") and leads the message, which also carries libvirt's error code.
    With ``unavailable`` every libvirt error means the hypervisor is unavailable (opening and
    pinging); otherwise the error code picks the class. ``action`` must never contain secret
    material: it ends up in the message.

    :raises HypervisorUnavailableError: when the connection failed, or ``unavailable`` is set.
    :raises DomainNotFoundError: when libvirt reports ``VIR_ERR_NO_DOMAIN``.
    :raises StoragePoolNotFoundError: when libvirt reports ``VIR_ERR_NO_STORAGE_POOL``.
    :raises VolumeNotFoundError: when libvirt reports ``VIR_ERR_NO_STORAGE_VOL``.
    :raises SecretNotFoundError: when libvirt reports ``VIR_ERR_NO_SECRET``.
    :raises NetworkNotFoundError: when libvirt reports ``VIR_ERR_NO_NETWORK``.
    :raises NodeDeviceNotFoundError: when libvirt reports ``VIR_ERR_NO_NODE_DEVICE``.
    :raises UnsupportedError: when the driver lacks the function (``VIR_ERR_NO_SUPPORT``) or
        one of the flags passed to it.
    :raises EnclaveError: for any other libvirt error.
    """
    libvirt = _import_libvirt()
    try:
        yield
    except libvirt.libvirtError as exc:
        code = exc.get_error_code()
        message = f"{action} failed: {exc} (libvirt error code {code})"
        error_class = HypervisorUnavailableError if unavailable else _error_class(libvirt, exc)
        raise error_class(message) from exc


_EVENT_LOOP_LOCK = threading.Lock()
#: The event loop thread once started (a list so that no ``global`` statement is needed).
_EVENT_LOOP_STARTED: list[threading.Thread] = []


def _start_event_loop(libvirt: Any) -> None:
    """Register libvirt's default event loop and run it in one daemon thread, once per process.

    libvirt delivers domain events, and runs the keepalive that notices a dead remote
    connection, only through an event loop registered *before* the connection is opened, so
    :meth:`LibvirtHost.connect` calls this first. A process that forks must do so before its
    first connection (gunicorn without ``--preload``): the thread does not survive a fork.

    :raises HypervisorUnavailableError: if libvirt refuses to register its event loop.
    """
    with _EVENT_LOOP_LOCK:
        if _EVENT_LOOP_STARTED:
            return
        with _translate("registering libvirt's default event loop", unavailable=True):
            libvirt.virEventRegisterDefaultImpl()
        # A daemon thread: it blocks in poll() forever and must not keep the process alive.
        thread = threading.Thread(
            target=_run_event_loop, args=(libvirt,), name="libvirt-event-loop", daemon=True
        )
        thread.start()
        _EVENT_LOOP_STARTED.append(thread)


def _run_event_loop(libvirt: Any) -> None:
    """Dispatch libvirt events (domain lifecycle, keepalive) until the process exits."""
    while True:
        try:
            libvirt.virEventRunDefaultImpl()
        except libvirt.libvirtError:
            # One failed iteration (a poll() error) must not end event delivery for good.
            log.exception("libvirt event loop iteration failed")
            time.sleep(0.1)


def _close_quietly(libvirt: Any, conn: Any) -> None:
    """Close a connection that is being discarded, ignoring libvirt's complaints."""
    # A dead remote channel can fail to close; the connection is dropped either way and there
    # is nothing left to recover, so the error would only hide the reason the caller is here.
    with contextlib.suppress(libvirt.libvirtError):
        conn.close()


def _is_alive(libvirt: Any, conn: Any) -> bool:
    """Whether ``conn`` is open and its channel to the host is not closed."""
    try:
        return bool(conn.isAlive() == 1)
    except libvirt.libvirtError:
        # Raised for a connection closed behind our back ("invalid connection pointer"):
        # that is an answer (dead), not an error to translate.
        return False


class _PendingOpen:
    """A ``virConnectOpen`` running in a helper thread so the caller can stop waiting for it."""

    def __init__(self, libvirt: Any, uri: str) -> None:
        self._libvirt = libvirt
        self._uri = uri
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._abandoned = False
        self._conn: Any = None
        self._error: BaseException | None = None

    def start(self) -> None:
        """Start opening the connection in a daemon thread."""
        # A daemon thread: an open stuck on an unreachable host must not block interpreter exit.
        thread = threading.Thread(target=self._run, name=f"libvirt-open {self._uri}", daemon=True)
        thread.start()

    def _run(self) -> None:
        try:
            conn = self._libvirt.open(self._uri)
        except self._libvirt.libvirtError as exc:
            with self._lock:
                self._error = exc
        else:
            with self._lock:
                if self._abandoned:
                    # The caller gave up on this open: nobody else will ever close it.
                    _close_quietly(self._libvirt, conn)
                else:
                    self._conn = conn
        finally:
            self._finished.set()

    def result(self, timeout: float) -> Any:
        """Return the opened connection, waiting at most ``timeout`` seconds.

        :raises libvirt.libvirtError: if the open failed (the caller translates it).
        :raises HypervisorUnavailableError: if the open did not finish in time.
        """
        self._finished.wait(timeout)
        # Decide under the lock: the thread may finish between the wait and this check, and
        # exactly one side must own (and eventually close) the connection.
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._conn is None:
                self._abandoned = True
                raise HypervisorUnavailableError(
                    f"opening {self._uri} did not finish within {timeout:g} s"
                )
            return self._conn


@dataclass(frozen=True, slots=True)
class HostInfo:
    """What a hypervisor says about itself."""

    #: The URI libvirt reports for the connection (``virConnectGetURI``).
    uri: str
    #: The host's name (``virConnectGetHostname``; the test driver answers the local name).
    hostname: str
    #: Logical CPUs that are online (``virNodeInfo.cpus``).
    cpus: int
    #: Physical memory in MiB (libvirt-python returns ``virNodeInfo.memory``, KiB, as MiB).
    memory_mib: int
    #: NUMA nodes: ``<cells num>`` of the capabilities, else ``virNodeInfo.nodes``.
    numa_nodes: int
    #: Version of the libvirt library serving the connection, as (major, minor, release).
    libvirt_version: tuple[int, int, int]
    #: The driver's name (``virConnectGetType``): ``QEMU`` in production, ``TEST`` in dev.
    hypervisor_type: str


def _numa_cell_count(capabilities_xml: str) -> int:
    """Return ``num`` of ``<host><topology><cells>`` in capabilities XML, or 0 if absent."""
    # The XML comes from the libvirt daemon this control plane already trusts to run guests.
    root = ElementTree.fromstring(capabilities_xml)  # noqa: S314
    cells = root.find("./host/topology/cells")
    if cells is None:
        return 0
    return int(cells.get("num", "0"))


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """Who a hypervisor says it is: the same machine answers the same, whatever URI reached it."""

    #: The host UUID in lower case (``<host><uuid>`` of the capabilities, which libvirtd takes
    #: from ``host_uuid`` in libvirtd.conf or the SMBIOS; else the ``computer`` node device's
    #: ``<hardware><uuid>``); None when the hypervisor reports neither.
    host_uuid: str | None
    #: ``virConnectGetHostname`` in lower case.
    hostname: str

    def __str__(self) -> str:
        return f"{self.host_uuid or 'no host UUID'} ({self.hostname})"


def _uuid_text(text: str | None) -> str | None:
    """A UUID in canonical lower-case form, or None for a missing or malformed one."""
    if not text or not text.strip():
        return None
    try:
        return str(uuid.UUID(text.strip()))
    except ValueError:
        return None


#: What a hypervisor's host name may look like (it is stored and shown): a DNS name.
_HOSTNAME = re.compile(r"[a-z0-9_](?:[a-z0-9_.-]{0,252}[a-z0-9_])?")


@contextlib.contextmanager
def _malformed(uri: str) -> Iterator[None]:
    """An identity answer that is not well-formed XML: the host cannot be identified, so it
    counts as unavailable (never as a new identity).

    :raises HypervisorUnavailableError:
    """
    try:
        yield
    except ElementTree.ParseError as e:
        raise HypervisorUnavailableError(f"{uri} answered its identity with malformed XML") from e


def _capabilities_uuid(capabilities_xml: str) -> str | None:
    """``<host><uuid>`` of capabilities XML, or None."""
    # The XML comes from the libvirt daemon this control plane already trusts to run guests.
    root = ElementTree.fromstring(capabilities_xml)  # noqa: S314
    return _uuid_text(root.findtext("./host/uuid"))


def _system_uuid(device_xml: str) -> str | None:
    """``<capability type='system'><hardware><uuid>`` of the ``computer`` node device."""
    root = ElementTree.fromstring(device_xml)  # noqa: S314 - from the trusted daemon
    return _uuid_text(root.findtext("./capability[@type='system']/hardware/uuid"))


def _split_version(version: int) -> tuple[int, int, int]:
    """Split libvirt's packed version number (major * 1,000,000 + minor * 1,000 + release)."""
    return version // 1_000_000, version // 1_000 % 1_000, version % 1_000


class LibvirtHost:
    """One libvirt connection to one hypervisor, reopened when it dies.

    Thread-safe: libvirt connections may be shared between threads, and a lock makes sure
    concurrent callers of :meth:`connect` open at most one connection.
    """

    def __init__(
        self,
        uri: str,
        *,
        open_timeout: float | None = None,
        identity: HostIdentity | None = None,
    ) -> None:
        """Remember ``uri``; nothing is opened until :meth:`connect`.

        ``open_timeout`` bounds how long :meth:`connect` waits for ``virConnectOpen`` (a
        ``qemu+tls://`` host that drops packets can hang it for minutes); ``None`` waits.
        ``identity`` is the identity every open must find (None: the first open's).

        :raises ValueError: if ``open_timeout`` is not positive.
        """
        if open_timeout is not None and open_timeout <= 0:
            raise ValueError(f"open_timeout must be positive, got {open_timeout!r}")
        self._uri = uri
        self._open_timeout = open_timeout
        self._lock = threading.Lock()
        self._conn: Any = None
        self._expected = identity
        self._identity: HostIdentity | None = None

    def __repr__(self) -> str:
        return f"LibvirtHost({self._uri!r})"

    @property
    def uri(self) -> str:
        """The URI this host was constructed with."""
        return self._uri

    def connect(self) -> Any:
        """Return a live ``libvirt.virConnect``, opening or reopening it when needed.

        The first call in a process also starts libvirt's event loop thread (see
        :func:`_start_event_loop`).

        :raises HypervisorUnavailableError: if libvirt-python is missing or the open fails.
        """
        libvirt = _import_libvirt()
        _start_event_loop(libvirt)
        with self._lock:
            if self._conn is not None:
                if _is_alive(libvirt, self._conn):
                    return self._conn
                _close_quietly(libvirt, self._conn)
                self._conn = None
            with _translate(f"opening {self._uri}", unavailable=True):
                conn = self._open(libvirt)
            try:
                seen = self._read_identity(libvirt, conn)
                self._check_identity(seen)
            except BaseException:
                _close_quietly(libvirt, conn)
                raise
            self._conn, self._identity = conn, seen
            return self._conn

    def _check_identity(self, seen: HostIdentity) -> None:
        """:raises HostIdentityChangedError: ``seen`` is not the expected (or first) identity."""
        expected = self._expected or self._identity
        if expected is not None and seen != expected:
            raise HostIdentityChangedError(
                f"{self._uri} answers as {seen}, not as {expected}: it reaches another machine now"
            )

    def _read_identity(self, libvirt: Any, conn: Any) -> HostIdentity:
        with _translate(f"reading the identity of {self._uri}"), _malformed(self._uri):
            found = _capabilities_uuid(conn.getCapabilities())
            if found is None:
                # The test driver reports no host UUID in its capabilities; its host files
                # (and real hosts) describe the machine in the ``computer`` node device.
                try:
                    found = _system_uuid(conn.nodeDeviceLookupByName("computer").XMLDesc(0))
                except libvirt.libvirtError:
                    found = None
            hostname = str(conn.getHostname()).lower()
            if not _HOSTNAME.fullmatch(hostname):
                raise HypervisorUnavailableError(
                    f"{self._uri} answered with a host name that is no DNS name"
                )
            return HostIdentity(host_uuid=found, hostname=hostname)

    def identity(self) -> HostIdentity:
        """Return the identity the host answered with when the connection was (re)opened.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises HostIdentityChangedError: if a reopened connection reaches another machine.
        """
        self.connect()
        with self._lock:
            assert self._identity is not None, "set by every open"
            return self._identity

    def pin(self, identity: HostIdentity) -> None:
        """Require ``identity`` of every later open, and drop a connection that has another.

        :raises HostIdentityChangedError: if the open connection answers with another identity.
        """
        with self._lock:
            self._expected = identity
            if self._identity is None or self._identity == identity:
                return
            conn, self._conn = self._conn, None
            seen, self._identity = self._identity, None
        if conn is not None:
            _close_quietly(_import_libvirt(), conn)
        raise HostIdentityChangedError(
            f"{self._uri} answers as {seen}, not as {identity}: it reaches another machine"
        )

    def _open(self, libvirt: Any) -> Any:
        if self._open_timeout is None:
            return libvirt.open(self._uri)
        pending = _PendingOpen(libvirt, self._uri)
        pending.start()
        return pending.result(self._open_timeout)

    def close(self) -> None:
        """Close the connection if one is open; closing twice is harmless."""
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            _close_quietly(_import_libvirt(), conn)

    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def ping(self) -> None:
        """Check that the hypervisor answers, reconnecting first if the connection died.

        :raises HypervisorUnavailableError: if it cannot be reached.
        """
        conn = self.connect()
        with _translate(f"pinging {self._uri}", unavailable=True):
            # A real round trip on remote URIs: virConnectIsAlive only looks at the socket.
            conn.getLibVersion()

    def info(self) -> HostInfo:
        """Return the host's CPUs, memory, NUMA nodes, libvirt version and driver type.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt refuses one of the reads.
        """
        conn = self.connect()
        with _translate(f"reading host information from {self._uri}"):
            _model, memory_mib, cpus, _mhz, nodes, _sockets, _cores, _threads = conn.getInfo()
            capabilities = conn.getCapabilities()
            return HostInfo(
                uri=str(conn.getURI()),
                hostname=str(conn.getHostname()),
                cpus=int(cpus),
                memory_mib=int(memory_mib),
                # virNodeInfo.nodes is documented as 1 for "unusual" NUMA topologies, so the
                # capabilities' cell list wins; the test driver lists no cells at all.
                numa_nodes=_numa_cell_count(capabilities) or int(nodes),
                libvirt_version=_split_version(int(conn.getLibVersion())),
                hypervisor_type=str(conn.getType()),
            )

    def list_pci_devices(self) -> list[str]:
        """Return the XML of every PCI node device (``<device>``), sorted by device name.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt refuses to list or describe the devices.
        """
        conn = self.connect()
        libvirt = _import_libvirt()
        with _translate(f"listing PCI node devices of {self._uri}"):
            devices = conn.listAllDevices(libvirt.VIR_CONNECT_LIST_NODE_DEVICES_CAP_PCI_DEV)
            # libvirt returns devices in hash-table order, which differs between opens.
            described = sorted((str(device.name()), str(device.XMLDesc(0))) for device in devices)
        return [xml for _name, xml in described]
