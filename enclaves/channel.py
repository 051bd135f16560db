"""The agent's transport over a libvirt domain channel (``virDomainOpenChannel``).

Owns :class:`ChannelTransport`, the :class:`~enclaves.agent.transport.Transport` of a VM
enclave: a ``VIR_STREAM_NONBLOCK`` stream opened on the domain's virtio-serial channel
``org.sovereign.agent.0`` (the ``<channel>`` :mod:`enclaves.designer` gives every domain). It
works over remote ``qemu+tls://`` connections, so the control plane reaches the guest's agent
with no NIC, no IP and no network path into the enclave.

Waiting: the stream is non-blocking and :meth:`ChannelTransport.send`/:meth:`~ChannelTransport.recv`
poll it, sleeping 1 ms doubling to 10 ms while it would block, until their deadline. This was
chosen over libvirt's stream event callbacks: those run in the one libvirt event loop thread
(:func:`enclaves.host._start_event_loop`, which also moves the stream's data for remote
connections), so a callback would have to hand off to the caller's thread through a condition
variable and a stuck callback would stall every host's events; polling keeps each call on its
own thread, costs at most 10 ms of latency per wait, and libvirt buffers what arrives meanwhile.

Every libvirt error goes through :func:`enclaves.host._translate` (the one translation); on an
open stream it then means the channel is gone (:class:`~enclaves.errors.AgentUnavailableError`).
It must not frame or interpret what it carries (that is :mod:`enclaves.agent`).
"""

from __future__ import annotations

import contextlib
import time
import uuid
from typing import Any

from enclaves.designer import AGENT_CHANNEL
from enclaves.errors import AgentTimeoutError, AgentUnavailableError, EnclaveError
from enclaves.host import LibvirtHost, _import_libvirt, _translate

__all__ = ["AGENT_CHANNEL", "ChannelTransport"]
#: libvirt's non-blocking stream calls answer -2 for "would block".
_WOULD_BLOCK = -2
_FIRST_WAIT_S = 0.001
_MAX_WAIT_S = 0.01
#: The most bytes handed to one ``virStream.send`` (see :meth:`ChannelTransport.send`).
SEND_SLICE = 1 << 16


class ChannelTransport:
    """A :class:`~enclaves.agent.transport.Transport` over a non-blocking libvirt stream."""

    def __init__(self, stream: Any, *, description: str = "the agent channel") -> None:
        """Wrap a ``virStream`` already opened (non-blocking) on a domain channel."""
        self._stream = stream
        self._description = description
        self._closed = False

    @classmethod
    def open(
        cls, host: LibvirtHost, domain_uuid: uuid.UUID, name: str = AGENT_CHANNEL
    ) -> ChannelTransport:
        """Open the channel ``name`` of the domain with ``domain_uuid`` on ``host``.

        libvirt allows one open stream per channel: a second open (another control plane, or
        a session that was not closed) is refused until the first is closed.

        :raises DomainNotFoundError: if the host has no such domain.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises UnsupportedError: if the driver has no channels (libvirt's test driver).
        :raises EnclaveError: for any other refusal (no such channel, already open, not running).
        """
        libvirt = _import_libvirt()
        conn = host.connect()
        description = f"channel {name} of domain {domain_uuid} on {host.uri}"
        with _translate(f"opening {description}"):
            domain = conn.lookupByUUIDString(str(domain_uuid))
            stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
            try:
                domain.openChannel(name, stream, 0)
            except libvirt.libvirtError:
                with contextlib.suppress(libvirt.libvirtError):
                    stream.abort()
                raise
        return cls(stream, description=description)

    def send(self, data: bytes | memoryview, timeout_s: float) -> None:
        """Send all of ``data`` within ``timeout_s``.

        :raises AgentTimeoutError: if the guest did not take it all in time.
        :raises AgentUnavailableError: if the channel is closed or broken.
        """
        deadline = time.monotonic() + timeout_s
        view = memoryview(data)
        wait = _FIRST_WAIT_S
        # The bindings copy what they are given: offering all that is left on every partial
        # send would make a guest that takes a byte at a time cost time quadratic in the size.
        # So offer a slice, at most SEND_SLICE and at most twice what the guest took last: the
        # bytes copied stay within a constant of the bytes sent, however the guest takes them.
        offer = SEND_SLICE
        while view:
            piece = bytes(view[:offer])
            sent = self._call("sending to", self._stream.send, piece)
            if sent in (_WOULD_BLOCK, 0):
                wait = self._sleep(deadline, wait, "sending to")
                continue
            if not isinstance(sent, int) or sent < 0 or sent > len(piece):
                raise AgentUnavailableError(f"{self._description} answered send with {sent!r}")
            view = view[sent:]
            offer = min(SEND_SLICE, 2 * sent)
            wait = _FIRST_WAIT_S

    def recv(self, max_bytes: int, timeout_s: float) -> bytes:
        """At most ``max_bytes`` from the guest within ``timeout_s``; ``b""`` when it closed.

        :raises AgentTimeoutError: if nothing arrived in time.
        :raises AgentUnavailableError: if the channel is closed or broken.
        """
        if max_bytes < 1:
            raise ValueError("max_bytes must be positive")
        deadline = time.monotonic() + timeout_s
        wait = _FIRST_WAIT_S
        while True:
            got = self._call("receiving from", self._stream.recv, max_bytes)
            if isinstance(got, bytes):
                # b"" is end of stream: the guest closed its end (or the domain stopped).
                # libvirt never returns more than asked; a longer answer is not trusted.
                if len(got) > max_bytes:
                    raise AgentUnavailableError(f"{self._description} returned too much")
                return got
            if got != _WOULD_BLOCK:
                raise AgentUnavailableError(f"{self._description} answered recv with {got!r}")
            wait = self._sleep(deadline, wait, "receiving from")

    def close(self) -> None:
        """Abort the stream (the guest's agent sees the host side hang up); idempotent."""
        if self._closed:
            return
        self._closed = True
        # Closing is best effort: a stream on a dead connection cannot be aborted cleanly,
        # and the caller is done with it either way.
        with contextlib.suppress(EnclaveError), _translate(f"closing {self._description}"):
            self._stream.abort()

    def _call(self, verb: str, call: Any, argument: Any) -> Any:
        """One stream call, libvirt errors translated and then read as a lost channel.

        :raises AgentUnavailableError: for any libvirt error, or after :meth:`close`.
        """
        if self._closed:
            raise AgentUnavailableError(f"{self._description} is closed")
        try:
            with _translate(f"{verb} {self._description}"):
                return call(argument)
        except EnclaveError as exc:
            raise AgentUnavailableError(exc.message) from exc

    def _sleep(self, deadline: float, wait: float, verb: str) -> float:
        """Sleep before the next try; the next wait (doubled, capped).

        :raises AgentTimeoutError: if the deadline has passed.
        """
        left = deadline - time.monotonic()
        if left <= 0:
            raise AgentTimeoutError(f"timed out {verb} {self._description}")
        time.sleep(min(wait, left))
        return min(wait * 2, _MAX_WAIT_S)
