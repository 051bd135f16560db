"""A real libvirtd (with virtlogd) for the test session, started without systemd.

Follows shared ENVIRONMENT.md: ``virtlogd -d`` and ``libvirtd -d -p PIDFILE``, ready on
``qemu:///system`` after about 8 s, stopped by PID. A daemon that already answers is reused
and left running; only what this session started is stopped at its end. Without udev,
``/dev/kvm`` is made ``root:kvm 0660`` for the session (see :func:`_grant_kvm_group`) and
restored afterwards. The packaged
``default`` NAT network is never started: if its autostart link exists, libvirtd would start
it (dnsmasq, NAT rules on the host), so the session refuses to start libvirtd at all.

Anything missing (binaries, a daemon that will not answer) raises: the ``libvirtd`` fixture
fails loudly, never skips. Needs root, like the daemon itself.
"""

from __future__ import annotations

import contextlib
import grp
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import libvirt

#: The URI of the system QEMU driver the real-guest tests use.
SYSTEM_URI = "qemu:///system"
LIBVIRTD = Path("/usr/sbin/libvirtd")
VIRTLOGD = Path("/usr/sbin/virtlogd")
VIRTLOGD_SOCKET = Path("/run/libvirt/virtlogd-sock")
#: libvirtd starts every network linked here; the packaged ``default`` one does NAT.
DEFAULT_NETWORK_AUTOSTART = Path("/etc/libvirt/qemu/networks/autostart/default.xml")
#: libvirtd probes QEMU's capabilities before it answers: ~8 s measured, more on a busy host.
READY_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 20.0
KVM_DEVICE = Path("/dev/kvm")
KVM_GROUP = "kvm"
APT_HINT = "apt-get install qemu-system-x86 libvirt-daemon-system (make test does)"


def _answers(uri: str) -> bool:
    """Whether a libvirt daemon answers ``uri`` now."""
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    try:
        conn = libvirt.open(uri)
    except libvirt.libvirtError:
        return False
    try:
        conn.getLibVersion()
    except libvirt.libvirtError:
        return False
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()
    return True


def _socket_answers(path: Path) -> bool:
    """Whether something accepts connections on the UNIX socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(2)
        try:
            sock.connect(str(path))
        except OSError:
            return False
    return True


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # The state follows the parenthesised command name, which may itself contain spaces.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _read_pid(pidfile: Path, timeout_s: float = 10.0) -> int:
    """The PID a daemon wrote to ``pidfile``.

    :raises RuntimeError: if it did not appear in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(pidfile.read_text().strip())
        time.sleep(0.05)
    raise RuntimeError(f"no PID in {pidfile} after {timeout_s:g} s")


def _tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a log file, or a note that there is none."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"(no log at {path})"


def _stop_pid(pid: int, name: str) -> None:
    """SIGTERM ``pid``, wait for it to exit, SIGKILL it if it does not.

    :raises RuntimeError: if it survives SIGKILL.
    """
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        if not _alive(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    time.sleep(0.5)
    if _alive(pid):
        raise RuntimeError(f"{name} (pid {pid}) survived SIGKILL")


def _grant_kvm_group() -> tuple[int, int, int] | None:
    """Make ``/dev/kvm`` ``root:kvm 0660``, as udev does on a normal host; return what it was.

    Without udev (containers, microVMs) ``/dev/kvm`` stays ``root:root 0600``. libvirt's QEMU
    driver then finds KVM present when it probes QEMU but unusable by the ``libvirt-qemu``
    user it runs guests as, declares its capability cache stale on every lookup, and probes
    QEMU again: about 4 s per lookup, ~50 s per ``virDomainDefineXML`` on these machines.
    Returns ``(uid, gid, mode)`` to restore, or None when nothing was changed.
    """
    try:
        kvm_gid = grp.getgrnam(KVM_GROUP).gr_gid
        stat = KVM_DEVICE.stat()
    except (KeyError, OSError):
        return None
    mode = stat.st_mode & 0o7777
    if stat.st_gid == kvm_gid and mode & 0o060 == 0o060:
        return None
    os.chown(KVM_DEVICE, stat.st_uid, kvm_gid)
    KVM_DEVICE.chmod(mode | 0o060)
    return stat.st_uid, stat.st_gid, mode


@dataclass
class Libvirtd:
    """A libvirtd answering :attr:`uri`, and the daemons this session started for it."""

    uri: str = SYSTEM_URI
    #: Where the started daemons log (a temporary directory), None when reused.
    log_dir: Path | None = None
    #: ``(name, pid)`` of each daemon this session started, in start order.
    started: list[tuple[str, int]] = field(default_factory=list)
    #: Seconds from starting libvirtd until it answered; 0 when an existing one was reused.
    ready_s: float = 0.0
    #: ``/dev/kvm``'s owner, group and mode before this session changed them, if it did.
    kvm_restore: tuple[int, int, int] | None = None

    @property
    def reused(self) -> bool:
        """Whether an already-running daemon was reused (and will be left running)."""
        return not self.started

    def stop(self) -> None:
        """Stop the daemons this session started, newest first, and restore ``/dev/kvm``."""
        while self.started:
            name, pid = self.started.pop()
            _stop_pid(pid, name)
        if self.log_dir is not None:
            shutil.rmtree(self.log_dir, ignore_errors=True)
            self.log_dir = None
        if self.kvm_restore is not None:
            uid, gid, mode = self.kvm_restore
            os.chown(KVM_DEVICE, uid, gid)
            KVM_DEVICE.chmod(mode)
            self.kvm_restore = None


def start_libvirtd(uri: str = SYSTEM_URI) -> Libvirtd:
    """Reuse the libvirtd answering ``uri``, or start virtlogd and libvirtd and wait for it.

    :raises RuntimeError: if a binary is missing, the default NAT network would autostart, or
        libvirtd does not answer within :data:`READY_TIMEOUT_S`.
    """
    kvm_restore = _grant_kvm_group() if os.geteuid() == 0 else None
    if _answers(uri):
        return Libvirtd(uri=uri, kvm_restore=kvm_restore)
    if os.geteuid() != 0:
        raise RuntimeError(f"starting libvirtd for {uri} needs root")
    for binary in (LIBVIRTD, VIRTLOGD):
        if not binary.is_file():
            raise RuntimeError(f"{binary} is missing: {APT_HINT}")
    if DEFAULT_NETWORK_AUTOSTART.exists():
        raise RuntimeError(
            f"{DEFAULT_NETWORK_AUTOSTART} exists: libvirtd would start the packaged 'default' "
            f"NAT network; disable it first (virsh net-autostart default --disable)"
        )
    log_dir = Path(tempfile.mkdtemp(prefix="sovereign-libvirtd-"))
    daemon = Libvirtd(uri=uri, log_dir=log_dir, kvm_restore=kvm_restore)
    try:
        if not _socket_answers(VIRTLOGD_SOCKET):
            daemon.started.append(("virtlogd", _spawn(VIRTLOGD, log_dir, "virtlogd")))
        started_at = time.monotonic()
        libvirtd_pid = _spawn(LIBVIRTD, log_dir, "libvirtd")
        daemon.started.append(("libvirtd", libvirtd_pid))
        _wait_until_answers(uri, libvirtd_pid, log_dir / "libvirtd.log")
        daemon.ready_s = time.monotonic() - started_at
    except BaseException:
        daemon.stop()
        raise
    return daemon


def _wait_until_answers(uri: str, pid: int, log: Path) -> None:
    """Wait until the libvirtd with ``pid`` answers ``uri``.

    :raises RuntimeError: quoting its log if it exits or stays silent for
        :data:`READY_TIMEOUT_S`.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _answers(uri):
        if not _alive(pid):
            raise RuntimeError(f"libvirtd (pid {pid}) exited before answering {uri}:\n{_tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"libvirtd did not answer {uri} within {READY_TIMEOUT_S:g} s:\n{_tail(log)}"
            )
        time.sleep(0.2)


def _spawn(binary: Path, log_dir: Path, name: str) -> int:
    """Start ``binary -d -p PIDFILE -f CONFIG`` (it daemonizes) and return the daemon's PID.

    :raises RuntimeError: if it fails to start.
    """
    pidfile = log_dir / f"{name}.pid"
    # Errors to a file a failure message can quote, set in the daemon's own configuration (the
    # packaged one sets nothing else): a LIBVIRT_LOG_OUTPUTS variable would be inherited by
    # every qemu-img and QEMU the daemon runs, which then fail if the file goes away.
    config = log_dir / f"{name}.conf"
    config.write_text(f'log_outputs = "3:file:{log_dir / f"{name}.log"}"\n')
    # The daemons run detached: nothing may hold this process's pipes open.
    with (log_dir / f"{name}.stderr").open("wb") as stderr:
        result = subprocess.run(
            [str(binary), "-d", "-p", str(pidfile), "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            check=False,
            timeout=60,
        )
    if result.returncode != 0:
        raise RuntimeError(
            f"{binary} -d exited with {result.returncode}:\n{_tail(log_dir / f'{name}.stderr')}"
        )
    return _read_pid(pidfile)
