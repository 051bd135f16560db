"""ChannelTransport over a fake non-blocking libvirt stream: partial writes, would-block,
timeouts, end of stream, libvirt errors; and opening a channel on the test driver."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from enclaves.channel import AGENT_CHANNEL, ChannelTransport
from enclaves.errors import (
    AgentTimeoutError,
    AgentUnavailableError,
    DomainNotFoundError,
    UnsupportedError,
)
from enclaves.host import LibvirtHost

libvirt = pytest.importorskip("libvirt")

pytestmark = pytest.mark.libvirt

WOULD_BLOCK = -2


def libvirt_error(message: str) -> Any:
    """A libvirtError as the bindings raise it from a failed stream call."""
    return libvirt.libvirtError(message)


class FakeStream:
    """A non-blocking ``virStream``: scripted answers to send and recv, then defaults."""

    def __init__(
        self,
        *,
        send_answers: list[int | Exception] | None = None,
        recv_answers: list[bytes | int | Exception] | None = None,
        accept_at_most: int | None = None,
    ) -> None:
        self.send_answers = list(send_answers or [])
        self.recv_answers = list(recv_answers or [])
        self.accept_at_most = accept_at_most
        self.sent = bytearray()
        self.send_calls = 0
        #: Bytes handed to send over all calls: what the transport copied for it.
        self.offered = 0
        self.largest_offer = 0
        self.offer_limit: int | None = None
        self.recv_sizes: list[int] = []
        self.aborted = 0

    def send(self, data: bytes) -> int:
        self.send_calls += 1
        self.offered += len(data)
        self.largest_offer = max(self.largest_offer, len(data))
        if self.offer_limit is not None and self.offered > self.offer_limit:
            raise AssertionError(f"offered {self.offered} bytes in {self.send_calls} calls")
        if self.send_answers:
            answer = self.send_answers.pop(0)
            if isinstance(answer, Exception):
                raise answer
            if answer < 0 or answer > len(data):
                return answer  # would block, or a broken stream's nonsense
            data = data[:answer]
        elif self.accept_at_most is not None:
            data = data[: self.accept_at_most]
        self.sent += data
        return len(data)

    def recv(self, nbytes: int) -> bytes | int:
        self.recv_sizes.append(nbytes)
        if not self.recv_answers:
            return WOULD_BLOCK
        answer = self.recv_answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def abort(self) -> None:
        self.aborted += 1


def test_partial_writes_are_resumed_until_everything_is_sent() -> None:
    stream = FakeStream(accept_at_most=3)
    ChannelTransport(stream).send(b"0123456789", timeout_s=1.0)
    assert bytes(stream.sent) == b"0123456789"
    assert stream.send_calls == 4


def test_a_guest_taking_a_byte_at_a_time_costs_linear_copying() -> None:
    """The bytes handed to the stream stay within a constant of the bytes sent (not n²/2)."""
    size = 1 << 20
    stream = FakeStream(accept_at_most=1)
    stream.offer_limit = 4 * size  # quadratic copying would pass this after ~2900 calls
    payload = bytes(range(256)) * (size // 256)
    ChannelTransport(stream).send(payload, 60.0)
    assert bytes(stream.sent) == payload
    assert stream.send_calls == size
    assert stream.offered <= 2 * size + (64 << 10)
    assert stream.largest_offer <= 64 << 10


def test_a_guest_taking_everything_gets_bounded_slices() -> None:
    stream = FakeStream()
    payload = b"x" * ((1 << 20) + 5)
    ChannelTransport(stream).send(payload, 10.0)
    assert bytes(stream.sent) == payload
    assert stream.largest_offer == 64 << 10
    assert stream.send_calls == 17  # 16 full slices and the 5 bytes left


def test_would_block_on_send_waits_and_retries() -> None:
    stream = FakeStream(send_answers=[WOULD_BLOCK, 0, WOULD_BLOCK, 2])
    ChannelTransport(stream).send(b"abcdef", timeout_s=1.0)
    assert bytes(stream.sent) == b"abcdef"


def test_send_that_never_drains_times_out() -> None:
    stream = FakeStream(send_answers=[WOULD_BLOCK] * 10_000)
    started = time.monotonic()
    with pytest.raises(AgentTimeoutError, match="timed out sending"):
        ChannelTransport(stream).send(b"abc", timeout_s=0.2)
    assert 0.2 <= time.monotonic() - started < 1.0


def test_recv_waits_through_would_block_and_is_bounded() -> None:
    stream = FakeStream(recv_answers=[WOULD_BLOCK, WOULD_BLOCK, b"hello"])
    assert ChannelTransport(stream).recv(16, timeout_s=1.0) == b"hello"
    assert stream.recv_sizes == [16, 16, 16]


def test_recv_times_out_when_the_guest_stalls() -> None:
    stream = FakeStream()
    started = time.monotonic()
    with pytest.raises(AgentTimeoutError, match="timed out receiving"):
        ChannelTransport(stream).recv(16, timeout_s=0.2)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.0
    # Polling backs off to 10 ms: a 0.2 s wait is some tens of calls, not a busy loop.
    assert 10 <= len(stream.recv_sizes) <= 60


def test_end_of_stream_is_empty_bytes() -> None:
    assert ChannelTransport(FakeStream(recv_answers=[b""])).recv(16, timeout_s=1.0) == b""


def test_more_than_asked_is_not_trusted() -> None:
    with pytest.raises(AgentUnavailableError, match="too much"):
        ChannelTransport(FakeStream(recv_answers=[b"x" * 17])).recv(16, timeout_s=1.0)


def test_unexpected_answers_are_a_lost_channel() -> None:
    with pytest.raises(AgentUnavailableError):
        ChannelTransport(FakeStream(recv_answers=[-1])).recv(16, timeout_s=1.0)
    with pytest.raises(AgentUnavailableError):
        ChannelTransport(FakeStream(send_answers=[99])).send(b"abc", timeout_s=1.0)


def test_libvirt_errors_become_agent_unavailable() -> None:
    transport = ChannelTransport(FakeStream(recv_answers=[libvirt_error("stream aborted")]))
    with pytest.raises(AgentUnavailableError, match="receiving from") as info:
        transport.recv(16, timeout_s=1.0)
    assert isinstance(info.value.__cause__.__cause__, libvirt.libvirtError)  # type: ignore[union-attr]
    transport = ChannelTransport(FakeStream(send_answers=[libvirt_error("broken pipe")]))
    with pytest.raises(AgentUnavailableError, match="sending to"):
        transport.send(b"abc", timeout_s=1.0)


def test_close_aborts_once_and_refuses_further_use() -> None:
    stream = FakeStream(recv_answers=[b"late"])
    transport = ChannelTransport(stream)
    transport.close()
    transport.close()
    assert stream.aborted == 1
    with pytest.raises(AgentUnavailableError, match="closed"):
        transport.recv(16, timeout_s=1.0)
    with pytest.raises(AgentUnavailableError, match="closed"):
        transport.send(b"x", timeout_s=1.0)


def test_close_swallows_libvirt_errors() -> None:
    class Broken(FakeStream):
        def abort(self) -> None:
            raise libvirt_error("connection closed")

    ChannelTransport(Broken()).close()


def test_recv_refuses_a_non_positive_size() -> None:
    with pytest.raises(ValueError, match="positive"):
        ChannelTransport(FakeStream()).recv(0, timeout_s=1.0)


# --- opening a channel on libvirt's test driver ---------------------------------------------


@pytest.fixture
def test_host() -> Iterator[LibvirtHost]:
    host = LibvirtHost("test:///default")
    yield host
    host.close()


def test_test_driver_has_no_channels(test_host: LibvirtHost) -> None:
    """The embedded default's hosts cannot open channels: that is why the process enclave
    exists. The refusal is translated, and is not a lost connection."""
    domain_uuid = uuid.UUID(test_host.connect().lookupByName("test").UUIDString())
    with pytest.raises(UnsupportedError, match=AGENT_CHANNEL):
        ChannelTransport.open(test_host, domain_uuid)


def test_opening_a_missing_domain_is_domain_not_found(test_host: LibvirtHost) -> None:
    with pytest.raises(DomainNotFoundError):
        ChannelTransport.open(test_host, uuid.uuid4())
