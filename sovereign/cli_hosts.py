"""``sovereign hosts`` and ``sovereign sites``: record the sites hosts stand in, register
hypervisors at them, rediscover their GPUs, drain and quarantine them.

Owns the host and site commands of the CLI. They run with the control plane's own configuration (the
database and Vault credentials), as the deploying operator; their audit events name the actor
``system:cli`` and the operating-system user. Accreditation given at ``hosts add`` is trusted for
that reason; changing it later takes two officers through the API.
"""

from __future__ import annotations

import getpass
import sys
from typing import Any

import click
from flask import Flask

from sovereign.errors import SovereignError


def _services() -> Any:
    from sovereign import app_context, create_app  # noqa: PLC0415

    app: Flask = create_app()
    return app_context.services(app)


def cli_context() -> Any:
    """The audit identity of a command typed by an operator on the control plane's host."""
    from sovereign.domain.identity import Principal  # noqa: PLC0415
    from sovereign.services.recording import CallContext  # noqa: PLC0415

    user = getpass.getuser()
    return CallContext(
        principal=Principal(subject=f"system:cli:{user}", username=user),
        actor="system:cli",
        source="cli",
    )


def _fail(error: SovereignError) -> None:
    click.secho(f"error: {error.message}", fg="red", err=True)
    sys.exit(2)


def parse_label(services: Any, text: str) -> Any:
    """``SECRET`` or ``SECRET:NATO,EU`` as a label of the configured scheme."""
    level, _, compartments = text.partition(":")
    return services.scheme.parse(
        {"level": level, "compartments": [c for c in compartments.split(",") if c]}
    )


@click.group()
def hosts() -> None:
    """Hypervisor hosts and their GPUs."""


@hosts.command("add")
@click.argument("uri")
# The URI is checked against the configured allow-list (HYPERVISOR_TRANSPORTS,
# HYPERVISOR_URI_PARAMS, HYPERVISOR_PORTS) before anything connects to it.
@click.option("--name", required=True, help="Short unique host name.")
@click.option(
    "--site",
    required=True,
    help="The site the host stands in (sovereign sites add); it gets the site's country.",
)
@click.option(
    "--accreditation",
    required=True,
    help="Highest label the host may carry: LEVEL or LEVEL:COMPARTMENT,...",
)
@click.option(
    "--domain-type",
    type=click.Choice(["kvm", "qemu"]),
    default="kvm",
    show_default=True,
    help="qemu (TCG) only where KVM is unavailable, e.g. test machines.",
)
def hosts_add(uri: str, name: str, site: str, accreditation: str, domain_type: str) -> None:
    """Register the hypervisor at URI and discover its GPUs (they start dirty).

    URI is qemu+tls://HOST/system in production (qemu+ssh:// where configured); a hypervisor
    registered already under another URI is refused.
    """
    try:
        services = _services()
        host = services.hosts.add(
            cli_context(),
            name=name,
            uri=uri,
            site=site,
            accreditation=parse_label(services, accreditation),
            domain_type=domain_type,
        )
        gpus = services.hosts.gpus(cli_context(), host.name)
    except SovereignError as e:
        _fail(e)
    click.echo(
        f"added {host.name} ({host.uri}) at {host.site} ({host.country}), "
        f"accredited {host.accreditation}: "
        f"{host.vcpus} vCPUs, {host.memory_mib} MiB, {len(gpus)} GPUs (dirty until sanitized); "
        f"hypervisor {host.host_uuid} ({host.hostname})"
    )


@hosts.command("list")
def hosts_list() -> None:
    """Hosts with state, accreditation and GPU counts."""
    try:
        services = _services()
        found = services.hosts.list(cli_context())
        gpus = services.hosts.gpus(cli_context())
    except SovereignError as e:
        _fail(e)
    click.echo(
        f"{'NAME':<18} {'STATE':<12} {'ACCREDITATION':<22} {'SITE':<16} {'COUNTRY':<8} "
        "GPUS (free/total)"
    )
    for host in found:
        mine = [g for g in gpus if g.host == host.name]
        free = sum(1 for g in mine if g.state == "free")
        accreditation = str(host.accreditation)
        click.echo(
            f"{host.name:<18} {host.state:<12} {accreditation:<22} {host.site:<16} "
            f"{host.country or '-':<8} {free}/{len(mine)}"
        )


@hosts.command("gpus")
@click.argument("name", required=False)
def hosts_gpus(name: str | None) -> None:
    """GPUs (of host NAME, or all) with state and last label."""
    try:
        gpus = _services().hosts.gpus(cli_context(), name)
    except SovereignError as e:
        _fail(e)
    for gpu in gpus:
        last = str(gpu.last_label) if gpu.last_label else "-"
        click.echo(f"{gpu.host:<18} {gpu.address}  {gpu.model:<16} {gpu.state:<12} last {last}")


@hosts.command("discover")
@click.argument("name")
def hosts_discover(name: str) -> None:
    """Re-read host NAME's capacity and GPUs."""
    try:
        host = _services().hosts.discover(cli_context(), name)
    except SovereignError as e:
        _fail(e)
    click.echo(f"rediscovered {host.name}")


def _set_state(name: str, state: str, reason: str) -> None:
    try:
        host = _services().hosts.set_state(cli_context(), name, state, reason)
    except SovereignError as e:
        _fail(e)
    click.echo(f"{host.name} is {host.state}")


@hosts.command("drain")
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
def hosts_drain(name: str, reason: str) -> None:
    """Stop placing enclaves on host NAME (running ones stay)."""
    _set_state(name, "draining", reason)


@hosts.command("quarantine")
@click.argument("name")
@click.option("--reason", required=True, help="Why (recorded in the audit log).")
def hosts_quarantine(name: str, reason: str) -> None:
    """Take host NAME out of service until an officer reactivates it."""
    _set_state(name, "quarantined", reason)


@click.group()
def sites() -> None:
    """The sites hosts stand in, and their countries."""


@sites.command("add")
@click.argument("name")
@click.option("--country", required=True, help="ISO 3166-1 alpha-2 code, upper case (ES, PT, ...).")
@click.option("--operator", required=True, help="Who runs the site (1 to 128 characters).")
def sites_add(name: str, country: str, operator: str) -> None:
    """Record site NAME (lower-case letters, digits and '-') in COUNTRY, run by OPERATOR."""
    try:
        site = _services().sites.add(cli_context(), name=name, country=country, operator=operator)
    except SovereignError as e:
        _fail(e)
    click.echo(f"added site {site.name} in {site.country}, run by {site.operator}")


@sites.command("list")
def sites_list() -> None:
    """Sites with country and operator."""
    try:
        found = _services().sites.list(cli_context())
    except SovereignError as e:
        _fail(e)
    click.echo(f"{'NAME':<18} {'COUNTRY':<8} OPERATOR")
    for site in found:
        click.echo(f"{site.name:<18} {site.country:<8} {site.operator}")
