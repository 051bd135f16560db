"""The report document, its signed note (as checkpoints are signed) and offline opening; and
reading an export back into events for the offline attestation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from audit.export import jsonl
from audit.note import NoteError, NoteVerifier, sign_note
from audit.signer import Ed25519Signer
from sovereign.services.attestation.claims import LogStatus, evaluate
from sovereign.services.attestation.offline import ExportError, attest_export, read_export
from sovereign.services.attestation.report import (
    ReportError,
    build_report,
    note_text,
    open_report,
    sign_report,
)

from .history import PARAMS, SCHEME, good_history

ORIGIN = "test.sovereign/audit"
SIGNER = Ed25519Signer.generate(ORIGIN)
VERIFIER = NoteVerifier.from_public_key(ORIGIN, SIGNER.public_key)
NOW = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)


def _report(message_suffix: str = "") -> dict[str, Any]:
    h = good_history()
    status = LogStatus(intact=True, size=len(h.events), root_hash="00", signed_sizes=(1,))
    claims = evaluate(h.events, PARAMS, status)
    claims[0].violate([1], "hostile\u2028line\x07" + message_suffix)
    return build_report(
        claims,
        status,
        origin=ORIGIN,
        generated_at=NOW,
        since=None,
        until=NOW,
        source="live",
        clearance=None,
        events=len(h.events),
        first_seq=0,
        last_seq=len(h.events) - 1,
        levels=SCHEME.levels,
        two_person_level="CONFIDENTIAL",
    )


def test_the_report_has_the_shared_shape() -> None:
    report = _report()
    assert report["type"] == "sovereign-attestation/v1"
    assert report["period"] == {"since": None, "until": "2026-12-07T06:00:00Z"}
    assert [c["letter"] for c in report["claims"]] == list("abcdef")
    assert report["verdict"] == "violated"
    assert set(report["claims"][0]) == {
        "id", "letter", "title", "verdict", "checked", "evidence", "violations", "notes",
    }  # fmt: skip


def test_signed_report_opens_with_the_logs_key_and_survives_hostile_text() -> None:
    report = _report()
    note = sign_report(report, [SIGNER])
    assert note.startswith(f"{ORIGIN} attestation v1\n{{")
    assert "\u2028" not in note and "\x07" not in note
    assert open_report(note, [VERIFIER]) == report
    assert open_report(note, [VERIFIER], ORIGIN) == report


def test_a_changed_or_foreign_report_does_not_open() -> None:
    note = sign_report(_report(), [SIGNER])
    with pytest.raises(NoteError):
        open_report(note.replace('"checked":', '"checked":1', 1), [VERIFIER])
    stranger = Ed25519Signer.generate(ORIGIN)
    with pytest.raises(NoteError):
        open_report(note, [NoteVerifier.from_public_key(ORIGIN, stranger.public_key)])
    with pytest.raises(ReportError):
        open_report(note, [VERIFIER], "other.origin/audit")
    checkpoint_like = sign_note(f"{ORIGIN}\n4\nAAAA\n", [SIGNER])
    with pytest.raises(ReportError, match="not an attestation report"):
        open_report(checkpoint_like, [VERIFIER])


def test_only_the_logs_own_key_signs_reports() -> None:
    with pytest.raises(ReportError):
        sign_report(_report(), [Ed25519Signer.generate("someone.else/audit")])
    assert note_text(_report()).count("\n") == 2


def test_an_export_reads_back_into_the_same_events() -> None:
    h = good_history()
    lines = [jsonl(s) for s in h.events]
    back = read_export(lines)
    assert [s.event for s, _ in back] == [s.event for s in h.events]
    with pytest.raises(ExportError, match="line 2"):
        read_export([lines[0], "{not json"])


def test_an_export_without_witness_cannot_prove_completeness() -> None:
    h = good_history()
    report = attest_export(
        [jsonl(s) for s in h.events],
        [VERIFIER],
        [],
        scheme=SCHEME,
        two_person_level="CONFIDENTIAL",
        since=None,
        until=None,
        generated_at=NOW,
    )
    claims = {c["id"]: c for c in report["claims"]}
    assert claims["residency"]["verdict"] == "holds"
    assert claims["completeness"]["verdict"] == "violated"
    assert "no signed checkpoint covers" in claims["completeness"]["violations"][0]["message"]
    assert report["scope"]["source"] == "export"
