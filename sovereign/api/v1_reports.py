"""REST API v1, reports: GPU usage per tenant and country. Thin views on the same ``api``
registry as :mod:`sovereign.api.v1`.

Owns those endpoints. The service decides who reads what (officers and auditors, up to their
clearance) and records each report; the problem table answers refusals and bad input.
"""

from __future__ import annotations

from sovereign.api import report_schemas as r
from sovereign.api.v1 import api
from sovereign.app_context import services
from sovereign.services.recording import CallContext


@api.route(
    "GET",
    "/reports/usage",
    summary="GPU usage per tenant and country",
    tag="reports",
    query=r.UsageQuery,
    response=r.UsageReportOut,
    roles="officers and auditors; only enclaves at or below your clearance count",
)
def usage_report(ctx: CallContext, query: r.UsageQuery) -> r.UsageReportOut:
    """GPU hours (and enclave counts) in the period, ended enclaves included, grouped by
    country or tenant, with each multi-country tenant's share per allowed country."""
    report = services().usage.report(
        ctx, by=query.by, since=query.since, until=query.until, tenant=query.tenant
    )
    return r.UsageReportOut.of(report)
