"""The errors the hypervisor side raises.

Owns the exception tree that callers of :mod:`enclaves` catch. ``libvirt.libvirtError`` never
leaves this package: :mod:`enclaves.host` translates it, in one place, into one of these
classes and chains the original (``raise ... from exc``) so its details stay in tracebacks.
Nothing here knows about HTTP or the control plane; ``sovereign`` maps these to its own errors.
"""

from __future__ import annotations


class EnclaveError(Exception):
    """Base of every error raised by :mod:`enclaves`."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: Human-readable description; for translated libvirt errors it names the libvirt
        #: error code, which is what an operator searches for in libvirt's logs.
        self.message = message


class HypervisorUnavailableError(EnclaveError):
    """The hypervisor cannot be reached: connection refused, lost, timed out or unusable."""


class DomainNotFoundError(EnclaveError):
    """The hypervisor has no domain with the requested name or UUID."""
