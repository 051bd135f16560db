"""Attesting offline, from a JSON-lines export and the witness file, with the log's public key.

Owns :class:`ExportReader` (the :class:`audit.store.LogReader` port over an export: each line's
event is rebuilt and re-serialised, so the tree :func:`audit.verify.verify_log` rebuilds comes
from the events' own bytes, and the leaf hash each line claims is held to them) and
:func:`attest_export`. No database and no network: an auditor runs it on their own machine.
An export that leaves events out (one filtered by time or clearance) cannot rebuild the tree:
the completeness claim says so.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from audit import StoredEvent
from audit.event import event_from_entry
from audit.note import NoteVerifier
from audit.store import StoredCheckpoint, index_columns
from audit.verify import LogVerificationError, verify_log
from audit.witness import WitnessedCheckpoint
from sovereign.domain.labels import LabelScheme
from sovereign.services.attestation.claims import AttestParams, LogStatus, evaluate
from sovereign.services.attestation.report import build_report

#: The fields of an export line that are not the event's.
_LINE_FIELDS = ("seq", "leaf_hash")


class ExportError(ValueError):
    """An export line that is not an exported event."""


def read_export(lines: Iterable[str]) -> list[tuple[StoredEvent, bytes]]:
    """Each line's event (with its seq and claimed leaf hash) and its canonical bytes.

    :raises ExportError: naming the first line that is not an exported event.
    """
    found: list[tuple[StoredEvent, bytes]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            data: dict[str, Any] = json.loads(line)
            seq, leaf = int(data["seq"]), bytes.fromhex(data["leaf_hash"])
            event = {k: v for k, v in data.items() if k not in _LINE_FIELDS}
            rebuilt = event_from_entry(json.dumps(event).encode())
        except (ValueError, KeyError, TypeError) as e:
            raise ExportError(f"line {number} is not an exported event: {e}") from e
        found.append((StoredEvent(seq, rebuilt, leaf), rebuilt.canonical_bytes()))
    found.sort(key=lambda pair: pair[0].seq)
    return found


class ExportReader:
    """The :class:`audit.store.LogReader` port over an export (no stored checkpoints: the
    witness file's are the ones it is held to)."""

    def __init__(self, events: Sequence[tuple[StoredEvent, bytes]]) -> None:
        self._events = events

    def size(self) -> int:
        """One more than the largest seq (0 if none)."""
        return self._events[-1][0].seq + 1 if self._events else 0

    def checkpoints(self) -> Sequence[StoredCheckpoint]:
        """None: an export carries no checkpoints."""
        return []

    def entries(self) -> Iterable[tuple[int, bytes, bytes]]:
        """``(seq, canonical bytes, claimed leaf hash)`` in seq order."""
        return ((s.seq, entry, s.leaf_hash) for s, entry in self._events)

    def filter_columns(self) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        """Columns read from each entry itself (an export has no separate columns)."""
        return ((s.seq, entry, index_columns(entry)) for s, entry in self._events)


def export_status(
    events: Sequence[tuple[StoredEvent, bytes]],
    verifiers: Sequence[NoteVerifier],
    origin: str,
    witness: Sequence[WitnessedCheckpoint],
    progress: Callable[[int, int], None] | None = None,
) -> LogStatus:
    """Rebuild the tree from the export and hold it to the witness's signed checkpoints."""
    try:
        report = verify_log(
            ExportReader(events),
            verifiers,
            origin,
            witness=witness,
            progress=progress,
            check_columns=False,
        )
    except LogVerificationError as e:
        return LogStatus(intact=False, problem=str(e))
    return LogStatus.intact_as(report, (w.size for w in witness))


def attest_export(
    lines: Iterable[str],
    verifiers: Sequence[NoteVerifier],
    witness: Sequence[WitnessedCheckpoint],
    *,
    scheme: LabelScheme,
    two_person_level: str,
    since: datetime | None,
    until: datetime | None,
    generated_at: datetime,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """The report over an export (``scope.source`` "export"), unsigned: whoever runs it offline
    holds the log's public key only. The origin is the verifier keys' name.

    :raises ExportError: a malformed line. :raises ValueError: no verifier key.
    """
    if not verifiers:
        raise ValueError("the log's public key is needed to check the witness's checkpoints")
    origin = verifiers[0].name
    events = read_export(lines)
    status = export_status(events, verifiers, origin, witness, progress)
    end = generated_at if until is None or until > generated_at else until
    stored = [s for s, _ in events if s.event.time < end]
    params = AttestParams(scheme, two_person_level, since, end)
    claims = evaluate(stored, params, status)
    in_period = [s.seq for s in stored if params.in_period(s)]
    return build_report(
        claims,
        status,
        origin=origin,
        generated_at=generated_at,
        since=since,
        until=end,
        source="export",
        clearance=None,
        events=len(in_period),
        first_seq=min(in_period, default=None),
        last_seq=max(in_period, default=None),
        levels=scheme.levels,
        two_person_level=two_person_level,
    )


__all__ = ["ExportError", "ExportReader", "attest_export", "export_status", "read_export"]
