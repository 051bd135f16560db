"""Exporters: the log as JSON lines, ArcSight CEF or RFC 5424 syslog, for SIEMs and auditors.

Owns the three record formats and their escaping: each record is exactly one line, and no
control character, DEL or Unicode line separator from an event reaches it raw, whatever the
event holds (a forged record in a SIEM is a forged log). Every record carries the event's
sequence number and leaf hash, so anything exported can be matched back to the tree and proven
with ``audit prove``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import UTC
from typing import Any

from audit.store import StoredEvent

FORMATS = ("jsonl", "cef", "rfc5424")
VENDOR, PRODUCT, VERSION = "Sovereign", "control-plane", "1"
#: RFC 5424 facility 10 (security/authorization messages).
_FACILITY = 10
#: Private enterprise number placeholder used in the structured-data ID (RFC 5424 7.2.2).
SD_ID = "sovereign@32473"


#: Characters no exported record may hold raw: C0 controls (NUL, TAB, LF, VT, FF, CR, FS, GS,
#: RS ...), DEL, C1 controls (NEL U+0085 among them) and the Unicode line and paragraph
#: separators. Log shippers and ``str.splitlines`` split records on several of them, and a
#: terminal acts on the rest; an event field (a denied request's path, a reason) must never
#: end one record and start a forged one.
UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: RFC 5424 HOSTNAME: 1 to 255 printable US-ASCII characters, no space (section 6.2.4).
_HOSTNAME = re.compile(r"[!-~]{1,255}")


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def _visible_escape(match: re.Match[str]) -> str:
    return f"\\\\u{ord(match.group()):04x}"


def _json_line(value: dict[str, Any]) -> str:
    """``value`` as compact JSON on one line.

    ``json`` escapes C0 controls itself but writes DEL, C1 controls and U+2028/U+2029 raw,
    which JSON allows and line-based shippers split on: those become ``\\uXXXX`` escapes too,
    so the line still parses back to exactly ``value``.
    """
    line = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    # Outside strings JSON has only ASCII punctuation and digits, so every match is inside a
    # string, where \uXXXX is the escape JSON defines (RFC 8259 section 7).
    return UNSAFE.sub(_json_escape, line)


def jsonl(stored: StoredEvent) -> str:
    """One JSON object on one line: the event plus ``seq`` and ``leaf_hash`` (hex)."""
    return _json_line(
        {"seq": stored.seq, "leaf_hash": stored.leaf_hash.hex(), **stored.event.to_dict()}
    )


def _visible(value: str) -> str:
    """Unsafe characters a format has no escape for, as the visible text ``\\uXXXX``, its
    backslash escaped (CEF and RFC 5424 both write a backslash as two), so a parser reads back
    those six characters and never the control itself. Call it after the format's own
    escaping, which would otherwise double the backslash again."""
    return UNSAFE.sub(_visible_escape, value)


def _cef_header(value: str) -> str:
    # CEF header fields escape backslash and pipe; line breaks have no escape there.
    return _visible(value.replace("\\", "\\\\").replace("|", "\\|"))


#: CEF extension values escape backslash, equals and the two line breaks (the CEF
#: specification's character-encoding rules); nothing else has an escape.
_CEF_VALUE_ESCAPES = str.maketrans({"\\": "\\\\", "=": "\\=", "\n": "\\n", "\r": "\\r"})


def _cef_value(value: str) -> str:
    return _visible(value.translate(_CEF_VALUE_ESCAPES))


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
    # RFC 5424 6.3.3: '"', '\\' and ']' are escaped with a backslash inside PARAM-VALUE; the
    # RFC has no escape for controls, and framing on a line break would split the message.
    return _visible(value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]"))


def rfc5424(stored: StoredEvent, hostname: str = "-") -> str:
    """One RFC 5424 syslog message with the event as structured data, JSON as the MSG.

    :raises ValueError: if ``hostname`` is not an RFC 5424 HOSTNAME (printable ASCII, no space).
    """
    if not _HOSTNAME.fullmatch(hostname):
        raise ValueError(f"not an RFC 5424 hostname: {hostname!r}")
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
    msg = _json_line(e.to_dict())
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
