"""A sovereign-attestation/v1 report dict to render and read against the frameworks."""

from __future__ import annotations

from typing import Any

from sovereign.services.attestation.frameworks import CLAIMS

TITLES = {
    "co-residency": "No co-residency",
    "gpu-handover": "GPU hand-over",
    "crypto-erase": "Crypto-erase",
    "two-person": "Two-person rule",
    "residency": "Residency",
    "completeness": "Completeness",
}


def report(violated: dict[str, str] | None = None, **changes: Any) -> dict[str, Any]:
    """A report in which every claim holds, except those in ``violated`` (claim id ->
    violation message, on seqs 5 and 7)."""
    violated = violated or {}
    claims = []
    for letter, claim in zip("abcdef", CLAIMS, strict=True):
        bad = claim in violated
        claims.append(
            {
                "id": claim,
                "letter": letter,
                "title": TITLES[claim],
                "verdict": "violated" if bad else "holds",
                "checked": 12,
                "evidence": [3, 9],
                "violations": [{"seqs": [5, 7], "message": violated[claim]}] if bad else [],
                "notes": ["2 simulated certificates"] if claim == "gpu-handover" else [],
            }
        )
    found = {
        "type": "sovereign-attestation/v1",
        "origin": "sovereign.local/audit",
        "generated_at": "2026-12-07T06:00:00Z",
        "period": {"since": None, "until": "2026-12-07T06:00:00Z"},
        "scope": {
            "source": "live",
            "clearance": None,
            "events": 1234,
            "first_seq": 0,
            "last_seq": 1233,
        },
        "log": {"size": 1234, "root_hash": "ab" * 32, "checkpoints": 87, "witnessed": 87},
        "parameters": {
            "levels": ["UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET"],
            "two_person_level": "CONFIDENTIAL",
        },
        "claims": claims,
        "verdict": "violated" if violated else "holds",
    }
    found.update(changes)
    return found
