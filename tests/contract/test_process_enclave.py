"""The process enclave against the real bubblewrap: what a job inside can and cannot reach.

Isolation is probed with a stand-in agent (below) that runs Python sent to it and answers what
it printed, so each test asks the sandbox a direct question; the real agent then runs a real
job in it. Needs ``bwrap`` (Makefile APT_TEST) and unprivileged user namespaces.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import enclaves.agent
from enclaves.agent.client import AgentClient
from enclaves.errors import SandboxError
from enclaves.sandbox import ProcessEnclave, SandboxLimits, SandboxPython

#: A stand-in agent: per connection, read Python until the client half-closes, run it, send back
#: what it printed (or the exception). Same command line as the real agent.
PROBE_AGENT = textwrap.dedent(
    """
    import argparse, contextlib, io, socket

    parser = argparse.ArgumentParser()
    parser.add_argument("--listen-unix")
    parser.add_argument("--root")
    parser.add_argument("--simulated", action="store_true")
    options, _ = parser.parse_known_args()
    server = socket.socket(socket.AF_UNIX)
    server.bind(options.listen_unix)
    server.listen(1)
    while True:
        conn, _ = server.accept()
        with conn:
            code = b""
            while chunk := conn.recv(65536):
                code += chunk
            out = io.StringIO()
            try:
                with contextlib.redirect_stdout(out):
                    exec(code.decode(), {})
            except BaseException as exc:
                out.write(f"{type(exc).__name__}")
            with contextlib.suppress(OSError):
                conn.sendall(out.getvalue().encode())
    """
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the sandbox's unprivileged user can traverse (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="sov-sandbox-test-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def probe_agent(shared_dir: Path) -> Path:
    package = shared_dir / "probe_agent"
    package.mkdir(mode=0o755)
    (package / "__main__.py").write_text(PROBE_AGENT, encoding="utf-8")
    (package / "__main__.py").chmod(0o644)
    return package


def make_enclave(
    shared_dir: Path, agent_dir: Path, limits: SandboxLimits | None = None
) -> ProcessEnclave:
    return ProcessEnclave(
        uuid.uuid4(), shared_dir / "run", SandboxPython.current(), agent_dir, limits
    )


@pytest.fixture
def enclave(shared_dir: Path, probe_agent: Path) -> Iterator[ProcessEnclave]:
    sandbox = make_enclave(shared_dir, probe_agent, SandboxLimits(vcpus=1, file_size_mib=1))
    sandbox.start()
    yield sandbox
    sandbox.stop()


def probe(sandbox: ProcessEnclave, code: str) -> str:
    """Run ``code`` in the sandbox's stand-in agent; what it printed."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(60)
        conn.connect(str(sandbox.socket_path))
        conn.sendall(textwrap.dedent(code).encode())
        conn.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer.decode()


def host_uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, waiting for its parent to reap it, runs nothing)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


def host_pids_with(marker: str) -> list[int]:
    """Host pids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if marker in cmdline:
                found.append(int(entry.name))
    return found


# --- isolation ---------------------------------------------------------------------------


def test_only_loopback_and_no_root(enclave: ProcessEnclave) -> None:
    answer = probe(
        enclave,
        """
        import os, socket
        print(socket.if_nameindex(), os.getuid(), os.getgid(), os.getgroups())
        """,
    )
    assert answer.strip() == "[(1, 'lo')] 1000 1000 []"
    assert enclave.pid is not None
    # On the host, the sandbox runs as an unprivileged user, never as root.
    assert host_uid(enclave.pid) != 0
    if os.getuid() == 0:
        assert host_uid(enclave.pid) == 65534


def test_cannot_connect_to_the_control_planes_port(enclave: ProcessEnclave) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        answer = probe(
            enclave,
            f"""
            import socket
            for host in ("127.0.0.1", "localhost", "::1"):
                try:
                    socket.create_connection((host, {port}), timeout=2).close()
                    print("connected")
                except OSError as exc:
                    print(type(exc).__name__)
            """,
        )
        assert "connected" not in answer
        assert answer.split()[0] == "ConnectionRefusedError"  # its own lo, nothing listens
        with pytest.raises(TimeoutError):
            listener.accept()


def test_cannot_read_the_instance_dir_root_or_the_repository(
    enclave: ProcessEnclave, shared_dir: Path
) -> None:
    # World-readable on purpose: what keeps the sandbox out must be its mounts, not modes.
    instance = shared_dir / "instance"
    instance.mkdir(mode=0o755)
    secret = instance / "sovereign.toml"
    secret.write_text("secret-key = 'hunter2'\n", encoding="utf-8")
    secret.chmod(0o644)
    targets = [str(secret), str(instance), "/root", "/etc/shadow", "/etc/passwd", "/home"]
    targets += [str(REPO / "pyproject.toml"), str(REPO / "sovereign")]
    answer = probe(
        enclave,
        f"""
        import os
        for path in {targets!r}:
            try:
                open(path).read() if not os.path.isdir(path) else os.listdir(path)
                print(path, "readable")
            except OSError as exc:
                print(path, type(exc).__name__)
        """,
    )
    assert "readable" not in answer, answer
    assert answer.count("FileNotFoundError") == len(targets), answer


def test_cannot_write_outside_its_tmpfs(enclave: ProcessEnclave) -> None:
    answer = probe(
        enclave,
        """
        import os, sys
        for path in ("/usr/evil", "/opt/sovereign/sovereign_agent/evil", sys.path[-1] + "/evil",
                     "/evil", "/dev/evil", "/run/agent/evil", "/job/fine", "/tmp/fine",
                     "/dev/shm/fine"):
            try:
                with open(path, "w") as f:
                    f.write("x")
                print(path, "written")
            except OSError as exc:
                print(path, type(exc).__name__)
        """,
    )
    lines = dict(line.split() for line in answer.splitlines())
    assert lines.pop("/job/fine") == "written"
    assert lines.pop("/tmp/fine") == "written"  # noqa: S108 (the sandbox's own /tmp)
    assert lines.pop("/dev/shm/fine") == "written"  # noqa: S108 (its own /dev/shm)
    assert "written" not in lines.values(), answer


def test_resource_limits(shared_dir: Path, probe_agent: Path) -> None:
    limits = SandboxLimits(vcpus=1, open_files=64, file_size_mib=1, tmpfs_mib=16, processes=3000)
    sandbox = make_enclave(shared_dir, probe_agent, limits)
    sandbox.start()
    try:
        answer = probe(
            sandbox,
            """
            import os, resource
            print(resource.getrlimit(resource.RLIMIT_CORE))
            print(resource.getrlimit(resource.RLIMIT_NOFILE))
            print(resource.getrlimit(resource.RLIMIT_NPROC))
            print(len(os.sched_getaffinity(0)))
            for path in ("/job", "/tmp", "/dev/shm"):
                print(os.statvfs(path).f_blocks * os.statvfs(path).f_frsize >> 20)
            try:
                with open("/job/big", "wb") as f:
                    f.write(b"x" * (2 << 20))
                print("wrote 2 MiB")
            except OSError as exc:
                print(type(exc).__name__, exc.errno)
            """,
        )
        assert answer.splitlines() == [
            "(0, 0)",
            "(64, 64)",
            "(3000, 3000)",
            "1",
            "16",
            "16",
            "16",
            "OSError 27",  # EFBIG: RLIMIT_FSIZE
        ]
    finally:
        sandbox.stop()


def test_address_space_limit_still_imports_torch(shared_dir: Path, probe_agent: Path) -> None:
    """Measured: torch 2.13 (CPU) imports and runs a layer under RLIMIT_AS = 1 GiB."""
    pytest.importorskip("torch")
    sandbox = make_enclave(shared_dir, probe_agent, SandboxLimits(address_space_mib=1024))
    sandbox.start()
    try:
        answer = probe(
            sandbox,
            """
            import resource, torch
            print(resource.getrlimit(resource.RLIMIT_AS)[0] >> 20)
            print(tuple(torch.nn.Linear(4, 2)(torch.ones(3, 4)).shape))
            """,
        )
        assert answer.splitlines() == ["1024", "(3, 2)"]
    finally:
        sandbox.stop()


# --- lifecycle ---------------------------------------------------------------------------


def test_survives_its_parent_and_is_found_again(shared_dir: Path, probe_agent: Path) -> None:
    enclave_id = uuid.uuid4()
    run_dir = shared_dir / "run"
    # Another process (the control plane before a restart) starts it and exits.
    starter = f"""
import uuid
from pathlib import Path
from enclaves.sandbox import ProcessEnclave, SandboxPython
sandbox = ProcessEnclave(uuid.UUID({str(enclave_id)!r}), Path({str(run_dir)!r}),
                         SandboxPython.current(), Path({str(probe_agent)!r}))
sandbox.start()
print(sandbox.pid)
"""
    done = subprocess.run(
        [sys.executable, "-c", starter], capture_output=True, text=True, timeout=60, check=True
    )
    pid = int(done.stdout.strip())
    found = ProcessEnclave(enclave_id, run_dir, SandboxPython.current(), probe_agent)
    try:
        assert found.running
        assert found.pid == pid
        assert probe(found, "print(6 * 7)").strip() == "42"
        found.start()  # already running: adopted, not started twice
        assert found.pid == pid
    finally:
        found.stop()
    assert not found.running
    assert not alive(pid)


def test_stop_leaves_no_process(enclave: ProcessEnclave) -> None:
    marker = f"{uuid.uuid4().int % 10**9}.5"
    probe(
        enclave,
        f"""
        import subprocess
        subprocess.Popen(["/usr/bin/sleep", "{marker}"], start_new_session=True)
        """,
    )
    deadline = time.monotonic() + 10
    while not host_pids_with(f"sleep {marker}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert host_pids_with(f"sleep {marker}"), "the detached grandchild should be running"
    init = enclave.pid
    assert init is not None
    enclave.stop()
    assert not enclave.running
    assert host_pids_with(f"sleep {marker}") == []
    assert not alive(init)
    assert not enclave.state_dir.exists()
    enclave.stop()  # idempotent


def test_a_sandbox_that_dies_is_not_running(enclave: ProcessEnclave) -> None:
    init = enclave.pid
    assert init is not None
    os.kill(init, 9)
    deadline = time.monotonic() + 10
    while enclave.running and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not enclave.running
    with pytest.raises(SandboxError, match="not running"):
        enclave.connect()
    enclave.start()  # a fresh one in its place
    assert probe(enclave, "print('back')").strip() == "back"


def test_refuses_a_run_dir_others_may_write(shared_dir: Path, probe_agent: Path) -> None:
    run_dir = shared_dir / "run"
    run_dir.mkdir(mode=0o777)
    run_dir.chmod(0o777)
    with pytest.raises(SandboxError, match="writable by group or others"):
        make_enclave(shared_dir, probe_agent).start()


def test_refuses_what_is_not_an_agent(shared_dir: Path) -> None:
    with pytest.raises(SandboxError, match="not the agent package"):
        make_enclave(shared_dir, shared_dir).start()


def test_refuses_an_interpreter_outside_usr(shared_dir: Path, probe_agent: Path) -> None:
    python = SandboxPython(executable="/root/.pyenv/bin/python3")
    sandbox = ProcessEnclave(uuid.uuid4(), shared_dir / "run", python, probe_agent)
    with pytest.raises(SandboxError, match="outside"):
        sandbox.start()


def test_an_agent_that_exits_is_reported_with_its_output(shared_dir: Path) -> None:
    package = shared_dir / "dying_agent"
    package.mkdir(mode=0o755)
    (package / "__main__.py").write_text("raise SystemExit('agent gave up')\n", encoding="utf-8")
    (package / "__main__.py").chmod(0o644)
    sandbox = make_enclave(shared_dir, package)
    with pytest.raises(SandboxError, match="agent gave up"):
        sandbox.start(timeout_s=20)
    assert not sandbox.running


# --- the real agent ------------------------------------------------------------------------


def test_a_real_job_through_the_real_agent(shared_dir: Path) -> None:
    agent_dir = Path(enclaves.agent.__file__).resolve().parent
    sandbox = make_enclave(shared_dir, agent_dir)
    sandbox.start()
    job = str(uuid.uuid4())
    code = textwrap.dedent(
        """
        import json, os, socket, sys
        try:
            import torch
            version = torch.__version__
        except ImportError:
            version = None
        report = {"interfaces": [n for _, n in socket.if_nameindex()], "uid": os.getuid(),
                  "inputs": os.listdir(os.environ["SOVEREIGN_INPUTS"]), "torch": version}
        open("report.json", "w").write(json.dumps(report))
        print("done", file=sys.stderr)
        """
    ).encode()
    try:
        client = AgentClient(sandbox.connect(), timeout_s=30)
        try:
            hello = client.hello()
            assert hello.simulated
            client.put(job, "code", "main.py", code)
            client.put(job, "input", "data/x.csv", b"1,2\n")
            # Several chunks, each checked by its prefix digest inside the enclave.
            big = os.urandom((3 << 20) + 11)
            assert client.put(job, "input", "data/big.bin", big) == hashlib.sha256(big).hexdigest()
            client.run(job, entrypoint="main.py", args=[], max_runtime_s=60)
            deadline = time.monotonic() + 60
            while (status := client.status(job)).state == "running":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert (status.state, status.exit_code) == ("succeeded", 0)
            assert b"done" in client.logs(job, 0)
            (report,) = client.outputs(job, ["report.json"])
            data = client.get(
                job, report.name, size=report.size, sha256=report.sha256, max_bytes=1 << 20
            )
        finally:
            client.close()
    finally:
        sandbox.stop()
    assert data.startswith(b"{")
    found = json.loads(data)
    assert found["interfaces"] == ["lo"]
    assert found["uid"] == 1000
    assert found["inputs"] == ["data"]
    # The job (which the agent gives no PYTHONPATH) sees the control plane's packages.
    try:
        import torch  # optional: the workloads extra
    except ImportError:
        assert found["torch"] is None
    else:
        assert found["torch"] == torch.__version__


def test_site_directories_nobody_can_reach_are_refused(shared_dir: Path, probe_agent: Path) -> None:
    """A venv under /root (0700) cannot be bound by bwrap running as nobody: a clear error."""
    hidden = shared_dir / "private"
    hidden.mkdir(mode=0o700)
    (hidden / "site-packages").mkdir()
    python = SandboxPython(SandboxPython.current().executable, (str(hidden / "site-packages"),))
    sandbox = ProcessEnclave(uuid.uuid4(), shared_dir / "run", python, probe_agent)
    if os.getuid() != 0:
        sandbox.start()  # the sandbox is our own user: it can reach what we can
        sandbox.stop()
        return
    with pytest.raises(SandboxError, match=f"{hidden} is not searchable"):
        sandbox.start()


# --- the real agent keeps its jobs away from itself ------------------------------------------

#: A job that tries its own agent's socket ATTEMPTS times and its memory and file descriptors
#: (it runs as the agent's user); it prints what happened, one word per try.
JOB_AT_THE_AGENT = """
import os, socket
from sovereign_agent import protocol
hello = protocol.encode(protocol.Frame(protocol.KIND_REQUEST, {"op": "hello", "id": 1}))
for _ in range(ATTEMPTS):
    conn = socket.socket(socket.AF_UNIX)
    conn.settimeout(3)
    try:
        conn.connect("/run/agent/agent.sock")
        conn.sendall(hello)
        print("answered" if conn.recv(100) else "closed", flush=True)
    except TimeoutError:
        print("timeout", flush=True)
    except OSError:
        print("closed", flush=True)
    finally:
        conn.close()
agent = os.getppid()
for what in ("mem", "fd"):
    try:
        os.listdir(f"/proc/{agent}/fd") if what == "fd" else open(f"/proc/{agent}/mem", "rb")
        print(what, "open", flush=True)
    except OSError as exc:
        print(what, type(exc).__name__, flush=True)
"""


def run_job(client: AgentClient, job: str, code: str, timeout_s: float = 60) -> str:
    client.put(job, "code", "main.py", textwrap.dedent(code).encode())
    client.run(job, entrypoint="main.py", args=[], max_runtime_s=int(timeout_s))
    deadline = time.monotonic() + timeout_s
    while (status := client.status(job)).state == "running":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert (status.state, status.exit_code) == ("succeeded", 0), client.logs(job, 0)
    return client.logs(job, 0).decode()


@pytest.fixture
def real_enclave(shared_dir: Path) -> Iterator[ProcessEnclave]:
    sandbox = make_enclave(shared_dir, Path(enclaves.agent.__file__).resolve().parent)
    sandbox.start()
    yield sandbox
    sandbox.stop()


def test_a_job_cannot_connect_to_its_agent(real_enclave: ProcessEnclave) -> None:
    attempts = 20
    client = AgentClient(real_enclave.connect(), timeout_s=30)
    try:
        assert client.hello().simulated
        # The job's connections are closed at once although this session holds the agent.
        code = JOB_AT_THE_AGENT.replace("ATTEMPTS", str(attempts))
        log = run_job(client, str(uuid.uuid4()), code)
        expected = ["closed"] * attempts + ["mem PermissionError", "fd PermissionError"]
        assert log.splitlines() == expected, log
        # A second control-plane connection waits its turn meanwhile, undisturbed.
        waiting = AgentClient(real_enclave.connect(), timeout_s=30)
        assert client.hello().simulated  # the first session still works
    finally:
        client.close()
    try:
        assert waiting.hello().simulated
    finally:
        waiting.close()
    tail = real_enclave.log_tail()
    assert "refused a connection from pid" in tail, tail


#: A job that leaves a sleeper behind: forked twice, in a session of its own (so neither the
#: job's process group nor its parent holds it), then exits (or runs until it is cancelled).
JOB_LEAVING_A_SLEEPER = """
import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        os.execv("/usr/bin/sleep", ["sleep", "{marker}"])
    os._exit(0)
os.wait()
print("left it", flush=True)
time.sleep({linger})
"""


@pytest.mark.parametrize(
    ("end", "state"),
    [
        ("exit", "succeeded"),
        ("cancel", "cancelled"),
        ("timeout", "timed_out"),
        ("discard", "unknown"),
    ],
)
def test_what_a_job_leaves_running_dies_with_it(
    real_enclave: ProcessEnclave, end: str, state: str
) -> None:
    marker = f"{uuid.uuid4().int % 10**9}.5"
    job = str(uuid.uuid4())
    linger = 0.5 if end == "exit" else 120
    code = textwrap.dedent(JOB_LEAVING_A_SLEEPER.format(marker=marker, linger=linger))
    client = AgentClient(real_enclave.connect(), timeout_s=30)
    try:
        client.put(job, "code", "main.py", code.encode())
        client.run(job, entrypoint="main.py", args=[], max_runtime_s=3 if end == "timeout" else 300)
        deadline = time.monotonic() + 30
        while b"left it" not in client.logs(job, 0):
            assert time.monotonic() < deadline, client.logs(job, 0)
            time.sleep(0.05)
        assert host_pids_with(f"sleep {marker}"), "the sleeper should be running"
        if end == "cancel":
            client.cancel(job)
        elif end == "discard":
            client.discard(job)
        while (status := client.status(job)).state == "running":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert status.state == state
        # Gone by the time the job's end is visible (zombies aside: they run nothing).
        assert [pid for pid in host_pids_with(f"sleep {marker}") if alive(pid)] == []
        # And the agent still serves: the next job runs.
        assert "42" in run_job(client, str(uuid.uuid4()), "print(6 * 7)")
    finally:
        client.close()
