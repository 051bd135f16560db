"""An in-memory :class:`~sovereign.services.ports.Workloads` for fast tests of jobs.

Owns :class:`MemoryWorkloads` and its :class:`FakeAgent`s: one per enclave, keeping each job's
code and inputs, state, log and output files in dicts, as the guest agent keeps them in its
root, with the protocol's idempotence (``put`` of a file already there answers its hash, ``run``
of a started job answers its status, ``discard`` of an unknown job does nothing). A job's
behaviour is a ``program`` (the test's stand-in for ``python3 ENTRYPOINT``): called at ``run``
with the code, inputs and arguments, it returns a :class:`FakeRun` whose log is visible at
once and whose end comes after a number of status polls. Canaries planted at a job's end are
kept in :attr:`MemoryWorkloads.canaries` (refused while a job runs, as the agent does).
Switches make the agent unreachable (``down``) or misbehave (``misbehave``) as a hostile guest
would. Not for production, nor the
embedded default (the real adapter is :mod:`sovereign.adapters.workloads`).
"""

from __future__ import annotations

import hashlib
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sovereign.domain.fleet import Enclave, Host
from sovereign.domain.jobs import AgentGpu, AgentHello, AgentJobStatus, OutputFile
from sovereign.errors import DependencyUnavailableError, WorkloadError
from sovereign.services.ports import AGENT_DEPENDENCY

#: The simulated device memory a fake agent says it planted its canary over.
FAKE_DEVICE_BYTES = 1 << 20


@dataclass
class FakeRun:
    """What a fake job does: its exit code (None: killed), log, files left in its work
    directory, and how many status polls it runs for."""

    exit_code: int | None = 0
    log: bytes = b""
    files: Mapping[str, bytes] = field(default_factory=dict)
    polls: int = 1
    state: str = ""  # default: succeeded for exit code 0, else failed


Program = Callable[[Mapping[str, bytes], Mapping[str, bytes], Sequence[str]], FakeRun]


def echo_program(
    code: Mapping[str, bytes], inputs: Mapping[str, bytes], args: Sequence[str]
) -> FakeRun:
    """A job that logs its arguments and inputs and writes ``out/result.txt``."""
    lines = [f"args {' '.join(args)}", *(f"input {n} {len(d)}" for n, d in sorted(inputs.items()))]
    log = ("\n".join(lines) + "\n").encode()
    return FakeRun(0, log, {"out/result.txt": b"result of " + " ".join(args).encode()})


@dataclass
class _Job:
    code: dict[str, bytes] = field(default_factory=dict)
    inputs: dict[str, bytes] = field(default_factory=dict)
    state: str = "ready"
    exit_code: int | None = None
    log: bytes = b""
    files: dict[str, bytes] = field(default_factory=dict)
    polls_left: int = 0
    final: str = ""
    runs: int = 0


class FakeAgent:
    """One enclave's agent, in memory (an :class:`~sovereign.services.ports.AgentSession`)."""

    def __init__(self, workloads: MemoryWorkloads, enclave_id: uuid.UUID | None = None) -> None:
        self._w = workloads
        self._enclave_id = enclave_id
        self.jobs: dict[str, _Job] = {}
        self.calls: list[str] = []

    def _op(self, op: str) -> None:
        self.calls.append(op)
        if self._w.down:
            raise DependencyUnavailableError(dependency=AGENT_DEPENDENCY)
        if self._w.misbehave == op:
            raise WorkloadError(reason=f"garbage answer to {op} (simulated)")

    def hello(self) -> AgentHello:
        self._op("hello")
        return AgentHello(
            1, "fake", "sha256:" + "0" * 64, True, (AgentGpu("H100", "GPU-0", 81559),), "3"
        )

    def put(
        self,
        job: str,
        area: str,
        path: str,
        data: bytes,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> str:
        self._op("put")
        record = self.jobs.setdefault(job, _Job())
        (record.code if area == "code" else record.inputs)[path] = data
        if self._w.misbehave == "put-hash":
            return "0" * 64
        return hashlib.sha256(data).hexdigest()

    def run(
        self, job: str, *, entrypoint: str, args: Sequence[str], max_runtime_s: int
    ) -> AgentJobStatus:
        self._op("run")
        record = self.jobs.setdefault(job, _Job())
        if record.state == "ready":
            record.runs += 1
            outcome = self._w.program(record.code, record.inputs, args)
            record.state = "running"
            record.log = outcome.log
            record.files = dict(outcome.files)
            record.polls_left = outcome.polls
            record.exit_code = None
            record.final = outcome.state or ("succeeded" if outcome.exit_code == 0 else "failed")
            self._w.exit_codes[job] = outcome.exit_code
        return self._status(record)

    def _status(self, record: _Job) -> AgentJobStatus:
        # "log-size": the agent claims more log than it gives.
        extra = 1000 if self._w.misbehave == "log-size" else 0
        return AgentJobStatus(record.state, record.exit_code, 0.25, len(record.log) + extra)

    def status(self, job: str) -> AgentJobStatus:
        self._op("status")
        record = self.jobs.get(job)
        if record is None:
            return AgentJobStatus("unknown", None, 0.0, 0)
        if record.state == "running" and not self._w.paused:
            record.polls_left -= 1
            if record.polls_left <= 0:
                record.state = record.final
                record.exit_code = self._w.exit_codes.get(job)
        return self._status(record)

    def logs(self, job: str, offset: int, limit: int = 1 << 20) -> bytes:
        self._op("logs")
        record = self.jobs.get(job)
        return b"" if record is None else record.log[offset : offset + limit]

    def cancel(self, job: str) -> AgentJobStatus:
        self._op("cancel")
        record = self.jobs.setdefault(job, _Job())
        if record.state in ("running", "ready"):
            record.state, record.exit_code = "cancelled", None
        return self._status(record)

    def outputs(self, job: str, patterns: Sequence[str]) -> list[OutputFile]:
        self._op("outputs")
        from fnmatch import fnmatchcase  # noqa: PLC0415 - only here

        record = self.jobs.get(job) or _Job()
        return [
            OutputFile(name, len(data), hashlib.sha256(data).hexdigest())
            for name, data in sorted(record.files.items())
            if any(fnmatchcase(name, p) for p in patterns)
        ]

    def get(self, job: str, name: str, *, size: int, sha256: str, max_bytes: int) -> bytes:
        self._op("get")
        data = (self.jobs.get(job) or _Job()).files.get(name)
        if data is None or len(data) > max_bytes or hashlib.sha256(data).hexdigest() != sha256:
            raise WorkloadError(reason=f"no such output {name}")
        return data

    def discard(self, job: str) -> None:
        self._op("discard")
        self.jobs.pop(job, None)

    def plant_canary(self, canary_nonce: bytes) -> dict[str, Any]:
        self._op("canary")
        if any(record.state == "running" for record in self.jobs.values()):
            raise WorkloadError(reason="canary refused: a job is running")
        if self._enclave_id is not None:
            self._w.canaries.append((self._enclave_id, canary_nonce))
        return {"planted_bytes": FAKE_DEVICE_BYTES, "device": "simulated"}


class MemoryWorkloads:
    """Agents of every enclave, in memory; ``simulated`` for every host (as the test driver)."""

    def __init__(self, program: Program = echo_program) -> None:
        self.program = program
        self.agents: dict[uuid.UUID, FakeAgent] = {}
        self.released: list[uuid.UUID] = []
        self.exit_codes: dict[str, int | None] = {}
        #: The agent cannot be reached (as a stopped process enclave, or a silent guest): new
        #: sessions and the operations of open ones fail.
        self.down = False
        #: An operation name whose answers are garbage ("put-hash": a wrong hash for puts;
        #: "log-size": status claims more log than there is).
        self.misbehave: str | None = None
        #: Running jobs do not progress (for tests that look at them while they run).
        self.paused = False
        self.sessions = 0
        #: (enclave id, canary nonce) of every canary planted, in order.
        self.canaries: list[tuple[uuid.UUID, bytes]] = []
        self._lock = threading.Lock()

    def agent(self, enclave_id: uuid.UUID) -> FakeAgent:
        """The enclave's agent (made on first use)."""
        with self._lock:
            return self.agents.setdefault(enclave_id, FakeAgent(self, enclave_id))

    @contextmanager
    def session(self, enclave: Enclave, host: Host) -> Iterator[FakeAgent]:
        if self.down:
            raise DependencyUnavailableError(dependency=AGENT_DEPENDENCY)
        self.sessions += 1
        yield self.agent(enclave.id)

    def simulated(self, host: Host) -> bool:
        return True

    def release(self, enclave_id: uuid.UUID) -> None:
        with self._lock:
            self.agents.pop(enclave_id, None)
            self.released.append(enclave_id)
