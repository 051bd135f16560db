"""``sovereign audit attest`` and ``sovereign audit verify-attestation``.

Owns the auditor's commands for attestations: over the live log on the control plane's host
(the report signed with the log's checkpoint key, the run recorded as ``audit:attest``), or
offline from a JSON-lines export and the witness file with the log's public key only (the
report is then unsigned: the auditor holds no signing key); and the offline check of a signed
report. Exit status: 0 every claim holds, 1 a claim is violated (or a report does not verify),
2 a usage or configuration error. Progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from sovereign.errors import SovereignError
from sovereign.services.attestation.frameworks import FRAMEWORKS


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _read_keys(keys: tuple[str, ...]) -> list[Any]:
    """Verifier keys given as text or ``@FILE`` (one per line)."""
    from audit.note import parse_verifier_key  # noqa: PLC0415

    return [
        parse_verifier_key(line.strip())
        for key in keys
        for line in (Path(key[1:]).read_text().splitlines() if key.startswith("@") else [key])
        if line.strip()
    ]


def _fail(message: str) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(2)


def format_summary(report: dict[str, Any]) -> str:
    """The report as text: the verdict, the period and scope, one block per claim."""
    period = report["period"]
    scope = report["scope"]
    log = report["log"]
    lines = [
        f"attestation of {report['origin']}: {report['verdict'].upper()}",
        f"  period {period['since'] or 'the beginning'} to {period['until']}; "
        f"{scope['events']} events ({scope['source']}"
        + (f", clearance {scope['clearance']['level']}" if scope["clearance"] else "")
        + ")",
        f"  log: {log['size']} events, root {log['root_hash'] or '-'}, "
        f"{log['checkpoints']} checkpoints, {log['witnessed']} witnessed",
    ]
    for claim in report["claims"]:
        lines.append(
            f"  ({claim['letter']}) {claim['title']}: {claim['verdict']} "
            f"({claim['checked']} checked)"
        )
        lines.extend(
            f"      seqs {', '.join(map(str, v['seqs'])) or '-'}: {v['message']}"
            for v in claim["violations"]
        )
        lines.extend(f"      note: {note}" for note in claim["notes"])
    return "\n".join(lines)


#: ``--framework`` choices: one framework of the controls catalogue, or every one.
FRAMEWORK_CHOICES = ("all", *FRAMEWORKS)


def _framework_option(command: Any) -> Any:
    return click.option(
        "--framework",
        type=click.Choice(FRAMEWORK_CHOICES),
        help="Also read the report against a framework's controls (ENS high, SecNumCloud 3.2, "
        "BSI C5:2020): what each control has as automatic evidence and what needs a human "
        "declaration.",
    )(command)


def _html_option(command: Any) -> Any:
    return click.option(
        "--html",
        "html_file",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Also write the report as a self-contained HTML page to FILE.",
    )(command)


def _emit(
    report: dict[str, Any],
    as_json: bool,
    framework: str | None = None,
    html_file: Path | None = None,
) -> None:
    """Print the report (and its controls), write the HTML page, exit 0 iff every claim holds."""
    from sovereign.services.attestation.frameworks import (  # noqa: PLC0415
        by_framework,
        format_framework,
    )
    from sovereign.services.attestation.html import render_html  # noqa: PLC0415

    # The facts are the ones the report states (signed with it); an offline report has none.
    facts = report.get("facts") or {}
    names = [] if framework is None else list(FRAMEWORKS) if framework == "all" else [framework]
    views = {name: by_framework(report, name, facts) for name in names}
    if as_json:
        shown = dict(report)
        if views:
            shown["frameworks"] = {n: [v.to_dict() for v in vs] for n, vs in views.items()}
        click.echo(json.dumps(shown, indent=2, sort_keys=True))
    else:
        click.echo(format_summary(report))
        clearance = report["scope"].get("clearance")
        if views and clearance:
            click.echo(
                f"\nnote: the report is scoped to clearance {clearance['level']}: a control "
                "marked evidenced is so only for the events at or below it"
            )
        for found in views.values():
            click.echo("")
            click.echo(format_framework(found), nl=False)
    if html_file is not None:
        every = [view for found in views.values() for view in found]
        html_file.write_text(render_html(report, every or None), encoding="utf-8")
        click.echo(f"wrote the HTML report to {html_file}", err=True)
    sys.exit(0 if report["verdict"] == "holds" else 1)


def _progress(message: str) -> None:
    click.echo(f"  {message}", err=True)


@click.command("attest")
@click.option("--since", type=click.DateTime(), help="Period start (UTC, inclusive).")
@click.option("--until", type=click.DateTime(), help="Period end (UTC, exclusive; default now).")
@click.option(
    "--export",
    "export_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Attest offline from this JSON-lines export (`audit export --format jsonl`).",
)
@click.option(
    "--witness",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="With --export: the witness file whose signed checkpoints the export is held to.",
)
@click.option("--key", "keys", multiple=True, help="With --export: the log's key, or @FILE.")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the signed report note (offline: the report's JSON) to FILE.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_framework_option
@_html_option
def attest(
    *,
    since: datetime | None,
    until: datetime | None,
    export_file: Path | None,
    witness: Path | None,
    keys: tuple[str, ...],
    out: Path | None,
    as_json: bool,
    framework: str | None,
    html_file: Path | None,
) -> None:
    """Evaluate the six claims over the audit log for a period and report each verdict with
    the seqs it rests on. Exit 0 when every claim holds, 1 when one is violated."""
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since > until:
        _fail("--since must not be after --until")
    if export_file is not None:
        report = _offline(export_file, witness, keys, since, until)
        if out is not None:
            out.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
            click.echo(f"wrote the (unsigned) report to {out}", err=True)
        _emit(report, as_json, framework, html_file)
    if witness is not None or keys:
        _fail("--witness and --key go with --export")
    from sovereign.bootstrap import build_attestation  # noqa: PLC0415
    from sovereign.cli import _settings  # noqa: PLC0415
    from sovereign.cli_hosts import cli_context  # noqa: PLC0415

    try:
        service = build_attestation(_settings())
        report, note = service.attest(cli_context(), since, until, progress=_progress)
    except SovereignError as e:
        _fail(e.message)
    if out is not None:
        out.write_text(note)
        click.echo(f"wrote the signed report to {out}", err=True)
    _emit(report, as_json, framework, html_file)


def _offline(
    export_file: Path,
    witness: Path | None,
    keys: tuple[str, ...],
    since: datetime | None,
    until: datetime | None,
) -> dict[str, Any]:
    from audit.note import NoteError  # noqa: PLC0415
    from audit.witness import WitnessError, WitnessFile  # noqa: PLC0415
    from sovereign.cli import _settings  # noqa: PLC0415
    from sovereign.domain.labels import LabelScheme  # noqa: PLC0415
    from sovereign.services.attestation.offline import ExportError, attest_export  # noqa: PLC0415

    if not keys:
        _fail("--export needs --key (the log's public key, e.g. @log.pub)")
    settings = _settings()

    def progress(done: int, total: int) -> None:
        _progress(f"verified {done:,} of {total:,} events")

    try:
        verifiers = _read_keys(keys)
        checkpoints = WitnessFile(witness).read() if witness is not None else []
        with export_file.open(encoding="utf-8") as lines:
            return attest_export(
                lines,
                verifiers,
                checkpoints,
                scheme=LabelScheme(settings.label_levels, settings.label_compartments),
                two_person_level=settings.two_person_level,
                since=since,
                until=until,
                generated_at=datetime.now(UTC),
                progress=progress,
            )
    except (NoteError, WitnessError, ExportError, OSError, ValueError) as e:
        _fail(str(e))
    raise AssertionError("unreachable")  # pragma: no cover


@click.command("verify-attestation")
@click.argument("note_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--key", "keys", multiple=True, required=True, help="The log's key, or @FILE.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_framework_option
@_html_option
def verify_attestation(
    note_file: Path,
    keys: tuple[str, ...],
    as_json: bool,
    framework: str | None,
    html_file: Path | None,
) -> None:
    """Verify a signed attestation report offline (only the log's public key is needed) and
    print it. Exit 0 when it verifies and every claim holds, 1 otherwise."""
    from audit.note import NoteError  # noqa: PLC0415
    from sovereign.services.attestation.report import ReportError, open_report  # noqa: PLC0415

    try:
        report = open_report(note_file.read_text(), _read_keys(keys))
    except (NoteError, ReportError, OSError) as e:
        click.secho(f"attestation does NOT verify: {e}", fg="red", err=True)
        sys.exit(1)
    click.echo(f"attestation verifies: signed by {report['origin']}", err=True)
    _emit(report, as_json, framework, html_file)


__all__ = ["attest", "format_summary", "verify_attestation"]
