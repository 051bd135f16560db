"""bench/audit.py's read side: bulk-loading a large log, verifying it whole, timing proofs."""

from __future__ import annotations

import gc
import hashlib
import random
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import benchkit  # first: it stops bench/audit.py shadowing the audit package
import sqlalchemy as sa
from auditbench_append import new_sequencer
from auditbench_events import ORIGIN, EventSource, log, rate, wire

from audit.checkpoint import Checkpoint, sign_checkpoint
from audit.event import AuditEvent, canonical_json
from audit.merkle import Frontier, leaf_hashes
from audit.proof import verify_proof
from audit.signer import Ed25519Signer
from audit.sql import (
    SqlAuditStore,
    SqlLogReader,
    SqlLogSource,
    audit_checkpoints,
    audit_log,
    summarise_time_blocks,
)
from audit.store import encode_compartments
from audit.verify import verify_log
from audit.witness import WitnessFile
from sovereign.adapters.auditlog import SqlAuditLog

#: Proofs computed (and not timed) before timing, and proofs verified offline afterwards.
PROOF_WARMUP = 20
PROOF_CHECKS = 20

percentile = benchkit.percentile


# -- 2. verify ----------------------------------------------------------------------------------


def bulk_load(
    path: Path,
    engine: sa.Engine,
    *,
    count: int,
    every: int,
    signer: Ed25519Signer,
    witness: WitnessFile,
    seed: int,
) -> float:
    """Write a log of ``count`` events as the sequencer would, a checkpoint every ``every``,
    and the time summaries of its blocks.

    Returns the seconds the bare leaf-hashing loop took over the same entries.
    """
    dialect = engine.dialect
    to_time = audit_log.c.time.type.dialect_impl(dialect).bind_processor(dialect)
    to_signed = audit_checkpoints.c.signed_at.type.dialect_impl(dialect).bind_processor(dialect)
    assert to_time is not None
    assert to_signed is not None
    source = EventSource(seed)
    frontier = Frontier()
    sha256 = hashlib.sha256
    sha_s = 0.0
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("PRAGMA cache_size=-262144")  # 256 MiB: the indexes stay in memory
        for start in range(0, count, every):
            n = min(every, count - start)
            fields = [source.fields() for _ in range(n)]
            entries = [canonical_json(wire(f)) for f in fields]
            if start == 0:  # the bulk entries are exactly what AuditEvent serialises
                for f, e in zip(fields[:100], entries[:100], strict=True):
                    if AuditEvent(**f).canonical_bytes() != e:
                        raise RuntimeError(f"bulk entry differs from the event's bytes: {e!r}")
            began = time.perf_counter()
            for e in entries:
                sha256(b"\x00" + e).digest()
            sha_s += time.perf_counter() - began
            leaves = leaf_hashes(entries)
            nodes = frontier.extend(leaves)
            rows = [
                (
                    start + i,
                    e,
                    h,
                    to_time(f["time"]),
                    f["actor"],
                    f["action"],
                    f["target"],
                    f["outcome"].value,
                    f["label"]["level"] if f["label"] else None,
                    encode_compartments(f["label"]["compartments"]) if f["label"] else None,
                )
                for i, (f, e, h) in enumerate(zip(fields, entries, leaves, strict=True))
            ]
            checkpoint = Checkpoint(ORIGIN, frontier.size, frontier.root())
            note = sign_checkpoint(checkpoint, [signer])
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO audit_log (seq, entry, leaf_hash, time, actor, action, target, "
                "outcome, label_level, label_compartments) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            db.executemany("INSERT INTO audit_nodes (level, idx, hash) VALUES (?, ?, ?)", nodes)
            db.execute(
                "INSERT INTO audit_checkpoints (size, root_hash, note, signed_at) "
                "VALUES (?, ?, ?, ?)",
                (checkpoint.size, checkpoint.root_hash, note, to_signed(datetime.now(UTC))),
            )
            db.execute("COMMIT")
            witness.append(checkpoint.size, checkpoint.root_hash, note)
            log(f"bulk load: {frontier.size:,} of {count:,} events, checkpoint signed")
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    with engine.begin() as conn:
        summarise_time_blocks(conn, 0, count)
    return sha_s


def measure_verify(
    engine: sa.Engine, signer: Ed25519Signer, witness: WitnessFile, size: int, db: str
) -> tuple[float, float]:
    """Seconds ``verify_log`` takes over the whole log (which must hold ``size`` events):
    as ``sovereign audit verify`` runs it (tree and filter columns, with a worker process from
    :data:`audit.verify.PARALLEL_MIN_EVENTS` events on), and the tree alone."""
    timings = []
    for check_columns in (True, False):
        what = "tree and columns" if check_columns else "tree only"
        reported: set[int] = set()

        def progress(
            done: int, total: int, what: str = what, reported: set[int] = reported
        ) -> None:
            """Report verification progress (once per count: the last one may come twice)."""
            if done not in reported:
                reported.add(done)
                log(f"{db}: {what}: hashed {done:,} of {total:,} events")

        gc.collect()
        with engine.connect() as conn, benchkit.project_path_only():
            start = time.perf_counter()
            report = verify_log(
                SqlLogReader(conn),
                [signer.verifier],
                ORIGIN,
                witness=witness.read(),
                progress=progress,
                check_columns=check_columns,
                source=SqlLogSource.for_engine(engine),
            )
            seconds = time.perf_counter() - start
        if report.size != size or report.witnessed != report.checkpoints:
            raise RuntimeError(f"{db}: verified {report}, expected {size} events, all witnessed")
        log(
            f"{db}: verify_log ({what}) {rate(size, seconds):,.0f} events/s ({size:,} events, "
            f"{report.checkpoints} checkpoints, {seconds:.1f} s, "
            f"{report.worker_events:,} checked by a worker process)"
        )
        timings.append(seconds)
    return timings[0], timings[1]


# -- 3. proofs ----------------------------------------------------------------------------------


def measure_proofs(
    engine: sa.Engine,
    signer: Ed25519Signer,
    *,
    size: int,
    count: int,
    seed: int,
    db: str,
) -> tuple[float, float]:
    """p50 and p99 in ms of ``SqlAuditLog.proof`` for ``count`` random events."""
    auditlog = SqlAuditLog(engine, signer, ORIGIN, None)
    rng = random.Random(seed)
    for _ in range(PROOF_WARMUP):
        auditlog.proof(rng.randrange(size))
    seqs = [rng.randrange(size) for _ in range(count)]
    gc.collect()
    latencies = []
    texts: list[tuple[int, str]] = []
    for seq in seqs:
        began = time.perf_counter()
        text = auditlog.proof(seq)
        latencies.append((time.perf_counter() - began) * 1000.0)
        if len(texts) < PROOF_CHECKS:
            texts.append((seq, text))
    for seq, text in texts:
        verified = verify_proof(text, [signer.verifier], ORIGIN)
        if verified.index != seq:
            raise RuntimeError(f"{db}: the proof of event {seq} proves event {verified.index}")
    ordered = sorted(latencies)
    p50, p99 = percentile(ordered, 0.50), percentile(ordered, 0.99)
    log(
        f"{db}: proof p50 {p50:.2f} ms, p99 {p99:.2f} ms, max {ordered[-1]:.2f} ms "
        f"({count} proofs in a log of {size:,}; {len(texts)} verified offline)"
    )
    return p50, p99


def check_sequencer_extends(
    engine: sa.Engine, signer: Ed25519Signer, witness: WitnessFile, size: int, seed: int
) -> None:
    """Append and sequence a few events on the bulk-loaded log; the sequencer checks the tree."""
    events = EventSource(seed).events(1000)
    with engine.begin() as conn:
        SqlAuditStore(conn).append(events)
    run = new_sequencer(engine, signer, witness).run_once()
    if run.size != size + len(events) or run.checkpoint is None:
        raise RuntimeError(f"the sequencer did not extend the bulk-loaded log: {run}")
    log(f"sqlite: the sequencer extended the bulk-loaded log to {run.size:,} and signed it")
