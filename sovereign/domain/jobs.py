"""Jobs and datasets: what an analyst runs in an enclave, and the data it reads.

Owns :class:`JobState` and its transitions, :class:`JobStep` (how far the runner got, so a
crashed runner resumes where it stopped), :class:`JobManifest` and its validation (entrypoint,
arguments, output patterns and paths follow the guest agent's path rule; the runtime is bounded
by a setting), :class:`Job`, :class:`Dataset`, and the values the ``Workloads`` port returns
(:class:`AgentHello`, :class:`AgentGpu`, :class:`AgentJobStatus`, :class:`OutputFile`).

Plain Python: no Flask, SQLAlchemy or agent client here, and no plaintext of a dataset, code,
log or output is ever held by these records (the sealed bytes live in the blob repository).
Who may see or submit what is decided by the job and dataset services with
:mod:`sovereign.domain.policy`'s helpers, not here.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sovereign.domain.labels import Label
from sovereign.errors import InvalidInputError, InvalidTransitionError

#: One path segment of the agent's path rule (protocol: ``[A-Za-z0-9._-]+`` per segment).
_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
#: One segment of an output pattern: the path alphabet plus the glob characters ``*`` and ``?``.
_PATTERN_SEGMENT = re.compile(r"[A-Za-z0-9._*?-]+")
#: The agent refuses longer paths (protocol: at most 255 characters), so we refuse them first.
MAX_PATH = 255
#: Arguments: count and length bounds (the agent receives them in a 64 KiB JSON header).
MAX_ARGS = 64
MAX_ARG_LENGTH = 1024
#: The manifest's strings the agent receives in one request header (entrypoint, args, output
#: patterns), JSON-encoded as the protocol encodes them (ASCII escapes), at most this many bytes:
#: half the protocol's 64 KiB header, so that the request's other fields always fit. Without
#: it, 64 arguments of 1024 characters are valid here and unsendable there.
MAX_MANIFEST_JSON = 32 * 1024
#: Output patterns per job (the agent returns at most 256 files for them in all).
MAX_OUTPUT_PATTERNS = 32
#: Datasets per job.
MAX_INPUTS = 16
#: Dataset names and job errors are shown to users; both are bounded.
MAX_NAME = 128
MAX_ERROR = 500


def check_path(path: str, what: str = "path") -> str:
    """``path`` if it is a relative POSIX path under the agent's rule: segments of
    ``[A-Za-z0-9._-]``, no ``..`` or leading-dot segment, at most 255 characters.

    :raises InvalidInputError: naming ``what`` and the rule it breaks.
    """
    _check_segments(path, what, _SEGMENT)
    return path


def check_pattern(pattern: str) -> str:
    """``pattern`` if it is a relative glob under the path rule (``*`` and ``?`` allowed).

    :raises InvalidInputError: naming the rule it breaks.
    """
    _check_segments(pattern, "output pattern", _PATTERN_SEGMENT)
    return pattern


def _check_segments(value: object, what: str, segment: re.Pattern[str]) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidInputError(reason=f"the {what} must be a non-empty string")
    if len(value) > MAX_PATH:
        raise InvalidInputError(reason=f"the {what} is longer than {MAX_PATH} characters")
    for part in value.split("/"):
        if not segment.fullmatch(part):
            raise InvalidInputError(
                reason=f"the {what} {value!r} must be relative segments of letters, digits, "
                "'.', '_' and '-' separated by '/'"
            )
        if part.startswith("."):
            raise InvalidInputError(
                reason=f"the {what} {value!r} has a segment starting with '.' ('..' included)"
            )


def check_name(name: object) -> str:
    """A dataset name: one path segment (it becomes the input's file name in the enclave).

    :raises InvalidInputError: if it is not one segment of the path rule of at most 128 chars.
    """
    if not isinstance(name, str) or "/" in name or len(name) > MAX_NAME:
        raise InvalidInputError(
            reason=f"a dataset name is one path segment of at most {MAX_NAME} characters"
        )
    return check_path(name, "dataset name")


class JobState(StrEnum):
    """Where a job is in its life (the agent's terminal states, plus ``queued``)."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended."""
        return self in TERMINAL


TERMINAL: frozenset[JobState] = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.TIMED_OUT}
)
_J = JobState
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    _J.QUEUED: frozenset({_J.RUNNING, _J.FAILED, _J.CANCELLED}),
    _J.RUNNING: frozenset(TERMINAL),
    **{state: frozenset() for state in TERMINAL},
}


class JobStep(StrEnum):
    """The runner's progress on a job, stored with it, so that a new runner resumes there.

    ``new`` (nothing sent) -> ``staged`` (code and inputs are in the enclave) -> ``started``
    (the agent runs it; ``job:start`` recorded) -> ``finished`` (outputs sealed and stored;
    ``job:finish`` recorded) -> ``done`` (the agent discarded the job's directory).
    """

    NEW = "new"
    STAGED = "staged"
    STARTED = "started"
    FINISHED = "finished"
    DONE = "done"


#: Agent states that end a job, and the job state each maps to.
AGENT_TERMINAL: Mapping[str, JobState] = {
    "succeeded": JobState.SUCCEEDED,
    "failed": JobState.FAILED,
    "cancelled": JobState.CANCELLED,
    "timed_out": JobState.TIMED_OUT,
}
#: Every state the agent may answer (protocol ``status``).
AGENT_STATES = frozenset({"unknown", "ready", "running", *AGENT_TERMINAL})


@dataclass(frozen=True)
class OutputFile:
    """A file by name, size and SHA-256 (hex): a submitted code file, an output, or what the
    agent lists (its ``outputs`` answer)."""

    name: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"name": self.name, "size": self.size, "sha256": self.sha256}


@dataclass(frozen=True)
class AgentGpu:
    """A GPU the agent sees in the enclave."""

    name: str
    uuid: str
    memory_mib: int


@dataclass(frozen=True)
class AgentHello:
    """What the agent says about itself (protocol ``hello``)."""

    protocol: int
    agent_version: str
    image_digest: str
    simulated: bool
    gpus: tuple[AgentGpu, ...]
    python: str


@dataclass(frozen=True)
class AgentJobStatus:
    """One job as the agent sees it (protocol ``status``)."""

    state: str
    exit_code: int | None
    runtime_s: float
    log_size: int

    @property
    def terminal(self) -> JobState | None:
        """The job state this status ends the job in, or None while it has not ended."""
        return AGENT_TERMINAL.get(self.state)


@dataclass(frozen=True)
class JobManifest:
    """What to run: an entrypoint among the submitted files, its arguments, the datasets it
    reads, the glob patterns of the outputs to collect, and a runtime bound."""

    entrypoint: str
    args: tuple[str, ...] = ()
    inputs: tuple[uuid.UUID, ...] = ()
    outputs: tuple[str, ...] = ()
    max_runtime_s: int = 3600

    def __post_init__(self) -> None:
        check_path(self.entrypoint, "entrypoint")
        if len(self.args) > MAX_ARGS:
            raise InvalidInputError(reason=f"at most {MAX_ARGS} arguments")
        for arg in self.args:
            if not isinstance(arg, str) or len(arg) > MAX_ARG_LENGTH:
                raise InvalidInputError(
                    reason=f"each argument is a string of at most {MAX_ARG_LENGTH} characters"
                )
            if any(ord(c) < 0x20 or ord(c) == 0x7F for c in arg):
                raise InvalidInputError(reason="an argument holds a control character")
        if len(self.inputs) > MAX_INPUTS:
            raise InvalidInputError(reason=f"at most {MAX_INPUTS} input datasets")
        if len(set(self.inputs)) != len(self.inputs):
            raise InvalidInputError(reason="an input dataset is named twice")
        if len(self.outputs) > MAX_OUTPUT_PATTERNS:
            raise InvalidInputError(reason=f"at most {MAX_OUTPUT_PATTERNS} output patterns")
        for pattern in self.outputs:
            check_pattern(pattern)
        sent = {"entrypoint": self.entrypoint, "args": self.args, "outputs": self.outputs}
        if len(json.dumps(sent, separators=(",", ":"), ensure_ascii=True)) > MAX_MANIFEST_JSON:
            raise InvalidInputError(
                reason=f"the entrypoint, args and outputs together encode to more than "
                f"{MAX_MANIFEST_JSON} bytes of JSON"
            )
        if (
            isinstance(self.max_runtime_s, bool)
            or not isinstance(self.max_runtime_s, int)
            or self.max_runtime_s < 1
        ):
            raise InvalidInputError(reason="max_runtime_s must be a positive integer")

    @classmethod
    def parse(cls, data: object, *, max_runtime_s: int) -> JobManifest:
        """The manifest in ``data`` (decoded JSON), its runtime at most ``max_runtime_s``
        (the default when it names none).

        :raises InvalidInputError: naming the field that is missing or wrong.
        """
        if not isinstance(data, Mapping):
            raise InvalidInputError(reason="the manifest must be a JSON object")
        unknown = set(data) - {"entrypoint", "args", "inputs", "outputs", "max_runtime_s"}
        if unknown:
            names = ", ".join(sorted(str(u) for u in unknown))
            raise InvalidInputError(reason=f"unknown manifest field(s): {names}")
        entrypoint = data.get("entrypoint")
        if not isinstance(entrypoint, str):
            raise InvalidInputError(reason="the manifest needs an entrypoint (a string)")
        args = _strings(data.get("args", []), "args")
        outputs = _strings(data.get("outputs", []), "outputs")
        raw_inputs = data.get("inputs", [])
        if not isinstance(raw_inputs, list):
            raise InvalidInputError(reason="inputs must be a list of dataset ids")
        inputs: list[uuid.UUID] = []
        for raw in raw_inputs:
            try:
                inputs.append(uuid.UUID(str(raw)) if isinstance(raw, str) else _not_uuid())
            except ValueError:
                raise InvalidInputError(reason="inputs must be a list of dataset ids") from None
        runtime = data.get("max_runtime_s", max_runtime_s)
        if isinstance(runtime, bool) or not isinstance(runtime, int):
            raise InvalidInputError(reason="max_runtime_s must be an integer")
        if runtime > max_runtime_s:
            raise InvalidInputError(reason=f"max_runtime_s must be at most {max_runtime_s}")
        return cls(entrypoint, tuple(args), tuple(inputs), tuple(outputs), runtime)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (what :meth:`parse` reads back)."""
        return {
            "entrypoint": self.entrypoint,
            "args": list(self.args),
            "inputs": [str(i) for i in self.inputs],
            "outputs": list(self.outputs),
            "max_runtime_s": self.max_runtime_s,
        }


def _not_uuid() -> uuid.UUID:
    raise ValueError("not a string")


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidInputError(reason=f"{what} must be a list of strings")
    return list(value)


@dataclass
class Job:
    """One run of submitted code in an enclave, and how far the runner got with it.

    The job carries the enclave's label and tenant (copied at submission): its code, logs and
    outputs are sealed under the enclave's key for that label.
    """

    id: uuid.UUID
    enclave_id: uuid.UUID
    tenant: str
    label: Label
    submitted_by: str
    manifest: JobManifest
    #: The submitted code files (their sealed bytes are blobs of kind ``code``).
    files: tuple[OutputFile, ...]
    state: JobState
    created_at: datetime
    updated_at: datetime
    step: JobStep = JobStep.NEW
    started_at: datetime | None = None
    finished_at: datetime | None = None
    exit_code: int | None = None
    runtime_s: float | None = None
    #: Why the job failed, for its submitter (never a secret; bounded).
    error: str = ""
    #: The collected outputs (sealed bytes are blobs of kind ``output``).
    results: tuple[OutputFile, ...] = ()
    #: Plaintext log bytes pulled so far (the offset of the next log chunk).
    log_size: int = 0
    #: Whether the enclave is a process enclave (simulated host) rather than a VM.
    simulated: bool = False
    cancel_requested: bool = False
    #: Which runner holds the job, until when (as the reconciler claims enclaves).
    claimed_by: str | None = None
    claim_until: datetime | None = None
    version: int = 1

    def transition(self, target: JobState, now: datetime) -> None:
        """Move to ``target``. :raises InvalidTransitionError: no such edge."""
        if target not in TRANSITIONS[self.state]:
            raise InvalidTransitionError(current=self.state.value, target=target.value)
        self.state = target
        self.updated_at = now
        if target is JobState.RUNNING:
            self.started_at = now
        if target.terminal:
            self.finished_at = now

    def fail(self, error: str, now: datetime) -> None:
        """End the job as failed with ``error`` (shortened to :data:`MAX_ERROR` characters)."""
        self.transition(JobState.FAILED, now)
        self.error = error[:MAX_ERROR]

    def claimable(self, now: datetime, worker: str) -> bool:
        """Whether ``worker`` may work on the job now (unclaimed, own, or the claim lapsed)."""
        return self.claimed_by in (None, worker) or (
            self.claim_until is not None and self.claim_until <= now
        )

    def claim(self, worker: str, now: datetime, ttl: timedelta) -> None:
        """Take the job for ``ttl``."""
        self.claimed_by = worker
        self.claim_until = now + ttl

    @property
    def open(self) -> bool:
        """Whether the runner still has work on the job."""
        return self.step is not JobStep.DONE


@dataclass(frozen=True)
class Dataset:
    """Input data uploaded for a tenant at a label (the sealed bytes are a blob of kind
    ``dataset``); it may enter an enclave of that tenant whose label dominates it."""

    id: uuid.UUID
    tenant: str
    name: str
    label: Label
    size: int
    sha256: str
    uploaded_by: str
    created_at: datetime
    #: The tenant's transit key that seals it (mount/name, never key material).
    key_mount: str = ""
    key_name: str = ""


class BlobKind(StrEnum):
    """What a sealed blob holds."""

    DATASET = "dataset"
    CODE = "code"
    LOG = "log"
    OUTPUT = "output"


@dataclass(frozen=True)
class Blob:
    """Sealed bytes (:class:`sovereign.envelope.Sealed` serialised) of one object's file.

    ``owner`` is the dataset or job id, ``name`` the file name (``log`` for log chunks), ``seq``
    orders chunks (a log chunk's plaintext offset; 0 for whole files), ``size`` is the
    plaintext length.
    """

    owner: uuid.UUID
    kind: BlobKind
    name: str
    seq: int
    size: int
    data: bytes = field(repr=False)


def check_files(
    files: Sequence[tuple[str, bytes]], *, max_files: int, max_bytes: int
) -> list[tuple[str, bytes]]:
    """The submitted code files, checked: at least one, at most ``max_files``, distinct names
    under the path rule, ``max_bytes`` in all.

    :raises InvalidInputError: naming what is wrong.
    """
    if not files:
        raise InvalidInputError(reason="a job needs at least one file")
    if len(files) > max_files:
        raise InvalidInputError(reason=f"at most {max_files} files per job")
    names: set[str] = set()
    total = 0
    for name, data in files:
        check_path(name, "file name")
        if name in names:
            raise InvalidInputError(reason=f"the file {name!r} is given twice")
        names.add(name)
        total += len(data)
    if total > max_bytes:
        raise InvalidInputError(reason=f"the files hold more than {max_bytes} bytes")
    return list(files)


@dataclass(frozen=True)
class JobLimits:
    """The configured bounds on jobs and datasets (``JOB_*`` and ``DATASET_*`` settings)."""

    #: Longest runtime a manifest may ask for (and the default when it names none).
    max_runtime_s: int = 86_400
    #: Code files per job and their total size.
    max_files: int = 64
    max_code_bytes: int = 16 << 20
    #: One dataset's size.
    max_dataset_bytes: int = 64 << 20
    #: Output files collected per job and their total size (larger ones fail the job).
    max_output_files: int = 64
    max_output_bytes: int = 64 << 20
    #: Log bytes kept per job (the agent caps its log at 16 MiB).
    max_log_bytes: int = 16 << 20
