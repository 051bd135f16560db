"""The attestation report: its document (``sovereign-attestation/v1``) and its signed note.

Owns the report's shape (:func:`build_report`), its canonical bytes (RFC 8785, as events are
hashed), and the signed note that carries it: a C2SP signed note signed exactly as the log's
checkpoints are (:func:`audit.note.sign_note`, the same log key and origin), so whoever holds
the log's public key verifies a report offline with :func:`open_report`, and a report cannot be
told apart from the log's own statement about itself. Pure: no I/O, no clock (the caller gives
``generated_at``).

The note text is two lines: ``<origin> attestation v1`` and the report's canonical JSON (any
character a signed note may not carry, such as a control character in a violation message,
escaped as ``\\uXXXX``, which JSON reads back as the same string).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from audit.event import canonical_json
from audit.export import UNSAFE
from audit.note import NoteVerifier, open_note, sign_note
from audit.signer import Signer
from sovereign.services.attestation.claims import ClaimResult, LogStatus

#: The report's ``type``: bump the version on any incompatible change.
REPORT_TYPE = "sovereign-attestation/v1"
#: The second word of a report note's first line (after the origin).
NOTE_KIND = "attestation v1"


class ReportError(ValueError):
    """A signed report that does not open: bad signature, not a report, wrong origin."""


def rfc3339(value: datetime | None) -> str | None:
    """``value`` as RFC 3339 UTC with ``Z`` (None stays None)."""
    if value is None:
        return None
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def build_report(
    claims: Sequence[ClaimResult],
    log: LogStatus,
    *,
    origin: str,
    generated_at: datetime,
    since: datetime | None,
    until: datetime | None,
    source: str,
    clearance: dict[str, Any] | None,
    events: int,
    first_seq: int | None,
    last_seq: int | None,
    levels: Sequence[str],
    two_person_level: str,
) -> dict[str, Any]:
    """The report document: period, scope, log, parameters, the claims in order, verdict."""
    return {
        "type": REPORT_TYPE,
        "origin": origin,
        "generated_at": rfc3339(generated_at),
        "period": {"since": rfc3339(since), "until": rfc3339(until)},
        "scope": {
            "source": source,
            "clearance": clearance,
            "events": events,
            "first_seq": first_seq,
            "last_seq": last_seq,
        },
        "log": {
            "size": log.size,
            "root_hash": log.root_hash,
            "checkpoints": log.checkpoints,
            "witnessed": log.witnessed,
        },
        "parameters": {"levels": list(levels), "two_person_level": two_person_level},
        "claims": [c.to_dict() for c in claims],
        "verdict": "holds" if all(c.verdict == "holds" for c in claims) else "violated",
    }


def canonical(report: dict[str, Any]) -> bytes:
    """The report's RFC 8785 canonical JSON (what the note signs, escaped for the note)."""
    return canonical_json(report)


def _escape(match: Any) -> str:
    return f"\\u{ord(match.group()):04x}"


def note_text(report: dict[str, Any]) -> str:
    """The note text that carries ``report`` (two lines, see the module docstring)."""
    body = UNSAFE.sub(_escape, canonical(report).decode())
    return f"{report['origin']} {NOTE_KIND}\n{body}\n"


def sign_report(report: dict[str, Any], signers: Sequence[Signer]) -> str:
    """The report as a signed note, signed by ``signers`` (the log's checkpoint key).

    :raises ReportError: if a signer's name is not the report's origin (a report must be
        signed as the log's checkpoints are). :raises NoteError: signing failed.
    """
    for signer in signers:
        if signer.name != report["origin"]:
            raise ReportError(
                f"signer {signer.name!r} is not the log's origin {report['origin']!r}"
            )
    return sign_note(note_text(report), signers)


def open_report(
    text: str, verifiers: Iterable[NoteVerifier], origin: str | None = None
) -> dict[str, Any]:
    """Verify a signed report and return its document.

    :raises ReportError: not a report, or its origin is not ``origin`` / the signer's name.
    :raises NoteError: the signature does not verify under ``verifiers``.
    """
    body, signatures = open_note(text, verifiers)
    first, _, rest = body.partition("\n")
    head, _, kind = first.partition(" ")
    if kind != NOTE_KIND or rest.count("\n") != 1 or not rest.endswith("\n"):
        raise ReportError("this signed note is not an attestation report")
    try:
        report = json.loads(rest)
    except json.JSONDecodeError as e:
        raise ReportError(f"the report is not valid JSON: {e}") from e
    if not isinstance(report, dict) or report.get("type") != REPORT_TYPE:
        raise ReportError(f"the report's type is not {REPORT_TYPE}")
    if report.get("origin") != head:
        raise ReportError(f"the report names origin {report.get('origin')!r} but the note {head!r}")
    if origin is not None and head != origin:
        raise ReportError(f"the report comes from {head!r}, not {origin!r}")
    if not any(s.name == head for s in signatures):
        raise ReportError(f"no signature by the log's own key {head!r}")
    return report


__all__ = [
    "REPORT_TYPE",
    "ReportError",
    "build_report",
    "canonical",
    "note_text",
    "open_report",
    "rfc3339",
    "sign_report",
]
