"""The ``sovereign`` command line.

Owns the commands operators type: ``db upgrade`` / ``db current``, ``bootstrap``, ``audit``,
``hosts``, ``report`` (:mod:`sovereign.cli_report`), ``worker`` and ``serve`` (production
under gunicorn), the analyst's ``jobs`` and ``datasets`` (API clients:
:mod:`sovereign.cli_jobs`), and the entry-point group
through which installed packages add theirs (:data:`COMMAND_ENTRY_POINTS`: the development stack
adds ``dev``). Each command builds what it needs from configuration; nothing runs at import.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from functools import cached_property
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import click
from flask import Flask

from sovereign import app_context
from sovereign import config as configuration
from sovereign.errors import SovereignError
from sovereign.settings import Settings

#: The entry points (``name = "module:command"``) whose click commands join ``sovereign``. The
#: development stack (``devstack``, the ``devstack`` extra) adds ``dev`` through it, so that this
#: module never imports it.
COMMAND_ENTRY_POINTS = "sovereign.commands"


def _config(**overrides: Any) -> Flask:
    """An app carrying only configuration (no services), for commands that need no IdP."""
    app = configuration.new_app()
    configuration.load(app, overrides or None, check=False)
    return app


def _settings(**overrides: Any) -> Settings:
    """The typed configuration (unchecked, as :func:`_config` loads it)."""
    return app_context.settings(_config(**overrides))


def _fail(error: SovereignError) -> None:
    click.secho(f"error: {error.message}", fg="red", err=True)
    sys.exit(2)


class PluginGroup(click.Group):
    """A command group that also offers the commands of :data:`COMMAND_ENTRY_POINTS`, each
    imported only when it is run or listed. One that cannot be imported (its extra is not
    installed) is still listed, and says why when run."""

    @cached_property
    def plugins(self) -> dict[str, EntryPoint]:
        """The entry points of the commands not built in, by command name."""
        found = entry_points(group=COMMAND_ENTRY_POINTS)
        return {entry.name: entry for entry in found if entry.name not in self.commands}

    def list_commands(self, ctx: click.Context) -> list[str]:
        """The built-in commands and the added ones, sorted."""
        return sorted({*super().list_commands(ctx), *self.plugins})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """The command ``cmd_name``, importing it if an entry point adds it.

        :raises TypeError: if the entry point names something that is not a click command.
        """
        command = super().get_command(ctx, cmd_name)
        entry = self.plugins.get(cmd_name)
        if command is not None or entry is None:
            return command
        try:
            loaded = entry.load()
        except ImportError as e:
            return _unavailable(cmd_name, str(e))
        if not isinstance(loaded, click.Command):
            raise TypeError(f"entry point {entry.value} is not a click command")
        return loaded


def _unavailable(name: str, reason: str) -> click.Command:
    """A stand-in for a command that cannot be imported: it prints ``reason`` and exits 2."""

    def refuse() -> None:
        click.secho(f"error: {reason}", fg="red", err=True)
        sys.exit(2)

    return click.Command(
        name,
        callback=refuse,
        help=f"Not available: {reason}",
        # Whatever follows (``dev token USER``) gets the same answer, not a usage error.
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
        add_help_option=False,
    )


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="sovereign")
def main() -> None:
    """Sovereign: isolated GPU enclaves for classified and civilian tenants."""


def _register_groups() -> None:
    from sovereign.cli_hosts import hosts, sites  # noqa: PLC0415
    from sovereign.cli_images import images  # noqa: PLC0415
    from sovereign.cli_jobs import register  # noqa: PLC0415
    from sovereign.cli_report import report  # noqa: PLC0415

    main.add_command(hosts)
    main.add_command(sites)
    main.add_command(images)
    main.add_command(report)
    register(main)


# -- db ---------------------------------------------------------------------------------------


@main.group()
def db() -> None:
    """Database schema migrations."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Migrate the database (SOVEREIGN_DATABASE_URL) to the newest schema."""
    from sovereign.adapters.migrations import upgrade  # noqa: PLC0415

    url = _settings().database_url
    try:
        upgrade(url, revision)
    except SovereignError as e:
        _fail(e)
    click.echo(f"database at {_redact(url)} is at {revision}")


@db.command("current")
def db_current() -> None:
    """Print the schema revision of the database and the newest one shipped."""
    from sovereign.adapters.migrations import current_revision, head_revision  # noqa: PLC0415

    url = _settings().database_url
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
    created: list[str] = app_context.services(app).catalog.bootstrap(ctx, definition)
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
        return build_audit_log(_settings(), read_only=read_only)
    except SovereignError as e:
        _fail(e)


def _register_audit_commands() -> None:
    from sovereign.cli_attest import attest, verify_attestation  # noqa: PLC0415

    audit.add_command(attest)
    audit.add_command(verify_attestation)


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


def _certificate_query(gpu: str) -> Any:
    """The audit query for the latest certificate of ``HOST/ADDRESS``.

    :raises InvalidInputError: not a host name and a PCI address.
    """
    from sovereign.errors import InvalidInputError  # noqa: PLC0415
    from sovereign.services.certificates import certificate_query  # noqa: PLC0415

    host, slash, address = gpu.partition("/")
    if not slash:
        raise InvalidInputError(reason="name the GPU as HOST/ADDRESS")
    return certificate_query(host, address)


@audit.command("certificate")
@click.argument("gpu", metavar="HOST/ADDRESS")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the inclusion proof to FILE (else it follows the certificate on stdout).",
)
def audit_certificate(gpu: str, out: Path | None) -> None:
    """Print the latest hand-over certificate of the GPU HOST/ADDRESS (e.g.
    secret-h100x8/0000:18:00.0) as JSON, and the inclusion proof of its gpu:handover event, in
    the format of `audit prove`: `audit verify-proof FILE --key KEY` checks it offline."""
    from sovereign.errors import InvalidInputError  # noqa: PLC0415
    from sovereign.services.certificates import GpuCertificate  # noqa: PLC0415

    try:
        query = _certificate_query(gpu)
    except InvalidInputError as e:
        click.secho(f"error: {e.message}; e.g. secret-h100x8/0000:18:00.0", fg="red", err=True)
        sys.exit(2)
    log = _audit_log()
    try:
        found = [c for c in map(GpuCertificate.of, log.events(query)) if c is not None]
    except SovereignError as e:
        _fail(e)
    if not found:
        click.secho(
            f"error: no hand-over certificate of {gpu} in the sequenced log (the worker "
            "sequences new events; `sovereign audit sequence` does it now)",
            fg="red",
            err=True,
        )
        sys.exit(1)
    latest = found[0]
    try:
        proof = log.proof(latest.seq)
    except SovereignError as e:
        _fail(e)
    click.echo(json.dumps(latest.document, indent=2, sort_keys=True))
    click.echo(
        f"event {latest.seq} (gpu:handover of {latest.host}/{latest.address} at "
        f"{latest.time.isoformat()}): verdict {latest.verdict}, the GPU went {latest.to}",
        err=True,
    )
    if out is None:
        click.echo()
        click.echo(proof, nl=False)
    else:
        out.write_text(proof)
        click.echo(f"wrote proof of event {latest.seq} to {out}", err=True)


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
    """Sequence queued events and sign a checkpoint now (the worker does this continuously).

    On SQLite events are sequenced as they are appended, so only the checkpoint is new.
    """
    try:
        run = _audit_log(read_only=False).sequence()
    except SovereignError as e:
        _fail(e)
    signed = f"signed a checkpoint at {run.size}" if run.checkpoint else "no new checkpoint"
    click.echo(f"sequenced {run.sequenced} queued events; log size {run.size}; {signed}")


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
    settings = app_context.settings(app)
    pause = interval if interval is not None else settings.reconciler_interval_s
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    run_worker(
        app_context.services(app),
        pause,
        reconcile=not no_reconcile,
        environment=settings.env,
        echo=click.echo,
        job_poll_s=settings.job_poll_interval_s,
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
    settings = _settings()
    port = settings.port
    field_limit = SERVER_HEADER_FIELD_FACTOR * settings.max_header_bytes
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


_register_groups()
_register_audit_commands()
