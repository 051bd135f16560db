"""The audit event and its canonical bytes.

Owns :class:`AuditEvent`, a frozen record of one decision: who (actor), did what
(``subject:action``), to what (target), at which label, with which outcome and why. Canonical
bytes are sorted-key compact JSON in UTF-8, so the same event always serialises to the same
bytes. Never put secrets in an event: key material, passphrases and tokens do not belong here.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

#: ``subject:action``, lower case, e.g. ``request:approve`` (the warehouse event-tag style).
ACTION_PATTERN = re.compile(r"^[a-z][a-z0-9_-]*:[a-z][a-z0-9_-]*$")


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
        if not ACTION_PATTERN.match(self.action):
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
        """Deterministic serialisation: sorted keys, no whitespace, UTF-8."""
        return json.dumps(
            self.to_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()
