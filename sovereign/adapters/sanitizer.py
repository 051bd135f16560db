"""The GPU sanitizer backends of the :class:`~sovereign.services.ports.Sanitizer` port.

Owns three backends of ``Sanitizer.hand_over(HandoverRequest) -> HandoverEvidence``:

* :class:`SimulatedSanitizer`, for the simulated GPUs of libvirt test-driver hosts (the
  embedded default): no reset (the test driver has none, and says so in the evidence), and the
  scrub program itself (:func:`enclaves.agent.scrub.scrub`) run in this process on a host
  buffer of ``simulated_mib`` MiB standing in for the GPU's memory, with the previous tenant's
  canary nonce. Its evidence always says ``simulated: true``;
* :class:`LibvirtSanitizer`, for real hosts: the whole hand-over of
  :func:`enclaves.sanitizer.hand_over` (leftover sanitizer domain destroyed, every function of
  the GPU's IOMMU group reset through libvirt's node-device API, a transient sanitizer domain
  booted from the configured sanitizer image with only that GPU passed through, the scrub over
  its agent channel, the domain always destroyed), over the hypervisor adapter's connection to
  the host;
* :class:`RoutingSanitizer`, which picks one of them per host URI (``test://`` URIs are the
  simulated hosts).

It translates what goes wrong, once, here: a host that cannot be reached now is a
:class:`~sovereign.errors.DependencyUnavailableError` (retried later); anything else (a reset
refused, no sanitizer image, an agent that does not answer in time, a scrub that fails) is a
:class:`~sovereign.errors.GpuHandoverError` whose reason goes into the failed certificate
(which makes it one bounded, printable line). It must not judge the scrub report
(:mod:`sovereign.domain.handover` does), move GPUs, or log the canary nonce.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, Literal

from enclaves.enclave import EnclaveHost
from enclaves.errors import EnclaveError, HostIdentityChangedError, HypervisorUnavailableError
from enclaves.imagestore import ImageStore
from enclaves.sanitizer import SanitizerSettings, hand_over
from enclaves.spec import PciAddress
from sovereign.errors import DependencyUnavailableError, GpuHandoverError, SovereignError
from sovereign.services.ports import HandoverEvidence, HandoverRequest, Sanitizer

__all__ = [
    "LibvirtSanitizer",
    "RoutingSanitizer",
    "SanitizerSettings",
    "SimulatedSanitizer",
]

#: The URI scheme of libvirt's test driver: its hosts' GPUs are simulated.
SIMULATED_SCHEME = "test://"
#: The evidence of the reset a simulated GPU gets (none: the test driver cannot reset).
SIMULATED_RESET: dict[str, Any] = {
    "type": "none",
    "simulated": True,
    "note": "libvirt's test driver has no node device reset",
}
NO_TORCH = "the scrub program needs PyTorch: install sovereign[workloads]"


class SimulatedSanitizer:
    """Hands over a simulated GPU: the scrub program on a host buffer, in this process."""

    def __init__(self, simulated_mib: int = 64, *, device: str = "cpu") -> None:
        """``simulated_mib`` MiB of host memory stand in for each GPU's memory."""
        if isinstance(simulated_mib, bool) or not 1 <= simulated_mib <= 64 * 1024:
            raise ValueError("simulated_mib must be 1..65536")
        self._bytes = simulated_mib << 20
        self._device = device

    def hand_over(self, request: HandoverRequest) -> HandoverEvidence:
        """Scrub ``simulated_mib`` MiB standing in for the GPU; the reset is recorded as none.

        :raises GpuHandoverError: if PyTorch is missing, the scrub fails, or it took longer
            than ``request.deadline_s``.
        """
        try:
            # Imported here: PyTorch is an optional extra and heavy to import.
            from enclaves.agent import scrub  # noqa: PLC0415
        except ImportError as e:
            raise GpuHandoverError(NO_TORCH) from e
        started = time.monotonic()
        try:
            report = scrub.scrub(
                self._device,
                nonce=request.nonce,
                canary_nonce=request.canary_nonce,
                simulate_bytes=self._bytes,
            )
        except ImportError as e:
            raise GpuHandoverError(NO_TORCH) from e
        except (scrub.ScrubError, RuntimeError, ValueError, OSError, MemoryError) as e:
            raise GpuHandoverError(f"the scrub program failed: {e}") from e
        elapsed = time.monotonic() - started
        if elapsed > request.deadline_s:
            raise GpuHandoverError(
                f"no answer within {request.deadline_s:g} s (the scrub took {elapsed:.1f} s)"
            )
        return HandoverEvidence(reset=dict(SIMULATED_RESET), report=report, simulated=True)


class LibvirtSanitizer:
    """Hands over a real GPU: node-device reset, then a scrub in a sanitizer domain."""

    def __init__(
        self,
        hosts: Callable[[str], EnclaveHost],
        *,
        image_dir: str | None,
        image: str | None,
        settings: SanitizerSettings | None = None,
    ) -> None:
        """``hosts`` gives the connection to a host URI (the hypervisor adapter's, so URI policy
        and host identity pinning apply); ``image`` is the sanitizer image's checksum in the
        image store at ``image_dir`` (SANITIZER_IMAGE, IMAGE_DIR)."""
        self._hosts = hosts
        self._image_dir = image_dir
        self._image = image
        self._settings = settings if settings is not None else SanitizerSettings()

    def hand_over(self, request: HandoverRequest) -> HandoverEvidence:
        """The whole hand-over on the GPU's host within ``request.deadline_s``.

        :raises DependencyUnavailableError: the host cannot be reached now.
        :raises GpuHandoverError: the hand-over was tried and failed (the reason says why).
        """
        if self._image is None:
            raise GpuHandoverError(
                "no sanitizer image: set SANITIZER_IMAGE to an image of the image store"
            )
        if self._image_dir is None:
            raise GpuHandoverError("no image store: set IMAGE_DIR")
        try:
            image = ImageStore(self._image_dir).find(self._image)
        except (EnclaveError, ValueError, OSError) as e:
            raise GpuHandoverError(f"sanitizer image {self._image}: {e}") from e
        if image is None:
            raise GpuHandoverError(f"sanitizer image {self._image} is not in the image store")
        try:
            functions = self._functions(request)
            host = self._hosts(request.uri)
            result = hand_over(
                host,
                name=request.domain_name,
                functions=functions,
                image=image,
                nonce=request.nonce,
                canary_nonce=request.canary_nonce,
                settings=self._settings_for(request),
                timeout_s=request.deadline_s,
            )
        except (HypervisorUnavailableError, HostIdentityChangedError) as e:
            raise DependencyUnavailableError(
                f"hypervisor {request.uri} is unavailable (GPU hand-over)", dependency="hypervisor"
            ) from e
        except DependencyUnavailableError:
            raise
        except EnclaveError as e:
            raise GpuHandoverError(e.message) from e
        except (SovereignError, ValueError) as e:
            raise GpuHandoverError(str(e)) from e
        return HandoverEvidence(
            reset=result.reset,
            report=result.report,
            # Simulated device memory stands in for the GPU only where none was passed through.
            simulated=self._settings.simulate_mib is not None,
        )

    def _settings_for(self, request: HandoverRequest) -> SanitizerSettings:
        """The settings with the host's domain type (``kvm``, or ``qemu`` on a TCG host).

        :raises GpuHandoverError: for any other domain type.
        """
        if request.domain_type not in ("kvm", "qemu"):
            raise GpuHandoverError(f"unknown domain type {request.domain_type!r} of the host")
        domain_type: Literal["kvm", "qemu"] = "kvm" if request.domain_type == "kvm" else "qemu"
        return dataclasses.replace(self._settings, domain_type=domain_type)

    def _functions(self, request: HandoverRequest) -> list[PciAddress]:
        """The PCI functions to reset and pass through: the GPU's whole IOMMU group.

        :raises ValueError: if a member is not a PCI address or the GPU is not among them.
        """
        functions = [PciAddress.parse(member) for member in request.group_members]
        if PciAddress.parse(request.address) not in functions:
            raise ValueError(f"GPU {request.address} is not in its own IOMMU group")
        if self._settings.simulate_mib is not None:
            # Tests on machines without a GPU: simulated device memory, nothing passed
            # through and nothing reset (the evidence says so, and simulated: true).
            return []
        return functions


class RoutingSanitizer:
    """Picks the backend per host: simulated for ``test://`` URIs, libvirt for the rest."""

    def __init__(self, simulated: Sanitizer, real: Sanitizer | None) -> None:
        """``real`` None: real hosts' hand-overs fail (their GPUs are quarantined)."""
        self._simulated = simulated
        self._real = real

    def hand_over(self, request: HandoverRequest) -> HandoverEvidence:
        """Hand over with the backend of the request's host.

        :raises DependencyUnavailableError: the host cannot be reached now.
        :raises GpuHandoverError: the hand-over failed, or no backend serves real hosts.
        """
        if request.uri.startswith(SIMULATED_SCHEME):
            return self._simulated.hand_over(request)
        if self._real is None:
            raise GpuHandoverError("no sanitizer is configured for hosts outside the test driver")
        return self._real.hand_over(request)
