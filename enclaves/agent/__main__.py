"""The agent's command line: ``python3 -m enclaves.agent`` (``-m sovereign_agent`` in a guest).

Owns the agent process: its arguments, what ``hello`` reports (the image digest, the GPUs the
guest sees, the jobs' Python), and the connection loop: a virtio-serial port reopened whenever
the host side goes away (``--device``), or a unix socket accepting one connection at a time
(``--listen-unix``, the process enclave). It must import only the standard library and the
agent's own modules (relatively): it is copied into the guest image.

In the process enclave the jobs run as the agent's own user, so two options keep them away
from it: ``--outside-peers-only`` accepts only connections from outside the agent's PID
namespace (the control plane; ``SO_PEERCRED`` reports pid 0 for a peer the namespace cannot
see) and makes the agent non-dumpable (no ``ptrace`` or ``/proc/<pid>/mem`` from a job), and
``--own-pid-namespace`` makes it a child subreaper that kills whatever jobs left behind in its
namespace once none runs (see :class:`.server.Agent`); in a guest (``--device`` with
``--job-user``) it does the same to every process of the job user. Its own log (stderr, which
the process enclave writes to a file on the host's disk) is bounded: lines are cut,
rate-limited and capped in total (:class:`BoundedLogHandler`).

A sanitizer domain boots the same image with ``sovereign.mode=sanitize`` on the kernel command
line (or the agent gets ``--sanitize-only``): the agent then answers only ``hello`` and
``scrub``. ``--simulated-gpu-mib`` gives an agent without a GPU (the process enclave, tests, a
guest under TCG) host memory that ``scrub`` and ``canary`` treat as the GPU's.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import importlib
import logging
import os
import pwd
import queue
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from .protocol import MAX_SIMULATE_MIB
from .server import Agent, JobUser, Stream, namespace_strays, user_strays

#: A unix-socket connection that sends nothing for this long is closed, so a client that
#: forgot its connection does not keep the next one waiting for ever.
IDLE_TIMEOUT_S = 300.0
#: How long to wait before reopening the serial port after the host side went away.
REOPEN_DELAY_S = 0.5
_DIGEST = re.compile(r"[A-Za-z0-9:._-]{1,128}")
#: Accepted connections waiting for their turn (the control plane's; refused ones never wait).
ACCEPTED_QUEUE = 8
#: The agent's own log: at most this many characters a line, LOG_BURST lines at once, then
#: LOG_LINES_PER_MINUTE, and LOG_TOTAL_BYTES over the agent's life (then one last line).
LOG_LINE_CHARS = 2000
LOG_BURST = 100
LOG_LINES_PER_MINUTE = 60
LOG_TOTAL_BYTES = 8 << 20
_LOG_LIMIT_LINE = "sovereign-agent: log limit reached, no more lines"
_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36
#: The inode of the initial PID namespace (the kernel's PROC_PID_INIT_INO).
_INIT_PID_NS_INODE = 0xEFFFFFFC
#: The kernel command line, and the token on it that starts the agent in sanitize mode.
PROC_CMDLINE = "/proc/cmdline"
SANITIZE_TOKEN = "sovereign.mode=sanitize"  # noqa: S105 - a kernel argument, no secret

log = logging.getLogger("sovereign_agent")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent until it is killed."""
    args = _parser().parse_args(argv)
    if args.outside_peers_only and not args.listen_unix:
        raise SystemExit("sovereign-agent: --outside-peers-only needs --listen-unix")
    handler = BoundedLogHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("sovereign-agent: %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    # An exception escaping a thread goes through the bounded log, not straight to stderr.
    threading.excepthook = _log_thread_exception
    if args.outside_peers_only:
        # The jobs run as our user: without this, one could ptrace us or read our memory.
        _prctl(_PR_SET_DUMPABLE, 0)
    if args.own_pid_namespace:
        _check_own_pid_namespace()
    if args.own_pid_namespace or (args.device and args.job_user):
        # Descendants that leave their job's session (setsid, double fork) become ours, not
        # init's: the agent reaps them after killing them (see _sweep).
        _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    # Files the agent makes are readable by the job's user whatever umask the agent was started
    # with (a unit's UMask=0077 would hide the job's own directory from it).
    os.umask(0o022)
    job_user = _job_user(args.job_user) if args.job_user else None
    if job_user is not None:
        # The job's user must be able to reach its directory through --root (search, not list).
        os.makedirs(args.root, mode=0o711, exist_ok=True)
        os.chmod(args.root, os.stat(args.root).st_mode & 0o7777 | 0o111)  # noqa: S103 - search only
    agent = Agent(
        args.root,
        python=args.python,
        python_version=_python_version(args.python),
        job_user=job_user,
        image_digest=_image_digest(args.image_digest_file),
        simulated=args.simulated,
        gpus=_gpus(),
        sweep=_sweep(args, job_user),
        simulated_gpu_mib=args.simulated_gpu_mib,
        sanitize_only=args.sanitize_only or sanitize_requested(),
        scrub_python=args.scrub_python,
    )
    if agent.sanitize_only:
        log.info("sanitize mode: answering only hello and scrub")
    if args.device:
        _serve_device(agent, args.device)
    else:
        _serve_unix(agent, args.listen_unix, outside_peers_only=args.outside_peers_only)
    return 0


def _sweep(args: argparse.Namespace, job_user: JobUser | None) -> Callable[[], list[int]] | None:
    """What the agent kills when no job runs: its PID namespace's other processes in the
    process enclave; in a guest (``--device``) every process of the job user, whom nothing but
    jobs runs as; else (an agent run by hand, or by tests, with a shared user) nothing more
    than each job's process group."""
    if args.own_pid_namespace:
        return namespace_strays
    if args.device and job_user is not None:
        uid = job_user.uid
        return lambda: user_strays(uid)
    return None


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sovereign-agent", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", help="virtio-serial port to serve (reopened on disconnect)")
    where.add_argument("--listen-unix", help="unix socket to listen on, one connection at a time")
    parser.add_argument("--root", required=True, help="directory holding the jobs")
    parser.add_argument("--job-user", help="unprivileged user the jobs run as")
    parser.add_argument("--python", default=sys.executable, help="interpreter the jobs run with")
    parser.add_argument("--image-digest-file", help="file holding the guest image's digest")
    parser.add_argument("--simulated", action="store_true", help="report a simulated enclave")
    parser.add_argument(
        "--scrub-python", help="interpreter the scrub program runs with (needs torch; --python)"
    )
    parser.add_argument(
        "--simulated-gpu-mib",
        type=_simulated_mib,
        help="host memory (MiB) that scrub and canary treat as the GPU's where there is none",
    )
    parser.add_argument(
        "--sanitize-only",
        action="store_true",
        help=f"answer only hello and scrub (also set by {SANITIZE_TOKEN} on the kernel cmdline)",
    )
    parser.add_argument(
        "--outside-peers-only",
        action="store_true",
        help="close every connection from a process inside the agent's PID namespace",
    )
    parser.add_argument(
        "--own-pid-namespace",
        action="store_true",
        help="the PID namespace is the agent's: kill all but it and its ancestors when no job runs",
    )
    return parser


def _simulated_mib(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_SIMULATE_MIB:
        raise argparse.ArgumentTypeError(f"must be an integer from 1 to {MAX_SIMULATE_MIB}")
    return int(text)


def sanitize_requested(path: str = PROC_CMDLINE) -> bool:
    """Whether the kernel command line at ``path`` holds :data:`SANITIZE_TOKEN` (a word of it)."""
    try:
        with open(path, "rb") as file:
            words = file.read(1 << 16).decode("ascii", "replace").split()
    except OSError:
        return False
    return SANITIZE_TOKEN in words


def _serve_device(agent: Agent, device: str) -> None:
    while True:
        try:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            log.warning("cannot open %s: %s", device, exc.strerror)
            time.sleep(1.0)
            continue
        try:
            agent.serve(Stream(fd, fd))
        finally:
            os.close(fd)
        # The host side closed (virtio-serial reads EOF while nobody is connected).
        time.sleep(REOPEN_DELAY_S)


def _serve_unix(agent: Agent, path: str, *, outside_peers_only: bool = False) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is the host's way in: owner only
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(64)
    log.info("listening on %s", path)
    # One thread accepts (and at once closes what it refuses, even while a connection is being
    # served), this one serves the accepted connections in turn.
    accepted: queue.Queue[socket.socket] = queue.Queue(ACCEPTED_QUEUE)
    accepter = threading.Thread(
        target=_accept, args=(listener, accepted, outside_peers_only), daemon=True
    )
    accepter.start()
    while True:
        connection = accepted.get()
        try:
            fd = connection.fileno()
            agent.serve(Stream(fd, fd, idle_timeout_s=IDLE_TIMEOUT_S))
        finally:
            connection.close()


def _accept(
    listener: socket.socket, accepted: queue.Queue[socket.socket], outside_peers_only: bool
) -> None:
    """Accept connections for ever; queue the acceptable ones, close the others."""
    while True:
        try:
            connection, _ = listener.accept()
        except OSError as exc:  # EMFILE and the like: the next try may succeed
            log.warning("accept failed: %s", exc.strerror)
            time.sleep(0.1)
            continue
        if outside_peers_only:
            pid = peer_pid(connection)
            if pid != 0:
                connection.close()
                log.warning("refused a connection from pid %s inside the sandbox", pid)
                continue
        accepted.put(connection)


def peer_pid(connection: socket.socket) -> int | None:
    """The connecting process's pid as our PID namespace sees it (``SO_PEERCRED``).

    0 when the peer is outside the namespace (the control plane), ``None`` if unknown.
    """
    try:
        credentials = connection.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")
        )
    except OSError:
        return None
    pid, _, _ = struct.unpack("3i", credentials)
    return int(pid)


class BoundedLogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that cannot be made to write without bound.

    Each line is cut to :data:`LOG_LINE_CHARS` (control characters escaped, so one record is one
    line); lines pass a token bucket (:data:`LOG_BURST` at once, refilled at
    :data:`LOG_LINES_PER_MINUTE`), the dropped ones counted in the next line that passes; after
    :data:`LOG_TOTAL_BYTES` one last line says so and nothing more is written.
    """

    def __init__(
        self,
        stream: TextIO,
        *,
        clock: Callable[[], float] = time.monotonic,
        burst: int = LOG_BURST,
        per_minute: int = LOG_LINES_PER_MINUTE,
        total_bytes: int = LOG_TOTAL_BYTES,
    ) -> None:
        super().__init__(stream)
        self._clock = clock
        self._burst = burst
        self._rate = per_minute / 60.0
        self._total = total_bytes
        self._tokens = float(burst)
        self._last = clock()
        self._dropped = 0
        self._written = 0
        self._exhausted = False

    def emit(self, record: logging.LogRecord) -> None:
        """Write ``record`` as one bounded line, if the budget allows."""
        try:
            line = self.format(record)
        except Exception:  # noqa: BLE001 - logging's contract: handleError reports it
            self.handleError(record)
            return
        line = line.encode("unicode_escape", "replace").decode("ascii")[:LOG_LINE_CHARS]
        # Handler.handle holds self.lock around emit.
        if self._exhausted:
            return
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens < 1:
            self._dropped += 1
            return
        self._tokens -= 1
        if self._dropped:
            line = f"{line} [{self._dropped} lines dropped before this one]"
            self._dropped = 0
        if self._written + len(line) + len(_LOG_LIMIT_LINE) + 2 > self._total:
            line = _LOG_LIMIT_LINE  # room for it was kept: the total stays within the cap
            self._exhausted = True
        self._written += len(line) + 1
        try:
            self.stream.write(line + "\n")
            self.flush()
        except Exception:  # noqa: BLE001 - logging's contract: handleError reports it
            self.handleError(record)


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    exc_info = (args.exc_type, args.exc_value, args.exc_traceback)
    log.error("thread %s failed", getattr(args.thread, "name", "?"), exc_info=exc_info)  # type: ignore[arg-type]


def _prctl(option: int, value: int) -> None:
    """``prctl(option, value)``; a failure is fatal (the agent would run less protected)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) != 0:
        error = ctypes.get_errno()
        raise SystemExit(f"sovereign-agent: prctl({option}) failed: {os.strerror(error)}")


def _check_own_pid_namespace() -> None:
    """Refuse ``--own-pid-namespace`` where the namespace holds others' processes.

    Its sweep kills every process of the namespace but the agent and its ancestors: run on a
    host (or in a shared container) by mistake, it would kill what is not the agent's.
    """
    try:
        inode = os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        raise SystemExit("sovereign-agent: --own-pid-namespace needs /proc") from None
    strays = namespace_strays()
    if inode == _INIT_PID_NS_INODE or strays:
        raise SystemExit(
            "sovereign-agent: --own-pid-namespace, but this PID namespace holds "
            f"{len(strays)} other processes (initial namespace: {inode == _INIT_PID_NS_INODE})"
        )


def _job_user(name: str) -> JobUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SystemExit(f"sovereign-agent: no such user: {name}") from None
    if entry.pw_uid == 0:
        raise SystemExit("sovereign-agent: jobs may not run as root")
    return JobUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _python_version(python: str) -> str:
    if python == sys.executable:
        return sys.version.split()[0]
    try:
        result = subprocess.run(  # noqa: S603 - the operator's configured interpreter
            [python, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={},
        )
    except (OSError, subprocess.SubprocessError):
        raise SystemExit(f"sovereign-agent: cannot run {python}") from None
    return result.stdout.strip()[:32]


def _image_digest(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="ascii") as file:
            digest = file.read(256).strip()
    except (OSError, UnicodeDecodeError):
        log.warning("cannot read the image digest file")
        return ""
    return digest if _DIGEST.fullmatch(digest) else ""


def _gpus() -> list[dict[str, Any]]:
    """The GPUs this machine sees: NVML if importable, else ``nvidia-smi``, else none."""
    try:
        return _nvml_gpus()
    except ImportError:
        pass
    except Exception:  # NVML present but unusable (no driver): fall through to nvidia-smi
        log.warning("NVML failed", exc_info=True)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        result = subprocess.run(  # noqa: S603 - a fixed query to the driver's own tool
            [smi, "--query-gpu=name,uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        log.warning("nvidia-smi failed")
        return []
    return parse_nvidia_smi(result.stdout)


def _nvml_gpus() -> list[dict[str, Any]]:
    nvml: Any = importlib.import_module("pynvml")
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(
                {
                    "name": _text(name),
                    "uuid": _text(uuid),
                    "memory_mib": int(memory) // (1 << 20),
                }
            )
        return gpus
    finally:
        nvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """GPUs from ``nvidia-smi --query-gpu=name,uuid,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        gpus.append({"name": parts[0][:128], "uuid": parts[1][:128], "memory_mib": int(parts[2])})
    return gpus


def _text(value: Any) -> str:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text[:128]


if __name__ == "__main__":
    sys.exit(main())
