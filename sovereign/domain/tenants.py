"""Tenants, their quotas, and the image catalog.

Owns :class:`Resources` (the unit of quotas and requests), :class:`Tenant` (with its data
residency) and :class:`Image`.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from enum import StrEnum

from sovereign.domain.labels import Label

#: The residency of a tenant defined without one (and of tenants created before residency).
DEFAULT_RESIDENCY: tuple[str, ...] = ("ES",)


class TenantKind(StrEnum):
    """Classified and civilian tenants never share a host, a GPU or an IOMMU group."""

    CLASSIFIED = "classified"
    CIVILIAN = "civilian"


@dataclass(frozen=True)
class Resources:
    """An amount of compute: what a request asks for, what a quota allows."""

    vcpus: int = 0
    memory_mib: int = 0
    gpus: int = 0
    disk_gib: int = 0

    def __add__(self, other: Resources) -> Resources:
        return Resources(
            vcpus=self.vcpus + other.vcpus,
            memory_mib=self.memory_mib + other.memory_mib,
            gpus=self.gpus + other.gpus,
            disk_gib=self.disk_gib + other.disk_gib,
        )

    def exceeded(self, limit: Resources) -> list[str]:
        """Names of the dimensions in which this amount is over ``limit`` (empty: it fits)."""
        return [
            f"{name} {mine} > {theirs}"
            for name, mine, theirs in (
                ("vcpus", self.vcpus, limit.vcpus),
                ("memory_mib", self.memory_mib, limit.memory_mib),
                ("gpus", self.gpus, limit.gpus),
                ("disk_gib", self.disk_gib, limit.disk_gib),
            )
            if mine > theirs
        ]


@dataclass(frozen=True)
class Tenant:
    """An organisation that owns requests and enclaves, addressed by its unique name."""

    id: uuid.UUID
    name: str
    kind: TenantKind
    max_label: Label
    quota: Resources
    display_name: str = ""
    #: The countries (ISO 3166-1 alpha-2, sorted, at least one) its enclaves and their keys
    #: may live in (:mod:`sovereign.domain.residency`).
    residency: tuple[str, ...] = DEFAULT_RESIDENCY


@dataclass(frozen=True)
class Image:
    """An approved base image and the highest label it may run at."""

    id: uuid.UUID
    name: str
    format: str
    checksum: str
    max_label: Label
    description: str = ""
