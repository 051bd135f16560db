"""The agent protocol: frames round-trip, every bound holds, garbage is only ever a ProtocolError,
and names and paths are checked the same way on both sides."""

from __future__ import annotations

import json
import posixpath
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclaves.agent import protocol
from enclaves.agent.protocol import Frame, ProtocolError

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
HEADERS = st.dictionaries(st.text(max_size=12), JSON_VALUES, max_size=6)


def prefix(
    *,
    magic: bytes = protocol.MAGIC,
    version: int = protocol.VERSION,
    kind: int = protocol.KIND_REQUEST,
    reserved: int = 0,
    header_length: int = 2,
    payload_length: int = 0,
) -> bytes:
    return protocol.PREFIX.pack(magic, version, kind, reserved, header_length, payload_length)


@given(
    kind=st.sampled_from(sorted(protocol.KINDS)), header=HEADERS, payload=st.binary(max_size=512)
)
def test_frames_round_trip(kind: int, header: dict[str, object], payload: bytes) -> None:
    frame = Frame(kind, header, payload)
    assert protocol.decode(protocol.encode(frame)) == frame


def test_the_prefix_is_the_documented_layout() -> None:
    data = protocol.encode(Frame(protocol.KIND_REPLY, {"id": 7}, b"xyz"))
    magic, version, kind, reserved, header_length, payload_length = struct.unpack(
        ">4sBBHII", data[:16]
    )
    assert (magic, version, kind, reserved) == (b"SVA1", 1, 2, 0)
    assert json.loads(data[16 : 16 + header_length]) == {"id": 7}
    assert data[16 + header_length :] == b"xyz" and payload_length == 3


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_garbage_is_a_protocol_error_or_a_valid_frame(data: bytes) -> None:
    try:
        frame = protocol.decode(data)
    except ProtocolError:
        return
    assert protocol.encode(frame) is not None


@settings(max_examples=300)
@given(
    kind=st.integers(0, 255),
    version=st.integers(0, 255),
    reserved=st.integers(0, 0xFFFF),
    header=st.binary(max_size=64),
    payload=st.binary(max_size=64),
)
def test_mutated_frames_never_raise_anything_else(
    kind: int, version: int, reserved: int, header: bytes, payload: bytes
) -> None:
    data = (
        prefix(
            kind=kind,
            version=version,
            reserved=reserved,
            header_length=len(header),
            payload_length=len(payload),
        )
        + header
        + payload
    )
    try:
        frame = protocol.decode(data)
    except ProtocolError:
        return
    assert frame.kind in protocol.KINDS and isinstance(frame.header, dict)


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (prefix(magic=b"SVA2") + b"{}", "bad magic"),
        (prefix(version=2) + b"{}", "version"),
        (prefix(kind=5) + b"{}", "kind"),
        (prefix(kind=0) + b"{}", "kind"),
        (prefix(reserved=1) + b"{}", "reserved"),
        (prefix(header_length=protocol.MAX_HEADER + 1), "header too large"),
        (prefix(payload_length=protocol.MAX_PAYLOAD + 1) + b"{}", "payload too large"),
        (prefix(header_length=0xFFFFFFFF), "header too large"),
        (prefix(header_length=3) + b"[1]", "not an object"),
        (prefix(header_length=2) + b"\xff\xfe", "not JSON"),
        (prefix(header_length=3) + b"NaN", "not JSON"),
        (prefix(header_length=10) + b'{"a":Infi}', "not JSON"),
        (prefix(header_length=4) + b"{}", "truncated"),
        (prefix() + b"{}" + b"x", "trailing"),
        (b"SVA1", "truncated"),
    ],
)
def test_bad_frames_are_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError, match=reason):
        protocol.decode(data)


def test_the_reader_checks_lengths_before_reading_them() -> None:
    asked: list[int] = []
    data = prefix(payload_length=protocol.MAX_PAYLOAD + 1)

    def read_exact(count: int) -> bytes:
        asked.append(count)
        return data[:count]

    with pytest.raises(ProtocolError):
        protocol.read_frame(read_exact)
    assert asked == [16]


def test_encode_refuses_what_decode_would() -> None:
    with pytest.raises(ProtocolError, match="payload too large"):
        protocol.encode(Frame(protocol.KIND_DATA, {}, b"x" * (protocol.MAX_PAYLOAD + 1)))
    with pytest.raises(ProtocolError, match="header too large"):
        protocol.encode(Frame(protocol.KIND_REPLY, {"x": "y" * protocol.MAX_HEADER}))
    with pytest.raises(ProtocolError, match="kind"):
        protocol.encode(Frame(9, {}))
    # The largest legal frame passes.
    big = Frame(protocol.KIND_DATA, {}, b"x" * protocol.MAX_PAYLOAD)
    assert protocol.decode(protocol.encode(big)) == big


JOB = "0b7c8f6e-1f2a-4c3d-9e8f-0123456789ab"


def request(op: str, payload: bytes = b"", **fields: object) -> Frame:
    return Frame(protocol.KIND_REQUEST, {"op": op, "id": 1, **fields}, payload)


def test_check_request_accepts_every_op_with_its_fields() -> None:
    values: dict[type, object] = {str: "x", int: 0, list: []}
    for op, fields in protocol.OPS.items():
        header = {name: values[kind] for name, kind in fields.items()}  # type: ignore[index]
        assert protocol.check_request(request(op, **header)) == (op, 1)


@pytest.mark.parametrize(
    "frame",
    [
        Frame(protocol.KIND_REPLY, {"op": "hello", "id": 1}),
        Frame(protocol.KIND_REQUEST, {"op": "hello"}),
        Frame(protocol.KIND_REQUEST, {"op": "hello", "id": -1}),
        Frame(protocol.KIND_REQUEST, {"op": "hello", "id": 2**32}),
        Frame(protocol.KIND_REQUEST, {"op": "hello", "id": True}),
        Frame(protocol.KIND_REQUEST, {"op": "hello", "id": "1"}),
        Frame(protocol.KIND_REQUEST, {"op": "shell", "id": 1}),
        Frame(protocol.KIND_REQUEST, {"op": ["hello"], "id": 1}),
        request("status"),
        request("status", job=1),
        request("logs", job=JOB, offset=True, limit=1),
        request("logs", job=JOB, offset=1.5, limit=1),
        request("run", job=JOB, entrypoint="main.py", args="a b", max_runtime_s=1),
        request("hello", b"payload"),
    ],
)
def test_check_request_refuses_malformed_requests(frame: Frame) -> None:
    with pytest.raises(ProtocolError):
        protocol.check_request(frame)


@pytest.mark.parametrize(
    "path", ["main.py", "a/b/c.txt", "data-1_2.bin", "A/b.C", "x" * 255, "a..b", "a/b..c"]
)
def test_good_paths(path: str) -> None:
    assert protocol.check_path(path) == path


@pytest.mark.parametrize(
    "path",
    [
        "",
        "/etc/passwd",
        "../x",
        "a/../b",
        "..",
        ".",
        "./a",
        ".hidden",
        "a/.hidden",
        "a//b",
        "a/",
        "a\\b",
        "a b",
        "a\x00b",
        "a\nb",
        "é",
        "x" * 256,
        None,
        7,
    ],
)
def test_bad_paths(path: object) -> None:
    with pytest.raises(ValueError, match="path"):
        protocol.check_path(path)


@given(st.text(max_size=40))
def test_an_accepted_path_never_leaves_its_directory(path: str) -> None:
    try:
        protocol.check_path(path)
    except ValueError:
        return
    assert not path.startswith("/")
    assert posixpath.normpath(path) == path
    assert ".." not in path.split("/")


@pytest.mark.parametrize("pattern", ["*.txt", "out/**", "**/*.bin", "model-?.pt", "a/b"])
def test_good_patterns(pattern: str) -> None:
    assert protocol.check_pattern(pattern) == pattern


@pytest.mark.parametrize("pattern", ["../*", "/etc/*", "*/../x", ".*", "a/.b*", "[ab]", "a//b"])
def test_bad_patterns(pattern: str) -> None:
    with pytest.raises(ValueError, match="pattern"):
        protocol.check_pattern(pattern)


def test_job_names_are_lower_case_uuids() -> None:
    assert protocol.check_job(JOB) == JOB
    for bad in (JOB.upper(), JOB[:-1], f"{JOB}x", "../" + JOB[3:], "", None):
        with pytest.raises(ValueError, match="UUID"):
            protocol.check_job(bad)


def test_sha256_and_area_checks() -> None:
    assert protocol.check_sha256("a" * 64) == "a" * 64
    for bad in ("A" * 64, "a" * 63, "g" * 64, 1):
        with pytest.raises(ValueError, match="sha256"):
            protocol.check_sha256(bad)
    assert protocol.check_area("input") == "input"
    with pytest.raises(ValueError, match="area"):
        protocol.check_area("work")


def test_safe_message_strips_controls_and_caps_length() -> None:
    text = protocol.safe_message("a\x1b[31mb\nc\u2028" + "x" * 500)
    assert len(text) == protocol.MAX_MESSAGE
    assert text.startswith("a?[31mb?c?")
