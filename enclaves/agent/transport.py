"""Byte transports from the host to an enclave's agent.

Owns the :class:`Transport` port the :class:`~enclaves.agent.client.AgentClient` speaks over and
:class:`SocketTransport`, a connected stream socket (the unix socket of a process enclave, a
socketpair in tests). The libvirt channel of a VM is another transport (``enclaves.channel``).
A transport moves bytes with a timeout on every call and raises only
:mod:`enclaves.errors` agent errors; it knows nothing of frames.
"""

from __future__ import annotations

import contextlib
import socket
from typing import Protocol

from enclaves.errors import AgentTimeoutError, AgentUnavailableError

#: Send buffer asked of the kernel (which caps it at ``net.core.wmem_max``). The default
#: (~200 KiB on a unix socket) wakes the agent a dozen times per 1 MiB upload chunk; with
#: room for several chunks it reads each in about three (measured: ~10 ms less agent CPU and
#: fewer stalls per 64 MiB put).
SEND_BUFFER = 4 << 20


class Transport(Protocol):
    """A byte stream to one agent."""

    def send(self, data: bytes | memoryview, timeout_s: float) -> None:
        """Send all of ``data`` within ``timeout_s``.

        :raises AgentTimeoutError: if it could not be sent in time.
        :raises AgentUnavailableError: if the connection is lost.
        """

    def recv(self, max_bytes: int, timeout_s: float) -> bytes:
        """Receive at most ``max_bytes`` (at least one), or ``b""`` if the peer closed.

        :raises AgentTimeoutError: if nothing arrived within ``timeout_s``.
        :raises AgentUnavailableError: if the connection is lost.
        """

    def close(self) -> None:
        """Close the connection; idempotent."""


class SocketTransport:
    """A :class:`Transport` over a connected stream socket."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        with contextlib.suppress(OSError):  # a tuning: without it the socket still works
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)

    @classmethod
    def connect_unix(cls, path: str, timeout_s: float) -> SocketTransport:
        """Connect to the agent listening on the unix socket ``path``.

        :raises AgentTimeoutError: if the connection is not made within ``timeout_s``.
        :raises AgentUnavailableError: if nothing listens there.
        """
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout_s)
        try:
            sock.connect(path)
        except TimeoutError as exc:
            sock.close()
            raise AgentTimeoutError("timed out connecting to the agent") from exc
        except OSError as exc:
            sock.close()
            raise AgentUnavailableError(f"cannot connect to the agent: {exc.strerror}") from exc
        return cls(sock)

    def send(self, data: bytes | memoryview, timeout_s: float) -> None:
        """Send all of ``data`` within ``timeout_s``."""
        self._sock.settimeout(_positive(timeout_s))
        try:
            self._sock.sendall(data)
        except TimeoutError as exc:
            raise AgentTimeoutError("timed out sending to the agent") from exc
        except OSError as exc:
            raise AgentUnavailableError("lost the connection to the agent") from exc

    def recv(self, max_bytes: int, timeout_s: float) -> bytes:
        """Receive at most ``max_bytes`` within ``timeout_s``; ``b""`` when closed."""
        self._sock.settimeout(_positive(timeout_s))
        try:
            return self._sock.recv(max_bytes)
        except TimeoutError as exc:
            raise AgentTimeoutError("timed out waiting for the agent") from exc
        except OSError as exc:
            raise AgentUnavailableError("lost the connection to the agent") from exc

    def close(self) -> None:
        """Close the socket."""
        self._sock.close()


def _positive(timeout_s: float) -> float:
    # A zero or negative timeout would make the socket non-blocking (0) or fail (negative):
    # a spent deadline still waits a moment, then times out.
    return max(timeout_s, 0.001)
