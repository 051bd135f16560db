"""``sovereign report``: reports the control plane computes from its own records.

Owns the report commands of the CLI: ``report usage`` (GPU hours per tenant and country, and
each multi-country tenant's share per country). They run with the control plane's own
configuration, as the operator on its host (audit actor ``system:cli``), so they count every
enclave whatever its label; the API's report counts only what its reader is cleared for.
Must not compute anything itself: the figures come from
:class:`~sovereign.services.usage.UsageService`.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

import click

from sovereign.errors import SovereignError

#: What an empty country column means: the host the enclave ran on recorded none.
NO_COUNTRY = "-"


def _services() -> Any:
    from sovereign import app_context, create_app  # noqa: PLC0415

    return app_context.services(create_app())


def _fail(error: SovereignError) -> None:
    click.secho(f"error: {error.message}", fg="red", err=True)
    sys.exit(2)


@click.group()
def report() -> None:
    """Reports: GPU usage per tenant and country."""


def _utc(value: datetime | None) -> datetime | None:
    """A time typed on the command line, read as UTC (as ``audit export`` reads it)."""
    return None if value is None else value.replace(tzinfo=UTC)


@report.command("usage")
@click.option(
    "--by",
    type=click.Choice(["country", "tenant"]),
    default="country",
    show_default=True,
    help="Group rows and totals by country or by tenant.",
)
@click.option("--since", type=click.DateTime(), help="Count from this time (UTC).")
@click.option("--until", type=click.DateTime(), help="Count up to this time (UTC; default now).")
@click.option("--tenant", help="Only this tenant.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def report_usage(
    by: str,
    since: datetime | None,
    until: datetime | None,
    tenant: str | None,
    as_json: bool,
) -> None:
    """GPU hours (and enclave counts) per tenant and country, ended enclaves included, with
    the share of each allowed country for tenants allowed in several."""
    from sovereign.cli_hosts import cli_context  # noqa: PLC0415

    try:
        made = _services().usage.report(
            cli_context(), by=by, since=_utc(since), until=_utc(until), tenant=tenant
        )
    except SovereignError as e:
        _fail(e)
    data = made.to_dict()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=True))
        return
    click.echo(format_usage(data))


def format_usage(data: dict[str, Any]) -> str:
    """The text table of a report's :meth:`~sovereign.services.usage.UsageReport.to_dict`."""
    by = data["by"]
    other = "tenant" if by == "country" else "country"
    lines = [
        f"GPU usage from {data['since'] or 'the beginning'} to {data['until']}, by {by}",
        "",
        f"{by.upper():<20} {other.upper():<20} {'GPU HOURS':>12} {'ENCLAVES':>9}",
    ]
    totals = {t["key"]: t for t in data["totals"]}
    current = None
    for row in data["rows"]:
        key = row[by] or NO_COUNTRY
        if current is not None and key != current:
            lines.append(_total(current, totals))
        current = key
        lines.append(
            f"{key:<20} {row[other] or NO_COUNTRY:<20} "
            f"{row['gpu_hours']:>12.2f} {row['enclaves']:>9d}"
        )
    if current is None:
        lines.append("(no enclave in the period)")
    else:
        lines.append(_total(current, totals))
    lines.append(f"{'all':<20} {'':<20} {data['gpu_hours']:>12.2f}")
    if data["parity"]:
        lines += ["", "Parity: each tenant's share of its GPU hours per allowed country"]
        for entry in data["parity"]:
            shares = "  ".join(f"{c} {x * 100:5.1f}%" for c, x in entry["shares"].items())
            lines.append(f"{entry['tenant']:<20} {shares}")
    return "\n".join(lines)


def _total(key: str, totals: dict[str, dict[str, Any]]) -> str:
    found = totals[key if key != NO_COUNTRY else ""]
    return f"{'':<20} {'(total)':<20} {found['gpu_hours']:>12.2f} {found['enclaves']:>9d}"
