"""The ``sovereign dev`` command: the embedded default, and ``dev token`` for its demo users.

Owns starting the development stack (:mod:`devstack.stack`) in front of the control plane: the
database migrated and seeded with the demo tenants, the bundled simulated hosts registered, the
audit sequencer and the reconciler run in-process, and the banner saying where everything is.
``sovereign`` finds this command through the ``sovereign.commands`` entry point (see
:class:`sovereign.cli.PluginGroup`); the control plane never imports it. It builds its apps with
the command line's own helpers, as the built-in commands do.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from contextlib import ExitStack
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from flask import Flask

from sovereign import app_context
from sovereign.cli import _bootstrap, _config, _fail, _redact
from sovereign.errors import SovereignError

if TYPE_CHECKING:
    from devstack.stack import DevStack

#: The demo tenants and images the embedded default seeds (in the control plane's data folder,
#: where ``sovereign bootstrap`` and the tests read it too).
DEMO_DEFINITION = "demo.json"


@click.group(invoke_without_command=True)
@click.option("--port", type=int, default=None, help="API port (default SOVEREIGN_PORT, 8700).")
@click.option("--vault-port", type=int, default=None, help="OpenBao port (default API port + 10).")
@click.option("--idp-port", type=int, default=None, help="Dev IdP port (default API port + 20).")
@click.pass_context
def dev(ctx: click.Context, port: int | None, vault_port: int | None, idp_port: int | None) -> None:
    """Run the embedded default: SQLite, OpenBao dev server, dev IdP, libvirt test driver.

    OpenBao listens on the API port + 10 (and + 11), the dev IdP on the API port + 20; every
    port is checked before anything starts."""
    if ctx.invoked_subcommand is not None:
        return
    from werkzeug.serving import make_server  # noqa: PLC0415

    from devstack.stack import dev_ports, start  # noqa: PLC0415
    from sovereign import create_app  # noqa: PLC0415
    from sovereign.adapters.migrations import upgrade  # noqa: PLC0415

    os.environ.setdefault("SOVEREIGN_ENV", "development")
    base = _config(ENV="development")
    base_settings = app_context.settings(base)
    port = port or base_settings.port
    with ExitStack() as stack:
        try:
            ports = dev_ports(port, vault=vault_port, idp=idp_port)
            running = start(stack, Path(base.instance_path), ports=ports)
            click.echo(
                f"started the OpenBao dev server (port {ports.vault}) and the development "
                f"identity provider (port {ports.idp})"
            )
            click.echo("migrating the database ...")
            upgrade(base_settings.database_url)
            app = create_app(running.config)
            demo = json.loads((resources.files("sovereign") / "data" / DEMO_DEFINITION).read_text())
            created = _bootstrap(app, demo)
            if created:
                click.echo(f"seeded {', '.join(created)}")
            _start_background(stack, app)
        except SovereignError as e:
            _fail(e)
        server = make_server("127.0.0.1", port, app, threaded=True)
        _banner(app, running, f"http://127.0.0.1:{port}", base_settings.database_url)
        click.echo("Stop with Ctrl-C.")
        # SIGTERM (systemd, timeout, CI) shuts down as cleanly as Ctrl-C: the ExitStack stops
        # OpenBao and the IdP and removes the state file.
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            click.echo("stopping ...")
        finally:
            server.server_close()


def _banner(app: Flask, running: DevStack, url: str, database_url: str) -> None:
    """What ``sovereign dev`` prints once it is up: where everything is, how to sign in."""
    from devstack.idp import DEMO_PASSWORD, DEMO_USERS  # noqa: PLC0415

    click.echo("")
    click.secho(f"Sovereign control plane (embedded default) at {url}", bold=True)
    click.echo(f"  console     {url}/   (sign in as a demo user below)")
    click.echo(f"  API         {url}/api/v1   (OpenAPI: {url}/api/openapi.json)")
    settings = app_context.settings(app)
    metrics_token = settings.metrics_token_file
    click.echo(f"  readiness   {url}/readyz   (each dependency: with a token as for metrics)")
    click.echo(
        f"  metrics     {url}/metrics  (Prometheus; bearer: the scrape token or an operator's)"
    )
    click.echo(
        f'  scrape      curl -H "Authorization: Bearer $(cat {metrics_token})" {url}/metrics'
    )
    click.echo(f"  identity    {running.idp_url}/realms/sovereign  (development stand-in)")
    click.echo(f"  database    {_redact(database_url)}")
    click.echo(f"  hypervisors {len(settings.hypervisor_uris)} simulated hosts")
    origin, witness = settings.audit_origin, settings.audit_witness_path
    click.echo(f"  audit log   {origin}, witness {witness}")
    click.echo(f"Demo users (password '{DEMO_PASSWORD}'):")
    for user in DEMO_USERS:
        clearance = user.clearance or "no clearance"
        click.echo(f"  {user.username:<17} {', '.join(user.roles):<17} {clearance}")
    click.echo("Get a token:  .venv/bin/sovereign dev token analyst-defence")


def _start_background(stack: ExitStack, app: Flask) -> None:
    """Start the in-process audit sequencer and reconciler; ``stack`` stops them."""
    from sovereign.worker import (  # noqa: PLC0415
        ReconcilerThread,
        SequencerThread,
        describe,
        start_jobs,
    )

    services = app_context.services(app)
    settings = app_context.settings(app)
    if services.sequencer is None:
        raise click.ClickException("the embedded default needs the SQL audit log")
    sequencer = SequencerThread(services.sequencer, settings.audit_sequencer_interval_s)
    sequencer.start()
    stack.callback(sequencer.stop)
    for line in _register_bundled_hosts(services):
        click.echo(line)
    reconciler = ReconcilerThread(
        services.reconciler(),
        settings.reconciler_interval_s,
        on_report=lambda report: click.echo(f"reconciler: {describe(report)}"),
    )
    reconciler.start()
    stack.callback(reconciler.stop)
    jobs = start_jobs(services, settings.job_poll_interval_s, settings.env)
    stack.callback(jobs.stop)


#: The embedded default's sites: name -> (country, operator), created before its hosts.
BUNDLED_SITES = {
    "es-mad-1": ("ES", "Centro Nacional de IA (demo)"),
    "pt-lis-1": ("PT", "Iberian AI Gigafactory Lisboa (demo)"),
}

#: The embedded default's simulated hosts: name -> (site, accreditation).
BUNDLED_HOST_SETUP = {
    "secret-h100x8": (
        "es-mad-1",
        {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]},
    ),
    "civilian-h100x4": ("es-mad-1", {"level": "UNCLASSIFIED", "compartments": []}),
    "civilian-pt-1": ("pt-lis-1", {"level": "UNCLASSIFIED", "compartments": []}),
}


def _register_bundled_hosts(services: Any) -> list[str]:
    """Create the bundled sites and register the bundled test-driver hosts not there yet (each
    through its service, so each is an audit event)."""
    from enclaves.hosts import bundled_host_uri  # noqa: PLC0415
    from sovereign.cli_hosts import cli_context  # noqa: PLC0415

    lines = []
    sites = {site.name for site in services.sites.list(cli_context())}
    for name, (country, operator) in BUNDLED_SITES.items():
        if name not in sites:
            services.sites.add(cli_context(), name=name, country=country, operator=operator)
            lines.append(f"created site {name} ({country}, {operator})")
    known = {host.name for host in services.hosts.list(cli_context())}
    for name, (site, label) in BUNDLED_HOST_SETUP.items():
        if name in known:
            continue
        host = services.hosts.add(
            cli_context(),
            name=name,
            uri=bundled_host_uri(name),
            site=site,
            accreditation=services.scheme.parse(label),
        )
        lines.append(
            f"registered simulated host {host.name} ({host.accreditation}) at {site} "
            f"({host.country})"
        )
    return lines


@dev.command("token")
@click.argument("username")
@click.option("--password", default=None, help="Defaults to the demo password.")
def dev_token(username: str, password: str | None) -> None:
    """Print an access token for a demo USER from the running embedded default."""
    from devstack.idp import DEMO_PASSWORD, password_token  # noqa: PLC0415
    from devstack.stack import STATE_FILE  # noqa: PLC0415
    from sovereign.errors import AuthenticationError, DependencyUnavailableError  # noqa: PLC0415

    base = _config(ENV="development")
    state = Path(base.instance_path) / "dev" / STATE_FILE
    if not state.exists():
        click.secho("error: the embedded default is not running (start it: make run)", err=True)
        sys.exit(2)
    idp_url = json.loads(state.read_text())["idp_url"]
    try:
        token = password_token(idp_url, username, password or DEMO_PASSWORD)
    except Exception as e:  # noqa: BLE001 - python-keycloak raises many kinds; say what failed
        kind = AuthenticationError if "401" in str(e) else DependencyUnavailableError
        message = (
            f"unknown user or wrong password for {username!r}"
            if kind is AuthenticationError
            else f"identity provider at {idp_url} did not answer"
        )
        click.secho(f"error: {message}", fg="red", err=True)
        sys.exit(2)
    click.echo(token)
