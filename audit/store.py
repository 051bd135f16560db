"""The audit store port, its query, and the in-memory backend for unit tests.

Owns :class:`AuditStore` (append events, query them), :class:`AuditQuery` and
:class:`StoredEvent` (an event with its sequence number). Backends must append atomically with
the caller's transaction and raise on failure, never drop an event silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from audit.event import AuditEvent
from audit.merkle import leaf_hash


@dataclass(frozen=True)
class StoredEvent:
    """An event, the position the log gave it (its leaf index) and its leaf hash."""

    seq: int
    event: AuditEvent
    leaf_hash: bytes = b""


@dataclass(frozen=True)
class AuditQuery:
    """Filters for reading the log. Label filters: None means no restriction.

    ``levels`` lists the label levels the reader may see; events labelled at another level are
    left out. ``compartments`` is the set the reader holds; events with any other compartment
    are left out. Unlabelled events are visible to every reader.
    """

    actor: str | None = None
    action: str | None = None
    target: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    levels: Sequence[str] | None = None
    compartments: frozenset[str] | None = None
    #: Return events with ``seq`` strictly below this (pages go newest first).
    before_seq: int | None = None
    #: Return events with ``seq`` strictly above this.
    after_seq: int | None = None
    #: Oldest first instead of newest first.
    ascending: bool = False
    limit: int = 50

    def matches(self, stored: StoredEvent) -> bool:
        """Whether ``stored`` passes these filters (the reference semantics for backends)."""
        e = stored.event
        label = e.label
        return (
            (self.actor is None or e.actor == self.actor)
            and (self.action is None or e.action == self.action)
            and (self.target is None or e.target == self.target)
            and (self.since is None or e.time >= self.since)
            and (self.until is None or e.time < self.until)
            and (self.before_seq is None or stored.seq < self.before_seq)
            and (self.after_seq is None or stored.seq > self.after_seq)
            and (label is None or self.levels is None or label["level"] in self.levels)
            and (
                label is None
                or self.compartments is None
                or set(label.get("compartments", [])) <= self.compartments
            )
        )


class AuditStore(Protocol):
    """Where events go. ``append`` joins the caller's transaction and raises if it cannot.

    Appended events get their sequence number later, from the sequencer; ``query`` returns
    sequenced events only.
    """

    def append(self, events: Iterable[AuditEvent]) -> None:
        """Queue ``events`` in order in the caller's transaction. :raises: on any failure."""
        ...

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        """Events matching ``query``, newest first, at most ``query.limit``."""
        ...


class MemoryAuditStore:
    """An in-memory store for unit tests that sequences at once; ``fail`` makes appends raise."""

    def __init__(self) -> None:
        self.events: list[StoredEvent] = []
        self.fail = False

    def append(self, events: Iterable[AuditEvent]) -> None:
        """Record ``events``; raises ``OSError`` when ``fail`` is set, like a full disk would."""
        if self.fail:
            raise OSError("audit store unavailable (simulated)")
        for event in events:
            entry = event.canonical_bytes()
            self.events.append(StoredEvent(len(self.events), event, leaf_hash(entry)))

    def query(self, query: AuditQuery) -> list[StoredEvent]:
        """Events matching ``query``, newest first."""
        ordered = self.events if query.ascending else list(reversed(self.events))
        return [s for s in ordered if query.matches(s)][: query.limit]
