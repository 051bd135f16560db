"""The host's client of an enclave's workload agent.

Owns :class:`AgentClient`: one request at a time over a :class:`~.transport.Transport`, each
answer checked before it is believed. The agent runs inside the enclave and is untrusted, so
every read is bounded (the frame limits of :mod:`.protocol`, a deadline per call), every name
it returns is checked like a name we send, every file is hashed (an upload's chunks each carry
the hash of the file up to their end, so the agent checks them in one running pass), and
nothing but an :class:`~enclaves.errors.AgentError` escapes (plus :class:`ValueError` for bad
arguments from our own side). After a timeout or a protocol error the connection is closed: the
stream may be out of step, and a stale answer must never be taken for the next call's.

It must not interpret jobs (the control plane's job runner does) nor hold state beyond the
connection.
"""

from __future__ import annotations

import collections
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from enclaves.agent import protocol
from enclaves.agent.protocol import Frame, ProtocolError
from enclaves.agent.transport import Transport
from enclaves.errors import (
    AgentError,
    AgentProtocolError,
    AgentRefusedError,
    AgentTimeoutError,
    AgentUnavailableError,
)

#: Longest string the client accepts from the agent in a ``hello`` answer.
MAX_TEXT = 256
#: Most GPUs a ``hello`` answer may list.
MAX_GPUS = 64
#: Upload chunks in flight before the first is acknowledged (at most 8 MiB).
PUT_WINDOW = 8
#: Deepest nesting a scrub report may have (its ``device_state`` holds small objects).
MAX_REPORT_DEPTH = 4
#: Most keys (all levels together) a scrub report may have.
MAX_REPORT_KEYS = 256
#: Bytes read from the transport at a time.
_RECV_SIZE = 1 << 16


@dataclass(frozen=True)
class AgentGpu:
    """A GPU the agent sees."""

    name: str
    uuid: str
    memory_mib: int


@dataclass(frozen=True)
class AgentHello:
    """What the agent says about itself."""

    protocol: int
    agent_version: str
    image_digest: str
    simulated: bool
    gpus: tuple[AgentGpu, ...]
    python: str
    #: ``jobs``, or ``sanitize`` (the agent answers only hello and scrub).
    mode: str = "jobs"


@dataclass(frozen=True)
class AgentJobStatus:
    """A job's state as the agent reports it."""

    state: str
    exit_code: int | None
    runtime_s: float
    log_size: int


@dataclass(frozen=True)
class AgentFile:
    """An output file of a job: its name relative to the job's work dir, size and hash."""

    name: str
    size: int
    sha256: str


class AgentClient:
    """Talks to one agent over ``transport``; every call waits at most ``timeout_s``."""

    def __init__(self, transport: Transport, *, timeout_s: float = 30.0) -> None:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self._transport = transport
        self._timeout_s = timeout_s
        self._next_id = 1
        self._broken: str | None = None

    # Operations ----------------------------------------------------------------------------

    def hello(self) -> AgentHello:
        """Ask the agent who it is.

        :raises AgentError: if it does not answer properly.
        """
        reply = self._call("hello", {})
        gpus_raw = self._field(reply, "gpus", list)
        if len(gpus_raw) > MAX_GPUS:
            raise self._protocol_error("too many GPUs in hello")
        gpus = []
        for gpu in gpus_raw:
            if not isinstance(gpu, dict):
                raise self._protocol_error("malformed GPU in hello")
            gpus.append(
                AgentGpu(
                    name=self._text(gpu, "name"),
                    uuid=self._text(gpu, "uuid"),
                    memory_mib=self._count(gpu, "memory_mib"),
                )
            )
        simulated = reply.get("simulated")
        if not isinstance(simulated, bool):
            raise self._protocol_error("malformed hello")
        mode = reply.get("mode", "jobs")
        if mode not in protocol.MODES:
            raise self._protocol_error("agent reported an unknown mode")
        return AgentHello(
            protocol=self._count(reply, "protocol"),
            agent_version=self._text(reply, "agent_version"),
            image_digest=self._text(reply, "image_digest"),
            simulated=simulated,
            gpus=tuple(gpus),
            python=self._text(reply, "python"),
            mode=str(mode),
        )

    def scrub(
        self,
        *,
        nonce: bytes,
        canary_nonce: bytes | None,
        simulate_mib: int | None,
        timeout_s: float,
    ) -> dict[str, Any]:
        """Have the agent run the scrub program; its report, a JSON object within bounds.

        Only the shape is checked here (an object of at most :data:`MAX_REPORT_KEYS` keys,
        :data:`MAX_REPORT_DEPTH` deep, within the frame's 64 KiB): the report is the guest's
        word, and the control plane validates its fields before it believes any.

        :raises ValueError: if an argument is malformed.
        :raises AgentError: if the agent refuses, misbehaves or does not answer in ``timeout_s``.
        """
        fields: dict[str, Any] = {"nonce": _nonce_hex(nonce, "nonce")}
        if canary_nonce is not None:
            fields["canary_nonce"] = _nonce_hex(canary_nonce, "canary_nonce")
        if simulate_mib is not None:
            protocol.check_simulate_mib(simulate_mib)
            fields["simulate_mib"] = simulate_mib
        _check_timeout(timeout_s)
        reply = self._call_frame("scrub", fields, kind=protocol.KIND_REPLY, timeout_s=timeout_s)
        report = {key: value for key, value in reply.header.items() if key != "id"}
        if _json_keys(report, MAX_REPORT_DEPTH) > MAX_REPORT_KEYS:
            raise self._protocol_error("agent sent an oversized scrub report")
        return report

    def plant_canary(self, canary_nonce: bytes, *, timeout_s: float) -> dict[str, Any]:
        """Have the agent write the canary over the device memory the last job freed.

        Returns ``{"planted_bytes": int, "device": str}`` (``0`` and ``"none"`` where the agent
        has neither a GPU nor simulated device memory).

        :raises ValueError: if an argument is malformed.
        :raises AgentError: if the agent refuses (a job runs), misbehaves or does not answer.
        """
        fields = {"canary_nonce": _nonce_hex(canary_nonce, "canary_nonce")}
        _check_timeout(timeout_s)
        reply = self._call_frame("canary", fields, kind=protocol.KIND_REPLY, timeout_s=timeout_s)
        return {
            "planted_bytes": self._count(reply.header, "planted_bytes"),
            "device": self._text(reply.header, "device"),
        }

    def put(
        self,
        job: str,
        area: str,
        path: str,
        data: bytes,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> str:
        """Upload ``data`` to ``path`` in the job's ``area``; resumes a partial upload.

        Returns the SHA-256 (hex) the agent confirmed, which is the hash of ``data``.

        :raises ValueError: if the job, area or path is malformed.
        :raises AgentError: if the agent refuses, misbehaves or does not answer.
        """
        _check_job(job)
        protocol.check_area(area)
        protocol.check_path(path)
        if len(data) > protocol.MAX_PUT_SIZE:
            raise ValueError("file too large to upload")
        prefixes = _prefix_digests(data)
        digest = prefixes[-1]
        where = {"job": job, "area": area, "path": path}
        for attempt in (1, 2):
            reply = self._call("put_begin", {**where, "size": len(data), "sha256": digest})
            offset = self._count(reply, "have")
            if offset > len(data):
                raise self._protocol_error("agent claims more bytes than the file has")
            if progress is not None:
                progress(offset, len(data))
            try:
                self._put_chunks(where, data, prefixes, offset, progress)
                reply = self._call("put_end", where)
            except AgentRefusedError:
                # A resumed part that is not our prefix fails its first prefix digest (or the
                # whole-file check): the agent discards it, and we begin again from 0, once.
                if offset == 0 or attempt == 2:
                    raise
                continue
            break
        if self._field(reply, "sha256", str) != digest:
            raise self._protocol_error("agent stored a file with another hash")
        return digest

    def run(
        self, job: str, *, entrypoint: str, args: Sequence[str], max_runtime_s: int
    ) -> AgentJobStatus:
        """Start the job (``python3 ENTRYPOINT ARGS...`` in its work dir); idempotent.

        :raises ValueError: if an argument is malformed.
        :raises AgentError: if the agent refuses, misbehaves or does not answer.
        """
        _check_job(job)
        protocol.check_path(entrypoint)
        if isinstance(args, str) or len(args) > protocol.MAX_ARGS:
            raise ValueError("args must be a sequence of at most 256 strings")
        for arg in args:
            if not isinstance(arg, str) or len(arg) > protocol.MAX_ARG_LENGTH or "\0" in arg:
                raise ValueError("each argument must be a string without NUL, at most 4096")
        if not protocol.is_int(max_runtime_s) or not (1 <= max_runtime_s <= protocol.MAX_RUNTIME_S):
            raise ValueError("max_runtime_s must be an integer from 1 to one week")
        reply = self._call(
            "run",
            {
                "job": job,
                "entrypoint": entrypoint,
                "args": list(args),
                "max_runtime_s": max_runtime_s,
            },
        )
        return self._status(reply)

    def status(self, job: str) -> AgentJobStatus:
        """The job's state.

        :raises AgentError: if the agent refuses, misbehaves or does not answer.
        """
        _check_job(job)
        return self._status(self._call("status", {"job": job}))

    def logs(self, job: str, offset: int, limit: int = 1 << 20) -> bytes:
        """At most ``limit`` bytes of the job's log from ``offset`` (``b""`` at its end).

        :raises AgentError: if the agent refuses, misbehaves or does not answer.
        """
        _check_job(job)
        _check_offset(offset)
        if not protocol.is_int(limit) or not 1 <= limit <= protocol.MAX_PAYLOAD:
            raise ValueError("limit must be from 1 to 1 MiB")
        frame = self._call_frame(
            "logs", {"job": job, "offset": offset, "limit": limit}, kind=protocol.KIND_DATA
        )
        if len(frame.payload) > limit:
            raise self._protocol_error("agent sent more log than asked for")
        return frame.payload

    def cancel(self, job: str) -> AgentJobStatus:
        """Stop the job (its whole process group); answers its status.

        :raises AgentError: if the agent refuses, misbehaves or does not answer.
        """
        _check_job(job)
        return self._status(self._call("cancel", {"job": job}))

    def outputs(self, job: str, patterns: Sequence[str]) -> list[AgentFile]:
        """The regular files in the job's work dir matching ``patterns`` (globs).

        Each name is checked as strictly as a path we send; at most 256 files.

        :raises ValueError: if a pattern is malformed.
        :raises AgentError: if the agent refuses, misbehaves or does not answer.
        """
        _check_job(job)
        if isinstance(patterns, str) or len(patterns) > protocol.MAX_PATTERNS:
            raise ValueError("patterns must be a sequence of at most 64 globs")
        for pattern in patterns:
            protocol.check_pattern(pattern)
        reply = self._call("outputs", {"job": job, "patterns": list(patterns)})
        files_raw = self._field(reply, "files", list)
        if len(files_raw) > protocol.MAX_OUTPUT_FILES:
            raise self._protocol_error("too many output files")
        files: list[AgentFile] = []
        seen: set[str] = set()
        total = 0
        for entry in files_raw:
            if not isinstance(entry, dict):
                raise self._protocol_error("malformed output entry")
            name = entry.get("name")
            try:
                protocol.check_path(name)
                protocol.check_sha256(entry.get("sha256"))
            except ValueError as exc:
                raise self._protocol_error("agent sent a bad output name or hash") from exc
            assert isinstance(name, str)
            if name in seen:
                raise self._protocol_error("agent listed an output twice")
            seen.add(name)
            size = self._count(entry, "size")
            total += size
            if total > protocol.MAX_OUTPUT_TOTAL:
                raise self._protocol_error("outputs exceed the total size bound")
            files.append(AgentFile(name=name, size=size, sha256=str(entry["sha256"])))
        return files

    def get(self, job: str, name: str, *, size: int, sha256: str, max_bytes: int) -> bytes:
        """Download the output ``name``, which must be ``size`` bytes hashing to ``sha256``.

        :raises ValueError: if an argument is malformed or ``size`` exceeds ``max_bytes``.
        :raises AgentError: if the agent refuses, misbehaves (a short, long or wrongly hashed
            file included) or does not answer.
        """
        _check_job(job)
        protocol.check_path(name)
        protocol.check_sha256(sha256)
        _check_offset(size)
        if size > max_bytes:
            raise ValueError("output larger than max_bytes")
        hasher = hashlib.sha256()
        parts: list[bytes] = []
        offset = 0
        while offset < size:
            limit = min(protocol.MAX_PAYLOAD, size - offset)
            frame = self._call_frame(
                "get",
                {"job": job, "name": name, "offset": offset, "limit": limit},
                kind=protocol.KIND_DATA,
            )
            if not frame.payload:
                raise self._protocol_error("output shorter than announced")
            if len(frame.payload) > limit:
                raise self._protocol_error("output longer than announced")
            hasher.update(frame.payload)
            parts.append(frame.payload)
            offset += len(frame.payload)
        if hasher.hexdigest() != sha256:
            raise self._protocol_error("output does not match its hash")
        return b"".join(parts)

    def _put_chunks(
        self,
        where: dict[str, Any],
        data: bytes,
        prefixes: list[str],
        offset: int,
        progress: Callable[[int, int], None] | None,
    ) -> None:
        """Send ``data`` from ``offset`` in chunks, up to :data:`PUT_WINDOW` ahead of the acks.

        Chunks end on multiples of :data:`~.protocol.MAX_PAYLOAD` (or at the end), and each
        carries ``prefixes[i]``, the hash of ``data`` up to its end (see :func:`_prefix_digests`).
        The agent answers in order, so the next chunks cross the transport while it hashes and
        writes the last. A refusal stops the sending; the answers still due are read (each a
        refusal too, or an ack) so the stream stays in step, then the first refusal is raised.
        """
        pending: collections.deque[tuple[int, int]] = collections.deque()
        try:
            self._pipeline(where, data, prefixes, offset, progress=progress, pending=pending)
        except BaseException:
            if pending:
                # Answers still due (the progress callback raised, say): out of step for good.
                self._break("upload interrupted")
            raise

    def _pipeline(
        self,
        where: dict[str, Any],
        data: bytes,
        prefixes: list[str],
        offset: int,
        *,
        progress: Callable[[int, int], None] | None,
        pending: collections.deque[tuple[int, int]],
    ) -> None:
        view = memoryview(data)
        sent = offset
        refusal: AgentRefusedError | None = None
        while pending or (sent < len(data) and refusal is None):
            while refusal is None and sent < len(data) and len(pending) < PUT_WINDOW:
                index = sent // protocol.MAX_PAYLOAD
                chunk = view[sent : (index + 1) * protocol.MAX_PAYLOAD]
                fields = {**where, "offset": sent, "sha256": prefixes[index]}
                request_id = self._send("put_chunk", fields, chunk)
                sent += len(chunk)
                pending.append((request_id, sent))
            request_id, acknowledged = pending.popleft()
            try:
                reply = self._receive("put_chunk", request_id, kind=protocol.KIND_REPLY)
            except AgentRefusedError as exc:
                refusal = refusal or exc
                continue
            if refusal is None:
                if self._count(reply.header, "have") != acknowledged:
                    raise self._protocol_error("agent acknowledged another offset")
                if progress is not None:
                    progress(acknowledged, len(data))
        if refusal is not None:
            raise refusal

    def discard(self, job: str) -> None:
        """Stop the job if it runs and remove everything of it from the enclave.

        :raises AgentError: if the agent refuses, misbehaves or does not answer.
        """
        _check_job(job)
        self._call("discard", {"job": job})

    def close(self) -> None:
        """Close the connection; later calls raise :class:`AgentUnavailableError`."""
        self._broken = self._broken or "client closed"
        self._transport.close()

    # Framing -------------------------------------------------------------------------------

    def _call(self, op: str, fields: dict[str, Any], payload: bytes = b"") -> dict[str, Any]:
        return self._call_frame(op, fields, payload, kind=protocol.KIND_REPLY).header

    def _call_frame(
        self,
        op: str,
        fields: dict[str, Any],
        payload: bytes = b"",
        *,
        kind: int,
        timeout_s: float | None = None,
    ) -> Frame:
        return self._receive(op, self._send(op, fields, payload), kind=kind, timeout_s=timeout_s)

    def _send(self, op: str, fields: dict[str, Any], payload: bytes | memoryview = b"") -> int:
        """Send one request; returns its id. The payload is sent from the caller's buffer."""
        if self._broken is not None:
            raise AgentUnavailableError(f"agent connection unusable: {self._broken}")
        request_id = self._next_id
        self._next_id = self._next_id % protocol.MAX_ID + 1
        try:
            head = protocol.encode_head(
                protocol.KIND_REQUEST, {"op": op, "id": request_id, **fields}, len(payload)
            )
        except ProtocolError as exc:
            # Our own request breaks a bound (arguments beyond the 64 KiB header).
            raise ValueError(f"request too large: {exc}") from exc
        try:
            self._transport.send(head, self._timeout_s)
            if payload:
                # Not joined to the head: a chunk is sent without being copied.
                self._transport.send(payload, self._timeout_s)
        except AgentError as exc:
            self._break(type(exc).__name__)
            raise
        return request_id

    def _receive(
        self, op: str, request_id: int, *, kind: int, timeout_s: float | None = None
    ) -> Frame:
        """Read the answer to request ``request_id`` within the call's timeout and check it."""
        wait = self._timeout_s if timeout_s is None else timeout_s
        reader = _Reader(self._transport, time.monotonic() + wait)
        try:
            try:
                frame = protocol.read_frame(reader.read_exact)
            except ProtocolError as exc:
                raise AgentProtocolError(f"agent broke the protocol: {exc}") from exc
        except AgentError as exc:
            self._break(type(exc).__name__)
            raise
        answered = frame.header.get("id")
        if not protocol.is_int(answered) or answered != request_id:
            raise self._protocol_error("agent answered another request")
        if frame.kind == protocol.KIND_ERROR:
            if frame.payload:
                raise self._protocol_error("agent sent a payload with an error")
            message = frame.header.get("message")
            text = message if isinstance(message, str) else "(no message)"
            # A refusal leaves the stream in step: the connection stays usable.
            raise AgentRefusedError(f"agent refused {op}: {protocol.safe_message(text)}")
        if frame.kind != kind:
            raise self._protocol_error("agent answered with the wrong frame kind")
        if kind == protocol.KIND_REPLY and frame.payload:
            raise self._protocol_error("agent sent an unexpected payload")
        return frame

    def _break(self, why: str) -> None:
        self._broken = why
        self._transport.close()

    def _protocol_error(self, message: str) -> AgentProtocolError:
        self._break("protocol error")
        return AgentProtocolError(message)

    # Answer fields -------------------------------------------------------------------------

    def _status(self, reply: dict[str, Any]) -> AgentJobStatus:
        state = reply.get("state")
        if state not in protocol.STATES:
            raise self._protocol_error("agent reported an unknown job state")
        exit_code = reply.get("exit_code")
        if exit_code is not None and (not protocol.is_int(exit_code) or abs(exit_code) > 1024):
            raise self._protocol_error("agent reported a bad exit code")
        runtime = reply.get("runtime_s")
        if (
            not isinstance(runtime, int | float)
            or isinstance(runtime, bool)
            or not math.isfinite(runtime)
            or runtime < 0
        ):
            raise self._protocol_error("agent reported a bad runtime")
        return AgentJobStatus(
            state=str(state),
            exit_code=exit_code,
            runtime_s=float(runtime),
            log_size=self._count(reply, "log_size"),
        )

    def _field(self, reply: dict[str, Any], name: str, kind: type) -> Any:
        value = reply.get(name)
        if not isinstance(value, kind):
            raise self._protocol_error(f"agent sent a bad {name}")
        return value

    def _text(self, reply: dict[str, Any], name: str) -> str:
        value = reply.get(name)
        if not isinstance(value, str) or len(value) > MAX_TEXT or not value.isprintable():
            raise self._protocol_error(f"agent sent a bad {name}")
        return value

    def _count(self, reply: dict[str, Any], name: str) -> int:
        value = reply.get(name)
        if not protocol.is_int(value) or not 0 <= value <= 1 << 62:
            raise self._protocol_error(f"agent sent a bad {name}")
        assert isinstance(value, int)
        return value


class _Reader:
    """Reads exact byte counts from a transport until a deadline."""

    def __init__(self, transport: Transport, deadline: float) -> None:
        self._transport = transport
        self._deadline = deadline
        self._buffer = bytearray()

    def read_exact(self, count: int) -> bytes:
        while len(self._buffer) < count:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise AgentTimeoutError("agent did not answer in time")
            chunk = self._transport.recv(min(_RECV_SIZE, count - len(self._buffer)), remaining)
            if not chunk:
                raise AgentUnavailableError("agent closed the connection")
            self._buffer += chunk
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data


def _prefix_digests(data: bytes) -> list[str]:
    """SHA-256 (hex) of ``data[:end]`` for each chunk end, in one pass; the last is the file's.

    Entry ``i`` covers ``data`` up to ``min((i + 1) * MAX_PAYLOAD, len(data))``; an empty file
    has the one entry, the hash of nothing.
    """
    hasher = hashlib.sha256()
    view = memoryview(data)
    digests: list[str] = []
    for start in range(0, len(data), protocol.MAX_PAYLOAD):
        hasher.update(view[start : start + protocol.MAX_PAYLOAD])
        digests.append(hasher.hexdigest())
    return digests or [hasher.hexdigest()]


def _nonce_hex(nonce: bytes, name: str) -> str:
    if not isinstance(nonce, bytes) or len(nonce) != 32:
        raise ValueError(f"{name} must be 32 bytes")
    return nonce.hex()


def _check_timeout(timeout_s: float) -> None:
    if (
        not isinstance(timeout_s, int | float)
        or isinstance(timeout_s, bool)
        or not math.isfinite(timeout_s)
        or timeout_s <= 0
    ):
        raise ValueError("timeout_s must be a positive number of seconds")


def _json_keys(value: Any, depth: int) -> int:
    """How many object keys and list items ``value`` holds; beyond ``depth`` levels, too many."""
    if not isinstance(value, dict | list):
        return 0
    if depth == 0:
        return MAX_REPORT_KEYS + 1
    items = list(value.values()) if isinstance(value, dict) else value
    return len(items) + sum(_json_keys(item, depth - 1) for item in items)


def _check_job(job: str) -> None:
    protocol.check_job(job)


def _check_offset(offset: int) -> None:
    if not protocol.is_int(offset) or offset < 0:
        raise ValueError("offsets and sizes must be non-negative integers")
