"""Text from outside: which characters an identifier may not hold, and how a log line quotes.

Owns the checks that identifiers (path segments, names, query values, form fields) hold no
control character, and :func:`for_log`, the one way a log line quotes a string that came from
outside (a request path, an error message naming what was asked for, a hypervisor's answer).
The characters are those an audit export never holds raw (:data:`audit.export.UNSAFE`): C0
and C1 controls, DEL and the Unicode line and paragraph separators. Free text a person typed
(a reason, a purpose) may also hold tab and line breaks; the exporters escape them.

Must not decide what a valid name looks like beyond that: schemas and the domain do.
"""

from __future__ import annotations

import re

from audit.export import UNSAFE

#: What free text may hold besides printable text: what a textarea sends for Enter and Tab.
TEXT_WHITESPACE = frozenset("\t\n\r")
#: Backslash too, so an escaped control cannot be told apart from text that looks like one.
_LOG_QUOTED = re.compile(rf"{UNSAFE.pattern}|\\")
_LOG_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def control_character(value: str, *, free_text: bool = False) -> str | None:
    """The first control character (or line separator) in ``value``, or None; with
    ``free_text``, tab, CR and LF are allowed."""
    for found in UNSAFE.finditer(value):
        if not (free_text and found.group() in TEXT_WHITESPACE):
            return found.group()
    return None


def describe(char: str) -> str:
    """``U+000A`` for a character, to name it in an error without writing it."""
    return f"U+{ord(char):04X}"


def for_log(value: object) -> str:
    """``str(value)`` with backslashes, controls and line separators escaped (``\\n``,
    ``\\x1b``, ``\\u2028``), so that a quoted value stays on its log line and cannot paint a
    terminal."""
    return _LOG_QUOTED.sub(_log_escape, str(value))


def _log_escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _LOG_ESCAPES:
        return _LOG_ESCAPES[char]
    return f"\\x{ord(char):02x}" if ord(char) < 0x100 else f"\\u{ord(char):04x}"
