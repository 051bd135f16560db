"""Schemas of the report endpoints (pydantic; the same models validate the query and generate
OpenAPI).

Owns the shape of the usage report's query and response, and how a
:class:`~sovereign.services.usage.UsageReport` becomes one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from sovereign.api.schemas import DateTimeParam, Name, Strict
from sovereign.services.usage import UsageReport


class UsageQuery(Strict):
    """The period (``until`` defaults to now, and stops there), grouping and tenant filter."""

    by: Literal["country", "tenant"] = "country"
    since: DateTimeParam | None = None
    until: DateTimeParam | None = None
    tenant: Name | None = None


GpuHours = Annotated[float, Field(ge=0, description="GPU hours (one GPU for one hour is 1)")]
Country = Annotated[
    str,
    Field(
        max_length=2,
        description="ISO 3166-1 alpha-2 code of the host's country; empty where none recorded",
    ),
]


class UsageRowOut(BaseModel):
    """One tenant's use of one country in the period."""

    tenant: str
    country: Country
    gpu_hours: GpuHours
    enclaves: Annotated[int, Field(ge=0)]


class UsageTotalOut(BaseModel):
    """The sum over one country or one tenant (``key``), as the report is grouped."""

    key: str
    gpu_hours: GpuHours
    enclaves: Annotated[int, Field(ge=0)]


class ParityOut(BaseModel):
    """A tenant allowed in several countries: its share of GPU hours in each (0 to 1)."""

    tenant: str
    shares: dict[str, Annotated[float, Field(ge=0, le=1)]]


class UsageReportOut(BaseModel):
    """GPU hours per tenant and country, counting only enclaves at or below your clearance."""

    by: Literal["country", "tenant"]
    since: datetime | None
    until: datetime
    gpu_hours: GpuHours
    rows: list[UsageRowOut]
    totals: list[UsageTotalOut]
    parity: list[ParityOut]

    @classmethod
    def of(cls, report: UsageReport) -> UsageReportOut:
        """From the service's report."""
        return cls.model_validate(report.to_dict())
