"""Text from outside: the control-character checks, log quoting, the schemas that refuse
control characters in identifiers, and the recorder that never writes one into an event."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from sovereign.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from sovereign.api import fleet_schemas as f
from sovereign.api import schemas as s
from sovereign.errors import InvalidInputError, PolicyDeniedError
from sovereign.services.recording import Recorder
from sovereign.text import control_character, describe, for_log
from tests.support.factories import OPERATOR, ctx

LINE_BREAKERS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def test_control_characters_are_found_and_named():
    assert control_character("host-1") is None
    assert control_character("a\x00b") == "\x00"
    assert control_character("a\x7fb") == "\x7f"
    for char in LINE_BREAKERS + "\t\x1b\x9b":
        assert control_character(f"x{char}y") == char
    assert control_character("two\r\nlines\tand a tab", free_text=True) is None
    assert control_character("a\u2028b", free_text=True) == "\u2028"
    assert describe("\n") == "U+000A"
    assert describe("\u2028") == "U+2028"


@given(st.text())
def test_a_log_quote_is_one_line_and_tells_escapes_from_text(value: str):
    quoted = for_log(value)
    assert len(quoted.splitlines()) <= 1
    assert control_character(quoted) is None
    # Injective: a backslash is escaped too, so "\\n" typed and a newline quote differently.
    assert for_log(value + "\n") != for_log(value + "\\n")


def test_a_log_quote_reads_like_repr():
    assert for_log("GET /a\r\nb\\c\x1b[31m\u2028") == "GET /a\\r\\nb\\\\c\\x1b[31m\\u2028"
    assert for_log(ValueError("plain")) == "plain"


@pytest.mark.parametrize(
    ("model", "data"),
    [
        (s.LabelIn, {"level": "SECRET\n", "compartments": []}),
        (s.PageQuery, {"cursor": "abc\n"}),
        (s.EventQuery, {"actor": "user:x\u2028"}),
        (f.HostCreate, {"name": "h", "uri": "qemu+tls://h\n/system", "site": "es"}),
        (f.HostCreate, {"name": "h", "uri": "qemu+tls://h/system", "site": "es\x85"}),
        (s.RejectIn, {"reason": "no\x0bbudget"}),
        (s.ApproveIn, {"reason": "fine\u2029"}),
        (f.KillSwitchIn, {"tenant": "research", "reason": "\x00"}),
    ],
)
def test_schemas_refuse_control_characters(model: type[s.Strict], data: dict[str, object]):
    # Fields whose documented pattern already excludes controls are refused by the pattern.
    with pytest.raises(ValidationError, match=r"control character U\+|should match pattern"):
        model.model_validate(data)


def test_free_text_may_hold_tab_and_line_breaks():
    assert s.RejectIn.model_validate({"reason": "a\r\nb\tc"}).reason == "a\r\nb\tc"
    assert f.HostStateIn.model_validate({"state": "draining", "reason": "x\ny"}).reason == "x\ny"


@pytest.mark.parametrize(
    ("field", "target"),
    [("actor", "host:h"), ("source", "host:h"), ("request_id", "host:h"), ("", "host:h\u2028")],
)
def test_the_recorder_never_writes_a_control_character_into_an_identifier(field: str, target: str):
    store = MemoryStore()
    recorder = Recorder(MemoryUnitOfWorkFactory(store))
    caller = replace(ctx(OPERATOR), **({field: "x\ny"} if field else {}))
    with pytest.raises(InvalidInputError, match="holds the control character U\\+"):
        recorder.denial(caller, "host:discover", target, PolicyDeniedError(reason="no"))
    assert store.audit.events == []
