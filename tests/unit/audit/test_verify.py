"""The offline verifier on its own: an in-memory :class:`~audit.store.LogReader`, no database.

The SQL reader and the tampering a database owner could do are covered by
``tests/integration/test_audit_log.py``; this checks that :func:`~audit.verify.verify_log`
needs nothing but the reader port, and still tells a good log from an altered one.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from audit.checkpoint import Checkpoint, sign_checkpoint
from audit.event import AuditEvent, Outcome
from audit.merkle import Frontier, leaf_hash
from audit.signer import Ed25519Signer
from audit.store import LogReader, StoredCheckpoint, index_columns
from audit.verify import LogVerificationError, verify_log

ORIGIN = "test.sovereign/unit-log"
SIGNER = Ed25519Signer.from_seed("unit-log", bytes(range(32)))
BASE_TIME = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


@dataclass
class MemoryLogReader:
    """A sequenced log held in lists, signed at the sizes asked for."""

    entries_: list[bytes] = field(default_factory=list)
    leaves: list[bytes] = field(default_factory=list)
    columns: list[dict[str, Any]] = field(default_factory=list)
    stored: list[StoredCheckpoint] = field(default_factory=list)

    def size(self) -> int:
        return len(self.entries_)

    def checkpoints(self) -> Sequence[StoredCheckpoint]:
        return self.stored

    def entries(self) -> Iterator[tuple[int, bytes, bytes]]:
        yield from (
            (i, e, h) for i, (e, h) in enumerate(zip(self.entries_, self.leaves, strict=True))
        )

    def filter_columns(self) -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        yield from (
            (i, e, c) for i, (e, c) in enumerate(zip(self.entries_, self.columns, strict=True))
        )


def event(i: int) -> AuditEvent:
    return AuditEvent(
        actor=f"user-{i % 3}",
        action="request:create",
        target=f"target-{i}",
        outcome=Outcome.ALLOW,
        label={"level": "SECRET", "compartments": ["NATO"]} if i % 2 else None,
        time=BASE_TIME + timedelta(seconds=i),
    )


def build(size: int, signed_at: Sequence[int]) -> MemoryLogReader:
    reader = MemoryLogReader()
    frontier = Frontier()
    for i in range(size):
        entry = event(i).canonical_bytes()
        reader.entries_.append(entry)
        reader.leaves.append(leaf_hash(entry))
        reader.columns.append(index_columns(entry))
        frontier.extend([reader.leaves[-1]], emit=False)
        if frontier.size in signed_at:
            root = frontier.root()
            note = sign_checkpoint(Checkpoint(ORIGIN, frontier.size, root), [SIGNER])
            reader.stored.append(StoredCheckpoint(frontier.size, root, note))
    return reader


def verify(reader: LogReader) -> int:
    return verify_log(reader, [SIGNER.verifier], ORIGIN).size


def test_an_intact_log_verifies_through_the_port() -> None:
    assert verify(build(9, signed_at=(1, 4, 9))) == 9


def test_a_changed_event_is_found() -> None:
    reader = build(9, signed_at=(4, 9))
    reader.entries_[5] = event(50).canonical_bytes()
    with pytest.raises(LogVerificationError) as caught:
        verify(reader)
    assert caught.value.index == 5


def test_a_misleading_filter_column_is_found() -> None:
    reader = build(6, signed_at=(6,))
    reader.columns[2] = {**reader.columns[2], "actor": "someone-else"}
    with pytest.raises(LogVerificationError) as caught:
        verify(reader)
    assert caught.value.index == 2


def test_a_truncated_log_is_found() -> None:
    reader = build(6, signed_at=(6,))
    del reader.entries_[5:], reader.leaves[5:], reader.columns[5:]
    with pytest.raises(LogVerificationError, match="truncated"):
        verify(reader)


def test_an_entry_that_is_no_event_is_reported_not_raised() -> None:
    # Signed and hashed like any other, but its filter columns cannot be read out of it.
    reader = MemoryLogReader()
    frontier = Frontier()
    for entry in (event(0).canonical_bytes(), b'{"not": "an event"}'):
        reader.entries_.append(entry)
        reader.leaves.append(leaf_hash(entry))
        reader.columns.append(index_columns(event(0).canonical_bytes()))
        frontier.extend([reader.leaves[-1]], emit=False)
    note = sign_checkpoint(Checkpoint(ORIGIN, 2, frontier.root()), [SIGNER])
    reader.stored.append(StoredCheckpoint(2, frontier.root(), note))
    with pytest.raises(LogVerificationError, match="event 1 is not a well-formed event") as caught:
        verify(reader)
    assert caught.value.index == 1
    assert verify_log(reader, [SIGNER.verifier], ORIGIN, check_columns=False).size == 2


def test_the_columns_are_checked_against_the_hashed_bytes() -> None:
    # A reader whose column read hands back other bytes than its hash read is caught.
    reader = build(5, signed_at=(5,))
    original = reader.filter_columns

    def lying() -> Iterator[tuple[int, bytes, dict[str, Any]]]:
        for seq, entry, columns in original():
            yield seq, (b"{}" if seq == 3 else entry), columns

    reader.filter_columns = lying  # type: ignore[method-assign]
    with pytest.raises(LogVerificationError, match="other bytes") as caught:
        verify(reader)
    assert caught.value.index == 3


def test_a_removed_event_fails_the_next_checkpoint_and_two_processes_need_a_source() -> None:
    reader = build(8, signed_at=(4, 8))
    del reader.entries_[6], reader.leaves[6], reader.columns[6]
    reader.entries_.append(event(8).canonical_bytes())  # keeps the size at 8
    reader.leaves.append(leaf_hash(reader.entries_[-1]))
    reader.columns.append(index_columns(reader.entries_[-1]))
    # Every index comes from enumerate(), so the rows after 5 moved down: no gap, a bad root.
    with pytest.raises(LogVerificationError, match="signed at that size") as caught:
        verify(reader)
    assert caught.value.index == 4
    with pytest.raises(ValueError, match="source"):
        verify_log(reader, [SIGNER.verifier], ORIGIN, processes=2)
