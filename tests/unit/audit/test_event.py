from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from audit.event import AuditEvent, Outcome, canonical_json, event_from_entry, redact

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_fast_path_equals_rfc8785(value):
    assert canonical_json(value) == rfc8785.dumps(value)


@given(st.dictionaries(st.text(max_size=5), st.floats(allow_nan=False, allow_infinity=False)))
def test_floats_and_unicode_keys_take_the_reference_path(value):
    assert canonical_json(value) == rfc8785.dumps(value)


def test_big_integers_follow_rfc8785():
    # Beyond 2**53 RFC 8785 refuses; the fast path must not quietly accept.
    with pytest.raises(ValueError, match="canonical JSON"):
        canonical_json({"n": 2**60})


def test_known_canonical_form():
    # RFC 8785 orders keys by UTF-16 code units and escapes only what JSON requires.
    value = {"b": [1, "\u20ac", None], "a": {"z": True, "\u00e9": "x\n"}}
    assert (
        canonical_json(value) == '{"a":{"z":true,"\u00e9":"x\\n"},"b":[1,"\u20ac",null]}'.encode()
    )


def make(**kw) -> AuditEvent:
    base = {
        "actor": "user:a",
        "action": "request:create",
        "target": "request/1",
        "outcome": Outcome.ALLOW,
        "label": {"level": "SECRET", "compartments": ["NATO"]},
        "details": {"n": 1},
        "time": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
        "id": uuid.UUID(int=7),
    }
    return AuditEvent(**{**base, **kw})


def test_canonical_bytes_are_stable_and_round_trip():
    event = make()
    assert event.canonical_bytes() == make().canonical_bytes()
    assert event_from_entry(event.canonical_bytes()) == event
    assert b'"time":"2026-01-02T03:04:05.678901Z"' in event.canonical_bytes()
    assert make(reason="x").canonical_bytes() != event.canonical_bytes()


@pytest.mark.parametrize("action", ["create", "Request:create", "request:", "request:create:x"])
def test_actions_are_subject_colon_action(action):
    with pytest.raises(ValueError, match="subject:action"):
        make(action=action)


def test_naive_time_refused():
    with pytest.raises(ValueError, match="timezone-aware"):
        make(time=datetime(2026, 1, 1))  # noqa: DTZ001 - the point of the test


def test_redact_is_keyed_and_stable():
    assert redact("secret", b"k1") == redact("secret", b"k1")
    assert redact("secret", b"k1") != redact("secret", b"k2")
    assert "secret" not in redact("secret", b"k1")
