"""The job domain: the manifest's validation (the agent's path rule, on our side too), the
state machine, and code file checks."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from enclaves.agent.protocol import MAX_HEADER, encode_head
from sovereign.domain.jobs import (
    AgentJobStatus,
    Job,
    JobManifest,
    JobState,
    OutputFile,
    check_files,
    check_name,
    check_path,
    check_pattern,
)
from sovereign.domain.labels import LabelScheme
from sovereign.errors import InvalidInputError, InvalidTransitionError

T0 = datetime(2026, 12, 6, tzinfo=UTC)


@pytest.mark.parametrize(
    "path", ["main.py", "pkg/mod.py", "a-b_c.d/e", "x" * 255, "a/b/c/d/e.txt", "data..csv"]
)
def test_paths_the_agent_accepts(path: str):
    assert check_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../b",
        ".hidden",
        "a/.git/config",
        "a//b",
        "a/",
        "a b",
        "a\\b",
        "ü.py",
        "x" * 256,
        "a\x00b",
        "a\nb",
    ],
)
def test_paths_the_agent_refuses_are_refused_here_first(path: str):
    with pytest.raises(InvalidInputError):
        check_path(path)


def test_patterns_allow_globs_but_not_escapes():
    assert check_pattern("out/*.json") == "out/*.json"
    assert check_pattern("model-?.pt") == "model-?.pt"
    for bad in ("../*", "/out/*", "*/../x", ".*", "out/[ab]", "**/.ssh"):
        with pytest.raises(InvalidInputError):
            check_pattern(bad)


def test_dataset_names_are_one_segment():
    assert check_name("train.csv") == "train.csv"
    for bad in ("a/b", "..", ".x", "", "x" * 129, 5):
        with pytest.raises(InvalidInputError):
            check_name(bad)


def test_manifest_parse_defaults_and_bounds():
    m = JobManifest.parse({"entrypoint": "main.py"}, max_runtime_s=600)
    assert m == JobManifest("main.py", (), (), (), 600)
    dataset = uuid.uuid4()
    m = JobManifest.parse(
        {
            "entrypoint": "src/train.py",
            "args": ["--lr", "0.1"],
            "inputs": [str(dataset)],
            "outputs": ["out/*"],
            "max_runtime_s": 60,
        },
        max_runtime_s=600,
    )
    assert m.inputs == (dataset,) and m.args == ("--lr", "0.1")
    assert JobManifest.parse(m.to_dict(), max_runtime_s=600) == m


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ([], "JSON object"),
        ({}, "entrypoint"),
        ({"entrypoint": 5}, "entrypoint"),
        ({"entrypoint": "../x.py"}, "entrypoint"),
        ({"entrypoint": "m.py", "args": "x"}, "args"),
        ({"entrypoint": "m.py", "args": [1]}, "args"),
        ({"entrypoint": "m.py", "args": ["a\nb"]}, "control character"),
        ({"entrypoint": "m.py", "args": ["x" * 1025]}, "argument"),
        ({"entrypoint": "m.py", "args": ["x"] * 65}, "arguments"),
        # Each argument within its bounds, all of them too many bytes for one agent request
        # (ASCII JSON: a non-ASCII character is six bytes there).
        ({"entrypoint": "m.py", "args": ["x" * 1024] * 33}, "bytes of JSON"),
        ({"entrypoint": "m.py", "args": ["\u00e9" * 1024] * 6}, "bytes of JSON"),
        ({"entrypoint": "m.py", "args": ["x" * 1024] * 24, "outputs": ["o" * 255] * 32}, "JSON"),
        ({"entrypoint": "m.py", "inputs": ["not-a-uuid"]}, "dataset ids"),
        ({"entrypoint": "m.py", "inputs": [1]}, "dataset ids"),
        ({"entrypoint": "m.py", "inputs": [str(uuid.UUID(int=1))] * 2}, "twice"),
        ({"entrypoint": "m.py", "outputs": ["/abs"]}, "output pattern"),
        ({"entrypoint": "m.py", "max_runtime_s": 601}, "at most 600"),
        ({"entrypoint": "m.py", "max_runtime_s": 0}, "positive"),
        ({"entrypoint": "m.py", "max_runtime_s": True}, "integer"),
        ({"entrypoint": "m.py", "max_runtime_s": "5"}, "integer"),
        ({"entrypoint": "m.py", "env": {}}, "unknown manifest field"),
    ],
)
def test_manifest_parse_refuses(data: object, reason: str):
    with pytest.raises(InvalidInputError, match=reason):
        JobManifest.parse(data, max_runtime_s=600)


def test_every_valid_manifest_fits_one_agent_request():
    # The largest manifest accepted still encodes into the agent protocol's 64 KiB header
    # with room to spare (what made 64 arguments of 1024 characters unsendable).
    args = ["x" * 1024] * 31 + ["x" * 700]
    m = JobManifest.parse({"entrypoint": "m.py", "args": args}, max_runtime_s=600)
    header = {"op": "run", "id": 2**32 - 1, "job": str(uuid.UUID(int=0)), **m.to_dict()}
    assert len(encode_head(1, header, 0)) < MAX_HEADER


def test_code_files_are_checked():
    assert check_files([("a.py", b"1")], max_files=2, max_bytes=10) == [("a.py", b"1")]
    with pytest.raises(InvalidInputError, match="at least one"):
        check_files([], max_files=2, max_bytes=10)
    with pytest.raises(InvalidInputError, match="at most 2 files"):
        check_files([("a", b""), ("b", b""), ("c", b"")], max_files=2, max_bytes=10)
    with pytest.raises(InvalidInputError, match="twice"):
        check_files([("a", b""), ("a", b"")], max_files=2, max_bytes=10)
    with pytest.raises(InvalidInputError, match="more than 10 bytes"):
        check_files([("a", b"x" * 11)], max_files=2, max_bytes=10)
    with pytest.raises(InvalidInputError):
        check_files([("../a", b"")], max_files=2, max_bytes=10)


def job() -> Job:
    return Job(
        id=uuid.uuid4(),
        enclave_id=uuid.uuid4(),
        tenant="defence",
        label=LabelScheme().label("SECRET"),
        submitted_by="sub",
        manifest=JobManifest("main.py"),
        files=(OutputFile("main.py", 1, "0" * 64),),
        state=JobState.QUEUED,
        created_at=T0,
        updated_at=T0,
    )


def test_the_state_machine():
    j = job()
    j.transition(JobState.RUNNING, T0)
    assert j.started_at == T0 and j.finished_at is None
    j.transition(JobState.TIMED_OUT, T0)
    assert j.finished_at == T0 and j.state.terminal
    for target in JobState:
        with pytest.raises(InvalidTransitionError):
            j.transition(target, T0)
    queued = job()
    with pytest.raises(InvalidTransitionError):
        queued.transition(JobState.SUCCEEDED, T0)  # never without running
    queued.fail("x" * 900, T0)
    assert queued.state is JobState.FAILED and len(queued.error) == 500


def test_agent_states_map_to_job_states():
    assert AgentJobStatus("succeeded", 0, 1.0, 0).terminal is JobState.SUCCEEDED
    assert AgentJobStatus("timed_out", None, 1.0, 0).terminal is JobState.TIMED_OUT
    assert AgentJobStatus("running", None, 1.0, 0).terminal is None
    assert AgentJobStatus("unknown", None, 0.0, 0).terminal is None
