"""The audit event and its canonical bytes.

Owns :class:`AuditEvent`, a frozen record of one decision: who (actor), did what
(``subject:action``), to what (target), at which label, with which outcome and why, and the
canonical bytes that the Merkle tree hashes: RFC 8785 JSON Canonicalization Scheme, so the same
event always serialises to the same bytes and anyone can recompute them. The sequence number
is the event's position in the log (its leaf index), kept outside the canonical bytes.

Never put secrets in an event: key material, passphrases and tokens do not belong here. Detail
fields that are sensitive but must be matchable can be keyed-hashed with :func:`redact` first.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import rfc8785

#: ``subject:action``, lower case, e.g. ``request:approve`` (the warehouse event-tag style).
#: Matched whole (``fullmatch``: ``$`` would let a trailing newline through into exports).
ACTION_PATTERN = re.compile(r"[a-z][a-z0-9_-]*:[a-z][a-z0-9_-]*")
#: The longest actor and target an event may name: the width of their filter columns
#: (:mod:`audit.sql`). A longer one would make the sequencer's copy of the batch fail on a
#: database that enforces widths (PostgreSQL), every run; so it is refused where events are made.
MAX_ACTOR = 255
MAX_TARGET = 255


class Outcome(StrEnum):
    """Whether the decision allowed the action, denied it, or failed trying."""

    ALLOW = "allow"
    DENY = "deny"
    ERROR = "error"


@dataclass(frozen=True)
class AuditEvent:
    """One recorded decision. ``label`` is ``{"level": ..., "compartments": [...]}`` or None."""

    actor: str
    action: str
    target: str
    outcome: Outcome
    reason: str = ""
    label: dict[str, Any] | None = None
    request_id: str = ""
    source: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    time: datetime = field(default_factory=lambda: datetime.now(UTC))
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    def __post_init__(self) -> None:
        if not ACTION_PATTERN.fullmatch(self.action):
            raise ValueError(f"action must look like 'subject:action', got {self.action!r}")
        if self.time.tzinfo is None:
            raise ValueError("event time must be timezone-aware")

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-ready data (times in RFC 3339 UTC)."""
        return {
            "id": str(self.id),
            "time": self.time.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "label": self.label,
            "request_id": self.request_id,
            "source": self.source,
            "details": self.details,
        }

    def canonical_bytes(self) -> bytes:
        """The RFC 8785 canonical JSON of :meth:`to_dict`, UTF-8."""
        # Every other field is a string under an ASCII key; only these two can hold values
        # that need the reference path (see :func:`canonical_json`).
        fixed = (self.actor, self.action, self.target, self.reason, self.request_id, self.source)
        if not (all(type(v) is str for v in fixed) and _plain(self.details) and _plain(self.label)):
            return canonical_json(self.to_dict())
        # orjson writes a UUID as str() does and a UTC datetime as to_dict's RFC 3339 text
        # (OPT_UTC_Z; microseconds only when non-zero), both in C: the property test holds the
        # result equal to the reference over to_dict().
        time = self.time if self.time.tzinfo is UTC else self.time.astimezone(UTC)
        data = {
            "id": self.id,
            "time": time,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome.value,
            "reason": self.reason,
            "label": self.label,
            "request_id": self.request_id,
            "source": self.source,
            "details": self.details,
        }
        try:
            return orjson.dumps(data, option=orjson.OPT_SORT_KEYS | orjson.OPT_UTC_Z)
        except orjson.JSONEncodeError as e:
            raise ValueError(f"not representable as canonical JSON: {e}") from e


#: Integers beyond this are not exactly representable as IEEE doubles, which RFC 8785 uses.
_MAX_SAFE_INT = 2**53 - 1
#: The largest code point whose UTF-16 form is one code unit (the end of the BMP).
_MAX_BMP = "\uffff"


def _sorts_like_utf16(key: str) -> bool:
    """Whether ordering ``key`` by code points (orjson) agrees with RFC 8785's UTF-16 code units.

    The two orders differ only between a character at or above U+E000 and one beyond the BMP
    (a surrogate pair sorts below U+E000 in UTF-16); a key with no character beyond the BMP
    compares the same either way.
    """
    return key.isascii() or max(key) <= _MAX_BMP


def _plain(value: Any) -> bool:
    """Whether ``value`` holds only what orjson serialises exactly as RFC 8785 does: strings
    (any, escaped identically: short escapes for ``\\b\\t\\n\\f\\r``, ``\\u00xx`` for other
    control characters, nothing else escaped), safe integers, booleans, None, lists and tuples,
    and objects with string keys that sort the same in code point and UTF-16 order. Floats
    (ECMAScript number formatting) and anything else take the reference path.

    A loop over a stack rather than recursion: this runs on every appended event.
    """
    stack = [value]
    pop, push, extend = stack.pop, stack.append, stack.extend
    while stack:
        item = pop()
        kind = type(item)
        if kind is str or item is None or kind is bool:
            continue
        if kind is dict:
            for key, inner in item.items():
                if type(key) is not str or not _sorts_like_utf16(key):
                    return False
                push(inner)
        elif kind is list or kind is tuple:
            extend(item)
        elif kind is int:
            if not -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT:
                return False
        elif not _plain_subclass(item, push):
            return False
    return True


def _plain_subclass(item: Any, push: Callable[[Any], None]) -> bool:
    """:func:`_plain` for subclasses of the plain types (a StrEnum, an IntEnum, an OrderedDict):
    orjson serialises them as their base type, as the reference does."""
    if isinstance(item, bool | str):
        return True
    if isinstance(item, int):
        return -_MAX_SAFE_INT <= item <= _MAX_SAFE_INT
    if isinstance(item, list | tuple):
        push(list(item))
        return True
    if isinstance(item, dict):
        push(dict(item))
        return True
    return False


def canonical_json(value: Any) -> bytes:
    """RFC 8785 canonical JSON of ``value``.

    Events are almost always plain (see :func:`_plain`), and for those orjson's sorted compact
    output is byte-identical to RFC 8785 at C speed; anything else goes through the ``rfc8785``
    reference implementation. A property test holds the two paths equal.

    :raises ValueError: for values JSON cannot represent (e.g. NaN, lone surrogates).
    """
    if _plain(value):
        return _fast(value)
    try:
        return rfc8785.dumps(value)
    except rfc8785.CanonicalizationError as e:
        raise ValueError(f"not representable as canonical JSON: {e}") from e


def _fast(value: Any) -> bytes:
    """orjson with sorted keys, for a value :func:`_plain` accepted."""
    try:
        return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as e:  # e.g. a lone surrogate, which UTF-8 cannot carry
        raise ValueError(f"not representable as canonical JSON: {e}") from e


def redact(value: str, key: bytes) -> str:
    """A keyed hash of ``value`` (HMAC-SHA-256, hex) for detail fields that must not be stored
    in clear but must still be matchable by someone holding ``key``."""
    return "hmac-sha256:" + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def event_from_entry(entry: bytes) -> AuditEvent:
    """Rebuild an event from its canonical bytes. :raises ValueError: if they are not one."""
    data = orjson.loads(entry)
    time = datetime.fromisoformat(data["time"].replace("Z", "+00:00"))
    return AuditEvent(
        id=uuid.UUID(data["id"]),
        # Canonical bytes write UTC ("Z"); a time without an offset is read as UTC too.
        time=time if time.tzinfo else time.replace(tzinfo=UTC),
        actor=data["actor"],
        action=data["action"],
        target=data["target"],
        outcome=Outcome(data["outcome"]),
        reason=data["reason"],
        label=data["label"],
        request_id=data["request_id"],
        source=data["source"],
        details=data["details"],
    )
