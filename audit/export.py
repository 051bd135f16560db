"""Exporters: the log as JSON lines, ArcSight CEF or RFC 5424 syslog, for SIEMs and auditors.

Owns the three record formats. Every record carries the event's sequence number and leaf hash,
so anything exported can be matched back to the tree and proven with ``audit prove``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from datetime import UTC

from audit.store import StoredEvent

FORMATS = ("jsonl", "cef", "rfc5424")
VENDOR, PRODUCT, VERSION = "Sovereign", "control-plane", "1"
#: RFC 5424 facility 10 (security/authorization messages).
_FACILITY = 10
#: Private enterprise number placeholder used in the structured-data ID (RFC 5424 7.2.2).
SD_ID = "sovereign@32473"


def jsonl(stored: StoredEvent) -> str:
    """One JSON object: the event plus ``seq`` and ``leaf_hash`` (hex)."""
    return json.dumps(
        {"seq": stored.seq, "leaf_hash": stored.leaf_hash.hex(), **stored.event.to_dict()},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )


def _cef_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ").replace("\r", " ")


def _cef_value(value: str) -> str:
    return (
        value.replace("\\", "\\\\")
        .replace("=", "\\=")
        .replace("\r\n", "\\n")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
    )


def cef(stored: StoredEvent) -> str:
    """One ArcSight Common Event Format line (CEF:0), denials at severity 7, others 3."""
    e = stored.event
    severity = 7 if e.outcome.value == "deny" else 3
    label = e.label or {}
    fields = {
        "rt": str(int(e.time.timestamp() * 1000)),
        "suser": e.actor,
        "act": e.action,
        "outcome": e.outcome.value,
        "src": e.source,
        "msg": e.reason,
        "externalId": str(e.id),
        "cn1Label": "seq",
        "cn1": str(stored.seq),
        "cs1Label": "target",
        "cs1": e.target,
        "cs2Label": "leafHash",
        "cs2": stored.leaf_hash.hex(),
        "cs3Label": "label",
        "cs3": label.get("level", ""),
        "cs4Label": "requestId",
        "cs4": e.request_id,
    }
    extension = " ".join(f"{k}={_cef_value(v)}" for k, v in fields.items() if v != "")
    header = "|".join(
        _cef_header(x)
        for x in (VENDOR, PRODUCT, VERSION, e.action, f"{e.action} {e.outcome.value}")
    )
    return f"CEF:0|{header}|{severity}|{extension}"


def _sd_value(value: str) -> str:
    # RFC 5424 6.3.3: '"', '\\' and ']' are escaped with a backslash inside PARAM-VALUE.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def rfc5424(stored: StoredEvent, hostname: str = "-") -> str:
    """One RFC 5424 syslog message with the event as structured data, JSON as the MSG."""
    e = stored.event
    severity = 4 if e.outcome.value == "deny" else 6  # warning / informational
    stamp = e.time.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    params = {
        "seq": str(stored.seq),
        "leafHash": stored.leaf_hash.hex(),
        "action": e.action,
        "outcome": e.outcome.value,
        "actor": e.actor,
        "target": e.target,
    }
    sd = f"[{SD_ID} " + " ".join(f'{k}="{_sd_value(v)}"' for k, v in params.items()) + "]"
    msg = json.dumps(e.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # BOM marks the MSG as UTF-8 (RFC 5424 6.4).
    return (
        f"<{_FACILITY * 8 + severity}>1 {stamp} {hostname} sovereign - {e.action} {sd} \ufeff{msg}"
    )


def export(events: Iterable[StoredEvent], fmt: str, *, hostname: str = "-") -> Iterator[str]:
    """Lines of ``events`` in format ``fmt``. :raises ValueError: for an unknown format."""
    if fmt == "jsonl":
        return (jsonl(s) for s in events)
    if fmt == "cef":
        return (cef(s) for s in events)
    if fmt == "rfc5424":
        return (rfc5424(s, hostname) for s in events)
    raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
