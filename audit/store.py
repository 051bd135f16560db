"""The audit store ports, their records, and the in-memory backend for unit tests.

Owns :class:`AuditStore` (append events, query them), :class:`AuditQuery` and
:class:`StoredEvent` (an event with its sequence number); :class:`LogReader`, what the offline
verifier reads the sequenced log through, with :class:`StoredCheckpoint`, and its faster
variant :class:`BatchLogReader` (rows by index range, in :class:`RowBatch` columns) with
:class:`LogSource` (opens more readers of one log, in worker processes); and the filter columns
a backend copies out of each event (:func:`event_columns` when it holds the event,
:func:`index_values` from its bytes: one derivation, :func:`_columns`), which the verifier holds
to the event's bytes. Backends must append atomically with the caller's transaction and raise on
failure, never drop an event silently. Pure: no database library is imported here (an
import-linter contract keeps it so); :mod:`audit.sql` is the SQL backend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple, Protocol, runtime_checkable

import orjson

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


@dataclass(frozen=True)
class StoredCheckpoint:
    """A signed checkpoint as stored: its size, root and the signed note text."""

    size: int
    root_hash: bytes
    note: str


class LogReader(Protocol):
    """Read access to a sequenced log, all :func:`audit.verify.verify_log` needs.

    A reader trusts nothing it returns: the verifier recomputes every hash from the entries'
    bytes. Entries come in index order; a gap or a duplicate is the verifier's to report.
    """

    def size(self) -> int:
        """Number of sequenced events: one more than the largest stored index (0 if none)."""
        ...

    def checkpoints(self) -> Sequence[StoredCheckpoint]:
        """Every stored checkpoint, smallest first."""
        ...

    def entries(self) -> Iterable[tuple[int, bytes, bytes]]:
        """Every stored ``(index, entry, leaf_hash)``, in index order."""
        ...

    def filter_columns(self) -> Iterable[tuple[int, bytes, dict[str, Any]]]:
        """Every ``(index, entry, filter columns as stored)``, in index order.

        The columns are those of :data:`INDEX_COLUMNS`, with times timezone-aware.
        """
        ...


class RowBatch(NamedTuple):
    """Consecutive stored rows of the log, column by column, as stored (nothing checked).

    Column-wise because the verifier checks whole batches with C-level loops (hash every entry,
    compare every leaf hash) and only walks row by row to name what is wrong.
    """

    seqs: Sequence[int]
    entries: Sequence[bytes]
    leaf_hashes: Sequence[bytes]
    #: Each row's filter columns, in :data:`INDEX_COLUMNS` order (times timezone-aware), or
    #: None when they were not asked for.
    columns: Sequence[tuple[Any, ...]] | None = None


@runtime_checkable
class BatchLogReader(LogReader, Protocol):
    """A :class:`LogReader` that also reads any range of rows in one pass, in batches.

    What lets the verifier read each event once (bytes, leaf hash and filter columns together)
    and split the log between processes.
    """

    def row_batches(self, start: int, limit: int, *, columns: bool) -> Iterable[RowBatch]:
        """Stored rows with index ``>= start``, in index order, at most ``limit`` of them.

        A gap or a duplicate is returned as stored (the verifier reports it); with
        ``columns`` each batch also carries the rows' filter columns.
        """
        ...


#: Events per block of a backend's time summaries: block ``k`` is the events
#: ``[k * TIME_BLOCK, (k + 1) * TIME_BLOCK)``.
TIME_BLOCK = 1024

#: One block's time range: ``(block, earliest time, latest time)``.
TimeBlock = tuple[int, datetime, datetime]


@runtime_checkable
class SummarisedLogReader(LogReader, Protocol):
    """A :class:`LogReader` whose backend keeps the time range of each complete block of
    :data:`TIME_BLOCK` events (which bounds time-filtered queries), so the verifier can hold
    the summaries to the events."""

    def time_summaries(self) -> Sequence[TimeBlock]:
        """Every stored summary, in block order, as stored (nothing checked)."""
        ...


class LogSource(Protocol):
    """Opens further readers of the same log, in any process (picklable, cheap to send).

    The verifier hands one to its worker processes, which read their share of the log through
    their own connection.
    """

    def open(self) -> AbstractContextManager[BatchLogReader]:
        """A reader of the log, closed when the context ends."""
        ...


def encode_compartments(compartments: Iterable[str]) -> str:
    """``{"B", "A"}`` -> ``",A,B,"``: delimited on both sides so each name matches exactly."""
    return ",".join(["", *map(str, sorted(compartments)), ""])


#: The filter columns a backend stores beside each entry, copied out of the entry.
INDEX_COLUMNS = (
    "time",
    "actor",
    "action",
    "target",
    "outcome",
    "label_level",
    "label_compartments",
)


#: Errors :func:`index_values` raises on bytes that are not an event.
MALFORMED_EVENT_ERRORS = (ValueError, KeyError, TypeError, AttributeError, RecursionError)


def _columns(
    time: datetime, actor: str, action: str, target: str, outcome: str, *, label: Any
) -> tuple[Any, ...]:
    """The filter columns, in :data:`INDEX_COLUMNS` order: the one place they are derived."""
    return (
        time,
        actor,
        action,
        target,
        outcome,
        label["level"] if label else None,
        encode_compartments(label["compartments"]) if label else None,
    )


def event_columns(event: AuditEvent) -> tuple[Any, ...]:
    """The filter columns of ``event`` (time in UTC), in :data:`INDEX_COLUMNS` order.

    What an appender stores beside the event's bytes, without parsing them again.
    """
    time = event.time if event.time.tzinfo is UTC else event.time.astimezone(UTC)
    return _columns(
        time, event.actor, event.action, event.target, event.outcome.value, label=event.label
    )


def index_values(entry: bytes) -> tuple[Any, ...]:
    """The filter column values of an entry, in :data:`INDEX_COLUMNS` order, read from the entry
    (what the verifier expects the stored columns to say).

    A tuple so that a whole row compares in one step; the verifier calls this once per event,
    so the entry is parsed by orjson (about twice as fast as the standard library's scanner).

    :raises ValueError: (or another of :data:`MALFORMED_EVENT_ERRORS`) if ``entry`` is not the
        UTF-8 JSON of an event.
    """
    data = orjson.loads(entry)
    return _columns(
        # Python 3.11 reads the "Z" of UTC times itself.
        datetime.fromisoformat(data["time"]),
        data["actor"],
        data["action"],
        data["target"],
        data["outcome"],
        label=data.get("label"),
    )


def index_columns(entry: bytes) -> dict[str, Any]:
    """The filter columns for an entry, read from the entry itself.

    :raises ValueError: (or another of :data:`MALFORMED_EVENT_ERRORS`) if ``entry`` is not an
        event.
    """
    return dict(zip(INDEX_COLUMNS, index_values(entry), strict=True))


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
