"""The exporters: whatever an event holds, each record is one line with no control or line
separator in it, and reads back to the event's values."""

from __future__ import annotations

import json
import re
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit.event import AuditEvent, Outcome
from audit.export import SD_ID, cef, export, jsonl, rfc5424
from audit.store import StoredEvent

#: Everything a record must never hold raw; written out here independently of audit.export.
FORBIDDEN = {chr(c) for c in [*range(0x20), 0x7F, *range(0x80, 0xA0), 0x2028, 0x2029]}
#: The characters the property tests lean on, mixed into arbitrary text.
NASTY = '\n\r\t\x00\x0b\x0c\x1c\x1d\x1e\x1f\x7f\x85\u2028\u2029\\|="] '

nasty_text = st.text(
    alphabet=st.one_of(st.sampled_from(NASTY), st.characters(codec="utf-8")), max_size=40
)


@st.composite
def stored_events(draw: st.DrawFn) -> StoredEvent:
    level = draw(st.none() | nasty_text)
    event = AuditEvent(
        actor=draw(nasty_text),
        action=draw(st.sampled_from(["request:approve", "host:discover", "http:deny"])),
        target=draw(nasty_text),
        outcome=draw(st.sampled_from(list(Outcome))),
        reason=draw(nasty_text),
        label=None if level is None else {"level": level, "compartments": [draw(nasty_text)]},
        request_id=draw(nasty_text),
        source=draw(nasty_text),
        details=draw(st.dictionaries(nasty_text, nasty_text, max_size=3)),
        time=draw(st.datetimes(timezones=st.just(UTC))),
        id=uuid.UUID(int=draw(st.integers(0, 2**128 - 1))),
    )
    return StoredEvent(draw(st.integers(0, 2**40)), event, bytes(range(32)))


def one_clean_line(record: str) -> None:
    assert not FORBIDDEN & set(record), [c for c in record if c in FORBIDDEN]
    assert len(record.splitlines()) == 1


def visible(value: str, keep: str = "") -> str:
    """What a CEF or syslog parser reads back for ``value``: a character the format cannot
    escape shows as the six characters ``\\uXXXX``."""
    return "".join(f"\\u{ord(c):04x}" if c in FORBIDDEN and c not in keep else c for c in value)


# -- JSON lines --------------------------------------------------------------------------------


@given(stored_events())
def test_jsonl_is_one_line_and_round_trips(stored: StoredEvent):
    record = jsonl(stored)
    one_clean_line(record)
    assert json.loads(record) == {
        "seq": stored.seq,
        "leaf_hash": stored.leaf_hash.hex(),
        **stored.event.to_dict(),
    }


# -- CEF -------------------------------------------------------------------------------------


def _cef_unescape(value: str) -> str:
    table = {"\\": "\\", "|": "|", "=": "=", "n": "\n", "r": "\r"}
    return re.sub(r"\\(.)", lambda m: table.get(m.group(1), m.group(0)), value)


def parse_cef(record: str) -> tuple[list[str], dict[str, str]]:
    """The seven header fields and the extension of a CEF:0 record, unescaped."""
    header: list[str] = []
    current, i = "", 0
    while len(header) < 7:
        if record[i] == "\\":
            current, i = current + record[i : i + 2], i + 2
        elif record[i] == "|":
            header, current, i = [*header, current], "", i + 1
        else:
            current, i = current + record[i], i + 1
    pairs = re.findall(r"(?:^| )([A-Za-z0-9]+)=((?:[^\\=]|\\.)*?)(?= [A-Za-z0-9]+=|$)", record[i:])
    return [_cef_unescape(h) for h in header], {k: _cef_unescape(v) for k, v in pairs}


@given(stored_events())
def test_cef_is_one_line_with_the_fields_it_was_given(stored: StoredEvent):
    record = cef(stored)
    one_clean_line(record)
    header, fields = parse_cef(record)
    e = stored.event
    severity = "7" if e.outcome is Outcome.DENY else "3"
    assert header == [
        "CEF:0",
        "Sovereign",
        "control-plane",
        "1",
        e.action,
        f"{e.action} {e.outcome.value}",
        severity,
    ]
    expected = {
        "suser": e.actor,
        "msg": e.reason,
        "cs1": e.target,
        "src": e.source,
        "cs4": e.request_id,
        "cs3": (e.label or {}).get("level", ""),
    }
    for key, value in expected.items():
        # Line breaks have CEF escapes and come back exactly; other controls come back visible.
        assert fields.get(key, "") == visible(value, keep="\n\r"), key
    assert fields["cn1"] == str(stored.seq)
    assert fields["externalId"] == str(e.id)


# -- RFC 5424 ----------------------------------------------------------------------------------

SYSLOG = re.compile(
    r"<(?P<pri>\d+)>1 (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) (?P<proc>\S+) (?P<msgid>\S+) "
    r"\[(?P<sd>(?:[^\\\]]|\\.)*)\] \ufeff(?P<msg>.*)"
)


def parse_rfc5424(record: str) -> tuple[dict[str, str], dict[str, str], str]:
    """Header, structured-data parameters (unescaped) and MSG of one message."""
    found = SYSLOG.fullmatch(record)
    assert found is not None, record
    sd_id, _, params = found["sd"].partition(" ")
    assert sd_id == SD_ID
    pairs = re.findall(r'([A-Za-z]+)="((?:[^\\"\]]|\\.)*)"(?: |$)', params)
    assert " ".join(f'{k}="{v}"' for k, v in pairs) == params  # nothing left unparsed
    unescaped = {k: re.sub(r'\\(["\\\]])', r"\1", v) for k, v in pairs}
    return found.groupdict(), unescaped, found["msg"]


@given(stored_events())
def test_rfc5424_is_one_message_whose_values_read_back(stored: StoredEvent):
    record = rfc5424(stored, hostname="cp-1.example")
    one_clean_line(record)
    header, params, msg = parse_rfc5424(record)
    e = stored.event
    assert header["host"] == "cp-1.example"
    assert header["msgid"] == e.action
    assert params == {
        "seq": str(stored.seq),
        "leafHash": stored.leaf_hash.hex(),
        "action": e.action,
        "outcome": e.outcome.value,
        "actor": visible(e.actor),
        "target": visible(e.target),
    }
    assert json.loads(msg) == e.to_dict()


def test_a_forged_line_stays_inside_its_record():
    # The attack of issue 10 item 4: a path with a newline and a whole fake record after it.
    forged = '\n<86>1 2026-01-01T00:00:00Z - sovereign - request:approve [x actor="officer"] ok'
    event = AuditEvent(
        actor="user:mallory",
        action="http:deny",
        target="host:x" + forged,
        outcome=Outcome.DENY,
        reason="Not allowed\u2028" + forged,
        time=datetime(2026, 12, 6, tzinfo=UTC),
    )
    for fmt in ("jsonl", "cef", "rfc5424"):
        records = list(export([StoredEvent(0, event, b"\x00" * 32)], fmt))
        text = "\n".join(records)
        assert len(text.splitlines()) == 1, (fmt, text)


def test_a_hostname_that_is_not_one_is_refused():
    stored = StoredEvent(0, AuditEvent("a", "x:y", "t", Outcome.ALLOW), b"")
    with pytest.raises(ValueError, match="hostname"):
        rfc5424(stored, hostname="cp-1\n<86>1")


def test_an_action_with_a_trailing_newline_is_refused():
    with pytest.raises(ValueError, match="subject:action"):
        AuditEvent("a", "x:y\n", "t", Outcome.ALLOW)
