"""The wire format between the control plane and the in-guest agent: framed, versioned, bounded.

Owns the frame layout, its limits, the operations and the fields each request must carry, and
the checks on job names and relative paths that BOTH sides apply. One frame is a 16-byte
prefix ``>4sBBHII`` (magic ``b"SVA1"``, protocol version, kind, reserved ``0``, header length,
payload length), then a JSON object (UTF-8) of at most :data:`MAX_HEADER` bytes, then at most
:data:`MAX_PAYLOAD` payload bytes. Anything else is a :class:`ProtocolError`; whoever reads it
drops the connection, since the stream can no longer be trusted to be in step.

Kinds: 1 request (header ``op`` and ``id``, a u32 the answer echoes), 2 reply (a JSON answer,
no payload), 3 error (``message``: short, safe to show; the connection stays usable), 4 data (a
reply whose payload is the answer: ``logs`` and ``get``). Only ``put_chunk`` requests carry a
payload. The ops and their request fields are :data:`OPS`; what they answer:

==========  =====================================================================================
hello       ``{protocol, agent_version, image_digest, simulated, gpus: [{name, uuid,
            memory_mib}], python, mode}`` (``python``: the jobs' interpreter version;
            ``mode``: ``jobs``, or ``sanitize`` when the agent answers only hello and scrub)
put_begin   ``{have}``: bytes of the file the agent already holds (resume from there); the
            request announces the file's ``size`` and whole-file ``sha256`` (its identity)
put_chunk   ``{have}`` after appending the payload at ``offset`` (which must equal ``have``);
            ``sha256`` is the running *prefix* digest, the hash of the file's bytes
            ``[0, offset + len(payload))``, checked against the agent's running hash before the
            chunk is written (so the agent hashes the data once, and a resumed chunk also proves
            the part already held is the client's prefix). On a mismatch the agent discards the
            part and refuses; the client begins again from 0 (once)
put_end     ``{sha256}`` of the stored file (the running hash, i.e. the last prefix digest, must
            equal the announced one before it is renamed into place; inputs become read-only)
run         status (idempotent: a started, finished or cancelled job answers its status)
status      ``{state, exit_code, runtime_s, log_size}``
logs        data: log bytes from ``offset`` (at most ``limit``, at most 1 MiB)
cancel      status
outputs     ``{files: [{name, size, sha256}]}``: regular files matching the globs
get         data: file bytes from ``offset`` (at most ``limit``, at most 1 MiB)
discard     ``{}``
scrub       the scrub program's report (``sovereign-scrub/1``, see ``scrub.py``): the agent runs
            it as a subprocess on the guest's GPU, or on its simulated device memory where it
            has no GPU (``simulate_mib`` in MiB, else the agent's ``--simulated-gpu-mib``).
            ``nonce`` and the optional ``canary_nonce`` are 64 hex digits (32 bytes)
canary      ``{planted_bytes, device}``: the canary word of ``canary_nonce`` written over all the
            device memory a fresh process can claim (the memory the last job freed); ``0`` and
            ``"none"`` where the agent has neither a GPU nor simulated device memory
==========  =====================================================================================

``scrub`` and ``canary`` are refused while a job runs. In sanitize mode (the guest's kernel
command line holds ``sovereign.mode=sanitize``, or the agent's ``--sanitize-only``) the agent
answers only ``hello`` and ``scrub``.

It must import nothing but the standard library and nothing of its own package but relative
modules: it is copied into the guest image as ``sovereign_agent.protocol`` (an import-linter
contract in ``pyproject.toml`` keeps it so). It does no I/O beyond the ``read_exact`` callable
it is given.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, TypeGuard

MAGIC: Final = b"SVA1"
VERSION: Final = 1
PREFIX: Final = struct.Struct(">4sBBHII")

KIND_REQUEST: Final = 1
KIND_REPLY: Final = 2
KIND_ERROR: Final = 3
#: A reply whose payload is the answer (``logs``, ``get``).
KIND_DATA: Final = 4
KINDS: Final = frozenset({KIND_REQUEST, KIND_REPLY, KIND_ERROR, KIND_DATA})

#: Largest JSON header: far above any legitimate header (an ``outputs`` listing of 256 names).
MAX_HEADER: Final = 64 * 1024
#: Largest payload of one frame; files travel in chunks of at most this size.
MAX_PAYLOAD: Final = 1 << 20
#: Largest request id (u32).
MAX_ID: Final = 0xFFFFFFFF

#: ``put`` areas: the job's code lands in its work dir, inputs in its read-only inputs dir.
AREAS: Final = ("code", "input")
#: Job states the agent reports.
STATES: Final = ("unknown", "ready", "running", "succeeded", "failed", "cancelled", "timed_out")
#: States after which nothing changes any more.
FINAL_STATES: Final = frozenset({"succeeded", "failed", "cancelled", "timed_out"})

#: Most files one ``outputs`` answer may list.
MAX_OUTPUT_FILES: Final = 256
#: Most bytes all the files of one ``outputs`` answer may hold together.
MAX_OUTPUT_TOTAL: Final = 4 << 30
#: Largest file one ``put`` may upload.
MAX_PUT_SIZE: Final = 16 << 30
#: Most glob patterns one ``outputs`` request may carry.
MAX_PATTERNS: Final = 64
#: Most arguments a job's entrypoint may get, and the longest one.
MAX_ARGS: Final = 256
MAX_ARG_LENGTH: Final = 4096
#: Longest run a job may ask for: one week.
MAX_RUNTIME_S: Final = 7 * 24 * 3600
#: Longest error message an agent sends (and the client shows).
MAX_MESSAGE: Final = 200
#: Longest relative path or pattern.
MAX_PATH: Final = 255
#: Largest simulated device memory a ``scrub`` may ask for, in MiB (the scrub program's bound).
MAX_SIMULATE_MIB: Final = 64 << 10
#: The agent's modes: all ops, or only ``hello`` and ``scrub`` (a sanitizer domain).
MODES: Final = ("jobs", "sanitize")
SANITIZE_OPS: Final = frozenset({"hello", "scrub"})

_JOB = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PATH = re.compile(r"[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*")
_PATTERN = re.compile(r"[A-Za-z0-9._*?-]+(/[A-Za-z0-9._*?-]+)*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NONCE = re.compile(r"[0-9a-f]{64}")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


class ProtocolError(Exception):
    """A frame or a request header breaks the protocol; the connection must be dropped."""


@dataclass(frozen=True)
class Frame:
    """One decoded frame: its kind, its JSON header and its payload."""

    kind: int
    header: dict[str, Any]
    payload: bytes = field(default=b"", repr=False)


def encode(frame: Frame) -> bytes:
    """Serialise ``frame``.

    :raises ProtocolError: if the kind is unknown or the header or payload exceeds its bound.
    """
    return encode_head(frame.kind, frame.header, len(frame.payload)) + frame.payload


def encode_head(kind: int, header: Mapping[str, Any], payload_length: int) -> bytes:
    """Serialise a frame's prefix and JSON header; its ``payload_length`` bytes follow them.

    For a sender that writes a large payload straight from its own buffer, uncopied.

    :raises ProtocolError: if the kind is unknown or the header or payload exceeds its bound.
    """
    if kind not in KINDS:
        raise ProtocolError("unknown frame kind")
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    if len(raw) > MAX_HEADER:
        raise ProtocolError("frame header too large")
    if payload_length > MAX_PAYLOAD:
        raise ProtocolError("frame payload too large")
    return PREFIX.pack(MAGIC, VERSION, kind, 0, len(raw), payload_length) + raw


def decode_prefix(prefix: bytes) -> tuple[int, int, int]:
    """Check a 16-byte frame prefix and return ``(kind, header_length, payload_length)``.

    :raises ProtocolError: on bad magic, version, kind, reserved bits or an oversize length.
    """
    if len(prefix) != PREFIX.size:
        raise ProtocolError("short frame prefix")
    magic, version, kind, reserved, header_length, payload_length = PREFIX.unpack(prefix)
    if magic != MAGIC:
        raise ProtocolError("bad magic")
    if version != VERSION:
        raise ProtocolError("unsupported protocol version")
    if kind not in KINDS:
        raise ProtocolError("unknown frame kind")
    if reserved != 0:
        raise ProtocolError("reserved bits set")
    if header_length > MAX_HEADER:
        raise ProtocolError("frame header too large")
    if payload_length > MAX_PAYLOAD:
        raise ProtocolError("frame payload too large")
    return kind, header_length, payload_length


def decode_header(raw: bytes) -> dict[str, Any]:
    """Parse a frame's JSON header, which must be an object.

    :raises ProtocolError: if it is not UTF-8 JSON or not an object.
    """
    try:
        header = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProtocolError("frame header is not JSON") from exc
    if not isinstance(header, dict):
        raise ProtocolError("frame header is not an object")
    return header


def _refuse_constant(name: str) -> None:
    # NaN and Infinity are not JSON (RFC 8259); Python accepts them unless told not to.
    raise ValueError(name)


def read_frame(read_exact: Callable[[int], bytes]) -> Frame:
    """Read one frame through ``read_exact(n)``, which returns exactly ``n`` bytes or raises.

    Lengths are checked before anything is read past the prefix, so a hostile peer cannot make
    the reader allocate more than the bounds.

    :raises ProtocolError: if the frame breaks the protocol.
    """
    kind, header_length, payload_length = decode_prefix(read_exact(PREFIX.size))
    header = decode_header(read_exact(header_length))
    payload = read_exact(payload_length) if payload_length else b""
    return Frame(kind, header, payload)


def decode(data: bytes) -> Frame:
    """Decode exactly one frame from ``data``; trailing bytes are an error.

    :raises ProtocolError: if ``data`` is not exactly one valid frame.
    """
    view = memoryview(data)
    position = 0

    def read_exact(count: int) -> bytes:
        nonlocal position
        if position + count > len(view):
            raise ProtocolError("truncated frame")
        chunk = bytes(view[position : position + count])
        position += count
        return chunk

    frame = read_frame(read_exact)
    if position != len(data):
        raise ProtocolError("trailing bytes after frame")
    return frame


# Request validation ------------------------------------------------------------------------

#: The fields each request must carry beyond ``op`` and ``id``, with their JSON types.
OPS: Final[Mapping[str, Mapping[str, type | tuple[type, ...]]]] = {
    "hello": {},
    "put_begin": {"job": str, "area": str, "path": str, "size": int, "sha256": str},
    "put_chunk": {"job": str, "area": str, "path": str, "offset": int, "sha256": str},
    "put_end": {"job": str, "area": str, "path": str},
    "run": {"job": str, "entrypoint": str, "args": list, "max_runtime_s": int},
    "status": {"job": str},
    "logs": {"job": str, "offset": int, "limit": int},
    "cancel": {"job": str},
    "outputs": {"job": str, "patterns": list},
    "get": {"job": str, "name": str, "offset": int, "limit": int},
    "discard": {"job": str},
    # Optional fields (checked by the handler): canary_nonce (str or null), simulate_mib.
    "scrub": {"nonce": str},
    "canary": {"canary_nonce": str},
}


def check_request(frame: Frame) -> tuple[str, int]:
    """Check that ``frame`` is a request naming a known op with every field of the right type.

    Returns ``(op, id)``. Values are not range-checked here: the handler of the op does that
    and answers an error frame, as a bad value is no reason to drop the connection.

    :raises ProtocolError: if the frame is no request, the op is unknown or a field is missing
        or of the wrong JSON type.
    """
    if frame.kind != KIND_REQUEST:
        raise ProtocolError("expected a request frame")
    header = frame.header
    request_id = header.get("id")
    if not is_int(request_id) or not 0 <= request_id <= MAX_ID:
        raise ProtocolError("request id missing or out of range")
    op = header.get("op")
    if not isinstance(op, str) or op not in OPS:
        raise ProtocolError("unknown op")
    for name, kind in OPS[op].items():
        value = header.get(name)
        if kind is int:
            if not is_int(value):
                raise ProtocolError(f"field {name} missing or not an integer")
        elif not isinstance(value, kind):
            raise ProtocolError(f"field {name} missing or of the wrong type")
    if op != "put_chunk" and frame.payload:
        raise ProtocolError("unexpected payload")
    return op, request_id


def is_int(value: object) -> TypeGuard[int]:
    """Whether ``value`` is a JSON integer (``bool`` is not one)."""
    return isinstance(value, int) and not isinstance(value, bool)


# Names -------------------------------------------------------------------------------------


def check_job(job: object) -> str:
    """Return ``job`` if it is a lower-case UUID string.

    :raises ValueError: otherwise.
    """
    if not isinstance(job, str) or not _JOB.fullmatch(job):
        raise ValueError("job must be a lower-case UUID")
    return job


def check_path(path: object) -> str:
    """Return ``path`` if it is a safe relative POSIX path.

    Segments are ``[A-Za-z0-9._-]+``; none may start with a dot (so no ``.``, ``..`` or hidden
    names); at most :data:`MAX_PATH` characters.

    :raises ValueError: otherwise.
    """
    if not isinstance(path, str) or len(path) > MAX_PATH or not _PATH.fullmatch(path):
        raise ValueError("path must be a relative path of [A-Za-z0-9._-] segments")
    if any(segment.startswith(".") for segment in path.split("/")):
        raise ValueError("path segments may not start with a dot")
    return path


def check_pattern(pattern: object) -> str:
    """Return ``pattern`` if it is a safe relative glob (``*``, ``?`` and ``**`` segments).

    :raises ValueError: otherwise.
    """
    if not isinstance(pattern, str) or len(pattern) > MAX_PATH:
        raise ValueError("pattern must be a relative glob")
    if not _PATTERN.fullmatch(pattern):
        raise ValueError("pattern must be a relative glob of [A-Za-z0-9._*?-] segments")
    if any(segment.startswith(".") for segment in pattern.split("/")):
        raise ValueError("pattern segments may not start with a dot")
    return pattern


def check_area(area: object) -> str:
    """Return ``area`` if it is ``code`` or ``input``.

    :raises ValueError: otherwise.
    """
    if area not in AREAS:
        raise ValueError("area must be code or input")
    assert isinstance(area, str)
    return area


def check_sha256(digest: object) -> str:
    """Return ``digest`` if it is a lower-case hex SHA-256.

    :raises ValueError: otherwise.
    """
    if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
        raise ValueError("sha256 must be 64 lower-case hex digits")
    return digest


def check_nonce(nonce: object) -> str:
    """Return ``nonce`` if it is 64 lower-case hex digits (32 bytes).

    :raises ValueError: otherwise.
    """
    if not isinstance(nonce, str) or not _NONCE.fullmatch(nonce):
        raise ValueError("a nonce must be 64 lower-case hex digits")
    return nonce


def check_simulate_mib(value: object) -> int | None:
    """Return ``value`` if it is ``None`` or an integer from 1 to :data:`MAX_SIMULATE_MIB`.

    :raises ValueError: otherwise.
    """
    if value is None:
        return None
    if not is_int(value) or not 1 <= value <= MAX_SIMULATE_MIB:
        raise ValueError(f"simulate_mib must be an integer from 1 to {MAX_SIMULATE_MIB}")
    return value


def safe_message(text: str) -> str:
    """``text`` without control characters, cut to :data:`MAX_MESSAGE` characters."""
    return _UNSAFE.sub("?", text)[:MAX_MESSAGE]
