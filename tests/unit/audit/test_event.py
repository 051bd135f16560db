from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from audit.event import AuditEvent, Outcome, canonical_json, event_from_entry, redact

#: Strings that stress the encoder: control characters (short and \\u00xx escapes), quotes and
#: backslashes, DEL, U+2028/9, BMP characters on either side of the surrogate range (U+E000 and
#: up sort differently in UTF-16 than in code points), and astral characters (surrogate pairs).
tricky_text = st.text(
    st.characters(min_codepoint=0, max_codepoint=0x1F)
    | st.sampled_from(
        '"\\/\x7f\u2028\u2029\ud7ff\ue000\uffef\ufffd\uffff\U00010000\U0001f600\U0010ffff'
    )
    | st.characters(blacklist_categories=("Cs",)),
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53) + 1, max_value=2**53 - 1)
    | st.text()
    | tricky_text
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(st.text(max_size=8) | tricky_text, children, max_size=4)
    ),
    max_leaves=20,
)


@given(json_values)
def test_fast_path_equals_rfc8785(value):
    assert canonical_json(value) == rfc8785.dumps(value)


@given(
    actor=tricky_text,
    target=tricky_text,
    reason=tricky_text,
    label=st.none()
    | st.fixed_dictionaries({"level": tricky_text, "compartments": st.lists(tricky_text)}),
    details=st.dictionaries(tricky_text, json_values, max_size=5),
    time=st.datetimes(timezones=st.just(UTC)),
)
def test_event_bytes_equal_rfc8785(actor, target, reason, label, details, time):
    # The events' own fast path (orjson on the whole event) against the reference.
    event = make(actor=actor, target=target, reason=reason, label=label, details=details, time=time)
    assert event.canonical_bytes() == rfc8785.dumps(event.to_dict())


def test_keys_beyond_the_bmp_sort_as_utf16():
    # Code point order puts U+E000 first; RFC 8785's UTF-16 order puts the surrogate pair first.
    value = {"\ue000": 1, "\U0001f600": 2}
    assert canonical_json(value) == rfc8785.dumps(value)
    assert canonical_json(value).index("\U0001f600".encode()) < canonical_json(value).index(
        "\ue000".encode()
    )


def test_lone_surrogates_are_refused():
    with pytest.raises(ValueError, match="canonical JSON"):
        canonical_json({"s": "\ud800"})
    with pytest.raises(ValueError, match="canonical JSON"):
        make(reason="\udfff").canonical_bytes()


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
