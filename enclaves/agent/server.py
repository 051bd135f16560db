"""The workload agent that runs inside an enclave.

Owns the agent's side of :mod:`.protocol`: it receives a job's code and inputs (resumable
uploads: one running hash per file, which each chunk's prefix digest is checked against), runs
the job as a subprocess in its own session (as an unprivileged user when one is configured),
kills its process group at the deadline or on cancel, captures its log (capped), lists and
serves its outputs (regular files inside the work dir only) and removes it on discard. A job's
state lives in ``jobs/<job>/state.json`` so a restarted agent still answers for finished jobs.

The host on the other end is trusted more than the job but still checked: every name and path
is validated, every value range-checked, and every failure is answered as an error frame with a
short message that reveals nothing of the guest's file system; a malformed frame drops the
connection and the agent waits for the next one. One request is served at a time; each running
job has one pump thread (its log and its exit). Given a ``sweep``, whenever no job runs any
more it kills every process the sweep names, so a descendant that left its job's session does
not outlive the job: in the process enclave, where the agent owns its PID namespace, all but
the agent and its ancestors (:func:`namespace_strays`); in a guest, every process of the job
user (:func:`user_strays`).

``scrub`` and ``canary`` run the scrub program (``scrub.py`` beside this module, which needs
torch) as a subprocess, ``python -m <this package>.scrub``, bounded in time and output and never
while a job runs; the agent never imports it. In sanitize mode (a sanitizer domain) the agent
answers only ``hello`` and ``scrub``.

It must import only the standard library and :mod:`.protocol` (relatively): it is copied into
the guest image as ``sovereign_agent.server``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from . import protocol
from .protocol import Frame, ProtocolError

AGENT_VERSION: Final = "1.0"
#: A job's log is cut at this size; what the job writes beyond it is read and dropped.
LOG_CAP: Final = 16 << 20
#: A peer that starts a frame must finish it within this time, or it is dropped.
MID_FRAME_TIMEOUT_S: Final = 60.0
#: How long ``cancel`` and ``discard`` wait for a killed job's pump to record its end.
KILL_WAIT_S: Final = 10.0
#: Most directory entries ``outputs`` looks at, so a job cannot make it walk forever.
MAX_SCANNED: Final = 100_000
#: How long a sweep waits for the processes it killed to be gone (and reaped).
SWEEP_WAIT_S: Final = 5.0
#: Longest run of the scrub program (a whole GPU's scan, fills and verifies, torch's start).
SCRUB_MAX_RUNTIME_S: Final = 600.0
#: Most bytes the scrub program may print (its report is one JSON line of a few KiB).
SCRUB_MAX_OUTPUT: Final = 64 << 10
#: How much of the scrub program's stderr is kept for the agent's log when it fails.
_SCRUB_STDERR_TAIL: Final = 2048
_HASH_BLOCK: Final = 1 << 20
_LOG_TRUNCATED: Final = b"\n[sovereign-agent: log truncated at 16 MiB]\n"

log = logging.getLogger("sovereign_agent")

#: What an operation answers: the frame kind, the header fields and the payload.
Answer = tuple[int, dict[str, Any], bytes]


class RequestError(Exception):
    """A request the agent refuses; the message is safe to send to the host."""


class Stream:
    """Reads and writes whole byte counts on file descriptors (a socket or a serial port).

    A frame's first byte is awaited for ``idle_timeout_s`` (forever when ``None``: the serial
    port has one host end and nobody else waits); once a frame has begun, each wait is bounded
    by :data:`MID_FRAME_TIMEOUT_S` so a stalled peer is dropped.
    """

    def __init__(self, read_fd: int, write_fd: int, *, idle_timeout_s: float | None = None) -> None:
        self._read_fd = read_fd
        self._write_fd = write_fd
        self._idle_timeout_s = idle_timeout_s
        self._in_frame = False

    def begin_frame(self) -> None:
        """Mark the start of a new frame: the next wait may be unbounded."""
        self._in_frame = False

    def read_exact(self, count: int) -> bytes:
        """Read exactly ``count`` bytes.

        :raises EOFError: if the peer closed the connection.
        :raises ProtocolError: if the peer stalled in the middle of a frame.
        """
        buffer = bytearray(count)
        view = memoryview(buffer)
        got = 0
        while got < count:
            timeout = MID_FRAME_TIMEOUT_S if self._in_frame else self._idle_timeout_s
            readable, _, _ = select.select([self._read_fd], [], [], timeout)
            if not readable and not self._in_frame:
                raise EOFError("idle connection")
            if not readable:
                raise ProtocolError("peer stalled in the middle of a frame")
            try:
                # Straight into the frame's buffer: a 1 MiB chunk arrives in many reads.
                received = os.readv(self._read_fd, [view[got:]])
            except OSError as exc:
                raise EOFError from exc
            if not received:
                raise EOFError
            self._in_frame = True
            got += received
        return bytes(buffer)

    def write(self, data: bytes) -> None:
        """Write all of ``data``."""
        view = memoryview(data)
        while view:
            written = os.write(self._write_fd, view)
            view = view[written:]


@dataclass
class _Running:
    """A job whose process the agent started and still watches."""

    process: subprocess.Popen[bytes]
    started: float
    deadline: float
    pump: threading.Thread | None = None
    cancelled: bool = False
    timed_out: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class _Upload:
    """A file being uploaded: what was announced, and the running hash of what was appended.

    Kept in memory only (the part file and its meta file are what survive a restart), so no
    hash state of job data is ever written out.
    """

    size: int
    sha256: str
    have: int = 0
    hasher: Any = field(default_factory=hashlib.sha256)


@dataclass(frozen=True)
class JobUser:
    """The unprivileged user a job runs as."""

    name: str
    uid: int
    gid: int


class Agent:
    """The agent's state and its operations; :meth:`serve` answers one connection."""

    def __init__(
        self,
        root: str,
        *,
        python: str,
        python_version: str,
        job_user: JobUser | None = None,
        image_digest: str = "",
        simulated: bool = False,
        gpus: list[dict[str, Any]] | None = None,
        sweep: Callable[[], list[int]] | None = None,
        simulated_gpu_mib: int | None = None,
        sanitize_only: bool = False,
        scrub_python: str | None = None,
        scrub_timeout_s: float = SCRUB_MAX_RUNTIME_S,
    ) -> None:
        self.root = os.path.realpath(root)
        self.jobs_dir = os.path.join(self.root, "jobs")
        os.makedirs(self.jobs_dir, mode=0o711, exist_ok=True)
        # The jobs' users pass through; nobody but the agent lists the jobs.
        os.chmod(self.jobs_dir, 0o711)  # noqa: S103 - search only, no read or write
        self.python = python
        self.python_version = python_version
        self.job_user = job_user
        self.image_digest = image_digest
        self.simulated = simulated
        self.gpus = gpus or []
        #: Host memory standing in for a GPU's where the agent has none (scrub, canary).
        self.simulated_gpu_mib = protocol.check_simulate_mib(simulated_gpu_mib)
        self.sanitize_only = sanitize_only
        self.scrub_python = scrub_python or python
        self.scrub_timeout_s = scrub_timeout_s
        #: The processes to kill when no job runs (None: only the jobs' process groups).
        self._sweep = sweep
        self._lock = threading.Lock()
        self._running: dict[str, _Running] = {}
        #: Uploads in progress by (job, area, path); only the connection's thread touches them.
        self._uploads: dict[tuple[str, str, str], _Upload] = {}
        self._recover()

    # Connection ----------------------------------------------------------------------------

    def serve(self, stream: Stream) -> None:
        """Answer requests on ``stream`` until the peer closes it or breaks the protocol."""
        while True:
            stream.begin_frame()
            try:
                frame = protocol.read_frame(stream.read_exact)
                op, request_id = protocol.check_request(frame)
            except EOFError:
                return
            except ProtocolError as exc:
                log.warning("dropping connection: %s", exc)
                return
            reply = self.handle(op, request_id, frame)
            try:
                stream.write(reply)
            except OSError:
                return

    def handle(self, op: str, request_id: int, frame: Frame) -> bytes:
        """Run one checked request and return the encoded answer (a reply or an error)."""
        handler: Callable[[dict[str, Any], bytes], Answer] = getattr(self, f"_op_{op}")
        if self.sanitize_only and op not in protocol.SANITIZE_OPS:
            handler = _refuse_in_sanitize_mode
        try:
            kind, header, payload = handler(frame.header, frame.payload)
            return protocol.encode(Frame(kind, {**header, "id": request_id}, payload))
        except (RequestError, ValueError) as exc:
            message = str(exc)
        except ProtocolError:
            message = "answer too large"
        except OSError as exc:
            # The errno's name (ENOSPC, EACCES...) says enough; the path stays in the guest.
            message = f"i/o error: {errno.errorcode.get(exc.errno or 0, 'unknown')}"
            log.warning("%s failed: %s", op, exc)
        except Exception:  # an agent bug must not kill the agent; the host gets a generic answer
            log.exception("%s failed", op)
            message = "internal error"
        error = {"id": request_id, "message": protocol.safe_message(message)}
        return protocol.encode(Frame(protocol.KIND_ERROR, error))

    # Operations ----------------------------------------------------------------------------

    def _op_hello(self, header: dict[str, Any], payload: bytes) -> Answer:
        return (
            protocol.KIND_REPLY,
            {
                "protocol": protocol.VERSION,
                "agent_version": AGENT_VERSION,
                "image_digest": self.image_digest,
                "simulated": self.simulated,
                "gpus": self.gpus,
                "python": self.python_version,
                "mode": "sanitize" if self.sanitize_only else "jobs",
            },
            b"",
        )

    def _op_put_begin(self, header: dict[str, Any], payload: bytes) -> Answer:
        job, area, path = self._upload_target(header)
        size = header["size"]
        digest = protocol.check_sha256(header["sha256"])
        if not 0 <= size <= protocol.MAX_PUT_SIZE:
            raise RequestError("size out of range")
        self._ensure_job(job)
        key = (job, area, path)
        part, meta = self._part_paths(job, area, path)
        dest = self._dest(job, area, path)
        if _is_regular(dest) and _hash_file(dest) == digest:
            self._uploads.pop(key, None)
            _remove(part)
            _remove(meta)
            return protocol.KIND_REPLY, {"have": size}, b""
        upload = self._upload(key)
        if upload is not None and upload.size == size and upload.sha256 == digest:
            return protocol.KIND_REPLY, {"have": upload.have}, b""
        self._uploads.pop(key, None)
        # Written for a resume after an agent restart; the running hash stays in memory.
        _write_json(meta, {"path": path, "size": size, "sha256": digest})
        with _open_new(part):
            pass
        self._uploads[key] = _Upload(size=size, sha256=digest)
        return protocol.KIND_REPLY, {"have": 0}, b""

    def _op_put_chunk(self, header: dict[str, Any], payload: bytes) -> Answer:
        job, area, path = self._upload_target(header)
        offset = header["offset"]
        prefix_digest = protocol.check_sha256(header["sha256"])
        key = (job, area, path)
        upload = self._upload(key)
        if upload is None:
            raise RequestError("no upload in progress")
        if offset != upload.have:
            raise RequestError(f"offset mismatch: have {upload.have}")
        if upload.have + len(payload) > upload.size:
            raise RequestError("chunk beyond the announced size")
        part, meta = self._part_paths(job, area, path)
        # The one pass over the data: the running hash, with the chunk, must be the client's
        # hash of the file's bytes up to the chunk's end. That checks the chunk and, on a
        # resume, that the part already held is the client's prefix.
        hasher = upload.hasher.copy()
        hasher.update(payload)
        if hasher.hexdigest() != prefix_digest:
            self._uploads.pop(key, None)
            _remove(part)
            _remove(meta)
            raise RequestError("chunk does not match its prefix sha256; upload it again")
        fd = os.open(part, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode) or status.st_size != upload.have:
                # The part file is not what the running hash covers: begin again.
                self._uploads.pop(key, None)
                raise RequestError("upload changed underneath; begin it again")
            try:
                _write_all(fd, payload)
            except BaseException:
                # Part of the chunk may be on disk, not in the hash: the next put_begin
                # rehashes the part file.
                self._uploads.pop(key, None)
                raise
        finally:
            os.close(fd)
        upload.hasher = hasher
        upload.have += len(payload)
        return protocol.KIND_REPLY, {"have": upload.have}, b""

    def _op_put_end(self, header: dict[str, Any], payload: bytes) -> Answer:
        job, area, path = self._upload_target(header)
        key = (job, area, path)
        part, meta = self._part_paths(job, area, path)
        dest = self._dest(job, area, path)
        upload = self._upload(key)
        if upload is not None:
            if upload.have != upload.size or os.lstat(part).st_size != upload.size:
                raise RequestError("upload incomplete")
            # The running hash covers every byte appended to the part file, in order: the
            # last chunk's prefix digest (or, resumed with nothing left to send, the rehash).
            digest = upload.hasher.hexdigest()
            self._uploads.pop(key, None)
            if digest != upload.sha256:
                _remove(part)
                _remove(meta)
                raise RequestError("file does not match its sha256; upload it again")
            self._make_parents(job, area, path)
            os.chmod(part, 0o444 if area == "input" else 0o644)
            os.replace(part, dest)
            _remove(meta)
            return protocol.KIND_REPLY, {"sha256": digest}, b""
        if _is_regular(dest):
            # The rename happened but its answer was lost: say what is there.
            return protocol.KIND_REPLY, {"sha256": _hash_file(dest)}, b""
        raise RequestError("no upload in progress")

    def _upload(self, key: tuple[str, str, str]) -> _Upload | None:
        """The upload in progress at ``key``, from memory or, after a restart, from its files.

        From the files, the part is hashed once to restart the running hash; ``None`` when no
        upload of that path is in progress.
        """
        job, area, path = key
        part, meta = self._part_paths(job, area, path)
        upload = self._uploads.get(key)
        if upload is not None:
            if _size_of(part) == upload.have:
                return upload
            # The part file is gone or is not what the running hash covers: start from disk.
            del self._uploads[key]
        wanted = _read_json(meta)
        if not isinstance(wanted, dict) or wanted.get("path") != path or not _is_regular(part):
            return None
        size, digest = wanted.get("size"), wanted.get("sha256")
        if not protocol.is_int(size) or not isinstance(digest, str):
            return None
        upload = _Upload(size=size, sha256=digest)
        fd = os.open(part, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            upload.have = _hash_into(fd, upload.hasher)
        finally:
            os.close(fd)
        if upload.have > size:
            return None
        self._uploads[key] = upload
        return upload

    def _op_run(self, header: dict[str, Any], payload: bytes) -> Answer:
        job = protocol.check_job(header["job"])
        entrypoint = protocol.check_path(header["entrypoint"])
        args = header["args"]
        if len(args) > protocol.MAX_ARGS or not all(
            isinstance(arg, str) and len(arg) <= protocol.MAX_ARG_LENGTH and "\0" not in arg
            for arg in args
        ):
            raise RequestError("args must be at most 256 strings of at most 4096 characters")
        max_runtime_s = header["max_runtime_s"]
        if not 1 <= max_runtime_s <= protocol.MAX_RUNTIME_S:
            raise RequestError("max_runtime_s out of range")
        with self._lock:
            if not os.path.isdir(self._job_dir(job)):
                raise RequestError("unknown job")
            if os.path.exists(self._state_path(job)):
                return protocol.KIND_REPLY, self._status_locked(job), b""
            work = self._area_dir(job, "code")
            if not _is_regular(os.path.join(work, entrypoint)):
                raise RequestError("entrypoint not found")
            self._start(job, entrypoint, list(args), max_runtime_s)
            return protocol.KIND_REPLY, self._status_locked(job), b""

    def _op_status(self, header: dict[str, Any], payload: bytes) -> Answer:
        job = protocol.check_job(header["job"])
        with self._lock:
            return protocol.KIND_REPLY, self._status_locked(job), b""

    def _op_logs(self, header: dict[str, Any], payload: bytes) -> Answer:
        job = protocol.check_job(header["job"])
        offset, limit = _range(header)
        try:
            fd = os.open(self._log_path(job), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return protocol.KIND_DATA, {}, b""
        try:
            data = os.pread(fd, limit, offset)
        finally:
            os.close(fd)
        return protocol.KIND_DATA, {}, data

    def _op_cancel(self, header: dict[str, Any], payload: bytes) -> Answer:
        job = protocol.check_job(header["job"])
        self._kill(job, cancel=True)
        with self._lock:
            if os.path.isdir(self._job_dir(job)) and not os.path.exists(self._state_path(job)):
                # Never started: it never will be (run answers this status from now on).
                self._write_state(job, {"state": "cancelled", "exit_code": None, "runtime_s": 0.0})
            return protocol.KIND_REPLY, self._status_locked(job), b""

    def _op_outputs(self, header: dict[str, Any], payload: bytes) -> Answer:
        job = protocol.check_job(header["job"])
        patterns = header["patterns"]
        if len(patterns) > protocol.MAX_PATTERNS:
            raise RequestError("too many patterns")
        compiled = [protocol.check_pattern(pattern).split("/") for pattern in patterns]
        work = self._area_dir(job, "code")
        if not os.path.isdir(work):
            raise RequestError("unknown job")
        files: list[dict[str, Any]] = []
        total = 0
        for name in self._walk(work):
            if not any(_glob_match(name.split("/"), pattern) for pattern in compiled):
                continue
            try:
                protocol.check_path(name)
            except ValueError:
                continue  # a name the protocol cannot carry is not an output
            if len(files) == protocol.MAX_OUTPUT_FILES:
                raise RequestError("more than 256 output files match")
            try:
                fd = self._open_output(work, name)
            except RequestError:
                continue
            try:
                size = os.fstat(fd).st_size
                total += size
                if total > protocol.MAX_OUTPUT_TOTAL:
                    raise RequestError("outputs exceed the total size bound")
                digest = _hash_fd(fd)
            finally:
                os.close(fd)
            files.append({"name": name, "size": size, "sha256": digest})
        return protocol.KIND_REPLY, {"files": files}, b""

    def _op_get(self, header: dict[str, Any], payload: bytes) -> Answer:
        job = protocol.check_job(header["job"])
        name = protocol.check_path(header["name"])
        offset, limit = _range(header)
        fd = self._open_output(self._area_dir(job, "code"), name)
        try:
            data = os.pread(fd, limit, offset)
        finally:
            os.close(fd)
        return protocol.KIND_DATA, {}, data

    def _op_discard(self, header: dict[str, Any], payload: bytes) -> Answer:
        job = protocol.check_job(header["job"])
        self._kill(job, cancel=True)
        with self._lock:
            self._running.pop(job, None)
            for key in [key for key in self._uploads if key[0] == job]:
                del self._uploads[key]
            if os.path.lexists(self._job_dir(job)):
                shutil.rmtree(self._job_dir(job), onerror=_force_remove)
        return protocol.KIND_REPLY, {}, b""

    def _op_scrub(self, header: dict[str, Any], payload: bytes) -> Answer:
        nonce = protocol.check_nonce(header["nonce"])
        canary = header.get("canary_nonce")
        if canary is not None:
            protocol.check_nonce(canary)
        simulate = protocol.check_simulate_mib(header.get("simulate_mib"))
        argv = ["scrub", "--nonce", nonce]
        if self.gpus:
            # A GPU is there: it is what gets scrubbed, whatever the request says.
            argv += ["--device", "cuda"]
        else:
            simulate = simulate or self.simulated_gpu_mib
            if simulate is None:
                raise RequestError("no GPU and no simulated device memory to scrub")
            argv += ["--device", "cpu", "--simulate-mib", str(simulate)]
        if canary is not None:
            argv += ["--canary-nonce", canary]
        return protocol.KIND_REPLY, self._scrub_program(argv), b""

    def _op_canary(self, header: dict[str, Any], payload: bytes) -> Answer:
        canary = protocol.check_nonce(header["canary_nonce"])
        argv = ["plant", "--canary-nonce", canary]
        if self.gpus:
            argv += ["--device", "cuda"]
        elif self.simulated_gpu_mib is not None:
            argv += ["--device", "cpu", "--simulate-mib", str(self.simulated_gpu_mib)]
        else:
            with self._lock:
                if self._running:
                    raise RequestError("a job is running")
            return protocol.KIND_REPLY, {"planted_bytes": 0, "device": "none"}, b""
        answer = self._scrub_program(argv)
        planted, device = answer.get("planted_bytes"), answer.get("device")
        if not protocol.is_int(planted) or planted < 0 or not isinstance(device, str):
            raise RequestError("the scrub program gave a malformed answer")
        return protocol.KIND_REPLY, {"planted_bytes": planted, "device": device[:64]}, b""

    def _scrub_program(self, argv: list[str]) -> dict[str, Any]:
        """Run ``python -m <package>.scrub ARGV`` (never while a job runs); its JSON answer.

        The program's own error answer (``{"error": ...}``) becomes a refusal.
        """
        package = __package__ or "sovereign_agent"
        # The directory holding the package's top level (``sovereign_agent`` or ``enclaves``).
        top = os.path.dirname(os.path.abspath(__file__))
        for _ in package.split("."):
            top = os.path.dirname(top)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "PYTHONPATH": top,
            "PYTHONDONTWRITEBYTECODE": "1",
            "HOME": "/nonexistent",
        }
        # -P: no directory of anyone's choosing goes first on sys.path; PYTHONPATH finds us.
        command = [self.scrub_python, "-P", "-m", f"{package}.scrub", *argv]
        with self._lock:
            if self._running:
                raise RequestError("a job is running")
            status, out, err = _run_bounded(
                command, env=env, timeout_s=self.scrub_timeout_s, cap=SCRUB_MAX_OUTPUT
            )
        lines = out.decode("utf-8", "replace").strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if lines else None
        except ValueError:
            answer = None
        if status is None:
            raise RequestError("the scrub program ran out of time or output")
        if not isinstance(answer, dict):
            log.warning("the scrub program failed (exit %s): %s", status, err[-300:])
            raise RequestError(f"the scrub program failed (exit {status})")
        if "error" in answer:
            raise RequestError(f"scrub: {answer['error']}")
        if status != 0:
            raise RequestError(f"the scrub program failed (exit {status})")
        return answer

    # Jobs ----------------------------------------------------------------------------------

    def _start(self, job: str, entrypoint: str, args: list[str], max_runtime_s: int) -> None:
        work = self._area_dir(job, "code")
        inputs = self._area_dir(job, "input")
        os.makedirs(inputs, mode=0o755, exist_ok=True)
        env = {
            "SOVEREIGN_JOB_ID": job,
            "SOVEREIGN_INPUTS": inputs,
            "SOVEREIGN_OUTPUTS": work,
            "PYTHONUNBUFFERED": "1",
            "HOME": work,
        }
        user: dict[str, Any] = {}
        if self.job_user is not None:
            _give_dirs(work, self.job_user)
            user = {"user": self.job_user.uid, "group": self.job_user.gid, "extra_groups": []}
        log_fd = os.open(
            self._log_path(job),
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o640,
        )
        read_fd, write_fd = os.pipe()
        try:
            process = subprocess.Popen(  # noqa: S603 - a fixed interpreter and a checked path
                [self.python, entrypoint, *args],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=write_fd,
                stderr=write_fd,
                start_new_session=True,
                close_fds=True,
                **user,
            )
        except BaseException:
            os.close(read_fd)
            os.close(log_fd)
            raise
        finally:
            os.close(write_fd)
        now = time.monotonic()
        running = _Running(process, started=now, deadline=now + max_runtime_s)
        self._running[job] = running
        self._write_state(
            job,
            {
                "state": "running",
                "exit_code": None,
                "runtime_s": 0.0,
                "started_at": time.time(),
                "pid": process.pid,
            },
        )
        running.pump = threading.Thread(
            target=self._pump, args=(job, running, read_fd, log_fd), daemon=True
        )
        running.pump.start()

    def _pump(self, job: str, running: _Running, read_fd: int, log_fd: int) -> None:
        """Copy the job's output into its log (capped), kill it at its deadline, record its end."""
        try:
            _copy_output(running, read_fd, log_fd)
            exit_code = running.process.wait()
            _kill_group(running.process.pid)  # what the job left behind in its group
        finally:
            os.close(read_fd)
            os.close(log_fd)
        runtime = time.monotonic() - running.started
        if running.cancelled:
            state = "cancelled"
        elif running.timed_out:
            state = "timed_out"
        else:
            state = "succeeded" if exit_code == 0 else "failed"
        with self._lock:
            if self._running.get(job) is running:
                del self._running[job]
            # Before the end is recorded: whoever sees it finished sees nothing of it running.
            self._sweep_locked()
            if os.path.isdir(self._job_dir(job)):
                self._write_state(
                    job, {"state": state, "exit_code": exit_code, "runtime_s": round(runtime, 3)}
                )
        running.done.set()

    def _sweep_locked(self) -> None:
        """If no job runs, kill what the sweep names and wait until it is gone and reaped.

        With no job running (and the lock held, so none starts) every child of the agent is a
        leftover (the agent is a subreaper) and may be reaped with ``waitpid(-1)`` without
        stealing a job's exit status from its ``Popen``.
        """
        if self._sweep is None or self._running:
            return
        deadline = time.monotonic() + SWEEP_WAIT_S
        while True:
            strays = self._sweep()
            for pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            _reap_children()
            if not strays:
                return
            if time.monotonic() > deadline:
                log.warning("%d processes left by jobs survived being killed", len(strays))
                return
            time.sleep(0.01)

    def _kill(self, job: str, *, cancel: bool) -> None:
        with self._lock:
            running = self._running.get(job)
            if running is None:
                return
            if running.process.poll() is None:
                running.cancelled = cancel
                _kill_group(running.process.pid)
        running.done.wait(KILL_WAIT_S)

    def _status_locked(self, job: str) -> dict[str, Any]:
        job_dir = self._job_dir(job)
        if not os.path.isdir(job_dir):
            return {"state": "unknown", "exit_code": None, "runtime_s": 0.0, "log_size": 0}
        try:
            log_size = os.lstat(self._log_path(job)).st_size
        except FileNotFoundError:
            log_size = 0
        state = _read_json(self._state_path(job))
        if not isinstance(state, dict):
            return {"state": "ready", "exit_code": None, "runtime_s": 0.0, "log_size": log_size}
        running = self._running.get(job)
        runtime = state.get("runtime_s", 0.0)
        if running is not None and state.get("state") == "running":
            runtime = round(time.monotonic() - running.started, 3)
        return {
            "state": state.get("state", "failed"),
            "exit_code": state.get("exit_code"),
            "runtime_s": runtime,
            "log_size": log_size,
        }

    def _recover(self) -> None:
        """Mark jobs a previous agent left running as failed: their pipe died with it."""
        for job in os.listdir(self.jobs_dir):
            try:
                protocol.check_job(job)
            except ValueError:
                continue
            state = _read_json(self._state_path(job))
            if not isinstance(state, dict) or state.get("state") != "running":
                continue
            pid = state.get("pid")
            if protocol.is_int(pid) and pid > 1 and _is_session_leader(pid):
                _kill_group(pid)
            started = state.get("started_at")
            runtime = time.time() - started if isinstance(started, float) else 0.0
            self._write_state(
                job, {"state": "failed", "exit_code": None, "runtime_s": round(runtime, 3)}
            )
        with self._lock:
            self._sweep_locked()

    # Files ---------------------------------------------------------------------------------

    def _job_dir(self, job: str) -> str:
        return os.path.join(self.jobs_dir, job)

    def _state_path(self, job: str) -> str:
        return os.path.join(self._job_dir(job), "state.json")

    def _log_path(self, job: str) -> str:
        return os.path.join(self._job_dir(job), "log")

    def _area_dir(self, job: str, area: str) -> str:
        return os.path.join(self._job_dir(job), "work" if area == "code" else "inputs")

    def _dest(self, job: str, area: str, path: str) -> str:
        return os.path.join(self._area_dir(job, area), path)

    def _part_paths(self, job: str, area: str, path: str) -> tuple[str, str]:
        key = hashlib.sha256(f"{area}/{path}".encode()).hexdigest()[:32]
        base = os.path.join(self._job_dir(job), "parts", f"{area}-{key}")
        return base + ".part", base + ".json"

    def _write_state(self, job: str, state: dict[str, Any]) -> None:
        _write_json(self._state_path(job), state)

    def _ensure_job(self, job: str) -> None:
        job_dir = self._job_dir(job)
        for directory in (job_dir, *(os.path.join(job_dir, d) for d in ("work", "inputs"))):
            os.makedirs(directory, mode=0o755, exist_ok=True)
        os.makedirs(os.path.join(job_dir, "parts"), mode=0o700, exist_ok=True)

    def _upload_target(self, header: dict[str, Any]) -> tuple[str, str, str]:
        job = protocol.check_job(header["job"])
        area = protocol.check_area(header["area"])
        path = protocol.check_path(header["path"])
        if os.path.exists(self._state_path(job)):
            raise RequestError("job already started")
        return job, area, path

    def _make_parents(self, job: str, area: str, path: str) -> None:
        base = self._area_dir(job, area)
        parent = os.path.dirname(os.path.join(base, path))
        os.makedirs(parent, mode=0o755, exist_ok=True)
        if not _inside(os.path.realpath(parent), os.path.realpath(base), allow_equal=True):
            raise RequestError("path escapes the job")

    def _walk(self, work: str) -> list[str]:
        """Relative names of everything below ``work``, sorted; symlinks never followed."""
        names: list[str] = []
        scanned = 0
        for directory, dirnames, filenames in os.walk(work, followlinks=False):
            scanned += len(dirnames) + len(filenames)
            if scanned > MAX_SCANNED:
                raise RequestError("too many files in the work dir")
            dirnames.sort()
            relative = os.path.relpath(directory, work)
            for filename in sorted(filenames):
                names.append(filename if relative == "." else f"{relative}/{filename}")
        return sorted(names)

    def _open_output(self, work: str, name: str) -> int:
        """Open the regular file ``name`` inside ``work`` without following any symlink."""
        path = os.path.join(work, name)
        work_real = os.path.realpath(work)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            raise RequestError("no such output") from None
        except OSError:
            raise RequestError("not a regular file") from None
        try:
            _check_opened(fd, os.path.join(work_real, name), path)
        except BaseException:
            os.close(fd)
            raise
        return fd


# Helpers -----------------------------------------------------------------------------------


def _copy_output(running: _Running, read_fd: int, log_fd: int) -> None:
    """Copy the job's output into its log up to :data:`LOG_CAP`; kill it at its deadline."""
    written = 0
    while True:
        exited = running.process.poll() is not None
        remaining = running.deadline - time.monotonic()
        if remaining <= 0 and not exited and not running.timed_out:
            running.timed_out = True
            _kill_group(running.process.pid)
        wait = 0.2 if exited else max(0.0, min(remaining, 0.5))
        readable, _, _ = select.select([read_fd], [], [], wait)
        if not readable:
            if exited:
                # The job is over; a descendant that left its session may hold the pipe open,
                # but the job's output ends here.
                return
            continue
        chunk = os.read(read_fd, 1 << 16)
        if not chunk:
            return
        if written < LOG_CAP:
            keep = chunk[: LOG_CAP - written]
            _write_all(log_fd, keep)
            written += len(keep)
            if written >= LOG_CAP:
                _write_all(log_fd, _LOG_TRUNCATED)


def _refuse_in_sanitize_mode(header: dict[str, Any], payload: bytes) -> Answer:
    raise RequestError("sanitize mode: only hello and scrub are answered")


def _run_bounded(
    command: list[str], *, env: dict[str, str], timeout_s: float, cap: int
) -> tuple[int | None, bytes, str]:
    """Run ``command`` in its own session; ``(exit status, stdout, stderr's tail)``.

    The status is ``None`` when it ran past ``timeout_s`` or printed more than ``cap`` bytes:
    its whole process group is killed then (and always once it is done).
    """
    process = subprocess.Popen(  # noqa: S603 - a fixed interpreter and module, checked arguments
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        close_fds=True,
        # Not the agent's working directory (a process enclave's is the job's, which the job
        # writes): with -P nothing from it can shadow the package.
        cwd="/",
    )
    assert process.stdout is not None
    assert process.stderr is not None
    out, err = bytearray(), bytearray()
    streams = {process.stdout.fileno(): out, process.stderr.fileno(): err}
    deadline = time.monotonic() + timeout_s
    overrun = False
    try:
        while streams and not overrun:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                overrun = True
                break
            readable, _, _ = select.select(list(streams), [], [], remaining)
            for fd in readable:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    del streams[fd]
                    continue
                buffer = streams[fd]
                buffer += chunk
                if buffer is out and len(out) > cap:
                    overrun = True
                elif buffer is err:
                    del err[:-_SCRUB_STDERR_TAIL]
    finally:
        _kill_group(process.pid)
        status: int | None
        try:
            status = process.wait(KILL_WAIT_S)
        except subprocess.TimeoutExpired:
            status = None
        process.stdout.close()
        process.stderr.close()
    tail = err.decode("utf-8", "replace")
    return (None if overrun else status), bytes(out), tail


def _range(header: dict[str, Any]) -> tuple[int, int]:
    offset, limit = header["offset"], header["limit"]
    if offset < 0:
        raise RequestError("offset out of range")
    if not 1 <= limit <= protocol.MAX_PAYLOAD:
        raise RequestError("limit out of range")
    return offset, limit


def _glob_match(segments: list[str], pattern: list[str]) -> bool:
    """Whether path ``segments`` match ``pattern`` segments (``**`` spans zero or more)."""
    if not pattern:
        return not segments
    head, rest = pattern[0], pattern[1:]
    if head == "**":
        return any(_glob_match(segments[index:], rest) for index in range(len(segments) + 1))
    return (
        bool(segments)
        and fnmatch.fnmatchcase(segments[0], head)
        and (_glob_match(segments[1:], rest))
    )


def _check_opened(fd: int, expected: str, path: str) -> None:
    """Refuse an opened output that is no regular file or not the file at ``expected``."""
    status = os.fstat(fd)
    if not stat.S_ISREG(status.st_mode):
        raise RequestError("not a regular file")
    if status.st_nlink != 1:
        # A hard link could name a file from outside the work dir (where the kernel's
        # protected_hardlinks does not stop it): no output is one.
        raise RequestError("output is a hard link")
    # The file actually opened, wherever a parent symlink led: it must be the one at that name
    # inside the work dir.
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        real = os.path.realpath(path)
    if real != expected:
        raise RequestError("output outside the work dir")


def _inside(path: str, base: str, *, allow_equal: bool = False) -> bool:
    return (allow_equal and path == base) or path.startswith(base + os.sep)


def _is_regular(path: str) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def _size_of(path: str) -> int | None:
    """The size of the regular file at ``path`` (not following a symlink), else ``None``."""
    try:
        status = os.lstat(path)
    except FileNotFoundError:
        return None
    return status.st_size if stat.S_ISREG(status.st_mode) else None


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _open_new(path: str) -> Any:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    return os.fdopen(fd, "wb")


def _read_json(path: str) -> Any:
    try:
        with open(path, "rb") as file:
            return json.loads(file.read(1 << 16))
    except (FileNotFoundError, ValueError):
        return None


def _write_json(path: str, value: dict[str, Any]) -> None:
    temporary = path + ".tmp"
    with _open_new(temporary) as file:
        file.write(json.dumps(value).encode())
    os.replace(temporary, path)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _hash_fd(fd: int) -> str:
    hasher = hashlib.sha256()
    _hash_into(fd, hasher)
    return hasher.hexdigest()


def _hash_into(fd: int, hasher: Any) -> int:
    """Feed the whole file ``fd`` into ``hasher``; returns its length."""
    offset = 0
    while block := os.pread(fd, _HASH_BLOCK, offset):
        hasher.update(block)
        offset += len(block)
    return offset


def _hash_file(path: str) -> str:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        return _hash_fd(fd)
    finally:
        os.close(fd)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def namespace_strays() -> list[int]:
    """Every live process in our PID namespace but this one and its ancestors.

    ``/proc`` (the namespace's own, in the process enclave) lists exactly the namespace's
    processes; zombies are left out (they run nothing; ours are reaped by the sweep).
    """
    return _others(lambda pid: True)


def user_strays(uid: int) -> list[int]:
    """Every live process (but this one and its ancestors) with ``uid`` as any of its uids.

    The guest's sweep: its job user runs nothing but jobs and what they started.
    """
    return _others(lambda pid: uid in _uids(pid))


def _others(wanted: Callable[[int], bool]) -> list[int]:
    """The live processes ``wanted`` accepts, leaving out this one and its ancestors."""
    own = os.getpid()
    keep = {own}
    pid = own
    while pid > 1:
        found = _stat(pid)
        pid = found[1] if found is not None else 0
        keep.add(pid)
    strays = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in keep:
            continue
        found = _stat(int(entry))
        if found is not None and found[0] != "Z" and wanted(int(entry)):
            strays.append(int(entry))
    return strays


def _uids(pid: int) -> set[int]:
    """The real, effective, saved and file-system uids of ``pid`` (none if it is gone)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as file:
            text = file.read(16384)
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith(b"Uid:"):
            return {int(field) for field in line.split()[1:] if field.isdigit()}
    return set()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of ``pid`` from ``/proc/<pid>/stat``; ``None`` if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            text = file.read(4096)
    except OSError:
        return None
    # Field 2 (comm) is parenthesised and may hold anything: the fields after the last ")".
    fields = text[text.rfind(b")") + 2 :].split()
    if len(fields) < 2 or not fields[1].isdigit():
        return None
    return fields[0].decode("ascii", "replace"), int(fields[1])


def _reap_children() -> None:
    """Reap every child of ours that has exited (call only when no job's ``Popen`` waits)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _is_session_leader(pid: int) -> bool:
    """Whether ``pid`` still leads its own session (so it is most likely our job's, not reused)."""
    try:
        return os.getsid(pid) == pid
    except OSError:
        return False


def _give_dirs(work: str, user: JobUser) -> None:
    """Hand the work dir's directories (not the uploaded files) to the job's user."""
    for directory, _, _ in os.walk(work, followlinks=False):
        os.chown(directory, user.uid, user.gid, follow_symlinks=False)


def _force_remove(function: Callable[..., Any], path: str, _: Any) -> None:
    """``rmtree`` error handler: a job may have made its directories read-only."""
    parent = os.path.dirname(path)
    os.chmod(parent, 0o700)
    if os.path.isdir(path) and not os.path.islink(path):
        os.chmod(path, 0o700)
    function(path)
