"""What both channels accept from a person: the input vocabulary the API's schemas and the
console's forms share, and the enclave request as a service's draft.

Owns :class:`Strict` (unknown fields refused, no control character in any string), the names and
free-text fields, and :class:`RequestCreate`, whose :meth:`RequestCreate.draft` is the one
conversion from a validated request (a JSON body or the console's form) to a
:class:`~sovereign.services.requests.RequestDraft`. Neutral ground: imports neither the API nor
the console, so that the console accepts exactly what the API accepts.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from sovereign.domain.tenants import Resources
from sovereign.services.requests import RequestDraft
from sovereign.text import control_character, describe


class FreeText:
    """Marks a string field as free text a person typed (a reason, a purpose): besides printable
    text it may hold tab and line breaks, which every exporter escapes. Nothing else may."""


#: What a name (tenant, host, image) looks like; string path parameters are names too.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=NAME_PATTERN)]
#: What a GPU's PCI address looks like (``DDDD:BB:SS.F``, as ``lspci -D`` and libvirt print it):
#: the only form a GPU address takes in a URL, a form or on the command line.
PCI_ADDRESS_PATTERN = r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[01][0-9a-fA-F]\.[0-7]$"
#: No control character or line separator (``sovereign.text``), stated in the document so that
#: clients and the contract test know it; :class:`Strict` enforces it for every string anyway.
PRINTABLE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
Reason = Annotated[str, Field(max_length=2000), FreeText()]
RequiredReason = Annotated[str, Field(min_length=1, max_length=2000), FreeText()]


def _strings(value: Any) -> list[str]:
    """The strings in a field's value (lists and mappings opened; nested models check their own
    fields)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list | tuple | set | frozenset):
        return [s for item in value for s in _strings(item)]
    if isinstance(value, dict):
        return [s for pair in value.items() for item in pair for s in _strings(item)]
    return []


class Strict(BaseModel):
    """Base of every input schema: unknown fields are an error, and no string holds a control
    character or line separator (identifiers never; free text only tab and line breaks), so
    nothing that reaches a service, an audit event or a log line can forge a line there."""

    model_config = ConfigDict(extra="forbid")

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any, info: ValidationInfo) -> Any:
        field = cls.model_fields.get(info.field_name or "")
        free = field is not None and any(isinstance(m, FreeText) for m in field.metadata)
        for text in _strings(value):
            char = control_character(text, free_text=free)
            if char is not None:
                raise ValueError(f"must not contain the control character {describe(char)}")
        return value


# -- inputs -----------------------------------------------------------------------------------


class LabelIn(Strict):
    """A security label: a level and compartments, e.g. ``{"level": "SECRET", ...}``."""

    level: Annotated[str, Field(min_length=1, max_length=64)]
    compartments: Annotated[list[Name], Field(max_length=32)] = []


class ResourcesIn(Strict):
    """What the enclave needs."""

    vcpus: Annotated[int, Field(ge=1, le=1024)]
    memory_mib: Annotated[int, Field(ge=256, le=16 * 1024 * 1024)]
    gpus: Annotated[int, Field(ge=0, le=64)] = 0
    gpu_model: Annotated[str, Field(min_length=1, max_length=64)] | None = None
    disk_gib: Annotated[int, Field(ge=1, le=1024 * 1024)]


class RequestCreate(Strict):
    """A request for an enclave."""

    tenant: Name
    label: LabelIn
    resources: ResourcesIn
    image: Annotated[str, Field(min_length=1, max_length=128)]
    purpose: Annotated[str, Field(min_length=1, max_length=2000), FreeText()]
    lease_hours: Annotated[int, Field(ge=1, le=24 * 365)]
    #: Narrow the tenant's residency to these countries (ISO 3166-1 alpha-2).
    residency: (
        Annotated[
            list[Annotated[str, Field(pattern=r"^[A-Z]{2}$")]], Field(min_length=1, max_length=64)
        ]
        | None
    ) = None

    def draft(self) -> RequestDraft:
        """This request as the request service takes it."""
        r = self.resources
        return RequestDraft(
            tenant=self.tenant,
            label=self.label.model_dump(),
            resources=Resources(
                vcpus=r.vcpus, memory_mib=r.memory_mib, gpus=r.gpus, disk_gib=r.disk_gib
            ),
            gpu_model=r.gpu_model,
            image=self.image,
            purpose=self.purpose,
            lease_hours=self.lease_hours,
            residency=None if self.residency is None else tuple(self.residency),
        )
