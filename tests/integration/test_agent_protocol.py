"""The real agent, as a process, driven by the real client over a unix socket.

The agent runs as the guest runs it: the package copied out as ``sovereign_agent`` and started
with ``-S`` (no site-packages, so anything beyond the standard library would fail to import).
When these tests run as root the jobs run as ``nobody`` under the system Python, as a guest
runs them as ``sovereign-job``; otherwise as the test's own user.
"""

from __future__ import annotations

import hashlib
import json
import os
import pty
import pwd
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import tty
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclaves.agent import protocol, server
from enclaves.agent.client import PUT_WINDOW, AgentClient, AgentJobStatus
from enclaves.agent.protocol import Frame
from enclaves.agent.transport import SocketTransport
from enclaves.errors import AgentRefusedError, AgentTimeoutError, AgentUnavailableError
from tests.support.gpu import NO_GPU, gpu_present

AGENT_SOURCES = Path(server.__file__).parent
AGENT_FILES = ("__init__.py", "protocol.py", "server.py", "__main__.py", "scrub.py")
#: The scrub program needs torch: the test's interpreter has it (the agent runs with ``-S``).
SCRUB = ("--scrub-python", sys.executable)
SYSTEM_PYTHON = "/usr/bin/python3"
AS_ROOT = os.geteuid() == 0 and Path(SYSTEM_PYTHON).exists()


@dataclass
class RunningAgent:
    base: Path
    root: Path
    socket: str
    process: subprocess.Popen[bytes]
    job_user: str | None

    def connect(self, timeout_s: float = 10.0) -> AgentClient:
        return AgentClient(SocketTransport.connect_unix(self.socket, 5.0), timeout_s=timeout_s)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)


def start_agent(base: Path, *extra: str, as_job_user: bool = AS_ROOT) -> RunningAgent:
    """Start the copied agent on ``base/agent.sock`` with its jobs under ``base/root``."""
    package = base / "pkg" / "sovereign_agent"
    if not package.exists():
        package.mkdir(parents=True)
        for name in AGENT_FILES:
            shutil.copy(AGENT_SOURCES / name, package / name)
    root = base / "root"
    root.mkdir(mode=0o755, exist_ok=True)
    sock = str(base / "agent.sock")
    python = SYSTEM_PYTHON if as_job_user else sys.executable
    job_user = "nobody" if as_job_user else None
    command = [python, "-S", "-m", "sovereign_agent", "--listen-unix", sock, "--root", str(root)]
    command += ["--simulated", "--python", python, *extra]
    if job_user:
        command += ["--job-user", job_user]
    process = subprocess.Popen(command, cwd=base / "pkg", env={"PATH": "/usr/bin:/bin"})
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None:
            pytest.fail(f"the agent exited with {process.returncode}")
        try:
            with socket.socket(socket.AF_UNIX) as probe:
                probe.connect(sock)
            break
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail("the agent did not listen in time")
            time.sleep(0.05)
    return RunningAgent(base, root, sock, process, job_user)


@pytest.fixture
def base() -> Iterator[Path]:
    # Short: a unix socket path is at most 107 bytes. World-traversable: nobody runs jobs in it.
    directory = Path(tempfile.mkdtemp(prefix="sva-", dir="/tmp"))
    directory.chmod(0o755)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def agent(base: Path) -> Iterator[RunningAgent]:
    running = start_agent(base)
    yield running
    running.stop()


@pytest.fixture
def client(agent: RunningAgent) -> Iterator[AgentClient]:
    connection = agent.connect()
    yield connection
    connection.close()


def new_job() -> str:
    return str(uuid.uuid4())


def wait_for(client: AgentClient, job: str, timeout_s: float = 30.0) -> AgentJobStatus:
    deadline = time.monotonic() + timeout_s
    while True:
        status = client.status(job)
        if status.state in protocol.FINAL_STATES:
            return status
        assert time.monotonic() < deadline, f"job still {status.state}"
        time.sleep(0.05)


def put_script(client: AgentClient, job: str, body: str, name: str = "main.py") -> None:
    client.put(job, "code", name, textwrap.dedent(body).encode())


JOB_SCRIPT = """
    import json, os, sys
    inputs = os.environ["SOVEREIGN_INPUTS"]
    data = open(os.path.join(inputs, "data/train.bin"), "rb").read()
    print("args", sys.argv[1:])
    print("env", json.dumps(sorted(os.environ)))
    print("cwd", os.getcwd() == os.environ["SOVEREIGN_OUTPUTS"])
    try:
        open(os.path.join(inputs, "data/train.bin"), "ab").write(b"x")
        print("input writable")
    except PermissionError:
        print("input read-only")
    sys.stderr.write("to stderr\\n")
    with open("result.txt", "w") as out:
        out.write(f"{len(data)} bytes\\n")
    os.makedirs("out/sub")
    with open("out/sub/model.bin", "wb") as out:
        out.write(bytes(range(256)) * 5000)
    with open(".secret.txt", "w") as out:
        out.write("hidden")
    os.symlink("/etc/passwd", "link.txt")
    os.symlink("/", "escape")
    os.mkfifo("pipe.txt")
    with open("bad name.txt", "w") as out:
        out.write("spaces")
    with open("out/twice.bin", "w") as out:
        out.write("linked")
    os.link("out/twice.bin", "out/linked.bin")
    sys.exit(3 if "--fail" in sys.argv else 0)
"""


def test_hello_describes_the_agent(client: AgentClient) -> None:
    hello = client.hello()
    assert hello.protocol == 1
    assert hello.agent_version == server.AGENT_VERSION
    assert hello.simulated is True
    assert hello.image_digest == ""
    assert hello.python.startswith("3.")
    assert isinstance(hello.gpus, tuple)


def test_hello_reports_the_image_digest(base: Path) -> None:
    digest_file = base / "digest"
    digest_file.write_text("sha256:" + "ab" * 32 + "\n")
    running = start_agent(base, "--image-digest-file", str(digest_file))
    try:
        with_client = running.connect()
        assert with_client.hello().image_digest == "sha256:" + "ab" * 32
        with_client.close()
    finally:
        running.stop()


def test_a_job_runs_end_to_end(agent: RunningAgent, client: AgentClient) -> None:
    job = new_job()
    assert client.status(job).state == "unknown"
    put_script(client, job, JOB_SCRIPT)
    train = os.urandom(3 * (1 << 20) + 5)
    seen: list[tuple[int, int]] = []
    digest = client.put(
        job, "input", "data/train.bin", train, progress=lambda d, t: seen.append((d, t))
    )
    assert digest == hashlib.sha256(train).hexdigest()
    assert seen[0] == (0, len(train)) and seen[-1] == (len(train), len(train)) and len(seen) == 5
    assert client.status(job).state == "ready"

    started = client.run(job, entrypoint="main.py", args=["--epochs", "2", "é ü"], max_runtime_s=60)
    assert started.state in {"running", "succeeded"}
    status = wait_for(client, job)
    assert (status.state, status.exit_code) == ("succeeded", 0)
    assert status.runtime_s > 0
    # run is idempotent: a started job answers its status and does not run again.
    assert client.run(job, entrypoint="main.py", args=[], max_runtime_s=60).state == "succeeded"

    log = client.logs(job, 0)
    assert status.log_size == len(log)
    text = log.decode()
    assert "args ['--epochs', '2', 'é ü']" in text
    env_line = next(line for line in text.splitlines() if line.startswith("env "))
    # Nothing of the agent's environment; Python itself adds LC_CTYPE under the C locale (PEP 538).
    assert set(json.loads(env_line[4:])) - {"LC_CTYPE"} == {
        "HOME",
        "PYTHONUNBUFFERED",
        "SOVEREIGN_INPUTS",
        "SOVEREIGN_JOB_ID",
        "SOVEREIGN_OUTPUTS",
    }
    assert "cwd True" in text and "to stderr" in text
    if agent.job_user:
        assert "input read-only" in text
    assert client.logs(job, 5, 10) == log[5:15]
    assert client.logs(job, len(log)) == b""

    files = client.outputs(job, ["*.txt", "**/*.bin", "escape/**", "pipe*"])
    assert [f.name for f in files] == ["out/sub/model.bin", "result.txt"]
    for entry in files:
        data = client.get(job, entry.name, size=entry.size, sha256=entry.sha256, max_bytes=1 << 24)
        assert hashlib.sha256(data).hexdigest() == entry.sha256 and len(data) == entry.size
    model = next(f for f in files if f.name == "out/sub/model.bin")
    assert model.size == 256 * 5000 > protocol.MAX_PAYLOAD  # fetched in two chunks
    result = next(f for f in files if f.name == "result.txt")
    assert client.get(job, "result.txt", size=result.size, sha256=result.sha256, max_bytes=100) == (
        f"{len(train)} bytes\n".encode()
    )

    client.discard(job)
    assert client.status(job).state == "unknown"
    assert not (agent.root / "jobs" / job).exists()


def test_a_job_runs_without_a_job_user(base: Path) -> None:
    # The process enclave's agent runs its jobs as its own (sandboxed, unprivileged) user.
    running = start_agent(base, as_job_user=False)
    try:
        with_client = running.connect()
        job = new_job()
        put_script(with_client, job, "import os\nprint(os.geteuid())\nopen('out.txt', 'w')\n")
        with_client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
        assert wait_for(with_client, job).state == "succeeded"
        assert with_client.logs(job, 0) == f"{os.geteuid()}\n".encode()
        assert [f.name for f in with_client.outputs(job, ["*"])] == ["main.py", "out.txt"]
        with_client.close()
    finally:
        running.stop()


def test_the_job_runs_as_the_job_user(base: Path) -> None:
    running = start_agent(base, *([] if AS_ROOT else ["--job-user", "nobody"]), as_job_user=AS_ROOT)
    with_client = running.connect()
    try:
        job = new_job()
        script = "import os\nprint(os.geteuid(), os.getegid(), os.getgroups())\n"
        put_script(with_client, job, script)
        if not AS_ROOT:
            # Without root the agent cannot switch users: it refuses rather than run the job
            # as itself.
            with pytest.raises(AgentRefusedError, match="EPERM"):
                with_client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
            return
        with_client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
        assert wait_for(with_client, job).state == "succeeded"
        nobody = pwd.getpwnam("nobody")
        assert with_client.logs(job, 0) == f"{nobody.pw_uid} {nobody.pw_gid} []\n".encode()
    finally:
        with_client.close()
        running.stop()


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present(), reason=NO_GPU)
def test_hello_lists_the_gpus_the_machine_has(client: AgentClient) -> None:
    gpus = client.hello().gpus
    assert gpus and all(gpu.memory_mib > 0 and gpu.uuid.startswith("GPU-") for gpu in gpus)


def test_a_failing_job_reports_its_exit_code(client: AgentClient) -> None:
    job = new_job()
    put_script(client, job, "import sys; print('bye'); sys.exit(3)")
    client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
    status = wait_for(client, job)
    assert (status.state, status.exit_code) == ("failed", 3)


def test_an_interrupted_upload_resumes(agent: RunningAgent) -> None:
    job = new_job()
    # More chunks than the client keeps in flight, so the drop leaves some unsent.
    data = os.urandom((PUT_WINDOW + 4) * (1 << 20) + 1000)

    class DroppedError(Exception):
        pass

    def drop_after_first_chunk(done: int, total: int) -> None:
        if done == 1 << 20:
            raise DroppedError

    first = agent.connect()
    with pytest.raises(DroppedError):
        first.put(job, "input", "big.bin", data, progress=drop_after_first_chunk)
    first.close()  # the connection drops mid-file

    second = agent.connect()
    second.hello()  # served once the agent is done with the dropped connection's frames
    # The agent kept what it acknowledged and what was in flight: whole chunks, not all.
    (part,) = (agent.root / "jobs" / job / "parts").glob("*.part")
    kept = part.stat().st_size
    assert kept % (1 << 20) == 0 and 1 << 20 <= kept <= PUT_WINDOW << 20
    seen: list[int] = []
    digest = second.put(job, "input", "big.bin", data, progress=lambda d, t: seen.append(d))
    # The resumed upload starts where the agent stood, then goes on a chunk at a time.
    assert seen[:2] == [kept, kept + (1 << 20)]
    assert digest == hashlib.sha256(data).hexdigest()
    stored = agent.root / "jobs" / job / "inputs" / "big.bin"
    assert stored.read_bytes() == data
    assert stored.stat().st_mode & 0o777 == 0o444
    # Uploading the same file again sends nothing: the agent has all of it.
    seen.clear()
    assert second.put(job, "input", "big.bin", data, progress=lambda d, t: seen.append(d)) == digest
    assert seen == [len(data)]
    # Another content under the same name starts over.
    other = b"other"
    assert second.put(job, "input", "big.bin", other) == hashlib.sha256(other).hexdigest()
    assert stored.read_bytes() == other
    second.close()


def test_a_job_is_killed_at_its_deadline(agent: RunningAgent, client: AgentClient) -> None:
    job = new_job()
    put_script(
        client,
        job,
        """
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open("child.pid", "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)
        """,
    )
    began = time.monotonic()
    client.run(job, entrypoint="main.py", args=[], max_runtime_s=1)
    status = wait_for(client, job, timeout_s=15)
    assert status.state == "timed_out"
    assert status.exit_code == -signal.SIGKILL
    assert time.monotonic() - began < 10
    child = int((agent.root / "jobs" / job / "work" / "child.pid").read_text())
    assert_gone(child)
    assert b"started" in client.logs(job, 0)


def assert_gone(pid: int) -> None:
    deadline = time.monotonic() + 5
    while Path(f"/proc/{pid}").exists():
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie awaiting its reaper
            return
        assert time.monotonic() < deadline, "the job's child survived"
        time.sleep(0.05)


def test_cancel_stops_a_running_job(agent: RunningAgent, client: AgentClient) -> None:
    job = new_job()
    put_script(client, job, "import time\nprint('working', flush=True)\ntime.sleep(60)\n")
    client.run(job, entrypoint="main.py", args=[], max_runtime_s=600)
    deadline = time.monotonic() + 10
    while client.status(job).log_size == 0:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    status = client.cancel(job)
    assert status.state == "cancelled"
    assert status.exit_code == -signal.SIGKILL
    # A cancelled job is final: run does not restart it.
    assert client.run(job, entrypoint="main.py", args=[], max_runtime_s=60).state == "cancelled"


def test_cancel_before_run_means_it_never_runs(client: AgentClient) -> None:
    job = new_job()
    put_script(client, job, "print('ran')")
    assert client.cancel(job).state == "cancelled"
    assert client.run(job, entrypoint="main.py", args=[], max_runtime_s=60).state == "cancelled"
    assert client.logs(job, 0) == b""


def test_discard_kills_a_running_job(agent: RunningAgent, client: AgentClient) -> None:
    job = new_job()
    put_script(client, job, "import os, time\nprint(os.getpid(), flush=True)\ntime.sleep(60)\n")
    client.run(job, entrypoint="main.py", args=[], max_runtime_s=600)
    deadline = time.monotonic() + 10
    while not (log := client.logs(job, 0)):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client.discard(job)
    assert client.status(job).state == "unknown"
    assert_gone(int(log.split()[0]))


def test_the_log_is_capped(client: AgentClient) -> None:
    job = new_job()
    put_script(
        client, job, "import sys\nfor _ in range(18):\n    sys.stdout.write('x' * (1 << 20))\n"
    )
    client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
    status = wait_for(client, job)
    assert status.state == "succeeded"
    assert server.LOG_CAP < status.log_size <= server.LOG_CAP + 100
    tail = client.logs(job, server.LOG_CAP - 1)
    assert tail.startswith(b"x\n[sovereign-agent: log truncated")


def test_status_survives_an_agent_restart(base: Path) -> None:
    first = start_agent(base)
    job = new_job()
    with_client = first.connect()
    put_script(with_client, job, "print('done')")
    with_client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
    finished = wait_for(with_client, job)
    with_client.close()
    first.stop()

    second = start_agent(base)
    try:
        again = second.connect()
        assert again.status(job) == finished
        assert again.logs(job, 0) == b"done\n"
        again.close()
    finally:
        second.stop()


def test_a_job_orphaned_by_an_agent_crash_is_failed_and_killed(base: Path) -> None:
    first = start_agent(base)
    job = new_job()
    with_client = first.connect()
    put_script(
        with_client,
        job,
        "import os, time\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(60)\n",
    )
    with_client.run(job, entrypoint="main.py", args=[], max_runtime_s=600)
    pid_file = first.root / "jobs" / job / "work" / "pid"
    deadline = time.monotonic() + 10
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with_client.close()
    first.process.kill()  # the agent dies; the job, in its own session, lives on
    first.process.wait(10)
    pid = int(pid_file.read_text())
    assert Path(f"/proc/{pid}").exists()

    second = start_agent(base)
    try:
        again = second.connect()
        status = again.status(job)
        assert (status.state, status.exit_code) == ("failed", None)
        again.close()
        assert_gone(pid)
    finally:
        second.stop()


def test_uploads_after_the_start_are_refused(client: AgentClient) -> None:
    job = new_job()
    put_script(client, job, "print('x')")
    client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
    with pytest.raises(AgentRefusedError, match="job already started"):
        put_script(client, job, "print('y')")
    wait_for(client, job)


def test_refusals_keep_the_connection_usable(client: AgentClient) -> None:
    job = new_job()
    with pytest.raises(AgentRefusedError, match="unknown job"):
        client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
    put_script(client, job, "print('x')", name="other.py")
    with pytest.raises(AgentRefusedError, match="entrypoint not found"):
        client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
    with pytest.raises(AgentRefusedError, match="no such output"):
        client.get(job, "nothing.txt", size=1, sha256="0" * 64, max_bytes=10)
    assert client.hello().protocol == 1


# A hostile client: the agent checks everything itself ---------------------------------------


class RawConnection:
    """Frames straight to the agent, bypassing the client's own checks."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.next_id = 1

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def call(self, op: str, payload: bytes = b"", **fields: object) -> Frame:
        self.next_id += 1
        header = {"op": op, "id": self.next_id, **fields}
        self.send(protocol.encode(Frame(protocol.KIND_REQUEST, header, payload)))
        frame = protocol.read_frame(self.read_exact)
        assert frame.header["id"] == self.next_id
        return frame

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(agent: RunningAgent) -> Iterator[RawConnection]:
    connection = RawConnection(agent.socket)
    yield connection
    connection.close()


def refused(frame: Frame) -> str:
    assert frame.kind == protocol.KIND_ERROR, frame
    message = frame.header["message"]
    assert isinstance(message, str) and len(message) <= protocol.MAX_MESSAGE
    assert "sva-" not in message and "jobs/" not in message  # nothing of the guest's layout
    return message


SHA_EMPTY = hashlib.sha256(b"").hexdigest()
BAD_PATHS = ["../x", "/etc/passwd", "a/../../b", ".hidden", "a//b", "..", "x/" * 130, "a\\..\\b"]


@pytest.mark.parametrize("path", BAD_PATHS)
def test_the_agent_refuses_bad_upload_paths(raw: RawConnection, path: str) -> None:
    job = new_job()
    for op, fields in (
        ("put_begin", {"size": 0, "sha256": SHA_EMPTY}),
        ("put_chunk", {"offset": 0, "sha256": SHA_EMPTY}),
        ("put_end", {}),
    ):
        frame = raw.call(op, job=job, area="input", path=path, **fields)
        assert "path" in refused(frame)
    assert "path" in refused(raw.call("run", job=job, entrypoint=path, args=[], max_runtime_s=1))
    assert "path" in refused(raw.call("get", job=job, name=path, offset=0, limit=10))


def test_the_agent_refuses_bad_job_names_and_areas(raw: RawConnection, agent: RunningAgent) -> None:
    for job in ("../../etc", "..", "0b7c8f6e-1f2a-4c3d-9e8f-0123456789AB", "x"):
        assert "UUID" in refused(raw.call("status", job=job))
        assert "UUID" in refused(raw.call("discard", job=job))
    job = new_job()
    frame = raw.call("put_begin", job=job, area="../work", path="a", size=0, sha256=SHA_EMPTY)
    assert "area" in refused(frame)
    assert list((agent.root / "jobs").iterdir()) == []


def uploaded(agent: RunningAgent) -> tuple[str, RawConnection]:
    """A job with a script, and a raw connection (the agent serves one connection at a time)."""
    job = new_job()
    client = agent.connect()
    put_script(client, job, "print('x')")
    client.close()
    return job, RawConnection(agent.socket)


def test_the_agent_refuses_bad_output_patterns_and_names(agent: RunningAgent) -> None:
    job, raw = uploaded(agent)
    for patterns in (["../*"], ["/etc/*"], ["*/../../*"], [".*"], ["*"] * 65, ["x" * 256]):
        assert "pattern" in refused(raw.call("outputs", job=job, patterns=patterns))
    # The job's log and state live beside the work dir, out of reach of any output name.
    for name in ("../log", "../state.json", "../../" + job + "/log"):
        assert "path" in refused(raw.call("get", job=job, name=name, offset=0, limit=10))
    (agent.root / "jobs" / job / "work" / "link").symlink_to(agent.root / "jobs" / job / "log")
    assert "regular file" in refused(raw.call("get", job=job, name="link", offset=0, limit=10))
    raw.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_agent_checks_chunk_and_file_hashes(agent: RunningAgent, raw: RawConnection) -> None:
    # Each chunk carries the prefix digest: the hash of the file up to the chunk's end.
    job = new_job()
    data = b"hello world"
    digest = hashlib.sha256(data).hexdigest()
    where = {"job": job, "area": "code", "path": "main.py"}
    parts = agent.root / "jobs" / job / "parts"
    assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == 0
    skipped = raw.call("put_chunk", data[3:], **where, offset=3, sha256=digest)
    assert "offset mismatch: have 0" in refused(skipped)
    # A hostile client's wrong prefix digest: refused, and the part is discarded.
    wrong = raw.call("put_chunk", data, **where, offset=0, sha256=SHA_EMPTY)
    assert "sha256" in refused(wrong)
    assert not any(parts.iterdir())
    assert "no upload" in refused(raw.call("put_chunk", data, **where, offset=0, sha256=digest))
    # The digest of the chunk alone is not the prefix digest of a second chunk.
    assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == 0
    first = raw.call("put_chunk", data[:5], **where, offset=0, sha256=sha(data[:5]))
    assert first.header["have"] == 5
    alone = raw.call("put_chunk", data[5:], **where, offset=5, sha256=sha(data[5:]))
    assert "sha256" in refused(alone)
    # A file of other bytes, its prefixes correctly hashed, still is not the announced file.
    assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == 0
    forged = b"HELLO WORLD"
    frame = raw.call("put_chunk", forged, **where, offset=0, sha256=sha(forged))
    assert frame.header["have"] == len(forged)
    assert "does not match" in refused(raw.call("put_end", **where))
    too_long = raw.call("put_begin", **where, size=2, sha256=digest)
    assert too_long.header["have"] == 0
    assert "beyond" in refused(raw.call("put_chunk", data, **where, offset=0, sha256=digest))
    assert "size" in refused(raw.call("put_begin", **where, size=-1, sha256=digest))
    # Whole and in order, the prefix digests lead to the stored file.
    assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == 0
    for start, end in ((0, 4), (4, 9), (9, 11)):
        chunk = data[start:end]
        reply = raw.call("put_chunk", chunk, **where, offset=start, sha256=sha(data[:end]))
        assert reply.header["have"] == end
    assert raw.call("put_end", **where).header["sha256"] == digest


def test_the_agent_refuses_out_of_range_values(agent: RunningAgent) -> None:
    job, raw = uploaded(agent)
    assert "limit" in refused(raw.call("logs", job=job, offset=0, limit=(1 << 20) + 1))
    assert "limit" in refused(raw.call("logs", job=job, offset=0, limit=0))
    assert "offset" in refused(raw.call("logs", job=job, offset=-1, limit=1))
    assert "max_runtime_s" in refused(
        raw.call("run", job=job, entrypoint="main.py", args=[], max_runtime_s=0)
    )
    assert "args" in refused(
        raw.call("run", job=job, entrypoint="main.py", args=[1], max_runtime_s=1)
    )
    raw.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\n\r\n",
        protocol.PREFIX.pack(b"SVA1", 1, 1, 0, protocol.MAX_HEADER + 1, 0),
        protocol.PREFIX.pack(b"SVA1", 1, 1, 0, 2, protocol.MAX_PAYLOAD + 1) + b"{}",
        protocol.encode(Frame(protocol.KIND_REQUEST, {"op": "rm -rf", "id": 1})),
        protocol.encode(Frame(protocol.KIND_REQUEST, {"op": "status", "id": 1})),
        protocol.encode(Frame(protocol.KIND_REPLY, {"op": "hello", "id": 1})),
    ],
)
def test_a_bad_frame_drops_the_connection_but_not_the_agent(
    agent: RunningAgent, garbage: bytes
) -> None:
    raw = RawConnection(agent.socket)
    raw.send(garbage)
    assert raw.closed()
    raw.close()
    assert agent.process.poll() is None
    again = agent.connect()
    assert again.hello().protocol == 1
    again.close()


def test_a_peer_stalled_mid_frame_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # In-thread over a socketpair, with a short mid-frame timeout.
    monkeypatch.setattr(server, "MID_FRAME_TIMEOUT_S", 0.3)
    ours, theirs = socket.socketpair()
    with tempfile.TemporaryDirectory() as root:
        agent = server.Agent(root, python=sys.executable, python_version="3")
        thread = threading.Thread(
            target=agent.serve, args=(server.Stream(theirs.fileno(), theirs.fileno()),)
        )
        thread.start()
        ours.sendall(protocol.encode(Frame(protocol.KIND_REQUEST, {"op": "hello", "id": 1}))[:10])
        thread.join(5)
        assert not thread.is_alive()
    ours.close()
    theirs.close()


def test_an_idle_socket_connection_is_closed() -> None:
    ours, theirs = socket.socketpair()
    with tempfile.TemporaryDirectory() as root:
        agent = server.Agent(root, python=sys.executable, python_version="3")
        stream = server.Stream(theirs.fileno(), theirs.fileno(), idle_timeout_s=0.2)
        thread = threading.Thread(target=agent.serve, args=(stream,))
        thread.start()
        thread.join(5)
        assert not thread.is_alive()
    ours.close()
    theirs.close()


def test_the_agent_answers_internal_failures_with_a_generic_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ours, theirs = socket.socketpair()
    with tempfile.TemporaryDirectory() as root:
        agent = server.Agent(root, python=sys.executable, python_version="3")

        def broken(header: object, payload: bytes) -> server.Answer:
            raise RuntimeError("/secret/path exploded")

        monkeypatch.setattr(agent, "_op_status", broken)
        thread = threading.Thread(
            target=agent.serve, args=(server.Stream(theirs.fileno(), theirs.fileno()),)
        )
        thread.start()
        client = AgentClient(SocketTransport(ours), timeout_s=5)
        with pytest.raises(AgentRefusedError, match="internal error") as caught:
            client.status(new_job())
        assert "secret" not in str(caught.value)
        assert client.hello().protocol == 1  # still serving
        client.close()
        thread.join(5)
    theirs.close()


def test_a_closed_client_refuses_further_calls(client: AgentClient) -> None:
    client.close()
    with pytest.raises(AgentUnavailableError):
        client.hello()


def test_connecting_to_nothing_is_unavailable(base: Path) -> None:
    with pytest.raises(AgentUnavailableError):
        SocketTransport.connect_unix(str(base / "none.sock"), 1.0)


def test_put_end_answers_after_a_lost_reply(raw: RawConnection) -> None:
    # The rename happened but its answer was lost: a retried put_end reports the stored hash,
    # and a retried put_begin says the agent has all of it.
    job = new_job()
    data = b"print(1)\n"
    digest = hashlib.sha256(data).hexdigest()
    where = {"job": job, "area": "code", "path": "main.py"}
    raw.call("put_begin", **where, size=len(data), sha256=digest)
    raw.call("put_chunk", data, **where, offset=0, sha256=digest)
    assert raw.call("put_end", **where).header["sha256"] == digest
    assert raw.call("put_end", **where).header["sha256"] == digest
    assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == len(data)


def part_file(agent: RunningAgent, job: str) -> Path:
    (part,) = (agent.root / "jobs" / job / "parts").glob("*.part")
    return part


def test_an_upload_resumes_after_an_agent_restart(base: Path) -> None:
    # The running hash lives in the agent's memory only: a new agent rehashes the part file,
    # and the client's next prefix digest confirms the part is the client's prefix.
    job = new_job()
    data = os.urandom(3 * (1 << 20) + 7)
    digest = hashlib.sha256(data).hexdigest()
    where = {"job": job, "area": "input", "path": "big.bin"}
    first = start_agent(base)
    raw = RawConnection(first.socket)
    raw.call("put_begin", **where, size=len(data), sha256=digest)
    half = data[: 1 << 20]
    # The first chunk's prefix digest is that of the chunk alone.
    chunk = raw.call("put_chunk", half, **where, offset=0, sha256=hashlib.sha256(half).hexdigest())
    assert chunk.header["have"] == len(half)
    raw.close()
    first.stop()

    second = start_agent(base)
    try:
        client = second.connect()
        seen: list[int] = []
        assert client.put(job, "input", "big.bin", data, progress=lambda d, t: seen.append(d)) == (
            digest
        )
        assert seen[0] == len(half)
        assert (second.root / "jobs" / job / "inputs" / "big.bin").read_bytes() == data
        client.close()
    finally:
        second.stop()


def test_a_part_file_changed_behind_the_agent_is_caught(base: Path) -> None:
    job = new_job()
    data = b"a" * 2000
    digest = sha(data)
    where = {"job": job, "area": "code", "path": "main.py"}
    first = start_agent(base)
    raw = RawConnection(first.socket)
    parts = first.root / "jobs" / job / "parts"
    raw.call("put_begin", **where, size=len(data), sha256=digest)
    head, tail = data[:1000], data[1000:]
    raw.call("put_chunk", head, **where, offset=0, sha256=sha(head))
    part = part_file(first, job)
    # Grown between two chunks: the running hash no longer covers the file, so the agent
    # rehashes what is on disk; the next prefix digest is not that of the bytes there.
    with part.open("ab") as file:
        file.write(b"x")
    chunk = raw.call("put_chunk", tail, **where, offset=1000, sha256=digest)
    assert "offset mismatch: have 1001" in refused(chunk)
    chunk = raw.call("put_chunk", tail[1:], **where, offset=1001, sha256=digest)
    assert "sha256" in refused(chunk)
    assert not any(parts.iterdir())  # discarded
    assert not (first.root / "jobs" / job / "work" / "main.py").exists()

    assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == 0
    raw.call("put_chunk", head, **where, offset=0, sha256=sha(head))
    raw.close()
    first.stop()

    # Same size, other bytes, across a restart: the agent rehashes the part, and the next
    # chunk's prefix digest (the client's hash of the file up to its end) refuses it.
    part.write_bytes(b"y" * 1000)
    second = start_agent(base)
    try:
        raw = RawConnection(second.socket)
        assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == 1000
        chunk = raw.call("put_chunk", tail, **where, offset=1000, sha256=digest)
        assert "sha256" in refused(chunk)
        assert not any(parts.iterdir())
        assert "no upload" in refused(raw.call("put_end", **where))
        assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == 0
        assert not (second.root / "jobs" / job / "work" / "main.py").exists()
        raw.close()
    finally:
        second.stop()


def test_a_resumed_part_that_is_not_the_clients_prefix_starts_over(base: Path) -> None:
    # The client begins again from 0, once, when the agent refuses a resumed part.
    job = new_job()
    data = os.urandom(3 * (1 << 20) + 5)
    small = b"print('small')\n"
    first = start_agent(base)
    raw = RawConnection(first.socket)
    big_at = {"job": job, "area": "input", "path": "big.bin"}
    raw.call("put_begin", **big_at, size=len(data), sha256=sha(data))
    head = data[: 1 << 20]
    assert raw.call("put_chunk", head, **big_at, offset=0, sha256=sha(head)).header["have"] == len(
        head
    )
    # A whole part, every byte of it sent: only put_end is left.
    small_at = {"job": job, "area": "code", "path": "main.py"}
    raw.call("put_begin", **small_at, size=len(small), sha256=sha(small))
    raw.call("put_chunk", small, **small_at, offset=0, sha256=sha(small))
    raw.close()
    first.stop()
    for part in (first.root / "jobs" / job / "parts").glob("*.part"):
        part.write_bytes(bytes(len(part.read_bytes())))  # same size, other bytes

    second = start_agent(base)
    try:
        client = second.connect()
        seen: list[int] = []
        assert client.put(job, "input", "big.bin", data, progress=lambda d, t: seen.append(d)) == (
            sha(data)
        )
        assert seen[:2] == [len(head), 0] and seen[-1] == len(data)
        assert (second.root / "jobs" / job / "inputs" / "big.bin").read_bytes() == data
        seen.clear()
        assert client.put(job, "code", "main.py", small, progress=lambda d, t: seen.append(d)) == (
            sha(small)
        )
        assert seen == [len(small), 0, len(small)]
        assert (second.root / "jobs" / job / "work" / "main.py").read_bytes() == small
        client.close()
    finally:
        second.stop()


class FdTransport:
    """A :class:`~enclaves.agent.transport.Transport` over a file descriptor (a pty master)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, data: bytes, timeout_s: float) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def recv(self, max_bytes: int, timeout_s: float) -> bytes:
        readable, _, _ = select.select([self.fd], [], [], timeout_s)
        if not readable:
            raise AgentTimeoutError("timed out")
        return os.read(self.fd, max_bytes)

    def close(self) -> None:
        os.close(self.fd)


def test_the_agent_serves_a_serial_device(base: Path) -> None:
    # A pty in raw mode stands in for the virtio-serial port: a character device the agent
    # opens by path and reads and writes as a byte stream.
    master, slave = pty.openpty()
    tty.setraw(slave)
    device = os.ttyname(slave)
    package = base / "pkg" / "sovereign_agent"
    package.mkdir(parents=True)
    for name in AGENT_FILES:
        shutil.copy(AGENT_SOURCES / name, package / name)
    (base / "root").mkdir()
    process = subprocess.Popen(
        [
            sys.executable,
            "-S",
            "-m",
            "sovereign_agent",
            "--device",
            device,
            "--root",
            str(base / "root"),
        ],
        cwd=base / "pkg",
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        client = AgentClient(FdTransport(master), timeout_s=10)
        assert client.hello().simulated is False
        job = new_job()
        put_script(client, job, "print('over serial')")
        client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
        assert wait_for(client, job).state == "succeeded"
        assert client.logs(job, 0) == b"over serial\n"
        client.close()
    finally:
        process.terminate()
        process.wait(10)
        os.close(slave)


def test_a_part_file_removed_behind_the_agent_starts_the_upload_over(
    agent: RunningAgent, raw: RawConnection
) -> None:
    job = new_job()
    data = b"b" * 2000
    digest = hashlib.sha256(data).hexdigest()
    where = {"job": job, "area": "code", "path": "main.py"}
    raw.call("put_begin", **where, size=len(data), sha256=digest)
    head = data[:1000]
    raw.call("put_chunk", head, **where, offset=0, sha256=hashlib.sha256(head).hexdigest())
    part_file(agent, job).unlink()
    tail = data[1000:]
    chunk = raw.call("put_chunk", tail, **where, offset=1000, sha256=digest)
    assert "no upload in progress" in refused(chunk)
    assert raw.call("put_begin", **where, size=len(data), sha256=digest).header["have"] == 0
    raw.call("put_chunk", data, **where, offset=0, sha256=digest)
    assert raw.call("put_end", **where).header["sha256"] == digest


# The scrub program over the channel ------------------------------------------------------

SCRUB_NONCE = hashlib.sha256(b"scrub nonce").digest()
CANARY_NONCE = hashlib.sha256(b"canary nonce").digest()


def test_the_agent_scrubs_its_simulated_device_memory(base: Path) -> None:
    running = start_agent(base, "--simulated-gpu-mib", "4", *SCRUB)
    try:
        client = running.connect()
        planted = client.plant_canary(CANARY_NONCE, timeout_s=120)
        assert planted == {"planted_bytes": 4 << 20, "device": "cpu"}
        report = client.scrub(
            nonce=SCRUB_NONCE, canary_nonce=CANARY_NONCE, simulate_mib=None, timeout_s=120
        )
        assert report["program"] == "sovereign-scrub/1"
        assert report["simulated"] is True
        assert report["bytes_total"] == report["bytes_covered"] == 4 << 20
        assert report["mismatches"] == 0
        assert report["canary_checked"] is True
        assert report["canary_hits"] == 0
        assert "id" not in report
        # The request may size the simulated memory; the connection is still in step.
        smaller = client.scrub(nonce=SCRUB_NONCE, canary_nonce=None, simulate_mib=1, timeout_s=120)
        assert smaller["bytes_covered"] == 1 << 20
        assert client.hello().mode == "jobs"
        client.close()
    finally:
        running.stop()


def test_an_agent_without_any_device_memory_plants_nothing(client: AgentClient) -> None:
    assert client.plant_canary(CANARY_NONCE, timeout_s=10) == {"planted_bytes": 0, "device": "none"}
    with pytest.raises(AgentRefusedError, match="no GPU and no simulated device memory"):
        client.scrub(nonce=SCRUB_NONCE, canary_nonce=None, simulate_mib=None, timeout_s=10)


def test_scrub_and_canary_wait_for_no_job(base: Path) -> None:
    running = start_agent(base, "--simulated-gpu-mib", "1", *SCRUB)
    try:
        client = running.connect()
        job = new_job()
        put_script(client, job, "import time\ntime.sleep(60)")
        client.run(job, entrypoint="main.py", args=[], max_runtime_s=120)
        with pytest.raises(AgentRefusedError, match="a job is running"):
            client.plant_canary(CANARY_NONCE, timeout_s=10)
        with pytest.raises(AgentRefusedError, match="a job is running"):
            client.scrub(nonce=SCRUB_NONCE, canary_nonce=None, simulate_mib=None, timeout_s=10)
        client.cancel(job)
        assert client.plant_canary(CANARY_NONCE, timeout_s=120)["planted_bytes"] == 1 << 20
        client.close()
    finally:
        running.stop()


def test_an_agent_in_sanitize_mode_answers_only_hello_and_scrub(base: Path) -> None:
    running = start_agent(base, "--sanitize-only", "--simulated-gpu-mib", "2", *SCRUB)
    try:
        client = running.connect()
        assert client.hello().mode == "sanitize"
        job = new_job()
        with pytest.raises(AgentRefusedError, match="sanitize mode"):
            client.put(job, "code", "main.py", b"print(1)")
        with pytest.raises(AgentRefusedError, match="sanitize mode"):
            client.plant_canary(CANARY_NONCE, timeout_s=10)
        report = client.scrub(
            nonce=SCRUB_NONCE, canary_nonce=CANARY_NONCE, simulate_mib=None, timeout_s=120
        )
        assert report["bytes_covered"] == 2 << 20
        assert report["mismatches"] == 0
        assert not any(running.root.glob("jobs/*"))
        client.close()
    finally:
        running.stop()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"nonce": b"short"}, "nonce must be 32 bytes"),
        ({"canary_nonce": "ab" * 32}, "canary_nonce must be 32 bytes"),
        ({"simulate_mib": 0}, "simulate_mib must be"),
        ({"simulate_mib": 1 << 20}, "simulate_mib must be"),
        ({"timeout_s": 0}, "timeout_s must be"),
        ({"timeout_s": float("nan")}, "timeout_s must be"),
    ],
)
def test_the_client_checks_scrub_arguments(
    client: AgentClient, kwargs: dict[str, object], message: str
) -> None:
    arguments: dict[str, object] = {
        "nonce": SCRUB_NONCE,
        "canary_nonce": None,
        "simulate_mib": None,
        "timeout_s": 10.0,
        **kwargs,
    }
    with pytest.raises(ValueError, match=message):
        client.scrub(**arguments)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_present(), reason=NO_GPU)
def test_the_agent_scrubs_the_real_gpu(base: Path) -> None:
    running = start_agent(base, "--simulated-gpu-mib", "4", *SCRUB)
    try:
        client = running.connect()
        # The agent runs with -S: its GPU list comes from nvidia-smi (NVML in a guest).
        gpus = client.hello().gpus
        assert gpus, "the agent sees no GPU: is nvidia-smi installed with the driver?"
        report = client.scrub(
            nonce=SCRUB_NONCE, canary_nonce=CANARY_NONCE, simulate_mib=8, timeout_s=600
        )
        # A GPU is there: it is scrubbed, not the simulated memory the request asked for.
        assert report["simulated"] is False
        assert report["device"].startswith("cuda")
        assert report["mismatches"] == 0
        assert report["bytes_covered"] / report["bytes_total"] >= 0.99
        assert report["device_state"]["uuid"] in {gpu.uuid for gpu in gpus}
        client.close()
    finally:
        running.stop()
