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


class HostIdentityChangedError(EnclaveError):
    """A (re)opened connection answered with another host identity than expected: the URI
    reaches another machine now, and nothing may be done on it as if it were the same host."""


class UnsupportedError(EnclaveError):
    """The hypervisor's driver does not implement the call or one of its flags.

    libvirt says so with ``VIR_ERR_NO_SUPPORT`` ("this function is not supported by the
    connection driver") or with ``VIR_ERR_INVALID_ARG`` "unsupported flags"; the test driver,
    for example, has no secret driver and no volume wipe.
    """


class NotFoundError(EnclaveError):
    """The hypervisor has no object of the requested kind with that name or UUID."""


class DomainNotFoundError(NotFoundError):
    """The hypervisor has no domain with the requested name or UUID."""


class StoragePoolNotFoundError(NotFoundError):
    """The hypervisor has no storage pool with the requested name."""


class VolumeNotFoundError(NotFoundError):
    """The storage pool has no volume with the requested name."""


class SecretNotFoundError(NotFoundError):
    """The hypervisor has no libvirt secret with the requested UUID."""


class NetworkNotFoundError(NotFoundError):
    """The hypervisor has no virtual network with the requested name."""


class NodeDeviceNotFoundError(NotFoundError):
    """The hypervisor has no node device (a host PCI function) with the requested name."""


class EnclaveRefusedError(EnclaveError):
    """The enclave as planned may not be built: its spec is invalid or breaks an isolation
    rule (the designer's refusal), or what a step needs is missing (its keys). Retrying the
    same plan cannot help."""


class GpuUnavailableError(EnclaveRefusedError):
    """A GPU to pass through is not on the host, or another domain already holds a function
    of its IOMMU group (isolation rule 1: a GPU is never shared)."""


class AgentError(EnclaveError):
    """Base of the errors talking to an enclave's workload agent (:mod:`enclaves.agent`).

    The agent runs inside the enclave and is untrusted: whatever it sends surfaces as one of
    these, never as another exception.
    """


class AgentUnavailableError(AgentError):
    """The agent cannot be reached, or the connection to it was lost or closed."""


class AgentProtocolError(AgentError):
    """The agent broke the protocol: garbage, an oversize frame, a wrong hash or a bad name.

    The connection is closed; nothing more it says can be trusted to be in step.
    """


class AgentTimeoutError(AgentError):
    """The agent did not answer in time; the connection is closed."""


class AgentRefusedError(AgentError):
    """The agent answered with an error frame.

    :attr:`message` is the agent's message, control characters replaced and length-capped, so
    it may be shown but is still text from inside an enclave.
    """


class SandboxError(EnclaveError):
    """A process enclave (:mod:`enclaves.sandbox`) could not be started, found or stopped."""
