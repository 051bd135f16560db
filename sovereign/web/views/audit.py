"""The audit log in the console: the event browser, the latest signed checkpoint, "verify
now", proofs and exports to download.

Owns the auditor's pages. ``services().audit`` decides who reads what (auditors and officers,
up to their clearance) and records refusals; downloads are the same C2SP proof and export
formats the CLI writes, so they verify offline with ``sovereign audit verify-proof``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask import Response, request, stream_with_context, url_for
from flask.typing import ResponseReturnValue

from audit.export import FORMATS
from sovereign.app_context import services
from sovereign.errors import InvalidInputError, NotFoundError
from sovereign.services.auditing import EventFilter
from sovereign.web.console import bp, caller, page

PAGE_SIZES = (10, 25, 50, 100, 200)
DEFAULT_PAGE_SIZE = 50
#: Longest text accepted in a filter field (the API's limits).
MAX_FILTER = 255
#: File name extension of each export format.
EXTENSIONS = {"jsonl": "jsonl", "cef": "cef", "rfc5424": "log"}


@dataclass(frozen=True)
class Checkpoint:
    """The latest signed checkpoint: its note and the three lines it signs."""

    note: str
    origin: str
    size: str
    root: str


def _checkpoint() -> Checkpoint | None:
    """The latest signed checkpoint, or None before the first one is signed."""
    try:
        note = services().audit.checkpoint()
    except NotFoundError:
        return None
    lines = [*note.splitlines(), "", "", ""]
    return Checkpoint(note=note, origin=lines[0], size=lines[1], root=lines[2])


def _when(name: str, value: str) -> datetime | None:
    """A date or date-time typed in a filter, read as UTC. :raises InvalidInputError:."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as e:
        raise InvalidInputError(reason=f"{name} is not a date (YYYY-MM-DD or with HH:MM)") from e
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    try:
        return parsed.astimezone(UTC)
    except OverflowError as e:  # 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise InvalidInputError(reason=f"{name} is out of range") from e


def _text(name: str) -> str | None:
    value = request.args.get(name, "").strip()
    return value[:MAX_FILTER] or None


@bp.get("/audit")
def audit_events() -> ResponseReturnValue:
    """Events newest first, filtered, a page at a time; each with its seq and leaf hash."""
    ctx = caller()
    try:
        limit = int(request.args.get("limit", DEFAULT_PAGE_SIZE))
    except ValueError:
        limit = DEFAULT_PAGE_SIZE
    limit = limit if limit in PAGE_SIZES else DEFAULT_PAGE_SIZE
    before = request.args.get("before", "")
    filters = {
        "actor": _text("actor"),
        "action": _text("action"),
        "target": _text("target"),
        "since": request.args.get("since", "").strip(),
        "until": request.args.get("until", "").strip(),
    }
    found = services().audit.events(
        ctx,
        EventFilter(
            actor=filters["actor"],
            action=filters["action"],
            target=filters["target"],
            since=_when("since", filters["since"] or ""),
            until=_when("until", filters["until"] or ""),
            # isdigit() alone also passes digits int() refuses, such as "²".
            before=int(before) if before.isascii() and before.isdigit() else None,
            limit=limit,
        ),
    )
    query: dict[str, Any] = {k: v for k, v in filters.items() if v}
    return page(
        "console/audit/events.html",
        title="Audit log",
        shown=[e.event.label for e in found.items],
        events=found.items,
        filters=filters,
        limit=limit,
        page_sizes=PAGE_SIZES,
        formats=FORMATS,
        checkpoint=_checkpoint(),
        newest_url=url_for("console.audit_events", limit=limit, **query) if before else None,
        next_url=url_for("console.audit_events", before=found.next_cursor, limit=limit, **query)
        if found.next_cursor
        else None,
    )


@bp.post("/audit/verify")
def audit_verify() -> ResponseReturnValue:
    """Run the whole-log verifier now and show what it found (the run is itself recorded)."""
    check = services().audit.verify(caller())
    return page(
        "console/audit/verify.html",
        title="Audit log verification",
        check=check,
        checkpoint=_checkpoint(),
    )


def _download(body: str, filename: str) -> Response:
    return Response(
        body,
        mimetype="text/plain",
        headers={"Content-Disposition": f'attachment; filename="{filename}"'},
    )


@bp.get("/audit/events/<int:seq>/proof")
def audit_proof(seq: int) -> ResponseReturnValue:
    """A C2SP tlog-proof for one event: its bytes, index, path and the signed checkpoint."""
    return _download(services().audit.proof(caller(), seq), f"sovereign-event-{seq}.proof")


@bp.get("/audit/checkpoint")
def audit_checkpoint() -> ResponseReturnValue:
    """The latest signed checkpoint note."""
    caller()
    return _download(services().audit.checkpoint(), "sovereign-checkpoint.txt")


@bp.get("/audit/public-key")
def audit_public_key() -> ResponseReturnValue:
    """The log's note verifier key(s), to verify proofs offline."""
    caller()
    keys = "".join(f"{key}\n" for key in services().audit.public_keys())
    return _download(keys, "sovereign-audit.pub")


@bp.get("/audit/export")
def audit_export() -> ResponseReturnValue:
    """Events the caller may read, oldest first, as JSON lines, CEF or RFC 5424 syslog."""
    ctx = caller()
    fmt = request.args.get("format", "jsonl")
    lines = services().audit.export(
        ctx,
        fmt,
        since=_when("since", request.args.get("since", "").strip()),
        until=_when("until", request.args.get("until", "").strip()),
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return Response(
        stream_with_context(f"{line}\n" for line in lines),
        mimetype="application/x-ndjson" if fmt == "jsonl" else "text/plain",
        headers={
            "Content-Disposition": (
                f'attachment; filename="sovereign-audit-{stamp}.{EXTENSIONS.get(fmt, "txt")}"'
            )
        },
    )
