"""The sequencer: turns queued events into the Merkle log, then signs a checkpoint.

Owns the code that drains ``audit_pending`` into ``audit_log`` and ``audit_nodes``, and the only
code that writes ``audit_checkpoints``. On SQLite the appender sequences events itself in the
business transaction (see :mod:`audit.sql`), so there the queue stays empty (only rows an older
version queued are drained) and a run mostly signs a checkpoint. One sequencer runs at a time
per database: on PostgreSQL a transaction-level advisory lock makes that safe with several
control-plane processes; on SQLite the write lock does (the engine must begin write
transactions IMMEDIATE, as the control plane's does).

Each run, in one transaction per batch: restore the tree's frontier from the stored nodes, check
it against the latest signed checkpoint (so it never signs a root inconsistent with an earlier
signed checkpoint; tampering in the middle of the log that leaves the frontier intact is caught
by ``verify``, and the next checkpoint still commits to the original history),
assign contiguous indices to the oldest queued events, store leaves and completed nodes, drop
them from the queue, commit durably. Only then sign a checkpoint for the new size, store it and
append it to the witness. The log therefore never signs two checkpoints that are inconsistent.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

from audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from audit.merkle import (
    ConsistencyProofError,
    Frontier,
    leaf_hashes,
    verify_consistency,
)
from audit.note import NoteError, NoteVerifier
from audit.signer import Signer
from audit.sql import (
    LOG_COLUMNS,
    MissingNodeError,
    SqlLogReader,
    audit_checkpoints,
    audit_log,
    audit_nodes,
    audit_pending,
    insert_many,
    log_rows,
    summarise_time_blocks,
)
from audit.store import INDEX_COLUMNS, index_columns
from audit.witness import WitnessFile

log = logging.getLogger(__name__)


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


#: Advisory lock key for PostgreSQL (any constant bigint; "sovq" in ASCII).
SEQUENCER_LOCK = 0x736F7671
DEFAULT_BATCH = 5000


def _index_rows(rows: Sequence[Any]) -> Iterator[tuple[Any, ...]]:
    """The filter columns of queued ``(id, entry, *INDEX_COLUMNS)`` rows: carried in the row
    since migration 0011, read out of the entry for rows queued before it (NULL ``actor``)."""
    for row in rows:
        if row.actor is None:
            columns = index_columns(bytes(row.entry))
            yield tuple(columns[name] for name in INDEX_COLUMNS)
        else:
            yield (_utc(row.time), *row[3:])


class TamperError(RuntimeError):
    """The stored tree does not match the latest signed checkpoint: refuse to go on."""


@dataclass(frozen=True)
class SequencerRun:
    """What one run did."""

    sequenced: int
    size: int
    checkpoint: Checkpoint | None


class Sequencer:
    """Assigns indices to queued events and signs checkpoints."""

    def __init__(
        self,
        engine: sa.Engine,
        signer: Signer,
        origin: str,
        *,
        witness: WitnessFile | None = None,
        batch: int = DEFAULT_BATCH,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        trusted: Callable[[], Sequence[NoteVerifier]] | None = None,
    ) -> None:
        self._engine = engine
        self._signer = signer
        # The keys earlier checkpoints may be signed with: by default the signer's current key;
        # after a key rotation the caller passes every published key.
        self._trusted = trusted or (
            lambda: [NoteVerifier.from_public_key(signer.name, signer.public_key)]
        )
        self.origin = origin
        self._witness = witness
        self._batch = batch
        self._clock = clock
        # One in-process runner at a time; the database lock covers other processes.
        self._local = threading.Lock()

    def run_once(self, max_batches: int | None = None) -> SequencerRun:
        """Sequence everything queued (or ``max_batches`` batches), then sign a checkpoint.

        :raises TamperError: if the stored tree disagrees with the latest signed checkpoint.
        """
        sequenced = 0
        with self._local:
            batches = 0
            while max_batches is None or batches < max_batches:
                done = self._sequence_batch()
                sequenced += done
                batches += 1
                if done < self._batch:
                    break
            size, checkpoint = self._checkpoint()
        return SequencerRun(sequenced, size, checkpoint)

    # -- sequencing --------------------------------------------------------------------------

    def _lock(self, conn: sa.Connection) -> None:
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT pg_advisory_xact_lock(:k)"), {"k": SEQUENCER_LOCK})

    def _sequence_batch(self) -> int:
        with self._engine.begin() as conn:
            self._lock(conn)
            q = audit_pending.c
            pending = conn.execute(
                sa.select(q.id, q.entry, *(q[name] for name in INDEX_COLUMNS))
                .order_by(q.id)
                .limit(self._batch)
            ).all()
            if not pending:
                return 0
            reader = SqlLogReader(conn)
            size = reader.size()
            frontier = self._trusted_frontier(reader, size)
            entries = [bytes(row.entry) for row in pending]
            leaves = leaf_hashes(entries)
            nodes = frontier.extend(leaves)
            rows = log_rows(conn, size, entries, leaves, _index_rows(pending))
            insert_many(conn, audit_log, LOG_COLUMNS, rows)
            if nodes:
                insert_many(conn, audit_nodes, ("level", "idx", "hash"), nodes)
            summarise_time_blocks(conn, size, size + len(rows))
            # Exactly the rows read: under READ COMMITTED a lower id committed after our SELECT
            # must stay queued for the next batch, not vanish (fail-closed means no lost event).
            ids = [r[0] for r in pending]
            if conn.dialect.name == "postgresql":
                # One array parameter: thousands of IN parameters cost more than the delete.
                conn.exec_driver_sql("DELETE FROM audit_pending WHERE id = ANY(%s)", (ids,))
            else:
                conn.execute(audit_pending.delete().where(audit_pending.c.id.in_(ids)))
        return len(pending)

    def _trusted_frontier(self, reader: SqlLogReader, size: int) -> Frontier:
        """The frontier at ``size``, checked against the latest signed checkpoint."""
        try:
            frontier = Frontier.from_nodes(size, reader.node)
            latest = reader.latest_checkpoint()
            if latest is None:
                return frontier
            signed = self._open(latest.note)
            if signed.size > size:
                raise TamperError(
                    f"the log holds {size} events but a checkpoint was signed at {signed.size}"
                )
            proof = reader.consistency_proof(signed.size, size) if signed.size else []
            verify_consistency(signed.size, size, signed.root_hash, frontier.root(), proof)
        except (MissingNodeError, ConsistencyProofError, ValueError) as e:
            raise TamperError(f"stored tree does not match the signed checkpoints: {e}") from e
        return frontier

    def _open(self, note: str) -> Checkpoint:
        try:
            return open_checkpoint(note, self._trusted(), self.origin)
        except (NoteError, ValueError) as e:
            raise TamperError(f"stored checkpoint does not verify: {e}") from e

    # -- checkpointing -----------------------------------------------------------------------

    def _checkpoint(self) -> tuple[int, Checkpoint | None]:
        with self._engine.begin() as conn:
            self._lock(conn)
            reader = SqlLogReader(conn)
            size = reader.size()
            latest = reader.latest_checkpoint()
            if size == 0 or (latest is not None and latest.size == size):
                return size, None
            frontier = self._trusted_frontier(reader, size)
            checkpoint = Checkpoint(self.origin, size, frontier.root())
            note = sign_checkpoint(checkpoint, [self._signer])
            conn.execute(
                audit_checkpoints.insert().values(
                    size=size, root_hash=checkpoint.root_hash, note=note, signed_at=self._clock()
                )
            )
        # Only once the checkpoint is durable does anyone outside hear of it.
        if self._witness is not None:
            self._witness.append(size, checkpoint.root_hash, note)
        return size, checkpoint
