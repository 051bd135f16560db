"""A hostile agent: the client believes nothing it is told.

A fake agent on the other end of a socketpair answers each request with scripted bytes:
oversize frames, garbage, silence, trickles, bad names and hashes, more bytes than announced.
Each must end in the right :class:`~enclaves.errors.AgentError` subclass, quickly, and leave
the client refusing further calls when the stream can no longer be trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclaves.agent import protocol
from enclaves.agent.client import AgentClient
from enclaves.agent.protocol import Frame
from enclaves.agent.transport import SocketTransport
from enclaves.errors import (
    AgentError,
    AgentProtocolError,
    AgentRefusedError,
    AgentTimeoutError,
    AgentUnavailableError,
)

JOB = "0b7c8f6e-1f2a-4c3d-9e8f-0123456789ab"
SHA = "a" * 64
TIMEOUT_S = 0.5
#: Every failure must surface well within this (the client's timeout plus slack).
QUICK_S = 3.0

#: Answers a request frame with the bytes to send back (``None``: say nothing; a list: send
#: its pieces 50 ms apart).
Script = Callable[[Frame], bytes | list[bytes] | None]


class FakeAgent:
    """Serves scripted answers on one end of a socketpair until closed."""

    def __init__(self, sock: socket.socket, script: Script) -> None:
        self.sock = sock
        self.script = script
        self.requests: list[Frame] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _read_exact(self, count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = self.sock.recv(count - len(data))
            if not chunk:
                raise EOFError
            data += chunk
        return data

    def _serve(self) -> None:
        try:
            while True:
                frame = protocol.read_frame(self._read_exact)
                self.requests.append(frame)
                answer = self.script(frame)
                if isinstance(answer, list):
                    for piece in answer:
                        self.sock.sendall(piece)
                        time.sleep(0.05)
                elif answer is not None:
                    self.sock.sendall(answer)
        except (EOFError, OSError):
            return

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def fake() -> Iterator[Callable[..., AgentClient]]:
    opened: list[tuple[FakeAgent, AgentClient]] = []

    def open_client(script: Script, timeout_s: float = TIMEOUT_S) -> AgentClient:
        ours, theirs = socket.socketpair()
        agent = FakeAgent(theirs, script)
        client = AgentClient(SocketTransport(ours), timeout_s=timeout_s)
        opened.append((agent, client))
        return client

    yield open_client
    for agent, client in opened:
        client.close()
        agent.close()


def reply(
    frame: Frame, kind: int = protocol.KIND_REPLY, payload: bytes = b"", **fields: Any
) -> bytes:
    return protocol.encode(Frame(kind, {"id": frame.header["id"], **fields}, payload))


def status_fields(**overrides: Any) -> dict[str, Any]:
    return {"state": "running", "exit_code": None, "runtime_s": 1.5, "log_size": 0, **overrides}


def hello_fields(**overrides: Any) -> dict[str, Any]:
    fields = {
        "protocol": 1,
        "agent_version": "1.0",
        "image_digest": "sha256:" + "0" * 64,
        "simulated": False,
        "gpus": [{"name": "H100", "uuid": "GPU-1", "memory_mib": 81559}],
        "python": "3.11.2",
    }
    return {**fields, **overrides}


def quickly(call: Callable[[], object], error: type[AgentError]) -> AgentError:
    began = time.monotonic()
    with pytest.raises(error) as caught:
        call()
    assert time.monotonic() - began < QUICK_S
    return caught.value


def test_a_well_behaved_fake_is_believed(fake: Callable[..., AgentClient]) -> None:
    client = fake(lambda frame: reply(frame, **hello_fields()))
    hello = client.hello()
    assert hello.gpus[0].memory_mib == 81559 and hello.python == "3.11.2"


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (
            lambda f: protocol.PREFIX.pack(b"SVA1", 1, 2, 0, 2, protocol.MAX_PAYLOAD + 1) + b"{}",
            AgentProtocolError,
        ),
        (
            lambda f: protocol.PREFIX.pack(b"SVA1", 1, 2, 0, protocol.MAX_HEADER + 1, 0),
            AgentProtocolError,
        ),
        (lambda f: protocol.PREFIX.pack(b"SVA1", 1, 2, 0, 0xFFFFFFFF, 0), AgentProtocolError),
        (lambda f: b"HTTP/1.1 200 OK\r\n\r\n", AgentProtocolError),
        (lambda f: protocol.PREFIX.pack(b"SVA1", 2, 2, 0, 2, 0) + b"{}", AgentProtocolError),
        (lambda f: protocol.PREFIX.pack(b"SVA1", 1, 2, 0, 3, 0) + b"[1]", AgentProtocolError),
        (lambda f: protocol.PREFIX.pack(b"SVA1", 1, 2, 0, 3, 0) + b"NaN", AgentProtocolError),
        (lambda f: protocol.encode(Frame(2, {"id": 999, **hello_fields()})), AgentProtocolError),
        (lambda f: protocol.encode(Frame(2, {"id": True, **hello_fields()})), AgentProtocolError),
        (lambda f: protocol.encode(Frame(2, hello_fields())), AgentProtocolError),
        (lambda f: reply(f, protocol.KIND_DATA, **hello_fields()), AgentProtocolError),
        (lambda f: reply(f, protocol.KIND_REQUEST, op="hello"), AgentProtocolError),
        (lambda f: reply(f, payload=b"x", **hello_fields()), AgentProtocolError),
        (lambda f: reply(f, **hello_fields(gpus="none")), AgentProtocolError),
        (lambda f: reply(f, **hello_fields(gpus=[{"name": "x"}] * 65)), AgentProtocolError),
        (lambda f: reply(f, **hello_fields(protocol="1")), AgentProtocolError),
        (lambda f: reply(f, **hello_fields(simulated=1)), AgentProtocolError),
        (lambda f: reply(f, **hello_fields(python="3\x1b[2J")), AgentProtocolError),
        (lambda f: reply(f, **hello_fields(agent_version="x" * 300)), AgentProtocolError),
        (lambda f: None, AgentTimeoutError),
        (lambda f: reply(f, **hello_fields())[:20], AgentTimeoutError),
    ],
)
def test_bad_answers_raise_the_right_error_quickly(
    fake: Callable[..., AgentClient],
    answer: Script,
    error: type[AgentError],
) -> None:
    client = fake(answer)
    quickly(client.hello, error)
    # The stream is out of step: the client refuses to go on with it.
    quickly(client.hello, AgentUnavailableError)


def test_a_trickling_agent_cannot_stretch_the_deadline(
    fake: Callable[..., AgentClient],
) -> None:
    # One byte every 50 ms: each read succeeds, but the call's deadline still holds.
    client = fake(lambda frame: [bytes([b]) for b in reply(frame, **hello_fields())])
    quickly(client.hello, AgentTimeoutError)


def test_a_closed_connection_is_unavailable() -> None:
    ours, theirs = socket.socketpair()
    theirs.close()
    client = AgentClient(SocketTransport(ours), timeout_s=TIMEOUT_S)
    quickly(client.hello, AgentUnavailableError)
    client.close()


def test_more_bytes_than_announced_desynchronise_and_are_caught(
    fake: Callable[..., AgentClient],
) -> None:
    # The first answer carries trailing bytes beyond its frame; the client reads exactly the
    # announced frame and the extra bytes are caught as garbage on the next call.
    client = fake(lambda frame: reply(frame, **status_fields()) + b"SURPRISE" * 10)
    assert client.status(JOB).state == "running"
    quickly(lambda: client.status(JOB), AgentProtocolError)


def test_an_error_frame_is_a_refusal_with_a_safe_message(
    fake: Callable[..., AgentClient],
) -> None:
    message = "\x1b[31mno\nway\u2028" + "!" * 1000
    client = fake(lambda frame: reply(frame, protocol.KIND_ERROR, message=message))
    refusal = quickly(lambda: client.status(JOB), AgentRefusedError)
    assert "\x1b" not in refusal.message and "\n" not in refusal.message
    assert "\u2028" not in refusal.message
    assert len(refusal.message) < protocol.MAX_MESSAGE + 50
    # A refusal keeps the stream in step.
    quickly(lambda: client.status(JOB), AgentRefusedError)


def test_an_error_frame_with_a_payload_is_a_protocol_error(
    fake: Callable[..., AgentClient],
) -> None:
    client = fake(lambda frame: reply(frame, protocol.KIND_ERROR, payload=b"x", message="no"))
    quickly(lambda: client.status(JOB), AgentProtocolError)


@pytest.mark.parametrize(
    "fields",
    [
        status_fields(state="pwned"),
        status_fields(state=None),
        status_fields(exit_code="0"),
        status_fields(exit_code=1 << 40),
        status_fields(runtime_s=-1),
        status_fields(runtime_s="1"),
        status_fields(runtime_s=True),
        status_fields(log_size=-5),
        status_fields(log_size=1.5),
        {"state": "running"},
    ],
)
def test_bad_statuses_are_protocol_errors(
    fake: Callable[..., AgentClient], fields: dict[str, Any]
) -> None:
    client = fake(lambda frame: reply(frame, **fields))
    quickly(lambda: client.status(JOB), AgentProtocolError)


def file_entry(name: Any, size: Any = 1, sha256: Any = SHA) -> dict[str, Any]:
    return {"name": name, "size": size, "sha256": sha256}


@pytest.mark.parametrize(
    "files",
    [
        [file_entry("../../etc/passwd")],
        [file_entry("/etc/shadow")],
        [file_entry("a/../../b")],
        [file_entry(".ssh/id_rsa")],
        [file_entry("out/../../../root")],
        [file_entry("a//b")],
        [file_entry("link -> /etc/passwd")],
        [file_entry("a\\..\\b")],
        [file_entry("x" * 256)],
        [file_entry(None)],
        [file_entry("a.txt", sha256="A" * 64)],
        [file_entry("a.txt", sha256="a" * 63)],
        [file_entry("a.txt", size=-1)],
        [file_entry("a.txt", size="1")],
        [file_entry("a.txt"), file_entry("a.txt")],
        [file_entry(f"f{i}") for i in range(257)],
        [file_entry("a", size=protocol.MAX_OUTPUT_TOTAL), file_entry("b", size=1)],
        ["a.txt"],
    ],
)
def test_bad_output_listings_are_protocol_errors(
    fake: Callable[..., AgentClient], files: list[Any]
) -> None:
    client = fake(lambda frame: reply(frame, files=files))
    quickly(lambda: client.outputs(JOB, ["**"]), AgentProtocolError)


def test_a_good_output_listing_is_believed(fake: Callable[..., AgentClient]) -> None:
    client = fake(lambda frame: reply(frame, files=[file_entry("out/model.bin", size=7)]))
    [entry] = client.outputs(JOB, ["out/*"])
    assert (entry.name, entry.size, entry.sha256) == ("out/model.bin", 7, SHA)


DATA = b"model weights" * 1000
DIGEST = hashlib.sha256(DATA).hexdigest()


def serve_file(content: bytes, *, extra: int = 0) -> Script:
    def answer(frame: Frame) -> bytes:
        offset, limit = frame.header["offset"], frame.header["limit"]
        return reply(frame, protocol.KIND_DATA, payload=content[offset : offset + limit + extra])

    return answer


def test_get_verifies_the_hash(fake: Callable[..., AgentClient]) -> None:
    good = fake(serve_file(DATA))
    assert good.get(JOB, "m.bin", size=len(DATA), sha256=DIGEST, max_bytes=1 << 20) == DATA
    tampered = fake(serve_file(b"X" + DATA[1:]))
    quickly(
        lambda: tampered.get(JOB, "m.bin", size=len(DATA), sha256=DIGEST, max_bytes=1 << 20),
        AgentProtocolError,
    )


def test_get_refuses_a_payload_longer_than_asked(fake: Callable[..., AgentClient]) -> None:
    client = fake(serve_file(DATA + b"more", extra=4))
    quickly(
        lambda: client.get(JOB, "m.bin", size=len(DATA) - 4, sha256=DIGEST, max_bytes=1 << 20),
        AgentProtocolError,
    )


def test_get_refuses_a_short_file(fake: Callable[..., AgentClient]) -> None:
    client = fake(serve_file(DATA[:100]))
    quickly(
        lambda: client.get(JOB, "m.bin", size=len(DATA), sha256=DIGEST, max_bytes=1 << 20),
        AgentProtocolError,
    )


def test_get_never_downloads_more_than_max_bytes(fake: Callable[..., AgentClient]) -> None:
    client = fake(serve_file(DATA))
    with pytest.raises(ValueError, match="max_bytes"):
        client.get(JOB, "m.bin", size=len(DATA), sha256=DIGEST, max_bytes=len(DATA) - 1)


def test_logs_refuse_more_than_the_limit(fake: Callable[..., AgentClient]) -> None:
    client = fake(lambda frame: reply(frame, protocol.KIND_DATA, payload=b"x" * 11))
    quickly(lambda: client.logs(JOB, 0, 10), AgentProtocolError)


def test_put_refuses_an_agent_claiming_more_than_the_file(
    fake: Callable[..., AgentClient],
) -> None:
    client = fake(lambda frame: reply(frame, have=100))
    quickly(lambda: client.put(JOB, "code", "main.py", b"short"), AgentProtocolError)


def test_put_refuses_a_wrong_acknowledgement(fake: Callable[..., AgentClient]) -> None:
    def answer(frame: Frame) -> bytes:
        return reply(frame, have=0 if frame.header["op"] == "put_begin" else 1)

    client = fake(answer)
    quickly(lambda: client.put(JOB, "code", "main.py", b"content"), AgentProtocolError)


def test_put_refuses_a_stored_file_with_another_hash(
    fake: Callable[..., AgentClient],
) -> None:
    def answer(frame: Frame) -> bytes:
        op = frame.header["op"]
        if op == "put_begin":
            return reply(frame, have=0)
        if op == "put_chunk":
            return reply(frame, have=frame.header["offset"] + len(frame.payload))
        return reply(frame, sha256=SHA)

    client = fake(answer)
    quickly(lambda: client.put(JOB, "code", "main.py", b"content"), AgentProtocolError)


def test_put_chunks_are_bounded_and_hashed(fake: Callable[..., AgentClient]) -> None:
    data = bytes(range(256)) * 9000  # a little over 2 MiB: three chunks
    stored = bytearray()

    def answer(frame: Frame) -> bytes:
        op = frame.header["op"]
        if op == "put_begin":
            assert frame.header["sha256"] == hashlib.sha256(data).hexdigest()
            return reply(frame, have=0)
        if op == "put_chunk":
            assert len(frame.payload) <= protocol.MAX_PAYLOAD
            stored.extend(frame.payload)
            # The prefix digest: the hash of the file up to the chunk's end.
            assert frame.header["sha256"] == hashlib.sha256(bytes(stored)).hexdigest()
            return reply(frame, have=len(stored))
        return reply(frame, sha256=hashlib.sha256(bytes(stored)).hexdigest())

    client = fake(answer)
    assert client.put(JOB, "input", "d.bin", data) == hashlib.sha256(data).hexdigest()
    assert bytes(stored) == data


def test_a_resumed_put_sends_prefix_digests_from_where_the_agent_is(
    fake: Callable[..., AgentClient],
) -> None:
    # From an offset off the chunk grid, the first chunk ends on it and the rest follow it.
    data = os.urandom((2 << 20) + 77)
    chunks: list[tuple[int, int, str]] = []

    def answer(frame: Frame) -> bytes:
        op = frame.header["op"]
        if op == "put_begin":
            return reply(frame, have=1000)
        if op == "put_chunk":
            offset = frame.header["offset"]
            chunks.append((offset, offset + len(frame.payload), frame.header["sha256"]))
            return reply(frame, have=offset + len(frame.payload))
        return reply(frame, sha256=hashlib.sha256(data).hexdigest())

    client = fake(answer)
    assert client.put(JOB, "input", "d.bin", data) == hashlib.sha256(data).hexdigest()
    assert [(start, end) for start, end, _ in chunks] == [
        (1000, 1 << 20),
        (1 << 20, 2 << 20),
        (2 << 20, len(data)),
    ]
    assert [digest for _, _, digest in chunks] == [
        hashlib.sha256(data[:end]).hexdigest() for _, end, _ in chunks
    ]


def test_a_refused_resume_begins_again_from_zero_once(fake: Callable[..., AgentClient]) -> None:
    # The agent refuses a resumed part that is not our prefix: the client begins again from
    # 0, once; an agent that keeps refusing gets its refusal raised, not an endless loop.
    data = b"z" * 3000
    begins: list[int] = []

    def answer(frame: Frame) -> bytes:
        op = frame.header["op"]
        if op == "put_begin":
            begins.append(1)
            return reply(frame, have=1000)
        if op == "put_chunk":
            return reply(frame, protocol.KIND_ERROR, message="chunk does not match its sha256")
        return reply(frame, protocol.KIND_ERROR, message="no upload in progress")

    client = fake(answer, timeout_s=5)
    with pytest.raises(AgentRefusedError, match="sha256"):
        client.put(JOB, "code", "main.py", data)
    assert len(begins) == 2


def test_a_refusal_from_zero_is_not_retried(fake: Callable[..., AgentClient]) -> None:
    begins: list[int] = []

    def answer(frame: Frame) -> bytes:
        op = frame.header["op"]
        if op == "put_begin":
            begins.append(1)
            return reply(frame, have=0)
        return reply(frame, protocol.KIND_ERROR, message="chunk does not match its sha256")

    client = fake(answer, timeout_s=5)
    with pytest.raises(AgentRefusedError, match="sha256"):
        client.put(JOB, "code", "main.py", b"content")
    assert len(begins) == 1


def test_a_retried_put_still_checks_what_the_agent_stored(
    fake: Callable[..., AgentClient],
) -> None:
    data = b"content"
    begins: list[int] = []

    def answer(frame: Frame) -> bytes:
        op = frame.header["op"]
        if op == "put_begin":
            begins.append(1)
            return reply(frame, have=len(data) if len(begins) == 1 else 0)
        if op == "put_chunk":
            return reply(frame, have=len(frame.payload))
        if len(begins) == 1:
            return reply(frame, protocol.KIND_ERROR, message="file does not match its sha256")
        return reply(frame, sha256=SHA)

    client = fake(answer, timeout_s=5)
    quickly(lambda: client.put(JOB, "code", "main.py", data), AgentProtocolError)
    assert len(begins) == 2


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.status("../etc"),
        lambda c: c.put(JOB, "code", "../main.py", b""),
        lambda c: c.put(JOB, "work", "main.py", b""),
        lambda c: c.run(JOB, entrypoint="/bin/sh", args=[], max_runtime_s=1),
        lambda c: c.run(JOB, entrypoint="main.py", args="-c", max_runtime_s=1),
        lambda c: c.run(JOB, entrypoint="main.py", args=[], max_runtime_s=0),
        lambda c: c.outputs(JOB, ["../*"]),
        lambda c: c.get(JOB, "a/../b", size=1, sha256=SHA, max_bytes=1),
        lambda c: c.logs(JOB, -1),
        lambda c: c.logs(JOB, 0, 0),
        lambda c: c.run(JOB, entrypoint="main.py", args=["x" * 4096] * 20, max_runtime_s=1),
    ],
)
def test_bad_arguments_are_value_errors_and_send_nothing(
    fake: Callable[..., AgentClient], call: Callable[[AgentClient], object]
) -> None:
    sent: list[Frame] = []

    def answer(frame: Frame) -> None:
        sent.append(frame)

    client = fake(answer)
    with pytest.raises(ValueError):  # noqa: PT011 - each names its own argument
        call(client)
    assert sent == []


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(garbage=st.binary(min_size=1, max_size=300))
def test_random_answers_only_ever_raise_agent_errors(
    fake: Callable[..., AgentClient], garbage: bytes
) -> None:
    client = fake(lambda frame: garbage, timeout_s=0.1)
    for call in (
        client.hello,
        lambda: client.outputs(JOB, ["*"]),
        lambda: client.get(JOB, "a", size=3, sha256=SHA, max_bytes=10),
    ):
        with contextlib.suppress(AgentError):
            call()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    header=st.dictionaries(
        st.sampled_from(
            ["state", "exit_code", "runtime_s", "log_size", "files", "have", "sha256", "gpus"]
        ),
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=5)
        | st.lists(st.integers(), max_size=3),
    )
)
def test_random_well_framed_answers_only_ever_raise_agent_errors(
    fake: Callable[..., AgentClient], header: dict[str, Any]
) -> None:
    client = fake(lambda frame: reply(frame, **header), timeout_s=0.2)
    for call in (
        lambda: client.status(JOB),
        lambda: client.outputs(JOB, ["*"]),
        lambda: client.put(JOB, "code", "a.py", b"x"),
    ):
        with contextlib.suppress(AgentError):
            call()


def test_a_refused_chunk_stops_the_upload_and_keeps_the_stream_in_step(
    fake: Callable[..., AgentClient],
) -> None:
    def answer(frame: Frame) -> bytes:
        op = frame.header["op"]
        if op == "put_begin":
            return reply(frame, have=0)
        if op == "put_chunk":
            offset = frame.header["offset"]
            if offset >= 2 << 20:
                return reply(frame, protocol.KIND_ERROR, message="disk full")
            return reply(frame, have=offset + len(frame.payload))
        return reply(frame, **status_fields())

    client = fake(answer, timeout_s=5)
    acknowledged: list[int] = []
    with pytest.raises(AgentRefusedError, match="disk full"):
        client.put(
            JOB, "input", "d.bin", b"x" * (12 << 20), progress=lambda d, t: acknowledged.append(d)
        )
    assert acknowledged == [0, 1 << 20, 2 << 20]
    assert client.status(JOB).state == "running"  # every answer due was read


def test_an_upload_interrupted_by_its_caller_closes_the_connection(
    fake: Callable[..., AgentClient],
) -> None:
    def answer(frame: Frame) -> bytes:
        if frame.header["op"] == "put_begin":
            return reply(frame, have=0)
        return reply(frame, have=frame.header["offset"] + len(frame.payload))

    def interrupt(done: int, total: int) -> None:
        if done:
            raise KeyboardInterrupt

    client = fake(answer, timeout_s=5)
    with pytest.raises(KeyboardInterrupt):
        client.put(JOB, "input", "d.bin", b"x" * (4 << 20), progress=interrupt)
    # Answers to chunks in flight are still due: the stream cannot be trusted to be in step.
    quickly(lambda: client.status(JOB), AgentUnavailableError)


# Scrub reports and canary answers ----------------------------------------------------------

NONCE = bytes(range(32))


def scrub_call(client: AgentClient, timeout_s: float = TIMEOUT_S) -> dict[str, Any]:
    return client.scrub(nonce=NONCE, canary_nonce=NONCE, simulate_mib=None, timeout_s=timeout_s)


def test_a_scrub_report_is_passed_on_as_a_json_object(fake: Callable[..., AgentClient]) -> None:
    report = {"program": "sovereign-scrub/1", "passes": [{"name": "zeros-fill"}], "x": None}
    client = fake(lambda frame: reply(frame, **report))
    assert scrub_call(client) == report


@pytest.mark.parametrize(
    "report",
    [
        {"deep": {"a": {"b": {"c": {"d": 1}}}}},
        {"many": list(range(300))},
        {f"k{index}": index for index in range(300)},
    ],
)
def test_an_oversized_scrub_report_is_a_protocol_error(
    fake: Callable[..., AgentClient], report: dict[str, Any]
) -> None:
    client = fake(lambda frame: reply(frame, **report))
    quickly(lambda: scrub_call(client), AgentProtocolError)


def test_a_scrub_that_never_answers_times_out_on_its_own_deadline(
    fake: Callable[..., AgentClient],
) -> None:
    client = fake(lambda frame: None, timeout_s=60.0)
    quickly(lambda: scrub_call(client, timeout_s=0.3), AgentTimeoutError)


@pytest.mark.parametrize(
    "answer",
    [
        {"planted_bytes": -1, "device": "cpu"},
        {"planted_bytes": 1.5, "device": "cpu"},
        {"planted_bytes": True, "device": "cpu"},
        {"planted_bytes": 4, "device": "cpu\x1b[2J"},
        {"planted_bytes": 4, "device": "x" * 300},
        {"planted_bytes": 4},
    ],
)
def test_a_malformed_canary_answer_is_a_protocol_error(
    fake: Callable[..., AgentClient], answer: dict[str, Any]
) -> None:
    client = fake(lambda frame: reply(frame, **answer))
    quickly(lambda: client.plant_canary(NONCE, timeout_s=TIMEOUT_S), AgentProtocolError)


def test_the_nonces_travel_as_hex(fake: Callable[..., AgentClient]) -> None:
    seen: list[Frame] = []

    def script(frame: Frame) -> bytes:
        seen.append(frame)
        if frame.header["op"] == "canary":
            return reply(frame, planted_bytes=8, device="cuda:0")
        return reply(frame, program="sovereign-scrub/1")

    client = fake(script)
    assert client.plant_canary(NONCE, timeout_s=TIMEOUT_S) == {
        "planted_bytes": 8,
        "device": "cuda:0",
    }
    client.scrub(nonce=NONCE, canary_nonce=None, simulate_mib=16, timeout_s=TIMEOUT_S)
    assert seen[0].header == {"op": "canary", "id": 1, "canary_nonce": NONCE.hex()}
    assert seen[1].header == {"op": "scrub", "id": 2, "nonce": NONCE.hex(), "simulate_mib": 16}


def test_hello_with_an_unknown_mode_is_a_protocol_error(fake: Callable[..., AgentClient]) -> None:
    client = fake(lambda frame: reply(frame, **hello_fields(mode="debug")))
    quickly(client.hello, AgentProtocolError)
    sane = fake(lambda frame: reply(frame, **hello_fields(mode="sanitize")))
    assert sane.hello().mode == "sanitize"
