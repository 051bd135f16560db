"""What the hypervisor side needs to know of one enclave: :class:`EnclavePlan`.

A plain value with no libvirt in it, so the control plane's hypervisor port can extend it (with
the host's URI) instead of describing the same enclave a second time. It must not import the
modules that talk to libvirt.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from enclaves.inventory import GpuDevice


@dataclass(frozen=True)
class EnclavePlan:
    """What the host needs to know of one enclave to build or tear it down."""

    enclave_id: uuid.UUID
    domain_name: str
    domain_type: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    #: The GPUs to pass through, as the host reported them (with their IOMMU groups).
    gpus: tuple[GpuDevice, ...]
    #: The enclave's security label as text (recorded in the domain's metadata).
    label: str
    classified: bool
    #: The approved image the enclave's disk is cloned from, None for an empty disk.
    image: PlanImage | None = None


@dataclass(frozen=True)
class PlanImage:
    """The catalog's image of an enclave: its name and checksum (``sha256:<hex>``).

    The host side finds the image's files by the checksum in its image store
    (:class:`enclaves.imagestore.ImageStore`) and verifies them before use.
    """

    name: str
    checksum: str


#: The namespace of sanitizer domain UUIDs (a UUID derived from the name: one per GPU).
_SANITIZER_UUID_NAMESPACE = uuid.UUID("5a417e00-5c2b-4b00-9000-00000000000d")


def sanitizer_uuid(name: str) -> uuid.UUID:
    """The domain UUID of the sanitizer domain called ``name`` (stable: one per GPU), which
    :mod:`enclaves.sanitizer` gives it and the control plane's drift check expects."""
    return uuid.uuid5(_SANITIZER_UUID_NAMESPACE, name)
