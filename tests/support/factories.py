"""Small builders for principals, tenants, images and drafts used across tests."""

from __future__ import annotations

import time
import uuid
from dataclasses import replace

from sovereign.domain.identity import Principal, Role
from sovereign.domain.labels import LabelScheme
from sovereign.domain.tenants import Image, Resources, Tenant, TenantKind
from sovereign.services.recording import CallContext
from sovereign.services.requests import RequestDraft

SCHEME = LabelScheme()
ALL = ("CRYPTO", "EU", "NATO")


def principal(
    username: str,
    *roles: Role,
    level: str | None = "SECRET",
    compartments: tuple[str, ...] = ALL,
    tenants: tuple[str, ...] = (),
) -> Principal:
    return Principal(
        subject=f"sub-{username}",
        username=username,
        roles=frozenset(roles),
        clearance=SCHEME.label(level, compartments) if level else None,
        tenants=frozenset(tenants),
    )


def ctx(p: Principal) -> CallContext:
    """``p`` calling from a password sign-in made just now (real time), unless ``p`` says when
    (step-up tests set ``auth_time`` themselves)."""
    if p.auth_time is None:
        p = replace(p, auth_time=int(time.time()))
    return CallContext(principal=p, request_id="test", source="127.0.0.1")


ANALYST_DEFENCE = principal(
    "analyst-defence", Role.ANALYST, compartments=("NATO",), tenants=("defence",)
)
ANALYST_RESEARCH = principal(
    "analyst-research", Role.ANALYST, level="UNCLASSIFIED", compartments=(), tenants=("research",)
)
OFFICER_1 = principal("officer-1", Role.OFFICER)
OFFICER_2 = principal("officer-2", Role.OFFICER)
OFFICER_LOW = principal("officer-low", Role.OFFICER, level="RESTRICTED", compartments=())
AUDITOR = principal("auditor", Role.AUDITOR)
OPERATOR = principal("operator", Role.OPERATOR, level=None)

BIG = Resources(vcpus=256, memory_mib=2_097_152, gpus=8, disk_gib=16_384)


def tenant(
    name: str,
    kind: TenantKind,
    level: str,
    compartments: tuple[str, ...] = (),
    quota: Resources = BIG,
    residency: tuple[str, ...] = ("ES",),
) -> Tenant:
    return Tenant(
        id=uuid.uuid4(),
        name=name,
        kind=kind,
        max_label=SCHEME.label(level, compartments),
        quota=quota,
        residency=residency,
    )


def image(
    name: str = "debian-12-cuda", level: str = "SECRET", compartments: tuple[str, ...] = ALL
) -> Image:
    return Image(
        id=uuid.uuid4(),
        name=name,
        format="qcow2",
        checksum="sha256:" + "ab" * 32,
        max_label=SCHEME.label(level, compartments),
    )


DEFENCE = tenant("defence", TenantKind.CLASSIFIED, "SECRET", ALL)
RESEARCH = tenant("research", TenantKind.CIVILIAN, "UNCLASSIFIED", residency=("ES", "PT"))


def draft(
    tenant: str = "defence",
    level: str = "SECRET",
    compartments: tuple[str, ...] = ("NATO",),
    gpus: int = 2,
    image: str = "debian-12-cuda",
    lease_hours: int = 24,
) -> RequestDraft:
    return RequestDraft(
        tenant=tenant,
        label={"level": level, "compartments": list(compartments)},
        resources=Resources(vcpus=16, memory_mib=65_536, gpus=gpus, disk_gib=200),
        gpu_model="H100-SXM5-80GB" if gpus else None,
        image=image,
        purpose="train a model",
        lease_hours=lease_hours,
    )
