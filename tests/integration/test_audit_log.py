"""The Merkle audit log on the real databases: sequencing, proofs, append-only rules, tampering.

Every test runs on SQLite and PostgreSQL unless it is about something only one of them has.
Events are appended in real transactions (many small ones, some large): on PostgreSQL into the
pending queue, which a :class:`Sequencer` with a small batch turns into the tree between
appends, so that every log has several batches; on SQLite straight into the tree, the
sequencer only signing. Either way every log has many signed checkpoints. The tamper tests act
as the database's owner would: drop the append-only triggers, edit rows, then hold
:func:`verify_log` (with the witness file kept outside the database) to finding it.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
from sqlalchemy import event as sa_event

from audit.checkpoint import open_checkpoint
from audit.event import AuditEvent, Outcome
from audit.merkle import (
    leaf_hash,
    leaf_hashes,
    root_from_leaf_hashes,
    verify_consistency,
)
from audit.note import NoteVerifier
from audit.proof import Proof, ProofInclusionError, format_proof, verify_proof
from audit.sequencer import Sequencer, SequencerRun, TamperError
from audit.signer import Ed25519Signer
from audit.sql import SqlAuditStore, SqlLogReader, audit_log, audit_pending
from audit.store import AuditQuery, StoredCheckpoint
from audit.verify import LogVerificationError, VerifyReport, verify_log
from audit.witness import WitnessedCheckpoint, WitnessFile
from sovereign.adapters.database import create_engine
from tests.conftest import make_database
from tests.support import tamper

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
ORIGIN = "test.sovereign/audit-log"
#: Small, so that one run spans several batches.
BATCH = 7
BASE_TIME = datetime(2026, 11, 22, 4, 0, tzinfo=UTC)
T = TypeVar("T")
ACTIONS = ("request:create", "request:approve", "enclave:start", "gpu:sanitize")

#: Events appended before each sequencer run, one transaction per number: many small
#: transactions and a few large ones. Checkpoints land at 1, 4, 11, 16, 46, 49, 57, 58, 74, 86.
PLAN: list[tuple[int, ...]] = [
    (1,),
    (2, 1),
    (7,),
    (1, 1, 1, 1, 1),
    (30,),
    (3,),
    (6, 2),
    (1,),
    (16,),
    (4, 4, 4),
]
PLAN_SIZES = [1, 4, 11, 16, 46, 49, 57, 58, 74, 86]

#: The PostgreSQL role the control plane should run as: it can read the log and add to it, and
#: drain the queue, but it can neither rewrite nor delete history, nor (not being the owner)
#: drop or disable the append-only triggers. Run as the tables' owner after migrating.
APP_ROLE = "sovereign_app"
APP_ROLE_GRANTS = """\
GRANT SELECT, INSERT ON audit_log, audit_nodes, audit_checkpoints, audit_time_blocks
    TO sovereign_app;
GRANT SELECT, INSERT, DELETE ON audit_pending TO sovereign_app;
GRANT USAGE ON SEQUENCE audit_pending_id_seq TO sovereign_app;
"""


def make_event(i: int) -> AuditEvent:
    """A varied, reproducible event; ``i`` shows in its target and details."""
    return AuditEvent(
        actor=f"user-{i % 5}",
        action=ACTIONS[i % len(ACTIONS)],
        target=f"target-{i}",
        outcome=Outcome.DENY if i % 7 == 0 else Outcome.ALLOW,
        reason="" if i % 2 else f"reason {i}",
        label={"level": "SECRET", "compartments": ["NATO", "EU"]} if i % 3 == 0 else None,
        request_id=f"req-{i}",
        source="integration",
        details={"i": i, "note": "çà✓"},
        time=BASE_TIME + timedelta(seconds=i, microseconds=i),
    )


@dataclass
class AuditLog:
    """A migrated database, a signer, a witness file and a sequencer, with what was appended."""

    kind: str
    url: str
    engine: sa.Engine
    signer: Ed25519Signer
    witness: WitnessFile
    sequencer: Sequencer
    appended: list[AuditEvent] = field(default_factory=list)

    @property
    def verifier(self) -> NoteVerifier:
        return self.signer.verifier

    @property
    def queues(self) -> bool:
        """Whether appends wait in the queue for the sequencer (PostgreSQL), rather than being
        sequenced in the business transaction (SQLite)."""
        return self.kind != "sqlite"

    def new_sequencer(self, engine: sa.Engine | None = None) -> Sequencer:
        return Sequencer(
            engine or self.engine, self.signer, ORIGIN, witness=self.witness, batch=BATCH
        )

    def append(self, *groups: int, engine: sa.Engine | None = None) -> list[AuditEvent]:
        """Append new events, one transaction per group size."""
        added = []
        for size in groups:
            events = [make_event(len(self.appended) + k) for k in range(size)]
            with (engine or self.engine).begin() as conn:
                SqlAuditStore(conn).append(events)
            self.appended.extend(events)
            added.extend(events)
        return added

    def fill(self, plan: list[tuple[int, ...]] = PLAN) -> list[SequencerRun]:
        """Append and sequence following ``plan``; return the runs."""
        runs = []
        for groups in plan:
            self.append(*groups)
            runs.append(self.sequencer.run_once())
        return runs

    def read(self, fn: Callable[[SqlLogReader], T]) -> T:
        with self.engine.connect() as conn:
            return fn(SqlLogReader(conn))

    def checkpoints(self) -> list[StoredCheckpoint]:
        return self.read(SqlLogReader.checkpoints)

    def sizes(self) -> list[int]:
        return [c.size for c in self.checkpoints()]

    def seqs(self) -> list[int]:
        with self.engine.connect() as conn:
            return list(
                conn.execute(sa.select(audit_log.c.seq).order_by(audit_log.c.seq)).scalars()
            )

    def entries(self) -> list[bytes]:
        return [entry for _, entry, _ in self.read(lambda r: list(r.entries()))]

    def pending(self) -> int:
        return self.read(SqlLogReader.pending)

    def witnessed(self) -> list[WitnessedCheckpoint]:
        return self.witness.read()

    def verify(
        self, *, witness: bool = True, verifiers: list[NoteVerifier] | None = None
    ) -> VerifyReport:
        with self.engine.connect() as conn:
            return verify_log(
                SqlLogReader(conn),
                verifiers or [self.verifier],
                ORIGIN,
                witness=self.witnessed() if witness else (),
            )

    def tamper(self, *edits: Callable[[sa.Connection], None]) -> None:
        """As the database owner: drop the append-only triggers, then apply ``edits``."""
        with self.engine.begin() as conn:
            tamper.drop_append_only_triggers(conn)
            for edit in edits:
                edit(conn)


def open_log(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> AuditLog:
    url = make_database(request, kind, tmp_path)
    engine = create_engine(url)
    request.addfinalizer(engine.dispose)
    signer = Ed25519Signer.generate(ORIGIN)
    witness = WitnessFile(tmp_path / "witness" / "w.jsonl")
    sequencer = Sequencer(engine, signer, ORIGIN, witness=witness, batch=BATCH)
    return AuditLog(kind, url, engine, signer, witness, sequencer)


@pytest.fixture(params=BACKENDS)
def log(request: pytest.FixtureRequest, tmp_path: Path) -> AuditLog:
    """An empty audit log on each real backend."""
    return open_log(request, request.param, tmp_path)


@pytest.fixture
def filled(log: AuditLog) -> AuditLog:
    """The log after :data:`PLAN`: 86 events under 10 signed checkpoints."""
    log.fill()
    assert log.sizes() == PLAN_SIZES
    return log


def last_checkpoint_at_or_below(sizes: list[int], index: int) -> int:
    """The last signed size that does not include ``index`` (verify.py's 'last good')."""
    return max((s for s in sizes if s <= index), default=0)


def expect_verify_error(log: AuditLog, **kwargs: Any) -> LogVerificationError:
    with pytest.raises(LogVerificationError) as caught:
        log.verify(**kwargs)
    return caught.value


# -- 1. the happy path ---------------------------------------------------------------------


def test_sequencing_checkpoints_proofs_and_verification(log: AuditLog):
    sizes = []
    for groups in PLAN:
        before = len(log.checkpoints())
        added = log.append(*groups)
        run = log.sequencer.run_once()
        # One checkpoint per run after appends, covering everything appended.
        assert run.sequenced == (len(added) if log.queues else 0)
        assert run.checkpoint is not None
        assert run.size == run.checkpoint.size == len(log.appended)
        assert len(log.checkpoints()) == before + 1
        assert log.pending() == 0
        sizes.append(run.size)
        # Nothing queued: no new checkpoint, in the database or the witness.
        idle = log.sequencer.run_once()
        assert (idle.sequenced, idle.size, idle.checkpoint) == (0, run.size, None)
        assert len(log.checkpoints()) == before + 1
        assert len(log.witnessed()) == before + 1
    assert sizes == PLAN_SIZES

    n = len(log.appended)
    assert log.seqs() == list(range(n))
    entries = log.entries()
    assert entries == [e.canonical_bytes() for e in log.appended]
    leaves = leaf_hashes(entries)
    root = root_from_leaf_hashes(leaves)

    # Every stored note opens with the signer's verifier and says what its row says.
    stored = log.checkpoints()
    assert [c.size for c in stored] == PLAN_SIZES
    for c in stored:
        opened = open_checkpoint(c.note, [log.verifier], ORIGIN)
        assert (opened.size, opened.root_hash) == (c.size, c.root_hash)
        assert opened.root_hash == root_from_leaf_hashes(leaves[: c.size])
    # The witness holds the same checkpoints, in order.
    assert [(w.size, w.root_hash, w.note) for w in log.witnessed()] == [
        (c.size, c.root_hash, c.note) for c in stored
    ]

    report = log.verify()
    assert (report.size, report.root_hash) == (n, root)
    assert (report.checkpoints, report.witnessed) == (len(stored), len(stored))

    with log.engine.connect() as conn:
        reader = SqlLogReader(conn)
        # Offline inclusion proofs for every event, under the first checkpoint that covers
        # it and under the latest.
        for seq, entry in enumerate(entries):
            covering = reader.checkpoint_at_least(seq + 1)
            assert covering is not None
            for cp in {covering.size: covering, stored[-1].size: stored[-1]}.values():
                path = tuple(reader.inclusion_proof(seq, cp.size))
                text = format_proof(Proof(entry, seq, path, cp.note))
                verified = verify_proof(text, [log.verifier], ORIGIN)
                assert (verified.entry, verified.index) == (entry, seq)
                assert verified.checkpoint.size == cp.size
        # ... and the check is not vacuous: a changed entry does not verify.
        path = tuple(reader.inclusion_proof(5, n))
        forged = format_proof(Proof(entries[6], 5, path, stored[-1].note))
        with pytest.raises(ProofInclusionError):
            verify_proof(forged, [log.verifier], ORIGIN)
        # Consistency between every pair of signed sizes, with the roots from the notes.
        opened_roots = {
            c.size: open_checkpoint(c.note, [log.verifier], ORIGIN).root_hash for c in stored
        }
        pairs = 0
        for old in PLAN_SIZES:
            for new in PLAN_SIZES:
                if old < new:
                    proof = reader.consistency_proof(old, new)
                    verify_consistency(old, new, opened_roots[old], opened_roots[new], proof)
                    pairs += 1
        assert pairs == len(PLAN_SIZES) * (len(PLAN_SIZES) - 1) // 2


def test_events_queued_during_a_run_join_it_and_the_query_api_returns_them(
    log: AuditLog, monkeypatch: pytest.MonkeyPatch
):
    log.append(4, 6)
    other = create_engine(log.url)
    sequence_batch = log.sequencer._sequence_batch
    batches = []

    def batch_then_queue_more() -> int:
        done = sequence_batch()
        batches.append(done)
        if len(batches) == 1:  # the first batch has committed; business goes on meanwhile
            log.append(2, 3, engine=other)
        return done

    monkeypatch.setattr(log.sequencer, "_sequence_batch", batch_then_queue_more)
    try:
        run = log.sequencer.run_once()
    finally:
        other.dispose()
    # 10 queued, 7 sequenced, 5 more queued, 7 + 1 sequenced: one checkpoint for all 15. On
    # SQLite all 15 were sequenced as they were appended, and the run only signs.
    assert batches == ([7, 7, 1] if log.queues else [0])
    assert run.sequenced == (15 if log.queues else 0)
    assert run.checkpoint is not None and run.checkpoint.size == 15
    assert log.pending() == 0
    assert log.sizes() == [15]

    with log.engine.connect() as conn:
        store = SqlAuditStore(conn)
        everything = store.query(AuditQuery(ascending=True, limit=1000))
        assert [s.seq for s in everything] == list(range(15))
        assert [s.event for s in everything] == log.appended
        assert [s.leaf_hash for s in everything] == [
            leaf_hash(e.canonical_bytes()) for e in log.appended
        ]
        # Newest first by default, filters applied in SQL.
        mine = store.query(AuditQuery(actor="user-3", limit=1000))
        expected = [i for i, e in enumerate(log.appended) if e.actor == "user-3"]
        assert [s.seq for s in mine] == sorted(expected, reverse=True)
        assert all(s.event == log.appended[s.seq] for s in mine)
        labelled = store.query(AuditQuery(levels=["RESTRICTED"], limit=1000, ascending=True))
        assert [s.seq for s in labelled] == [
            i for i, e in enumerate(log.appended) if e.label is None
        ]
    assert log.verify().size == 15


# -- 2. append-only rules ------------------------------------------------------------------


def _refused_statements(kind: str) -> list[tuple[str, dict[str, Any]]]:
    forged = hashlib.sha256(b"forged").digest()
    statements: list[tuple[str, dict[str, Any]]] = [
        ("UPDATE audit_log SET actor = 'mallory' WHERE seq = 3", {}),
        (
            "UPDATE audit_log SET entry = :e, leaf_hash = :h WHERE seq = 3",
            {"e": b"{}", "h": forged},
        ),
        ("DELETE FROM audit_log WHERE seq = 3", {}),
        ("DELETE FROM audit_log", {}),
        ("UPDATE audit_nodes SET hash = :h WHERE level = 1 AND idx = 0", {"h": forged}),
        ("DELETE FROM audit_nodes WHERE level = 1", {}),
        ("UPDATE audit_checkpoints SET note = 'forged'", {}),
        ("DELETE FROM audit_checkpoints", {}),
        # An upsert is an UPDATE on conflict: the UPDATE trigger fires on both databases.
        (
            "INSERT INTO audit_nodes (level, idx, hash) VALUES (1, 0, :h) "
            "ON CONFLICT (level, idx) DO UPDATE SET hash = excluded.hash",
            {"h": forged},
        ),
    ]
    if kind == "sqlite":
        # REPLACE deletes the old row first; recursive_triggers makes that fire the trigger.
        statements += [
            (
                "INSERT OR REPLACE INTO audit_log (seq, entry, leaf_hash, time, actor, action, "
                "target, outcome) VALUES (3, :e, :h, '2026-01-01 00:00:00', 'mallory', "
                "'request:create', 't', 'allow')",
                {"e": b"{}", "h": forged},
            ),
            (
                "INSERT OR REPLACE INTO audit_nodes (level, idx, hash) VALUES (1, 0, :h)",
                {"h": forged},
            ),
            (
                "INSERT OR REPLACE INTO audit_checkpoints (size, root_hash, note, signed_at) "
                "VALUES (11, :h, 'forged', '2026-01-01 00:00:00')",
                {"h": forged},
            ),
        ]
    else:
        statements += [
            ("TRUNCATE audit_log", {}),
            ("TRUNCATE audit_nodes", {}),
            ("TRUNCATE audit_checkpoints", {}),
            ("TRUNCATE audit_log, audit_nodes, audit_checkpoints CASCADE", {}),
        ]
    return statements


def test_log_tables_refuse_updates_deletes_replaces_and_truncates(filled: AuditLog):
    with filled.engine.connect() as conn:
        before = tamper.snapshot(conn)
    statements = _refused_statements(filled.kind)
    for sql, params in statements:
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), filled.engine.begin() as conn:
            conn.execute(sa.text(sql), params)
    with filled.engine.connect() as conn:
        assert tamper.snapshot(conn) == before
    assert filled.verify().size == 86
    # Inserting stays allowed: the log still grows.
    filled.append(3)
    assert filled.sequencer.run_once().size == 89


@pytest.mark.postgres
def test_insert_only_role_refuses_rewrites_even_without_triggers(
    request: pytest.FixtureRequest, tmp_path: Path
):
    log = open_log(request, "postgres", tmp_path)
    log.fill(PLAN[:4])
    with log.engine.begin() as conn:
        conn.exec_driver_sql(
            f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_ROLE}') "
            f"THEN CREATE ROLE {APP_ROLE} LOGIN; END IF; END $$"
        )
        for statement in APP_ROLE_GRANTS.split(";"):
            if statement.strip():
                conn.exec_driver_sql(statement)

    # The grants are enough to run the control plane's side of the log.
    app_url = sa.make_url(log.url).set(username=APP_ROLE).render_as_string(hide_password=False)
    app = create_engine(app_url)
    request.addfinalizer(app.dispose)
    with app.connect() as conn:
        assert conn.exec_driver_sql("SELECT current_user").scalar() == APP_ROLE
    log.append(5, 2, engine=app)
    run = log.new_sequencer(app).run_once()
    assert (run.sequenced, run.size) == (7, 23)
    with app.connect() as conn:
        assert verify_log(SqlLogReader(conn), [log.verifier], ORIGIN).size == 23

    def as_app(sql: str, error: str) -> None:
        with pytest.raises(sa.exc.DBAPIError, match=error), log.engine.begin() as conn:
            conn.exec_driver_sql(f"SET ROLE {APP_ROLE}")
            conn.exec_driver_sql(sql)

    # Not the owner: it cannot take the triggers away either.
    as_app("ALTER TABLE audit_log DISABLE TRIGGER ALL", "must be owner")
    as_app("DROP TRIGGER audit_log_append_only ON audit_log", "must be owner")

    with log.engine.connect() as conn:
        before = tamper.snapshot(conn)
    with log.engine.begin() as conn:
        tamper.drop_append_only_triggers(conn)
    for table, update, delete in (
        ("audit_log", "UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"),
        ("audit_nodes", "UPDATE audit_nodes SET idx = idx", "DELETE FROM audit_nodes"),
        (
            "audit_checkpoints",
            "UPDATE audit_checkpoints SET note = note",
            "DELETE FROM audit_checkpoints",
        ),
    ):
        # (audit_time_blocks has no rows at this size; its grants are the same.)
        as_app(update, f"permission denied for table {table}")
        as_app(delete, f"permission denied for table {table}")
        as_app(f"TRUNCATE {table}", f"permission denied for table {table}")
        # The triggers really are gone: the owner's UPDATE goes through (and is rolled back).
        with log.engine.connect() as conn, conn.begin() as txn:
            assert conn.exec_driver_sql(update).rowcount > 0
            txn.rollback()
    with log.engine.connect() as conn:
        assert tamper.snapshot(conn) == before
    assert log.verify().size == 23


# -- 3. tampering --------------------------------------------------------------------------


def test_a_changed_byte_is_pinned_to_its_event(filled: AuditLog):
    original = filled.entries()[37]
    filled.tamper(lambda c: tamper.set_entry(c, 37, tamper.change_one_byte(original), rehash=False))
    assert filled.entries()[37] != original
    error = expect_verify_error(filled)
    assert error.index == 37
    assert "event 37 does not match its stored leaf hash" in str(error)


def test_a_deleted_event_is_pinned_to_its_index(filled: AuditLog):
    filled.tamper(lambda c: tamper.delete_event(c, 37))
    assert 37 not in filled.seqs()
    error = expect_verify_error(filled)
    assert error.index == 37
    assert "event 37 is missing" in str(error)


def test_swapped_events_fail_the_first_checkpoint_that_covers_them(filled: AuditLog):
    filled.tamper(lambda c: tamper.swap_events(c, 20, 60))
    # The rows are self-consistent: each leaf hash matches its (moved) entry.
    with filled.engine.connect() as conn:
        rows = conn.execute(sa.select(audit_log.c.entry, audit_log.c.leaf_hash)).all()
    assert all(leaf_hash(bytes(e)) == bytes(h) for e, h in rows)
    error = expect_verify_error(filled)
    assert error.index == last_checkpoint_at_or_below(PLAN_SIZES, 20) == 16
    assert error.index <= 20
    assert "events do not match the witness checkpoint signed at that size" in str(error)


def test_an_inserted_event_fails_the_first_checkpoint_after_it(filled: AuditLog):
    forged = make_event(999).canonical_bytes()
    filled.tamper(lambda c: tamper.insert_event(c, 30, forged))
    assert filled.seqs() == list(range(87))
    assert filled.entries()[30] == forged
    error = expect_verify_error(filled)
    assert error.index == last_checkpoint_at_or_below(PLAN_SIZES, 30) == 16
    assert "first bad event is at index 16 or later" in str(error)


def test_a_truncated_tail_is_caught_by_the_witness(filled: AuditLog):
    filled.tamper(lambda c: tamper.truncate_tail(c, 50))
    assert filled.sizes() == [1, 4, 11, 16, 46, 49]
    # The careful attacker leaves a database that is consistent on its own ...
    assert filled.verify(witness=False).size == 50
    # ... but the witness remembers a larger signed tree.
    error = expect_verify_error(filled)
    assert error.index == 50
    assert "truncated" in str(error) and "size 86" in str(error)


@pytest.mark.parametrize("resign", [False, True], ids=["no-checkpoints", "forger-key"])
def test_a_rehashed_forgery_fails_against_the_real_key_and_the_witness(
    filled: AuditLog, resign: bool
):
    real = filled.entries()
    filled.tamper(lambda c: tamper.forge_log(c, lambda e: e.replace(b'"user-', b'"mallory-')))
    forger = Ed25519Signer.generate(ORIGIN)
    if resign:
        # Sign the forged tree anew under the log's name with the forger's key.
        forger_witness = WitnessFile(filled.witness.path.with_name("forger.jsonl"))
        filled.append(1)
        run = Sequencer(filled.engine, forger, ORIGIN, witness=forger_witness).run_once()
        assert run.checkpoint is not None and run.size == 87
    forged = filled.entries()
    assert len(forged) == (87 if resign else 86)
    assert all(f != r for f, r in zip(forged, real, strict=False))
    assert all(b"mallory-" in f for f in forged[:86])
    # Internally consistent: it verifies against the forger's own key and no witness.
    assert filled.verify(witness=False, verifiers=[forger.verifier]).size == len(forged)

    error = expect_verify_error(filled)
    if resign:
        assert error.index is None
        assert "stored checkpoint at size 87 does not verify" in str(error)
    else:
        assert error.index == 0
        assert "witness checkpoint" in str(error)
    # The forger's key cannot make the real witness verify either.
    error = expect_verify_error(filled, verifiers=[forger.verifier])
    assert "witness checkpoint at size 1 does not verify" in str(error)
    # And the real sequencer will not extend it.
    if resign:
        filled.append(1)
        with pytest.raises(TamperError, match="stored checkpoint does not verify"):
            filled.sequencer.run_once()
        assert filled.sizes() == [87]


def _tamper_top_node(conn: sa.Connection) -> None:
    # The root of the largest complete subtree: part of every frontier the sequencer restores.
    size = SqlLogReader(conn).size()
    tamper.set_node(conn, size.bit_length() - 1, 0, hashlib.sha256(b"forged").digest())


def _swap_and_rebuild_nodes(conn: sa.Connection) -> None:
    # The thorough version of the swap: the stored tree agrees with the swapped rows.
    tamper.swap_events(conn, 20, 60)
    tamper.rebuild_nodes(conn)


def _truncate_keeping_checkpoints(conn: sa.Connection) -> None:
    conn.execute(audit_log.delete().where(audit_log.c.seq >= 80))
    tamper.rebuild_nodes(conn)


@pytest.mark.parametrize(
    "edit",
    [_tamper_top_node, _swap_and_rebuild_nodes, _truncate_keeping_checkpoints],
    ids=["node-hash", "swap-with-nodes", "truncate"],
)
def test_the_sequencer_refuses_to_extend_a_tampered_tree(
    filled: AuditLog, edit: Callable[[sa.Connection], None]
):
    filled.tamper(edit)
    filled.append(2)
    with filled.engine.connect() as conn:
        before = tamper.snapshot(conn)
    witnessed = filled.witnessed()
    with pytest.raises(TamperError, match="signed"):
        filled.sequencer.run_once()
    # Nothing sequenced, nothing signed, nothing witnessed. (On SQLite the two events went into
    # the tree as they were appended; no checkpoint will ever cover them.)
    with filled.engine.connect() as conn:
        assert tamper.snapshot(conn) == before
    assert filled.pending() == (2 if filled.queues else 0)
    assert filled.witnessed() == witnessed


def test_the_sequencer_never_signs_a_swapped_history(filled: AuditLog):
    # Swapping rows but not the stored nodes leaves the tree the sequencer reads intact, so
    # it may go on; what it must never do is sign a root over the swapped events.
    honest = [leaf_hash(e) for e in filled.entries()]
    filled.tamper(lambda c: tamper.swap_events(c, 20, 60))
    added = filled.append(3)
    try:
        run = filled.sequencer.run_once()
    except TamperError:
        assert filled.sizes() == PLAN_SIZES
    else:
        assert run.checkpoint is not None
        assert run.checkpoint.root_hash == root_from_leaf_hashes(
            honest + [leaf_hash(e.canonical_bytes()) for e in added]
        )
    error = expect_verify_error(filled)
    assert error.index is not None and error.index <= 20


def test_verify_catches_a_rewritten_filter_column(filled: AuditLog):
    # The query API filters on columns copied out of the entry; rewriting one hides an event
    # from an auditor's filtered search, so whole-log verification must notice it.
    victim = filled.appended[37]
    filled.tamper(lambda c: tamper.set_columns(c, 37, actor="someone-else"))
    with filled.engine.connect() as conn:
        found = SqlAuditStore(conn).query(AuditQuery(actor=victim.actor, limit=1000))
    assert 37 not in [s.seq for s in found]
    error = expect_verify_error(filled)
    assert error.index == 37


# -- 4. concurrent sequencers --------------------------------------------------------------


@pytest.mark.postgres
def test_concurrent_sequencers_sequence_everything_exactly_once(
    request: pytest.FixtureRequest, tmp_path: Path
):
    log = open_log(request, "postgres", tmp_path)
    engines = [create_engine(log.url) for _ in range(3)]
    for engine in engines:
        request.addfinalizer(engine.dispose)
    sequencers = [log.new_sequencer(engines[0]), log.new_sequencer(engines[1])]
    runs: list[list[SequencerRun]] = [[], []]
    errors: list[BaseException] = []
    appending = threading.Event()
    appending.set()

    def append() -> None:
        rng = random.Random(6962)
        try:
            for _ in range(70):
                log.append(rng.choice((1, 1, 2, 3, 5, 9)), engine=engines[2])
                time.sleep(rng.random() * 0.01)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)
        finally:
            appending.clear()

    def sequence(k: int) -> None:
        try:
            while appending.is_set() or len(runs[k]) < 5:
                runs[k].append(sequencers[k].run_once())
                time.sleep(0.001)
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            errors.append(e)

    threads = [threading.Thread(target=append)] + [
        threading.Thread(target=sequence, args=(k,)) for k in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    final = sequencers[0].run_once()

    n = len(log.appended)
    assert log.pending() == 0
    assert log.seqs() == list(range(n))
    assert sum(r.sequenced for rs in runs for r in rs) + final.sequenced == n
    # Both really took part (each gets the lock while the other waits on it).
    assert all(sum(r.sequenced for r in rs) > 0 for rs in runs)
    assert sorted(log.entries()) == sorted(e.canonical_bytes() for e in log.appended)
    stored = log.checkpoints()
    assert stored[-1].size == n
    assert sorted((w.size, w.root_hash) for w in log.witnessed()) == [
        (c.size, c.root_hash) for c in stored
    ]
    with log.engine.connect() as conn:
        reader = SqlLogReader(conn)
        for old, new in itertools.pairwise(stored):
            proof = reader.consistency_proof(old.size, new.size)
            verify_consistency(old.size, new.size, old.root_hash, new.root_hash, proof)
    report = log.verify()
    assert (report.size, report.checkpoints, report.witnessed) == (n, len(stored), len(stored))


@pytest.mark.postgres
def test_an_event_committed_after_a_later_one_is_not_lost(
    request: pytest.FixtureRequest, tmp_path: Path
):
    # Two business transactions: A takes the lower queue id but commits after B. The sequencer
    # reads the queue between them (it sees only B), and A commits before the sequencer
    # drains what it read. A's event must still be sequenced, now or on the next run.
    log = open_log(request, "postgres", tmp_path)
    late, early = make_event(1), make_event(2)
    other = create_engine(log.url)
    request.addfinalizer(other.dispose)
    conn_a = other.connect()
    request.addfinalizer(conn_a.close)
    txn_a = conn_a.begin()
    SqlAuditStore(conn_a).append([late])
    with log.engine.begin() as conn_b:
        SqlAuditStore(conn_b).append([early])

    def commit_a_before_the_drain(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("DELETE FROM audit_pending") and txn_a.is_active:
            txn_a.commit()

    sa_event.listen(log.engine, "before_cursor_execute", commit_a_before_the_drain)
    try:
        first = log.sequencer.run_once()
    finally:
        sa_event.remove(log.engine, "before_cursor_execute", commit_a_before_the_drain)
    assert first.sequenced == 1
    log.sequencer.run_once()
    with log.engine.connect() as conn:
        queued = [bytes(e) for e in conn.execute(sa.select(audit_pending.c.entry)).scalars()]
    assert sorted(log.entries() + queued) == sorted(
        [late.canonical_bytes(), early.canonical_bytes()]
    )


# -- 5. crash safety -----------------------------------------------------------------------


def test_a_crash_between_sequencing_and_signing_is_recovered(log: AuditLog):
    log.fill(PLAN[:3])
    log.append(10, 1, 5)
    crashed = log.new_sequencer()
    # Sequenced and committed, then the process dies before signing.
    while crashed._sequence_batch():  # the crash point: committed, not signed
        pass
    assert log.seqs() == list(range(27)) and log.pending() == 0
    assert log.sizes() == [1, 4, 11]
    witnessed = len(log.witnessed())

    run = log.new_sequencer().run_once()  # the restarted process
    assert run.sequenced == 0
    assert run.checkpoint is not None and run.size == run.checkpoint.size == 27
    assert log.sizes() == [1, 4, 11, 27]
    assert [w.size for w in log.witnessed()] == [1, 4, 11, 27]
    assert len(log.witnessed()) == witnessed + 1
    assert run.checkpoint.root_hash == root_from_leaf_hashes(leaf_hashes(log.entries()))
    old = log.checkpoints()[2]
    with log.engine.connect() as conn:
        proof = SqlLogReader(conn).consistency_proof(11, 27)
    verify_consistency(11, 27, old.root_hash, run.checkpoint.root_hash, proof)
    assert log.verify().size == 27


@pytest.mark.postgres
def test_a_crash_inside_a_batch_leaves_nothing_half_done(
    request: pytest.FixtureRequest, tmp_path: Path
):
    log = open_log(request, "postgres", tmp_path)
    log.fill(PLAN[:3])
    log.append(9)
    with log.engine.connect() as conn:
        before = tamper.snapshot(conn)

    class CrashError(Exception):
        pass

    def crash_before_the_drain(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("DELETE FROM audit_pending"):
            raise CrashError

    sa_event.listen(log.engine, "before_cursor_execute", crash_before_the_drain)
    try:
        with pytest.raises(CrashError):
            log.sequencer.run_once()
    finally:
        sa_event.remove(log.engine, "before_cursor_execute", crash_before_the_drain)
    with log.engine.connect() as conn:
        assert tamper.snapshot(conn) == before
    run = log.new_sequencer().run_once()
    assert (run.sequenced, run.size) == (9, 20)
    assert log.verify().size == 20


@pytest.fixture
def sqlite_log(request: pytest.FixtureRequest, tmp_path: Path) -> AuditLog:
    return open_log(request, "sqlite", tmp_path)


def test_sqlite_appends_sequence_in_the_business_transaction(sqlite_log: AuditLog):
    log = sqlite_log
    log.fill(PLAN[:3])
    with log.engine.connect() as conn:
        before = tamper.snapshot(conn)

    class CrashError(Exception):
        pass

    def crash_at_the_nodes(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if statement.startswith("INSERT INTO audit_nodes"):
            raise CrashError

    # A failure between the leaves and the nodes takes both back with the business change.
    sa_event.listen(log.engine, "before_cursor_execute", crash_at_the_nodes)
    try:
        with pytest.raises(CrashError), log.engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE business (x INTEGER)")
            SqlAuditStore(conn).append([make_event(100 + k) for k in range(5)])
    finally:
        sa_event.remove(log.engine, "before_cursor_execute", crash_at_the_nodes)
    with log.engine.connect() as conn:
        assert tamper.snapshot(conn) == before
        assert not sa.inspect(conn).has_table("business")
    # Nothing is queued: the appended events are in the tree at once.
    log.append(5)
    assert log.pending() == 0
    assert log.seqs() == list(range(16))
    run = log.sequencer.run_once()
    assert (run.sequenced, run.size) == (0, 16)
    assert log.verify().size == 16


def test_sqlite_a_rolled_back_append_does_not_poison_the_cached_frontier(sqlite_log: AuditLog):
    # This engine's append leaves its frontier cached at size 11 + 4 = 15, then rolls back;
    # another process appends a different 4 events (same size, different tree). The cache
    # must not be taken for the tree: it is keyed on the size and the last leaf hash.
    log = sqlite_log
    log.fill(PLAN[:3])
    with log.engine.connect() as conn, conn.begin() as txn:
        SqlAuditStore(conn).append([make_event(500 + k) for k in range(4)])
        txn.rollback()
    other = create_engine(log.url)
    try:
        log.append(4, engine=other)
    finally:
        other.dispose()
    log.append(3, 1)
    assert log.seqs() == list(range(19))
    assert log.sequencer.run_once().size == 19
    report = log.verify()
    assert report.size == 19
    assert report.root_hash == root_from_leaf_hashes(
        leaf_hashes([e.canonical_bytes() for e in log.appended])
    )
