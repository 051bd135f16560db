"""GPU hand-over certificates: coverage and verdict as specified, the untrusted scrub report
checked field by field (a malformed one fails the certificate, never raises), canonical JSON."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from sovereign.domain.fleet import sanitizer_domain_name
from sovereign.domain.handover import (
    MIN_COVERAGE,
    HandoverSubject,
    MalformedReportError,
    canonical_json,
    certificate,
    failed_certificate,
    parse_report,
)

WHEN = datetime(2026, 12, 6, 23, 0, tzinfo=UTC)
SUBJECT = HandoverSubject(
    host="secret-1",
    host_uuid="6f1c2f9e-0000-4000-8000-000000000001",
    address="0000:18:00.0",
    gpu_uuid="GPU-1234",
    previous_enclave="0b7c7a52-1111-4111-8111-111111111111",
    previous_label="SECRET//NATO",
)
RESET = {"type": "libvirt-node-device-reset", "functions": ["0000:18:00.0"], "duration_ms": 12}
TOTAL = 80 * 2**30


def report(**changes: Any) -> dict[str, Any]:
    """A well-formed clean report of an 80 GiB device, with ``changes``."""
    base: dict[str, Any] = {
        "program": "sovereign-scrub/1",
        "device": "cuda:0",
        "simulated": False,
        "bytes_total": TOTAL,
        "bytes_covered": TOTAL - 2**28,
        "patterns": ["zeros", "nonce"],
        "mismatches": 0,
        "canary_checked": True,
        "canary_hits": 0,
        "passes": [
            {"name": "canary-scan", "bytes": TOTAL, "seconds": 0.03, "gb_per_s": 2800.5},
            {"name": "zeros", "bytes": TOTAL, "seconds": 0.06, "gb_per_s": 2900.0},
            {"name": "nonce", "bytes": TOTAL, "seconds": 0.07, "gb_per_s": 2500},
        ],
        "gb_per_s": 2700.25,
        "seconds": 0.16,
        "device_state": {
            "uuid": "GPU-1234",
            "serial": "1650123456789",
            "vbios": "96.00.99.00.01",
            "ecc_mode": "enabled",
            "ecc_errors": {"volatile": {"corrected": 0, "uncorrected": 0}},
            "mig_mode": None,
        },
    }
    base.update(changes)
    return base


def cert(rep: object = None, *, simulated: bool = False, canary: bool = True) -> dict[str, Any]:
    return certificate(
        SUBJECT,
        reset=RESET,
        report=report() if rep is None else rep,
        simulated=simulated,
        canary_expected=canary,
        issued_at=WHEN,
    )


def test_a_clean_report_gives_a_clean_certificate_with_every_field():
    c = cert()
    assert c["verdict"] == "clean"
    assert "reason" not in c
    assert c["version"] == 1
    assert c["host"] == "secret-1"
    assert c["host_uuid"] == SUBJECT.host_uuid
    assert c["gpu"] == {"address": "0000:18:00.0", "uuid": "GPU-1234", "serial": "1650123456789"}
    assert c["previous_enclave"] == SUBJECT.previous_enclave
    assert c["previous_label"] == "SECRET//NATO"
    assert c["reset"] == RESET
    assert c["scrub"] == {
        "device": "cuda:0",
        "bytes_total": TOTAL,
        "bytes_covered": TOTAL - 2**28,
        "coverage": round((TOTAL - 2**28) / TOTAL, 6),
        "patterns": ["zeros", "nonce"],
        "mismatches": 0,
        "gb_per_s": 2700.25,
        "seconds": 0.16,
    }
    assert c["canary_checked"] is True
    assert c["canary_hits"] == 0
    assert c["device_state"]["ecc_errors"] == {"volatile": {"corrected": 0, "uncorrected": 0}}
    assert c["simulated"] is False
    assert c["issued_at"] == "2026-12-06T23:00:00Z"


def test_coverage_is_recomputed_by_the_control_plane_and_99_percent_is_the_line():
    # The fewest bytes that make 99 %, exactly (no float rounding decides a verdict).
    exactly = -(-TOTAL * 99 // 100)
    assert cert(report(bytes_covered=exactly))["verdict"] == "clean"
    below = cert(report(bytes_covered=exactly - 1))
    assert below["verdict"] == "failed"
    assert f"below {MIN_COVERAGE}" in below["reason"]
    # A report's own "coverage" key is no part of the contract: it is ignored.
    assert cert(report(bytes_covered=exactly - 1, coverage=1.0))["verdict"] == "failed"
    assert below["scrub"]["coverage"] == round((exactly - 1) / TOTAL, 6)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"mismatches": 1}, "1 bytes did not read back as written"),
        ({"canary_hits": 3}, "3 words of the previous tenant's canary were found"),
        ({"canary_checked": False}, "canary was not checked"),
        ({"simulated": True}, "simulated device memory, not on the GPU"),
        ({"device_state": {"uuid": "GPU-9999"}}, "not the GPU handed over"),
    ],
)
def test_each_finding_fails_the_certificate_with_its_reason(changes: dict[str, Any], reason: str):
    c = cert(report(**changes))
    assert c["verdict"] == "failed"
    assert reason in c["reason"]


def test_without_a_previous_canary_an_unchecked_canary_is_fine():
    assert cert(report(canary_checked=False), canary=False)["verdict"] == "clean"


def test_simulated_is_true_if_either_the_backend_or_the_report_says_so():
    c = cert(report(simulated=True), simulated=True)
    assert c["verdict"] == "clean"
    assert c["simulated"] is True
    assert cert(report(), simulated=True)["simulated"] is True


def test_several_findings_are_all_named():
    c = cert(report(mismatches=5, canary_hits=1))
    assert "5 bytes" in c["reason"]
    assert "1 words" in c["reason"]


MALFORMED: list[tuple[object, str]] = [
    ("not an object", "not a JSON object"),
    ([], "not a JSON object"),
    ({k: v for k, v in report().items() if k != "mismatches"}, "lacks mismatches"),
    (report(program="other/1"), "not from sovereign-scrub/1"),
    (report(bytes_total=0), "bytes_total is 0"),
    (report(bytes_total=-1), "bytes_total is out of bounds"),
    (report(bytes_total=2**60), "bytes_total is out of bounds"),
    (report(bytes_total="80G"), "bytes_total is not an integer"),
    (report(bytes_total=True), "bytes_total is not an integer"),
    (report(bytes_covered=TOTAL + 1), "bytes_covered is out of bounds"),
    (report(bytes_covered=1.5), "bytes_covered is not an integer"),
    (report(mismatches=-1), "mismatches is out of bounds"),
    (report(mismatches=None), "mismatches is not an integer"),
    (report(canary_hits=TOTAL), "canary_hits is out of bounds"),
    (report(canary_checked=1), "canary_checked is not a boolean"),
    (report(simulated="no"), "simulated is not a boolean"),
    (report(patterns=["zeros"]), "patterns must be"),
    (report(patterns="zeros,nonce"), "patterns must be"),
    (report(device="cuda:0\nFAKE LOG LINE"), "device is not a device name"),
    (report(device=""), "device is not a device name"),
    (report(gb_per_s=float("nan")), "gb_per_s is out of bounds"),
    (report(gb_per_s=float("inf")), "gb_per_s is out of bounds"),
    (report(seconds=-0.1), "seconds is out of bounds"),
    (report(seconds="fast"), "seconds is not a number"),
    (report(passes=[]), "passes is not a list"),
    (report(passes=[{"name": "zeros"}]), "a pass is not"),
    (report(passes=[{"name": "x", "bytes": 1, "seconds": 1, "gb_per_s": -1}]), "out of bounds"),
    (report(device_state="ok"), "device_state is not an object"),
    (report(device_state={"bad key!": 1}), "key that is not a name"),
    (report(device_state={"vbios": "x" * 10_000}), "device_state.vbios is not a short"),
    (report(device_state={"vbios": "a\x1b[2Jb"}), "not a short printable text"),
    (report(device_state={"a": {"b": {"c": {"d": 1}}}}), "nested too deep"),
    (report(device_state={f"k{i}": i for i in range(100)}), "more than 64 keys"),
    (report(device_state={"n": 2**60}), "device_state.n is out of bounds"),
    (report(device_state={"n": float("nan")}), "device_state.n is out of bounds"),
    (report(device_state={"n": object()}), "not a JSON value"),
]


@pytest.mark.parametrize(("rep", "why"), MALFORMED)
def test_a_malformed_report_is_refused_naming_the_field(rep: object, why: str):
    with pytest.raises(MalformedReportError, match=re.escape(why)):
        parse_report(rep)


@pytest.mark.parametrize(("rep", "why"), MALFORMED)
def test_a_malformed_report_fails_the_certificate_never_raises(rep: object, why: str):
    c = cert(rep)
    assert c["verdict"] == "failed"
    assert c["reason"].startswith("malformed scrub report: ")
    assert why in c["reason"]
    # Nothing of the untrusted report enters a failed certificate.
    assert c["scrub"] is None
    assert c["device_state"] is None
    assert c["canary_hits"] is None
    assert c["reset"] == RESET


def test_a_malformed_reset_record_fails_the_certificate():
    c = certificate(
        SUBJECT,
        reset={"type": "x\ny"},
        report=report(),
        simulated=False,
        canary_expected=True,
        issued_at=WHEN,
    )
    assert c["verdict"] == "failed"
    assert c["reason"].startswith("malformed reset record: ")
    assert c["reset"] is None


def test_a_failed_certificate_says_why_on_one_bounded_line():
    c = failed_certificate(
        SUBJECT, reason="no answer\nwithin 600 s" + "!" * 1000, issued_at=WHEN, simulated=True
    )
    assert c["verdict"] == "failed"
    assert "\n" not in c["reason"]
    assert c["reason"].startswith("no answer within 600 s")
    assert len(c["reason"]) <= 300
    assert c["simulated"] is True
    assert c["scrub"] is None
    assert c["canary_checked"] is False
    assert c["gpu"] == {"address": "0000:18:00.0", "uuid": "GPU-1234", "serial": None}


def test_the_gpu_uuid_comes_from_nvml_when_the_inventory_had_none():
    subject = HandoverSubject("h", None, "0000:18:00.0", None, None, None)
    c = certificate(
        subject,
        reset=RESET,
        report=report(),
        simulated=False,
        canary_expected=False,
        issued_at=WHEN,
    )
    assert c["verdict"] == "clean"
    assert c["gpu"]["uuid"] == "GPU-1234"
    assert c["previous_enclave"] is None
    assert c["previous_label"] is None


def test_canonical_json_is_sorted_compact_and_stable():
    c = cert()
    text = canonical_json(c)
    assert json.loads(text) == c
    assert text == canonical_json(json.loads(text))
    assert ", " not in text
    assert ": " not in text
    keys = list(json.loads(text))
    assert keys == sorted(keys)
    with pytest.raises(ValueError, match="Out of range"):
        canonical_json({"x": float("nan")})


def test_the_sanitizer_domain_name_is_the_address_made_a_name():
    assert sanitizer_domain_name("0000:18:00.0") == "sov-sanitize-0000-18-00-0"
    for bad in ("0000:18:00.8", "../etc", "0000:18:00.0 ", "", "0000:18:00"):
        with pytest.raises(ValueError, match="not a PCI address"):
            sanitizer_domain_name(bad)
