"""The ``sovereign`` command line.

Owns the commands operators and developers type: ``dev`` (the embedded default) and
``dev token``, ``db upgrade`` / ``db current``, ``bootstrap``, and ``serve`` (production under
gunicorn). Each command builds what it needs from configuration; nothing runs at import.
"""

from __future__ import annotations

import contextlib
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

from sovereign import config as settings
from sovereign.errors import SovereignError

if TYPE_CHECKING:
    from sovereign.devstack import DevStack

DEMO_DEFINITION = "demo.json"


def _config(**overrides: Any) -> Flask:
    """An app carrying only configuration (no services), for commands that need no IdP."""
    app = settings.new_app()
    settings.load(app, overrides or None, check=False)
    return app


def _fail(error: SovereignError) -> None:
    click.secho(f"error: {error.message}", fg="red", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sovereign")
def main() -> None:
    """Sovereign: isolated GPU enclaves for classified and civilian tenants."""


def _register_groups() -> None:
    from sovereign.cli_hosts import hosts  # noqa: PLC0415

    main.add_command(hosts)


# -- db ---------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Migrate the database (SOVEREIGN_DATABASE_URL) to the newest schema."""
    from sovereign.adapters.migrations import upgrade  # noqa: PLC0415

    url = _config().config["DATABASE_URL"]
    try:
        upgrade(url, revision)
    except SovereignError as e:
        _fail(e)
    click.echo(f"database at {_redact(url)} is at {revision}")


@db.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the newest one shipped."""
    from sovereign.adapters.migrations import current_revision, head_revision  # noqa: PLC0415

    url = _config().config["DATABASE_URL"]
    try:
        click.echo(f"current: {current_revision(url)}  head: {head_revision(url)}")
    except SovereignError as e:
        _fail(e)


def _redact(url: str) -> str:
    """The URL without its password, for output."""
    from sqlalchemy.engine import make_url  # noqa: PLC0415

    return make_url(url).render_as_string(hide_password=True)


# -- bootstrap --------------------------------------------------------------------------------


def _bootstrap(app: Flask, definition: dict[str, Any]) -> list[str]:
    from sovereign.domain.identity import Principal  # noqa: PLC0415
    from sovereign.services.recording import CallContext  # noqa: PLC0415

    ctx = CallContext(
        principal=Principal(subject="system", username="bootstrap"),
        actor="system:bootstrap",
        source="cli",
    )
    created: list[str] = app.extensions["sovereign"].catalog.bootstrap(ctx, definition)
    return created


@main.command()
@click.argument("definition", type=click.Path(exists=True, dir_okay=False, path_type=Path))
def bootstrap(definition: Path) -> None:
    """Create the tenants and images in DEFINITION (JSON) that do not exist yet."""
    from sovereign import create_app  # noqa: PLC0415

    try:
        data = json.loads(definition.read_text())
        created = _bootstrap(create_app(), data)
    except json.JSONDecodeError as e:
        click.secho(f"error: {definition} is not valid JSON: {e}", fg="red", err=True)
        sys.exit(2)
    except SovereignError as e:
        _fail(e)
    click.echo(f"created {len(created)}: {', '.join(created) or 'nothing new'}")


# -- audit ------------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """The tamper-evident audit log: verify it, prove events, export, publish the key."""


def _audit_log(*, read_only: bool = True) -> Any:
    from sovereign.bootstrap import build_audit_log  # noqa: PLC0415

    try:
        return build_audit_log(_config().config, read_only=read_only)
    except SovereignError as e:
        _fail(e)


@audit.command("verify")
@click.option("--quiet", is_flag=True, help="No progress output.")
@click.option(
    "--hashes-only",
    is_flag=True,
    help="Prove the tree only; skip checking the filter columns against each event (faster).",
)
def audit_verify(quiet: bool, hashes_only: bool) -> None:
    """Rebuild the Merkle tree from every stored event and check it against every signed
    checkpoint and the witness file. Exit 0 when intact, 1 naming the first bad index."""
    from audit.verify import LogVerificationError  # noqa: PLC0415

    def progress(done: int, total: int) -> None:
        if not quiet:
            click.echo(f"  verified {done:,} of {total:,} events", err=True)

    try:
        report = _audit_log().verify(progress, check_columns=not hashes_only)
    except LogVerificationError as e:
        where = f" (first bad index {e.index})" if e.index is not None else ""
        click.secho(f"audit log NOT intact{where}: {e}", fg="red", err=True)
        sys.exit(1)
    except SovereignError as e:
        _fail(e)
    click.echo(
        f"audit log intact: {report.size:,} events, root {report.root_hash.hex()}, "
        f"{report.checkpoints} signed checkpoints and {report.witnessed} witnessed ones match"
    )


@audit.command("prove")
@click.option("--seq", type=click.IntRange(min=0), required=True, help="Event sequence number.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
def audit_prove(seq: int, out: Path | None) -> None:
    """Write a C2SP tlog-proof for event SEQ that anyone can verify offline."""
    try:
        text = _audit_log().proof(seq)
    except SovereignError as e:
        _fail(e)
    if out is None:
        click.echo(text, nl=False)
    else:
        out.write_text(text)
        click.echo(f"wrote proof of event {seq} to {out}", err=True)


@audit.command("verify-proof")
@click.argument("proof_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "keys", multiple=True, required=True, help="Verifier key, or @FILE.")
@click.option("--origin", default=None, help="Require this log origin.")
def audit_verify_proof(proof_file: Path, keys: tuple[str, ...], origin: str | None) -> None:
    """Verify a proof offline: no database, no network, only the log's public key."""
    from audit.note import NoteError, parse_verifier_key  # noqa: PLC0415
    from audit.proof import TlogProofError, verify_proof  # noqa: PLC0415

    try:
        verifiers = [
            parse_verifier_key(line.strip())
            for key in keys
            for line in (Path(key[1:]).read_text().splitlines() if key.startswith("@") else [key])
            if line.strip()
        ]
        verified = verify_proof(proof_file.read_text(), verifiers, origin)
    except (NoteError, TlogProofError, OSError) as e:
        click.secho(f"proof does NOT verify: {e}", fg="red", err=True)
        sys.exit(1)
    cp = verified.checkpoint
    click.echo(
        f"proof verifies: event {verified.index} is in {cp.origin} at size {cp.size} "
        f"(root {cp.root_hash.hex()})"
    )
    click.echo(verified.entry.decode())


@audit.command("export")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "cef", "rfc5424"]), default="jsonl")
@click.option("--since", type=click.DateTime(), help="Only events at or after (UTC).")
@click.option("--until", type=click.DateTime(), help="Only events before (UTC).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Write to FILE.")
def audit_export(fmt: str, since: Any, until: Any, out: Path | None) -> None:
    """Export sequenced events, oldest first, each with its seq and leaf hash."""
    from datetime import UTC  # noqa: PLC0415

    from audit.store import AuditQuery  # noqa: PLC0415

    query = AuditQuery(
        since=since.replace(tzinfo=UTC) if since else None,
        until=until.replace(tzinfo=UTC) if until else None,
        limit=1000,
    )
    try:
        lines = _audit_log().export(fmt, query)
        with out.open("w") if out else contextlib.nullcontext(sys.stdout) as sink:
            count = 0
            for line in lines:
                sink.write(line + "\n")
                count += 1
    except SovereignError as e:
        _fail(e)
    click.echo(f"exported {count} events as {fmt}", err=True)


@audit.command("public-key")
def audit_public_key() -> None:
    """Print the log's note verifier key(s), newest first."""
    try:
        for key in _audit_log().public_keys:
            click.echo(key)
    except SovereignError as e:
        _fail(e)


@audit.command("sequence")
def audit_sequence() -> None:
    """Sequence queued events and sign a checkpoint now (the worker does this continuously)."""
    try:
        run = _audit_log(read_only=False).sequence()
    except SovereignError as e:
        _fail(e)
    click.echo(f"sequenced {run.sequenced} events; log size {run.size}")


# -- worker -----------------------------------------------------------------------------------


@main.command()
@click.option("--interval", type=float, default=None, help="Seconds between runs.")
@click.option("--no-reconcile", is_flag=True, help="Only sequence the audit log.")
def worker(interval: float | None, no_reconcile: bool) -> None:
    """Run the background work: the reconciler (provisioning, teardown, sanitization, drift)
    and the audit sequencer. Several workers may run at once."""
    from sovereign import create_app  # noqa: PLC0415
    from sovereign.worker import run_worker  # noqa: PLC0415

    app = create_app()
    pause = interval if interval is not None else float(app.config["RECONCILER_INTERVAL_S"])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_worker(
        app.extensions["sovereign"],
        pause,
        reconcile=not no_reconcile,
        environment=app.config["ENV"],
        echo=click.echo,
    )


# -- serve ------------------------------------------------------------------------------------

#: gunicorn refuses one header field above this many times MAX_HEADER_BYTES with its own HTML
#: 431, before the app runs; below it the app's limit answers with problem+json. Its buffer for
#: all the header fields is at most ``limit_request_fields`` (100) times this.
SERVER_HEADER_FIELD_FACTOR = 8
#: gunicorn's longest request line (method, URI, version): its maximum. Longer ones get its HTML
#: 414; no setting lets the app answer those.
SERVER_REQUEST_LINE = 8190


@main.command()
@click.option("--bind", default=None, help="host:port (default 127.0.0.1:SOVEREIGN_PORT).")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    help="gunicorn worker processes (console sessions live in one process: use sticky "
    "routing when more than one).",
)
@click.option("--threads", default=8, show_default=True, help="threads per worker.")
def serve(bind: str | None, workers: int, threads: int) -> None:
    """Run the control plane under gunicorn (production)."""
    config = _config().config
    port = config["PORT"]
    field_limit = SERVER_HEADER_FIELD_FACTOR * int(config["MAX_HEADER_BYTES"])
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind or f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--access-logfile",
        "-",
        # Above the app's MAX_HEADER_BYTES, so that oversized headers get the app's 431
        # problem+json rather than gunicorn's HTML page (see the README's limits table).
        "--limit-request-field_size",
        str(field_limit),
        "--limit-request-line",
        str(SERVER_REQUEST_LINE),
        "sovereign.wsgi:app",
    ]
    os.execv(sys.executable, argv)  # noqa: S606 - replaces this process with gunicorn


# -- dev --------------------------------------------------------------------------------------


@main.group(invoke_without_command=True)
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

    from sovereign import create_app, devstack  # noqa: PLC0415
    from sovereign.adapters.migrations import upgrade  # noqa: PLC0415

    os.environ.setdefault("SOVEREIGN_ENV", "development")
    base = _config(ENV="development")
    port = port or int(base.config["PORT"])
    with ExitStack() as stack:
        try:
            ports = devstack.dev_ports(port, vault=vault_port, idp=idp_port)
            running = devstack.start(stack, Path(base.instance_path), ports=ports)
            click.echo(
                f"started the OpenBao dev server (port {ports.vault}) and the development "
                f"identity provider (port {ports.idp})"
            )
            click.echo("migrating the database ...")
            upgrade(base.config["DATABASE_URL"])
            app = create_app(running.config)
            demo = json.loads((resources.files("sovereign") / "data" / DEMO_DEFINITION).read_text())
            created = _bootstrap(app, demo)
            if created:
                click.echo(f"seeded {', '.join(created)}")
            _start_background(stack, app)
        except SovereignError as e:
            _fail(e)
        server = make_server("127.0.0.1", port, app, threaded=True)
        _banner(app, running, f"http://127.0.0.1:{port}", base.config["DATABASE_URL"])
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
    from sovereign.devidp import DEMO_PASSWORD, DEMO_USERS  # noqa: PLC0415

    click.echo("")
    click.secho(f"Sovereign control plane (embedded default) at {url}", bold=True)
    click.echo(f"  console     {url}/   (sign in as a demo user below)")
    click.echo(f"  API         {url}/api/v1   (OpenAPI: {url}/api/openapi.json)")
    metrics_token = running.config["METRICS_TOKEN_FILE"]
    click.echo(f"  readiness   {url}/readyz   (each dependency: with a token as for metrics)")
    click.echo(
        f"  metrics     {url}/metrics  (Prometheus; bearer: the scrape token or an operator's)"
    )
    click.echo(
        f'  scrape      curl -H "Authorization: Bearer $(cat {metrics_token})" {url}/metrics'
    )
    click.echo(f"  identity    {running.idp_url}/realms/sovereign  (development stand-in)")
    click.echo(f"  database    {_redact(database_url)}")
    click.echo(f"  hypervisors {len(running.config['HYPERVISOR_URIS'])} simulated hosts")
    origin, witness = app.config["AUDIT_ORIGIN"], app.config["AUDIT_WITNESS_PATH"]
    click.echo(f"  audit log   {origin}, witness {witness}")
    click.echo(f"Demo users (password '{DEMO_PASSWORD}'):")
    for user in DEMO_USERS:
        clearance = user.clearance or "no clearance"
        click.echo(f"  {user.username:<17} {', '.join(user.roles):<17} {clearance}")
    click.echo("Get a token:  .venv/bin/sovereign dev token analyst-defence")


def _start_background(stack: ExitStack, app: Flask) -> None:
    """Start the in-process audit sequencer and reconciler; ``stack`` stops them."""
    from sovereign.adapters.auditlog import SequencerThread  # noqa: PLC0415
    from sovereign.worker import ReconcilerThread, describe  # noqa: PLC0415

    services = app.extensions["sovereign"]
    sequencer = SequencerThread(services.audit.log, app.config["AUDIT_SEQUENCER_INTERVAL_S"])
    sequencer.start()
    stack.callback(sequencer.stop)
    for line in _register_bundled_hosts(services):
        click.echo(line)
    reconciler = ReconcilerThread(
        services.reconciler(),
        float(app.config["RECONCILER_INTERVAL_S"]),
        on_report=lambda report: click.echo(f"reconciler: {describe(report)}"),
    )
    reconciler.start()
    stack.callback(reconciler.stop)


#: The embedded default's simulated hosts: name -> (site, accreditation).
BUNDLED_HOST_SETUP = {
    "secret-h100x8": (
        "hall-a/rack-1",
        {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]},
    ),
    "civilian-h100x4": ("hall-b/rack-7", {"level": "UNCLASSIFIED", "compartments": []}),
}


def _register_bundled_hosts(services: Any) -> list[str]:
    """Register the bundled test-driver hosts that are not registered yet."""
    from enclaves.hosts import bundled_host_uri  # noqa: PLC0415
    from sovereign.cli_hosts import cli_context  # noqa: PLC0415

    known = {host.name for host in services.hosts.list(cli_context())}
    lines = []
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
        lines.append(f"registered simulated host {host.name} ({host.accreditation})")
    return lines


@dev.command("token")
@click.argument("username")
@click.option("--password", default=None, help="Defaults to the demo password.")
def dev_token(username: str, password: str | None) -> None:
    """Print an access token for a demo USER from the running embedded default."""
    from sovereign import devstack  # noqa: PLC0415
    from sovereign.devidp import DEMO_PASSWORD, password_token  # noqa: PLC0415
    from sovereign.errors import AuthenticationError, DependencyUnavailableError  # noqa: PLC0415

    base = _config(ENV="development")
    state = Path(base.instance_path) / "dev" / devstack.STATE_FILE
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


_register_groups()
