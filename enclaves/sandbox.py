"""The process enclave: the workload agent in a bubblewrap sandbox on the control plane's host.

Owns :class:`ProcessEnclave`, what the embedded default (libvirt's test driver, whose hosts run
no guest) uses instead of a VM: ``python3 -m sovereign_agent --listen-unix /run/agent/agent.sock
--root /job --simulated`` started detached (its own session, no ``--die-with-parent``) inside
``bwrap --unshare-all``, so that running jobs survive a control-plane restart and the next
control plane reconnects through the socket and the pid file it finds in the enclave's state
directory under the run directory. The jobs run as the agent's own user, so the agent is also
given ``--outside-peers-only`` (it closes any connection from inside the sandbox: a job cannot
hold or talk to its agent's socket) and ``--own-pid-namespace`` (it kills whatever a job left
running, session-leaving descendants included, once no job runs).

What the sandbox sees, and nothing else: ``/usr`` read-only (with the ``/lib``, ``/lib64``,
``/bin`` symlinks of a merged-/usr system), its own ``/proc``, a minimal read-only ``/dev``,
three size-capped tmpfs (``/job``, the agent's root where job code, inputs, logs and outputs
live in plaintext; ``/tmp``; ``/dev/shm``), the socket directory at ``/run/agent`` (no longer
writable once the agent listens), and read-only: the agent package at
``/opt/sovereign/sovereign_agent``, a small interpreter shim at ``/opt/sovereign/python`` (a venv
over the system interpreter whose ``.pth`` file adds the site directories below) and those site
directories (the control plane's ``site-packages``, for torch and numpy). Not the instance
directory, the repository, ``/etc``, ``/root`` or ``/home``; its root is read-only. Its network
namespace has only ``lo``, its own: it cannot reach the control plane's port on the host's
loopback.

It runs as an unprivileged host user (``nobody`` when the control plane is root; the control
plane's own user otherwise), mapped to uid/gid 1000 inside, with bwrap's ``--disable-userns``
(no nested user namespaces), and under resource limits (:class:`SandboxLimits`): open files,
no core dumps, file size, processes, optional address space (``prlimit``), CPU affinity
(``taskset``) and its tmpfs sizes, applied before bwrap starts so that all inside inherit them.

It must not speak the agent protocol (that is :mod:`enclaves.agent`), know about the control
plane or libvirt, or decide which enclave gets one (:mod:`sovereign.adapters.workloads`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import site
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from enclaves.agent.transport import SocketTransport
from enclaves.errors import AgentError, SandboxError

#: The unprivileged host user and group the sandbox runs as when the control plane is root.
NOBODY = 65534
#: The uid/gid the sandboxed processes see (bwrap ``--uid``/``--gid``).
SANDBOX_UID = 1000
#: Where things appear inside the sandbox.
SOCKET_DIR_INSIDE = "/run/agent"
SOCKET_NAME = "agent.sock"
AGENT_ROOT_INSIDE = "/job"
OPT_INSIDE = "/opt/sovereign"
AGENT_PACKAGE = "sovereign_agent"
PYTHON_SHIM_INSIDE = f"{OPT_INSIDE}/python"
#: The state files in an enclave's state directory.
_PID_FILE = "pid.json"
_LOG_FILE = "sandbox.log"
#: How much of the sandbox's own log an error quotes.
_LOG_TAIL_BYTES = 2000
#: How often start() looks for the agent's socket.
_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Resource limits of one process enclave."""

    #: CPUs the sandbox may run on (the first ``vcpus`` of the control plane's own affinity).
    vcpus: int = 1
    #: ``RLIMIT_NOFILE``.
    open_files: int = 1024
    #: ``RLIMIT_FSIZE``: the largest file any process inside may write (the agent's job log
    #: and outputs are files too).
    file_size_mib: int = 1024
    #: Size of the ``/job`` tmpfs (code, inputs, outputs: all plaintext lives here) and of
    #: ``/tmp``. tmpfs pages are memory: this caps what a job can pin through files.
    tmpfs_mib: int = 2048
    #: ``RLIMIT_NPROC``: processes and threads. The kernel counts them per host user, and
    #: every process enclave runs as ``nobody``: this caps all of them together (a fork bomb
    #: cannot exhaust the host's pids), so one enclave can starve the others' forks.
    processes: int = 4096
    #: ``RLIMIT_AS`` per process, or ``None`` for none. Measured: ``import torch`` (2.13 CPU)
    #: and a small model still run under 1024 MiB; training wants more, so the default is off.
    address_space_mib: int | None = None

    def __post_init__(self) -> None:
        """:raises ValueError: for a limit that is not positive."""
        for name in ("vcpus", "open_files", "file_size_mib", "tmpfs_mib", "processes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive")
        if self.address_space_mib is not None and self.address_space_mib < 1:
            raise ValueError("address_space_mib must be positive")


@dataclass(frozen=True, slots=True)
class SandboxPython:
    """The interpreter the sandbox runs (under ``/usr``) and the site directories it adds."""

    #: A host interpreter under ``/usr`` (the only tree of the host the sandbox sees).
    executable: str
    #: Directories bound read-only at their own paths and added to ``sys.path`` by a ``.pth``
    #: file of the shim (so that the agent's jobs, which get no ``PYTHONPATH``, see them too).
    site_dirs: tuple[str, ...] = ()

    @classmethod
    def current(cls) -> SandboxPython:
        """The system interpreter of this Python's version plus this environment's packages.

        The control plane's own interpreter may live outside ``/usr`` (pyenv under ``/root``,
        which the sandbox must not see): the system ``python3.X`` of the same version runs
        its ``site-packages`` (compiled extensions are per ``X.Y``).

        :raises SandboxError: if there is no ``/usr/bin/python3.X`` of this version.
        """
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        executable = f"/usr/bin/python{version}"
        if not os.access(executable, os.X_OK):
            raise SandboxError(f"the process enclave needs {executable} (apt-get install python3)")
        # This environment's site directories (a venv's site-packages, or the system's
        # dist-packages): the shim is a venv of its own and would otherwise see none of them.
        sites = (os.path.realpath(path) for path in site.getsitepackages())
        existing = tuple(dict.fromkeys(filter(os.path.isdir, sites)))
        return cls(executable=executable, site_dirs=existing)


def default_run_dir() -> Path:
    """``$SOVEREIGN_RUN_DIR``, else ``/tmp/sovereign-run-<uid>``."""
    configured = os.environ.get("SOVEREIGN_RUN_DIR")
    return Path(configured) if configured else Path(f"/tmp/sovereign-run-{os.getuid()}")  # noqa: S108


def _private_dir(path: Path, mode: int) -> None:
    """Create ``path`` with ``mode``, or accept it only if we own it and nobody else may write.

    The default run directory is under the world-writable ``/tmp``: another user could have
    created it first and would then control the pid files and sockets in it.

    :raises SandboxError: if it exists with another owner or writable by group or others.
    """
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=mode, parents=False)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SandboxError(f"{path} is not a directory owned by uid {os.getuid()}")
    if info.st_mode & 0o022:
        raise SandboxError(f"{path} is writable by group or others")
    os.chmod(path, mode)


def _readable_tree(root: Path) -> None:
    """Make ``root`` and everything below it readable (not writable) by others."""
    for path in (root, *root.rglob("*")):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)


def _check_reachable(path: Path) -> None:
    """Whether an unprivileged user can reach ``path`` (every ancestor searchable by others).

    :raises SandboxError: naming the first directory that is not, e.g. ``/root`` (0700).
    """
    for directory in (path, *path.parents):
        if not directory.stat().st_mode & stat.S_IXOTH:
            raise SandboxError(
                f"the sandbox's user cannot reach {path}: {directory} is not searchable by "
                f"others; install the control plane's environment where it can"
            )


def _tool(name: str) -> str:
    """The absolute path of a system tool (util-linux, bubblewrap) in ``/usr/bin`` or ``/bin``.

    :raises SandboxError: if it is not installed.
    """
    found = shutil.which(name, path="/usr/bin:/bin")
    if found is None:
        package = "bubblewrap" if name == "bwrap" else "util-linux"
        raise SandboxError(f"the process enclave needs {name} (apt-get install {package})")
    return found


def _stat_fields(pid: int) -> list[str] | None:
    """Fields 3 onwards of ``/proc/<pid>/stat``, ``None`` if the process is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Field 2 (comm) is parenthesised and may contain spaces and ')': split after the last ')'.
    return text[text.rindex(")") + 2 :].split()


def _parent(pid: int) -> int:
    """The parent pid of ``pid`` (0 if it is gone)."""
    fields = _stat_fields(pid)
    return 0 if fields is None else int(fields[1])


def _start_time(pid: int) -> int | None:
    """The start time (clock ticks since boot) of process ``pid``, ``None`` if it is gone."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] == "Z":
        return None  # gone, or a zombie, which runs nothing
    return int(fields[19])


class ProcessEnclave:
    """One enclave's agent in a bubblewrap sandbox, with its state under ``run_dir``."""

    def __init__(
        self,
        enclave_id: uuid.UUID,
        run_dir: Path,
        python: SandboxPython,
        agent_package_dir: Path,
        limits: SandboxLimits | None = None,
    ) -> None:
        """Describe the enclave; nothing is started (see :meth:`start`)."""
        self.enclave_id = enclave_id
        self._run_dir = Path(run_dir)
        self._python = python
        self._agent_dir = Path(agent_package_dir).resolve()
        self._limits = limits if limits is not None else SandboxLimits()
        self.state_dir = self._run_dir / str(enclave_id)
        self.socket_path = self.state_dir / "sock" / SOCKET_NAME

    def __repr__(self) -> str:
        return f"ProcessEnclave({self.enclave_id})"

    # --- state ---------------------------------------------------------------------------

    def _pids(self) -> tuple[int, int] | None:
        """(bwrap's pid, the sandbox's pid 1) if the pid file names live processes."""
        try:
            record = json.loads((self.state_dir / _PID_FILE).read_text(encoding="utf-8"))
            pids = [(int(record[k]), int(record[f"{k}_start"])) for k in ("bwrap", "init")]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        # A pid alone may have been reused by now; with its start time it names one process.
        if any(_start_time(pid) != start for pid, start in pids):
            return None
        return pids[0][0], pids[1][0]

    @property
    def running(self) -> bool:
        """Whether the sandbox (its pid namespace's init) is alive."""
        return self._pids() is not None

    @property
    def pid(self) -> int | None:
        """The host pid of the sandbox's init (pid 1 inside), ``None`` when not running."""
        pids = self._pids()
        return None if pids is None else pids[1]

    def log_tail(self) -> str:
        """The end of bwrap's and the agent's own output (not the jobs' logs)."""
        try:
            with (self.state_dir / _LOG_FILE).open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the sandbox unless it is running, and wait until its agent listens.

        :raises SandboxError: if it cannot be started or its agent does not listen in time.
        """
        with self._locked():
            if self.running:
                return
            self._prepare()
            self._launch(timeout_s)
        self._wait_listening(timeout_s)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the enclave's lock file: two control planes (or a worker and the dev server)
        must not both start it, or one stop it while the other starts it."""
        self._run_dir.parent.mkdir(parents=True, exist_ok=True)
        _private_dir(self._run_dir, 0o711)
        fd = os.open(self._run_dir / f"{self.enclave_id}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _launch(self, timeout_s: float) -> None:
        """Launch bwrap detached and record its pids.

        :raises SandboxError: if it does not start.
        """
        info_read, info_write = os.pipe()
        command = self._command(info_write)
        as_root = os.getuid() == 0
        try:
            with (self.state_dir / _LOG_FILE).open("ab") as log:
                # setsid --fork: the sandbox is not our child (it is init's), so it outlives
                # us, and no zombie or unreaped Popen of ours is left behind.
                launcher = subprocess.Popen(  # noqa: S603 (a fixed argv, no shell)
                    [_tool("setsid"), "--fork", *command],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    pass_fds=(info_write,),
                    close_fds=True,
                    env={"PATH": "/usr/bin:/bin"},
                    user=NOBODY if as_root else None,
                    group=NOBODY if as_root else None,
                    extra_groups=[] if as_root else None,
                    umask=0o077,
                    cwd="/",
                )
        except OSError as exc:
            os.close(info_read)
            raise SandboxError(f"cannot start the process enclave: {exc}") from exc
        finally:
            os.close(info_write)
        try:
            launcher.wait(timeout=timeout_s)  # setsid exits as soon as it has forked
            init_pid = self._read_child_pid(info_read, timeout_s)
        except subprocess.TimeoutExpired as exc:
            launcher.kill()
            launcher.wait()
            raise SandboxError("the process enclave's launcher did not return") from exc
        finally:
            os.close(info_read)
        bwrap_pid = _parent(init_pid)
        bwrap_start, init_start = _start_time(bwrap_pid), _start_time(init_pid)
        if bwrap_start is None or init_start is None:
            raise SandboxError(f"the process enclave exited at once: {self.log_tail()}")
        record = {
            "bwrap": bwrap_pid,
            "bwrap_start": bwrap_start,
            "init": init_pid,
            "init_start": init_start,
        }
        pid_file = self.state_dir / _PID_FILE
        pid_file.with_suffix(".tmp").write_text(json.dumps(record), encoding="utf-8")
        pid_file.with_suffix(".tmp").replace(pid_file)

    def _read_child_pid(self, info_read: int, timeout_s: float) -> int:
        """The pid of the sandbox's init, from bwrap's ``--info-fd`` JSON.

        :raises SandboxError: if bwrap exits or says nothing in time.
        """
        deadline = time.monotonic() + timeout_s
        data = b""
        os.set_blocking(info_read, False)
        while time.monotonic() < deadline:
            try:
                chunk = os.read(info_read, 4096)
            except BlockingIOError:
                chunk = None
            if chunk:
                data += chunk
                with contextlib.suppress(ValueError):
                    return int(json.loads(data)["child-pid"])
            elif chunk == b"":
                break  # bwrap closed it: it has exited (or failed before the child ran)
            time.sleep(_POLL_S)
        tail = self.log_tail()
        self._kill()
        raise SandboxError(f"the process enclave did not start: {tail}")

    def _wait_listening(self, timeout_s: float) -> None:
        """Wait until a connection to the agent's socket succeeds.

        :raises SandboxError: if the sandbox exits or its agent does not listen in time.
        """
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.running:
                raise SandboxError(f"the process enclave exited: {self.log_tail()}")
            if self.socket_path.exists():
                try:
                    SocketTransport.connect_unix(str(self.socket_path), 1.0).close()
                except AgentError:
                    pass
                else:
                    self._seal_socket_dir()
                    return
            time.sleep(_POLL_S)
        tail = self.log_tail()
        self.stop()
        raise SandboxError(f"the agent in the process enclave did not listen: {tail}")

    def _seal_socket_dir(self) -> None:
        """Take write access to the socket directory (on the host's disk) from the sandbox.

        Once the socket exists the agent needs only to accept on it; a writable directory
        would let a job fill the host's disk outside its tmpfs. When the control plane is not
        root the sandbox is its own user and could undo this (development and CI only).
        """
        self.socket_path.parent.chmod(0o750 if os.getuid() == 0 else 0o500)

    def connect(self, timeout_s: float = 10.0) -> SocketTransport:
        """A connection to the agent (one at a time: the agent serves them in turn).

        :raises SandboxError: if the sandbox is not running.
        :raises AgentError: if its agent does not accept the connection in time.
        """
        if not self.running:
            raise SandboxError(f"process enclave {self.enclave_id} is not running")
        return SocketTransport.connect_unix(str(self.socket_path), timeout_s)

    def stop(self) -> None:
        """Kill the sandbox and everything in it, and remove its state; idempotent."""
        # The lock file stays (empty): removing it would let a waiter lock an unlinked file.
        with self._locked():
            self._kill()

    def _kill(self) -> None:
        """Kill the sandbox and remove its state (holding the lock)."""
        pids = self._pids()
        if pids is not None:
            bwrap, init = pids
            # SIGKILL to a pid namespace's init kills every process in the namespace; bwrap
            # then reaps it and exits by itself (leaving no zombie), else it is killed too.
            with contextlib.suppress(ProcessLookupError):
                os.kill(init, signal.SIGKILL)
            self._wait_gone((init, bwrap), 5.0)
            with contextlib.suppress(ProcessLookupError):
                if _start_time(bwrap) is not None:
                    os.kill(bwrap, signal.SIGKILL)
            self._wait_gone((bwrap,), 5.0)
        shutil.rmtree(self.state_dir, ignore_errors=True)

    def _wait_gone(self, pids: tuple[int, ...], timeout_s: float) -> None:
        """Wait until none of ``pids`` runs (gone, or a zombie for init to reap)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(_start_time(p) is not None for p in pids):
            time.sleep(_POLL_S)

    # --- construction --------------------------------------------------------------------

    def _prepare(self) -> None:
        """Create the state directory, the socket directory and the interpreter shim.

        :raises SandboxError: if the run directory is not private or the inputs are wrong.
        """
        if not self._python.executable.startswith("/usr/"):
            raise SandboxError(
                f"the sandbox sees only /usr of the host; {self._python.executable} is outside"
            )
        if not (self._agent_dir / "__main__.py").is_file():
            raise SandboxError(f"{self._agent_dir} is not the agent package")
        # The run directory is 0711 (made by _locked): others may traverse (the sandbox's user
        # reaches its socket directory) but not list; in the state directory only the socket
        # directory is the sandbox's.
        shutil.rmtree(self.state_dir, ignore_errors=True)  # what a dead sandbox left
        _private_dir(self.state_dir, 0o711)
        sock_dir = self.socket_path.parent
        # Writable by the sandbox's group until its agent has bound the socket (see
        # _seal_socket_dir); owned by us, so the sandbox cannot make it writable again.
        sock_dir.mkdir(mode=0o770)
        sock_dir.chmod(0o770)
        if os.getuid() == 0:
            os.chown(sock_dir, 0, NOBODY)
            # bwrap runs as nobody and must reach every directory it binds.
            for site_dir in self._python.site_dirs:
                _check_reachable(Path(site_dir))
        self._write_shim(self.state_dir / "python")
        # A copy, not a bind of the checkout: the checkout may be where nobody cannot reach
        # (/root), and a running agent keeps the code it started with.
        shutil.copytree(
            self._agent_dir,
            self.state_dir / AGENT_PACKAGE,
            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
        )
        _readable_tree(self.state_dir / AGENT_PACKAGE)

    def _write_shim(self, shim: Path) -> None:
        """A venv over the system interpreter whose ``.pth`` adds the site directories.

        Python finds ``pyvenv.cfg`` next to ``bin/``, makes the shim ``sys.prefix`` and
        processes ``.pth`` files in its ``site-packages``: the agent and its jobs then import
        torch with no environment variable (the agent gives jobs a clean environment).
        """
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        (shim / "bin").mkdir(parents=True, mode=0o755)
        shim_site = shim / "lib" / f"python{version}" / "site-packages"
        shim_site.mkdir(parents=True, mode=0o755)
        home = os.path.dirname(self._python.executable)
        (shim / "pyvenv.cfg").write_text(
            f"home = {home}\ninclude-system-site-packages = false\n", encoding="utf-8"
        )
        (shim / "bin" / "python3").symlink_to(self._python.executable)
        lines = [OPT_INSIDE, *self._python.site_dirs]
        (shim_site / "sovereign-sandbox.pth").write_text("\n".join(lines) + "\n", encoding="utf-8")
        _readable_tree(shim)

    def _command(self, info_fd: int) -> list[str]:
        """``prlimit … taskset … bwrap … python3 -m sovereign_agent …``."""
        limits = self._limits
        mib = 1 << 20
        prlimit = [
            _tool("prlimit"),
            f"--nofile={limits.open_files}:{limits.open_files}",
            "--core=0:0",  # a core dump would write job memory (plaintext) to the host
            f"--fsize={limits.file_size_mib * mib}:{limits.file_size_mib * mib}",
            f"--nproc={limits.processes}:{limits.processes}",
        ]
        if limits.address_space_mib is not None:
            size = limits.address_space_mib * mib
            prlimit.append(f"--as={size}:{size}")
        allowed = sorted(os.sched_getaffinity(0))
        cpus = ",".join(str(cpu) for cpu in allowed[: limits.vcpus])
        tmpfs_bytes = str(limits.tmpfs_mib * mib)
        python_inside = f"{PYTHON_SHIM_INSIDE}/bin/python3"
        bwrap = [
            _tool("bwrap"),
            "--unshare-all",  # user, ipc, pid, net (only lo), uts, cgroup namespaces
            "--unshare-user",  # explicitly (--unshare-all only tries), for the next flag
            "--disable-userns",  # no nested user namespace from inside
            "--new-session",  # no TIOCSTI into a terminal of ours
            "--clearenv",
            "--setenv", "PATH", "/usr/bin:/bin",
            "--setenv", "HOME", AGENT_ROOT_INSIDE,
            "--uid", str(SANDBOX_UID),
            "--gid", str(SANDBOX_UID),
            "--hostname", "enclave",
            "--ro-bind", "/usr", "/usr",
            "--symlink", "usr/lib", "/lib",
            "--symlink", "usr/lib64", "/lib64",
            "--symlink", "usr/bin", "/bin",
            "--proc", "/proc",
            "--dev", "/dev",
            # bwrap's /dev is a tmpfs without a size limit: read-only below, but a bounded
            # /dev/shm (POSIX shared memory: torch's DataLoader workers use it).
            "--size", tmpfs_bytes, "--tmpfs", "/dev/shm",  # noqa: S108 (its own)
            "--size", tmpfs_bytes, "--tmpfs", AGENT_ROOT_INSIDE,
            "--size", tmpfs_bytes, "--tmpfs", "/tmp",  # noqa: S108 (the sandbox's own tmpfs)
            "--bind", str(self.socket_path.parent), SOCKET_DIR_INSIDE,
            "--ro-bind", str(self.state_dir / "python"), PYTHON_SHIM_INSIDE,
            "--ro-bind", str(self.state_dir / AGENT_PACKAGE), f"{OPT_INSIDE}/{AGENT_PACKAGE}",
        ]  # fmt: skip
        for site_dir in self._python.site_dirs:
            bwrap += ["--ro-bind", site_dir, site_dir]
        bwrap += [
            # bwrap's root is a tmpfs without a size limit: read-only, nothing lands there.
            "--remount-ro", "/",
            "--remount-ro", "/dev",
            "--chdir", AGENT_ROOT_INSIDE,
            "--info-fd", str(info_fd),
            "--",
            python_inside, "-m", AGENT_PACKAGE,
            "--listen-unix", f"{SOCKET_DIR_INSIDE}/{SOCKET_NAME}",
            "--root", AGENT_ROOT_INSIDE,
            "--simulated",
            # The jobs run as the agent's user: only the control plane (outside the PID
            # namespace) may connect, and whatever a job leaves running dies when none runs.
            "--outside-peers-only",
            "--own-pid-namespace",
        ]  # fmt: skip
        return [*prlimit, _tool("taskset"), "--cpu-list", cpus, *bwrap]
