"""GPU hand-over certificates: the verdict on one GPU's reset and scrub between two tenants.

Owns the certificate (version 1): its fields, the checks of the scrub program's report (which
comes from a program inside a domain, so it is untrusted input: every type and bound is
checked here), the verdict (``clean`` iff the report is well formed, its coverage, recomputed
here as ``bytes_covered / bytes_total``, is at least :data:`MIN_COVERAGE`, no byte mismatched
and no word of the previous tenant's canary was found) and the certificate's canonical JSON. A
GPU goes back to ``free`` only with a clean certificate.

Pure: no I/O, no clock (the caller passes ``issued_at``), no logging. It must not decide what
happens to the GPU (the reconciler does) nor how a GPU is reset or scrubbed (the sanitizer
backends do).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

__all__ = [
    "CERTIFICATE_VERSION",
    "MIN_COVERAGE",
    "PATTERNS",
    "SCRUB_PROGRAM",
    "HandoverSubject",
    "MalformedReportError",
    "ScrubPass",
    "ScrubReport",
    "Verdict",
    "canonical_json",
    "certificate",
    "failed_certificate",
    "parse_report",
]

CERTIFICATE_VERSION = 1
#: The report format the control plane understands (``program`` of the report).
SCRUB_PROGRAM = "sovereign-scrub/1"
#: The fill patterns of ``sovereign-scrub/1``, in order: both must have run.
PATTERNS = ("zeros", "nonce")
#: The least share of the device's memory the scrub must have covered (numerator and
#: denominator, so the comparison is exact in integers).
MIN_COVERAGE = 0.99
_COVERAGE_NUM, _COVERAGE_DEN = 99, 100

Verdict = Literal["clean", "failed"]

#: Bounds on the untrusted report. 2**50 bytes (1 PiB) is far above any device memory and
#: below 2**53, so every count stays exact in the audit log's canonical JSON.
_MAX_BYTES = 2**50
_MAX_SECONDS = 86_400.0
_MAX_GB_PER_S = 1.0e6
_MAX_PASSES = 16
_MAX_TEXT = 256
_MAX_STATE_KEYS = 64
_MAX_STATE_DEPTH = 3
_MAX_REASON = 300
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._/+-]{0,63}")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_REPORT_KEYS = frozenset(
    {
        "program",
        "device",
        "simulated",
        "bytes_total",
        "bytes_covered",
        "patterns",
        "mismatches",
        "canary_checked",
        "canary_hits",
        "passes",
        "gb_per_s",
        "seconds",
        "device_state",
    }
)


class MalformedReportError(ValueError):
    """The scrub report is not a well-formed ``sovereign-scrub/1`` report; the message says
    which field and why (it never quotes the untrusted value)."""


@dataclass(frozen=True)
class HandoverSubject:
    """Which GPU was handed over, and from whom: what the control plane knows, not the report."""

    host: str
    host_uuid: str | None
    address: str
    #: The GPU's UUID as the inventory recorded it (None where it was not known).
    gpu_uuid: str | None
    #: The request id of the GPU's previous enclave and its label (None if never used).
    previous_enclave: str | None
    previous_label: str | None


@dataclass(frozen=True)
class ScrubPass:
    """One timed pass of the scrub program."""

    name: str
    bytes: int
    seconds: float
    gb_per_s: float


@dataclass(frozen=True)
class ScrubReport:
    """A checked ``sovereign-scrub/1`` report."""

    device: str
    simulated: bool
    bytes_total: int
    bytes_covered: int
    patterns: tuple[str, ...]
    mismatches: int
    canary_checked: bool
    canary_hits: int
    passes: tuple[ScrubPass, ...]
    gb_per_s: float
    seconds: float
    device_state: dict[str, Any]

    @property
    def coverage(self) -> float:
        """``bytes_covered / bytes_total``, as the control plane computes it."""
        return self.bytes_covered / self.bytes_total

    @property
    def covered_enough(self) -> bool:
        """Whether coverage >= :data:`MIN_COVERAGE` (exact, in integers)."""
        return self.bytes_covered * _COVERAGE_DEN >= self.bytes_total * _COVERAGE_NUM


def parse_report(report: object) -> ScrubReport:
    """Check the untrusted scrub report field by field.

    :raises MalformedReportError: anything missing, of the wrong type, out of bounds or
        inconsistent (e.g. more bytes covered than the device has).
    """
    if not isinstance(report, Mapping):
        raise MalformedReportError("the scrub report is not a JSON object")
    missing = sorted(_REPORT_KEYS - set(report))
    if missing:
        raise MalformedReportError(f"the scrub report lacks {', '.join(missing)}")
    if report["program"] != SCRUB_PROGRAM:
        raise MalformedReportError(f"the scrub report is not from {SCRUB_PROGRAM}")
    bytes_total = _count(report, "bytes_total", _MAX_BYTES)
    if bytes_total == 0:
        raise MalformedReportError("bytes_total is 0")
    bytes_covered = _count(report, "bytes_covered", bytes_total)
    patterns = report["patterns"]
    if not isinstance(patterns, list) or tuple(patterns) != PATTERNS:
        raise MalformedReportError(f"patterns must be {list(PATTERNS)}")
    return ScrubReport(
        device=_name(report, "device"),
        simulated=_bool(report, "simulated"),
        bytes_total=bytes_total,
        bytes_covered=bytes_covered,
        patterns=PATTERNS,
        mismatches=_count(report, "mismatches", bytes_total),
        canary_checked=_bool(report, "canary_checked"),
        canary_hits=_count(report, "canary_hits", bytes_total // 8),
        passes=_passes(report["passes"]),
        gb_per_s=_number(report, "gb_per_s", _MAX_GB_PER_S),
        seconds=_number(report, "seconds", _MAX_SECONDS),
        device_state=_state(report["device_state"], "device_state", 1),
    )


def certificate(
    subject: HandoverSubject,
    *,
    reset: Mapping[str, Any],
    report: object,
    simulated: bool,
    canary_expected: bool,
    issued_at: datetime,
) -> dict[str, Any]:
    """The certificate of a hand-over whose backend answered with ``reset`` and ``report``.

    ``simulated`` is the backend's own statement; the certificate says ``simulated: true`` if
    either it or the report does (nothing may claim a real GPU was scrubbed where none was).
    ``canary_expected``: the previous enclave had a canary nonce, so the report must say the
    canary was checked. A malformed report gives a failed certificate, never an exception.
    """
    try:
        checked_reset = _state(reset, "reset", 1)
    except MalformedReportError as e:
        return failed_certificate(
            subject, reason=f"malformed reset record: {e}", simulated=simulated, issued_at=issued_at
        )
    try:
        scrub = parse_report(report)
    except MalformedReportError as e:
        return failed_certificate(
            subject,
            reason=f"malformed scrub report: {e}",
            reset=checked_reset,
            simulated=simulated,
            issued_at=issued_at,
        )
    nvml_uuid = scrub.device_state.get("uuid")
    nvml_serial = scrub.device_state.get("serial")
    cert = _skeleton(subject, checked_reset, simulated or scrub.simulated, issued_at)
    cert.update(
        {
            "gpu": {
                "address": subject.address,
                "uuid": subject.gpu_uuid or (nvml_uuid if isinstance(nvml_uuid, str) else None),
                "serial": nvml_serial if isinstance(nvml_serial, str) else None,
            },
            "scrub": {
                "device": scrub.device,
                "bytes_total": scrub.bytes_total,
                "bytes_covered": scrub.bytes_covered,
                "coverage": round(scrub.coverage, 6),
                "patterns": list(scrub.patterns),
                "mismatches": scrub.mismatches,
                "gb_per_s": round(scrub.gb_per_s, 3),
                "seconds": round(scrub.seconds, 6),
            },
            "canary_checked": scrub.canary_checked,
            "canary_hits": scrub.canary_hits,
            "device_state": scrub.device_state,
        }
    )
    reason = _failure(subject, scrub, simulated=simulated, canary_expected=canary_expected)
    cert["verdict"] = "failed" if reason else "clean"
    if reason:
        cert["reason"] = reason
    return cert


def failed_certificate(
    subject: HandoverSubject,
    *,
    reason: str,
    issued_at: datetime,
    simulated: bool,
    reset: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The certificate of a hand-over that gave no usable report (it failed, timed out, or
    answered garbage): verdict ``failed`` with ``reason``; ``scrub``, ``canary_hits`` and
    ``device_state`` are null (nothing was verified)."""
    cert = _skeleton(subject, dict(reset) if reset is not None else None, simulated, issued_at)
    cert["verdict"] = "failed"
    cert["reason"] = _one_line(reason)
    return cert


def canonical_json(cert: Mapping[str, Any]) -> str:
    """The certificate as canonical JSON: sorted keys, no whitespace, UTF-8 text (the same
    bytes as the audit log's RFC 8785 form for the values a certificate holds).

    :raises ValueError: for values JSON cannot represent (NaN, infinities).
    """
    return json.dumps(
        cert, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _skeleton(
    subject: HandoverSubject,
    reset: dict[str, Any] | None,
    simulated: bool,
    issued_at: datetime,
) -> dict[str, Any]:
    return {
        "version": CERTIFICATE_VERSION,
        "host": subject.host,
        "host_uuid": subject.host_uuid,
        "gpu": {"address": subject.address, "uuid": subject.gpu_uuid, "serial": None},
        "previous_enclave": subject.previous_enclave,
        "previous_label": subject.previous_label,
        "reset": reset,
        "scrub": None,
        "canary_checked": False,
        "canary_hits": None,
        "device_state": None,
        "simulated": simulated,
        "issued_at": _timestamp(issued_at),
    }


def _failure(
    subject: HandoverSubject, scrub: ScrubReport, *, simulated: bool, canary_expected: bool
) -> str:
    """Why the scrub does not make the GPU clean ('' when it does)."""
    reasons = []
    if not scrub.covered_enough:
        reasons.append(
            f"coverage {scrub.coverage:.4f} is below {MIN_COVERAGE} "
            f"({scrub.bytes_covered} of {scrub.bytes_total} bytes)"
        )
    if scrub.mismatches:
        reasons.append(f"{scrub.mismatches} bytes did not read back as written")
    if scrub.canary_hits:
        reasons.append(f"{scrub.canary_hits} words of the previous tenant's canary were found")
    if canary_expected and not scrub.canary_checked:
        reasons.append("the previous tenant's canary was not checked")
    if scrub.simulated and not simulated:
        reasons.append("the scrub ran on a simulated device memory, not on the GPU")
    nvml_uuid = scrub.device_state.get("uuid")
    if subject.gpu_uuid and isinstance(nvml_uuid, str) and nvml_uuid != subject.gpu_uuid:
        reasons.append("the scrubbed device is not the GPU handed over (its UUID differs)")
    return "; ".join(reasons)


def _count(report: Mapping[str, Any], key: str, limit: int) -> int:
    value = report[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise MalformedReportError(f"{key} is not an integer")
    if not 0 <= value <= limit:
        raise MalformedReportError(f"{key} is out of bounds (0..{limit})")
    return value


def _number(report: Mapping[str, Any], key: str, limit: float) -> float:
    value = report[key]
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise MalformedReportError(f"{key} is not a number")
    if not math.isfinite(value) or not 0 <= value <= limit:
        raise MalformedReportError(f"{key} is out of bounds (0..{limit:g})")
    return float(value)


def _bool(report: Mapping[str, Any], key: str) -> bool:
    value = report[key]
    if not isinstance(value, bool):
        raise MalformedReportError(f"{key} is not a boolean")
    return value


def _name(report: Mapping[str, Any], key: str) -> str:
    value = report[key]
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise MalformedReportError(f"{key} is not a device name")
    return value


def _passes(value: object) -> tuple[ScrubPass, ...]:
    if not isinstance(value, list) or not 1 <= len(value) <= _MAX_PASSES:
        raise MalformedReportError(f"passes is not a list of 1..{_MAX_PASSES} passes")
    passes = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {"name", "bytes", "seconds", "gb_per_s"}:
            raise MalformedReportError("a pass is not {name, bytes, seconds, gb_per_s}")
        passes.append(
            ScrubPass(
                name=_name(item, "name"),
                bytes=_count(item, "bytes", _MAX_BYTES),
                seconds=_number(item, "seconds", _MAX_SECONDS),
                gb_per_s=_number(item, "gb_per_s", _MAX_GB_PER_S),
            )
        )
    return tuple(passes)


def _state(value: object, where: str, depth: int) -> dict[str, Any]:
    """A small JSON object of names, short safe strings, finite numbers, booleans and nulls,
    nested at most :data:`_MAX_STATE_DEPTH` deep (NVML's identity, ECC counters, the reset)."""
    if not isinstance(value, Mapping):
        raise MalformedReportError(f"{where} is not an object")
    if len(value) > _MAX_STATE_KEYS:
        raise MalformedReportError(f"{where} has more than {_MAX_STATE_KEYS} keys")
    checked: dict[str, Any] = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise MalformedReportError(f"{where} has a key that is not a name")
        checked[key] = _state_value(item, f"{where}.{key}", depth)
    return checked


def _state_value(value: object, where: str, depth: int) -> Any:
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_BYTES:
            raise MalformedReportError(f"{where} is out of bounds")
        return value
    if isinstance(value, float):
        if not math.isfinite(value) or abs(value) > _MAX_BYTES:
            raise MalformedReportError(f"{where} is out of bounds")
        return value
    if isinstance(value, str):
        if len(value) > _MAX_TEXT or _UNSAFE.search(value):
            raise MalformedReportError(f"{where} is not a short printable text")
        return value
    if depth >= _MAX_STATE_DEPTH:
        raise MalformedReportError(f"{where} is nested too deep")
    if isinstance(value, Mapping):
        return _state(value, where, depth + 1)
    if isinstance(value, list):
        if len(value) > _MAX_STATE_KEYS:
            raise MalformedReportError(f"{where} has more than {_MAX_STATE_KEYS} items")
        return [_state_value(item, f"{where}[]", depth + 1) for item in value]
    raise MalformedReportError(f"{where} is not a JSON value")


def _one_line(text: str) -> str:
    """``text`` (which may quote a guest or libvirt) as one printable line, bounded."""
    flat = " ".join("".join(c if c.isprintable() else " " for c in text).split()) or "unknown"
    return flat if len(flat) <= _MAX_REASON else flat[: _MAX_REASON - 3] + "..."


def _timestamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat().replace("+00:00", "Z")
