"""The agent's ``scrub`` and ``canary`` ops and its sanitize mode, on an agent in this process.

The scrub program really runs (a subprocess, on a simulated device memory of a few MiB); what
these tests check is the agent's side: which device it asks for, what it refuses and when, and
that the program runs bounded in time and output.
"""

from __future__ import annotations

import hashlib
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from enclaves.agent import __main__ as cli
from enclaves.agent import protocol, server
from enclaves.agent.protocol import Frame
from enclaves.agent.server import Agent

NONCE = hashlib.sha256(b"nonce").hexdigest()
CANARY = hashlib.sha256(b"canary").hexdigest()
MIB = 1 << 20
FAKE_GPU = {"name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-1", "memory_mib": 81559}


def make_agent(tmp_path: Path, **kwargs: Any) -> Agent:
    options: dict[str, Any] = {"python": sys.executable, "python_version": "3.11.2"}
    options.update(kwargs)
    return Agent(str(tmp_path / "root"), **options)


def call(agent: Agent, op: str, **fields: Any) -> Frame:
    request = Frame(protocol.KIND_REQUEST, {"op": op, "id": 7, **fields})
    checked_op, request_id = protocol.check_request(request)
    return protocol.decode(agent.handle(checked_op, request_id, request))


def refusal(frame: Frame) -> str:
    assert frame.kind == protocol.KIND_ERROR, frame.header
    return str(frame.header["message"])


def test_scrub_runs_the_program_on_the_simulated_device(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, simulated_gpu_mib=2)
    answer = call(agent, "scrub", nonce=NONCE, canary_nonce=CANARY)
    assert answer.kind == protocol.KIND_REPLY, answer.header
    report = answer.header
    assert report["id"] == 7
    assert report["program"] == "sovereign-scrub/1"
    assert report["device"] == "cpu"
    assert report["simulated"] is True
    assert report["bytes_total"] == report["bytes_covered"] == 2 * MIB
    assert report["mismatches"] == 0
    assert report["canary_checked"] is True
    assert report["canary_hits"] == 0


def test_the_request_may_size_the_simulated_device(tmp_path: Path) -> None:
    answer = call(make_agent(tmp_path), "scrub", nonce=NONCE, canary_nonce=None, simulate_mib=1)
    assert answer.header["bytes_covered"] == MIB
    assert answer.header["canary_checked"] is False


def test_scrub_without_a_gpu_or_a_simulated_device_is_refused(tmp_path: Path) -> None:
    message = refusal(call(make_agent(tmp_path), "scrub", nonce=NONCE))
    assert message == "no GPU and no simulated device memory to scrub"


def test_a_gpu_is_scrubbed_whatever_the_request_says(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, gpus=[FAKE_GPU], simulated_gpu_mib=2)
    captured: list[list[str]] = []

    def program(argv: list[str]) -> dict[str, Any]:
        captured.append(argv)
        return {"program": "sovereign-scrub/1"}

    agent._scrub_program = program  # type: ignore[method-assign]
    call(agent, "scrub", nonce=NONCE, simulate_mib=4)
    call(agent, "canary", canary_nonce=CANARY)
    assert captured[0] == ["scrub", "--nonce", NONCE, "--device", "cuda"]
    assert captured[1] == ["plant", "--canary-nonce", CANARY, "--device", "cuda"]


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"nonce": NONCE[:-2]}, "a nonce must be 64 lower-case hex digits"),
        ({"nonce": NONCE.upper()}, "a nonce must be 64 lower-case hex digits"),
        ({"nonce": NONCE, "canary_nonce": "x" * 64}, "a nonce must be 64 lower-case hex digits"),
        ({"nonce": NONCE, "canary_nonce": 5}, "a nonce must be 64 lower-case hex digits"),
        ({"nonce": NONCE, "simulate_mib": 0}, "simulate_mib must be an integer"),
        ({"nonce": NONCE, "simulate_mib": 65537}, "simulate_mib must be an integer"),
        ({"nonce": NONCE, "simulate_mib": True}, "simulate_mib must be an integer"),
        ({"nonce": NONCE, "simulate_mib": "4"}, "simulate_mib must be an integer"),
    ],
)
def test_bad_scrub_requests_are_refused(
    tmp_path: Path, fields: dict[str, Any], message: str
) -> None:
    agent = make_agent(tmp_path, simulated_gpu_mib=1)
    assert refusal(call(agent, "scrub", **fields)).startswith(message)


def fake_python(tmp_path: Path, body: str) -> str:
    """A stand-in interpreter: a shell script that ignores its arguments and runs ``body``."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            """echo '{"program": "x", "error": "no GPU visible to torch"}'; exit 1""",
            "scrub: no GPU visible to torch",
        ),
        (
            "echo 'Traceback (most recent call last):' >&2; exit 1",
            "the scrub program failed (exit 1)",
        ),
        ("echo 'not json'; exit 0", "the scrub program failed (exit 0)"),
        ("echo '[1, 2]'; exit 0", "the scrub program failed (exit 0)"),
        (
            """echo '{"program": "sovereign-scrub/1"}'; exit 9""",
            "the scrub program failed (exit 9)",
        ),
    ],
)
def test_a_failing_scrub_program_is_a_refusal(tmp_path: Path, body: str, message: str) -> None:
    agent = make_agent(tmp_path, simulated_gpu_mib=1, scrub_python=fake_python(tmp_path, body))
    assert refusal(call(agent, "scrub", nonce=NONCE)) == message


def test_a_malformed_canary_answer_is_a_refusal(tmp_path: Path) -> None:
    body = """echo '{"planted_bytes": -1, "device": "cpu"}'"""
    agent = make_agent(tmp_path, simulated_gpu_mib=1, scrub_python=fake_python(tmp_path, body))
    message = refusal(call(agent, "canary", canary_nonce=CANARY))
    assert message == "the scrub program gave a malformed answer"


def test_canary_without_a_device_plants_nothing_and_starts_nothing(tmp_path: Path) -> None:
    agent = make_agent(tmp_path)

    def never(argv: list[str]) -> dict[str, Any]:
        raise AssertionError("nothing may run")

    agent._scrub_program = never  # type: ignore[method-assign]
    answer = call(agent, "canary", canary_nonce=CANARY)
    assert answer.kind == protocol.KIND_REPLY
    assert answer.header == {"id": 7, "planted_bytes": 0, "device": "none"}


def test_canary_plants_over_the_simulated_device(tmp_path: Path) -> None:
    answer = call(make_agent(tmp_path, simulated_gpu_mib=3), "canary", canary_nonce=CANARY)
    assert answer.header == {"id": 7, "planted_bytes": 3 * MIB, "device": "cpu"}
    assert refusal(call(make_agent(tmp_path), "canary", canary_nonce="no")).startswith(
        "a nonce must be"
    )


def test_scrub_and_canary_are_refused_while_a_job_runs(tmp_path: Path) -> None:
    for simulated in (2, None):
        agent = make_agent(tmp_path, simulated_gpu_mib=simulated)
        agent._running[str(uuid.uuid4())] = object()  # type: ignore[assignment]
        assert refusal(call(agent, "canary", canary_nonce=CANARY)) == "a job is running"
        if simulated:
            assert refusal(call(agent, "scrub", nonce=NONCE)) == "a job is running"


def test_sanitize_mode_answers_only_hello_and_scrub(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, simulated_gpu_mib=1, sanitize_only=True)
    hello = call(agent, "hello")
    assert hello.header["mode"] == "sanitize"
    assert call(agent, "scrub", nonce=NONCE).header["bytes_covered"] == MIB
    job = str(uuid.uuid4())
    refused = {
        "canary": {"canary_nonce": CANARY},
        "put_begin": {"job": job, "area": "code", "path": "a.py", "size": 1, "sha256": "a" * 64},
        "run": {"job": job, "entrypoint": "a.py", "args": [], "max_runtime_s": 5},
        "status": {"job": job},
        "outputs": {"job": job, "patterns": ["*"]},
        "discard": {"job": job},
    }
    for op, fields in refused.items():
        assert (
            refusal(call(agent, op, **fields)) == "sanitize mode: only hello and scrub are answered"
        )
    assert not (tmp_path / "root" / "jobs" / job).exists()


def test_hello_says_jobs_mode_by_default(tmp_path: Path) -> None:
    assert call(make_agent(tmp_path), "hello").header["mode"] == "jobs"


def test_the_scrub_program_is_killed_at_its_deadline(tmp_path: Path) -> None:
    agent = make_agent(tmp_path, simulated_gpu_mib=1, scrub_timeout_s=0.05)
    began = time.monotonic()
    assert (
        refusal(call(agent, "scrub", nonce=NONCE)) == "the scrub program ran out of time or output"
    )
    assert time.monotonic() - began < 5


def test_a_bounded_run_stops_a_program_that_prints_too_much_or_runs_too_long() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    began = time.monotonic()
    status, out, _ = server._run_bounded(
        [sys.executable, "-c", "import sys\nwhile True: sys.stdout.write('x' * 65536)"],
        env=env,
        timeout_s=30,
        cap=100_000,
    )
    assert status is None
    assert len(out) <= 100_000 + 65536
    status, out, _ = server._run_bounded(["/bin/sleep", "30"], env=env, timeout_s=0.2, cap=10)
    assert status is None
    assert time.monotonic() - began < 10
    status, out, err = server._run_bounded(
        ["/bin/sh", "-c", "echo out; echo err >&2; exit 3"], env=env, timeout_s=10, cap=100
    )
    assert (status, out, err) == (3, b"out\n", "err\n")


def test_the_kernel_command_line_can_ask_for_sanitize_mode(tmp_path: Path) -> None:
    cmdline = tmp_path / "cmdline"
    cmdline.write_text("root=/dev/vda rw console=ttyS0 sovereign.mode=sanitize\n")
    assert cli.sanitize_requested(str(cmdline))
    cmdline.write_text("root=/dev/vda sovereign.mode=sanitizex nosovereign.mode=sanitize\n")
    assert not cli.sanitize_requested(str(cmdline))
    assert not cli.sanitize_requested(str(tmp_path / "missing"))


def test_the_command_line_takes_the_simulated_device_and_sanitize_options() -> None:
    args = cli._parser().parse_args(
        ["--root", "/r", "--listen-unix", "/s", "--simulated-gpu-mib", "64", "--sanitize-only"]
    )
    assert args.simulated_gpu_mib == 64
    assert args.sanitize_only is True
    for bad in ("0", "-1", "65537", "1e3"):
        with pytest.raises(SystemExit):
            cli._parser().parse_args(
                ["--root", "/r", "--listen-unix", "/s", "--simulated-gpu-mib", bad]
            )


def test_nothing_in_the_working_directory_can_stand_in_for_the_scrub_program(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A process enclave's agent works in the job's directory, which the job writes: a module
    # there named like the program must never run in its place.
    planted = tmp_path / "work"
    marker = tmp_path / "hijacked"
    package = planted / "enclaves" / "agent"
    package.mkdir(parents=True)
    (planted / "enclaves" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "scrub.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.chdir(planted)
    answer = call(make_agent(tmp_path, simulated_gpu_mib=1), "canary", canary_nonce=CANARY)
    assert answer.kind == protocol.KIND_REPLY, answer.header
    assert answer.header["planted_bytes"] == MIB
    assert not marker.exists()
