"""Throughput of the audit log's append path, and speed of whole-log verification and proofs.

What is measured
    Against a SQLite file (created with the control plane's ``create_engine``: WAL,
    ``synchronous=FULL``, ``BEGIN IMMEDIATE``; schema by the migrations) and a throwaway
    PostgreSQL 15 cluster started here with ``fsync=on`` and ``synchronous_commit=on``, so every
    commit is durable on both:

    1. ``append``: events appended through the public API, ``SqlAuditStore(conn).append(batch)``
       in transactions of ``--txn`` (1000) events, with the sequencer included: its
       ``run_once()`` (sequence all queued events in batches, store leaves and nodes, delete them
       from the queue, sign and store a checkpoint, fsync it to a witness file) runs in the same
       thread after every ``--sequence-every`` (10) transactions and once more at the end, so
       the rate counts everything from the first append to the final signed checkpoint.
       Interleaving rather than a second thread: SQLite has one writer at a time
       (``BEGIN IMMEDIATE``) and Python one running thread, so a sequencer thread would mostly
       take turns with the appender anyway; inline it costs the same work, the numbers are
       repeatable, and the split between appending and sequencing can be timed exactly.
       The events (realistic control-plane decisions, about 450-550 bytes of canonical JSON)
       are built before the clock starts; serialising them is part of ``append`` and timed.
       ``raw_insert``: the same canonical bytes inserted with the driver's ``executemany``
       (``sqlite3`` with the same pragmas; ``psycopg``) into a plain ``(id, entry)`` table, one
       durable transaction per ``--txn`` events. ``append_ratio`` = append / raw_insert.
    2. ``verify``: ``verify_log(SqlLogReader(conn), ...)`` over a SQLite log of ``--events``
       (1,000,000) events, checking every signed checkpoint (one per 100,000 events) and the
       witness file, as ``sovereign audit verify`` runs it: the tree, then a second pass that
       holds the filter columns to each event's bytes; ``verify_tree_only`` is the same with
       ``check_columns=False``. The log is bulk-loaded with exactly what the sequencer writes
       (canonical entries, leaf hashes, every node from ``Frontier.extend``, checkpoints signed
       with ``sign_checkpoint``), and afterwards the real sequencer extends it, which it refuses
       unless the stored tree matches the signed checkpoints. ``raw_sha256``: the bare loop
       ``sha256(b"\\x00" + entry).digest()`` over the same entries. ``verify_ratio`` = verify /
       raw_sha256. On PostgreSQL the log left by step 1 is verified (``pg_verify_*``), after a
       ``CHECKPOINT`` and ``VACUUM (ANALYZE)`` so that the append phase's write-back is not
       timed with the reads.
    3. ``proof``: latency of what ``GET /api/v1/audit/proof/{seq}`` does below the web layer,
       ``SqlAuditLog.proof(seq)``: find the smallest checkpoint covering the event, build the
       inclusion path from stored nodes, fetch the entry and format the C2SP tlog-proof, on a
       fresh pooled connection, for ``--proofs`` (1000) random events after a short warm-up;
       a sample of the proofs is verified offline. Nearest-rank p50 and p99.

    ``--profile`` adds a pass of the SQLite append path under cProfile (not in the figures) and
    prints where its time goes. SQL statements are timed by kind in every append run.

Output
    Progress on stderr; the last line on stdout is one JSON object (rates in events per
    second, latencies in milliseconds, durations in seconds). The exit status is non-zero if a
    check fails (a wrong log size, an unverifiable log or proof). Every process (the
    PostgreSQL cluster) and temporary directory started here is removed on the way out, on
    failure too.

    The PostgreSQL figures need ``psycopg`` (the ``bench`` extra) and Debian's ``postgresql``
    server; ``make bench-setup`` installs both. Without them this says so, names what is
    missing in ``pg_skipped``, and measures SQLite alone.

Run from the repository root: ``.venv/bin/python bench/audit.py [--events N] [--quick]``.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import glob
import hashlib
import io
import json
import os
import pstats
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import benchkit  # first: it stops bench/audit.py shadowing the audit package
import sqlalchemy as sa
from sqlalchemy import event

from audit.checkpoint import Checkpoint, sign_checkpoint
from audit.event import AuditEvent, Outcome, canonical_json
from audit.merkle import Frontier, leaf_hashes
from audit.proof import verify_proof
from audit.sequencer import Sequencer
from audit.signer import Ed25519Signer
from audit.sql import SqlAuditStore, SqlLogReader, audit_checkpoints, audit_log
from audit.store import encode_compartments
from audit.verify import verify_log
from audit.witness import WitnessFile
from devstack.stack import free_port
from sovereign.adapters.auditlog import SqlAuditLog
from sovereign.adapters.database import create_engine
from sovereign.adapters.migrations import upgrade

ORIGIN = "sovereign.bench/audit"
KEY_NAME = "sovereign.bench-audit"
HOST = "127.0.0.1"
PG_DATABASE = "sovereign_bench"
#: The goals this benchmark tracks, judged on the SQLite figures (``append_ratio`` on
#: ``sqlite_append_ratio``, ``proof_p99_ms`` at 1,000,000 events); PostgreSQL is reported beside.
GOALS = {"append_ratio": 0.5, "sqlite_append_per_s": 30_000, "verify_ratio": 0.4, "proof_p99_ms": 5}
#: Proofs computed (and not timed) before timing, and proofs verified offline afterwards.
PROOF_WARMUP = 20
PROOF_CHECKS = 20
STOP_TIMEOUT_S = 30

_STARTED = benchkit.STARTED


log = benchkit.progress("bench/audit")


percentile = benchkit.percentile


def rate(count: int, seconds: float) -> float:
    """Events per second, rounded for the report."""
    return round(count / max(seconds, 1e-9), 1)


# -- realistic events -------------------------------------------------------------------------

USERS = [
    "analyst-defence",
    "analyst-health",
    "analyst-finance",
    "officer-defence",
    "officer-health",
    "auditor-central",
    "ops-oncall",
    "researcher-ml",
]
TENANTS = ["defence", "health", "finance", "research"]
IMAGES = ["debian-12-cuda", "ubuntu-24.04-rocm", "rhel-9-base", "debian-12-jupyter"]
HOSTS = ["gpu-node-01", "gpu-node-02", "gpu-node-03", "cpu-node-07"]
LABELS: list[dict[str, Any] | None] = [
    None,
    {"level": "UNCLASSIFIED", "compartments": []},
    {"level": "CONFIDENTIAL", "compartments": ["HEALTH"]},
    {"level": "SECRET", "compartments": ["NATO"]},
    {"level": "SECRET", "compartments": ["EU", "NATO"]},
    {"level": "TOP_SECRET", "compartments": ["FVEY", "NATO"]},
]
PURPOSES = [
    "fine-tune a translation model on partner documents",
    "batch inference over scanned field reports",
    "train an anomaly detector on network flow records",
    "evaluate a speech-to-text model on intercepted audio",
]
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


class EventSource:
    """A deterministic stream of plausible control-plane decisions (about 450-550 bytes each)."""

    def __init__(self, seed: int) -> None:
        """Start the stream; the same seed gives the same events."""
        self._rng = random.Random(seed)
        self._requests = [self._uuid() for _ in range(64)]
        self._count = 0

    def _uuid(self) -> uuid.UUID:
        """A random version-4 UUID from the stream's generator."""
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def fields(self) -> dict[str, Any]:
        """The keyword arguments of the next :class:`AuditEvent`."""
        rng = self._rng
        i = self._count
        self._count += 1
        user = rng.choice(USERS)
        tenant = rng.choice(TENANTS)
        label = rng.choice(LABELS)
        roll = rng.random()
        outcome = Outcome.ALLOW
        if roll < 0.2:
            request = self._uuid()
            self._requests[i % len(self._requests)] = request
            action, target, reason = "request:create", f"request:{request}", "request submitted"
            details: dict[str, Any] = {
                "tenant": tenant,
                "image": rng.choice(IMAGES),
                "resources": {"vcpus": 8, "memory_mib": 32768, "gpus": rng.randint(0, 4)},
                "lease_hours": rng.choice([4, 8, 24, 72]),
                "purpose": rng.choice(PURPOSES),
            }
        elif roll < 0.5:
            action = "request:approve" if rng.random() < 0.85 else "request:deny"
            outcome = Outcome.ALLOW if action == "request:approve" else Outcome.DENY
            target = f"request:{rng.choice(self._requests)}"
            reason = "clearance dominates the label; purpose reviewed by the security officer"
            details = {"tenant": tenant, "approvals_received": rng.randint(1, 2), "needed": 2}
        elif roll < 0.75:
            action = rng.choice(["enclave:start", "enclave:stop"])
            target = f"enclave:{rng.choice(self._requests)}"
            reason = "lease active; attestation report verified against the golden measurement"
            details = {"host": rng.choice(HOSTS), "domain": f"enc-{rng.getrandbits(32):08x}"}
        elif roll < 0.9:
            action, target = "key:release", f"vault:transit/keys/{tenant}-disk"
            reason = "enclave attested; key released to the measured launch"
            details = {"key_version": rng.randint(1, 9), "host": rng.choice(HOSTS)}
        else:
            action, target = "auth:login", f"user:{user}"
            outcome = Outcome.ALLOW if rng.random() < 0.95 else Outcome.DENY
            reason = "password and second factor accepted" if outcome is Outcome.ALLOW else ""
            details = {"method": "oidc", "client": "sovereign-ui", "mfa": True}
        return {
            "actor": f"user:{user}",
            "action": action,
            "target": target,
            "outcome": outcome,
            "reason": reason,
            "label": label,
            "request_id": str(self._uuid()),
            "source": f"10.{rng.randint(0, 3)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "details": details,
            "time": BASE_TIME + timedelta(microseconds=1500 * i),
            "id": self._uuid(),
        }

    def events(self, count: int) -> list[AuditEvent]:
        """The next ``count`` events."""
        return [AuditEvent(**self.fields()) for _ in range(count)]


def wire(f: dict[str, Any]) -> dict[str, Any]:
    """What ``AuditEvent(**f).to_dict()`` returns, without building the event (bulk loading)."""
    return {
        "id": str(f["id"]),
        "time": f["time"].isoformat().replace("+00:00", "Z"),
        "actor": f["actor"],
        "action": f["action"],
        "target": f["target"],
        "outcome": f["outcome"].value,
        "reason": f["reason"],
        "label": f["label"],
        "request_id": f["request_id"],
        "source": f["source"],
        "details": f["details"],
    }


# -- timing SQL by kind -------------------------------------------------------------------------

_TABLE = re.compile(r"\b(?:FROM|INTO|UPDATE)\s+(\w+)", re.IGNORECASE)


@dataclass
class SqlTimer:
    """Seconds spent in the driver per kind of statement (``insert_audit_log``, ...)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    def attach(self, engine: sa.Engine) -> None:
        """Start timing every statement ``engine`` runs."""
        event.listen(engine, "before_cursor_execute", self._before)
        event.listen(engine, "after_cursor_execute", self._after)

    def detach(self, engine: sa.Engine) -> None:
        """Stop timing."""
        event.remove(engine, "before_cursor_execute", self._before)
        event.remove(engine, "after_cursor_execute", self._after)

    def _before(self, conn: sa.Connection, *_args: Any) -> None:
        """Note when the statement started."""
        conn.info["bench_t0"] = time.perf_counter()

    def _after(self, conn: sa.Connection, _cursor: Any, statement: str, *_args: Any) -> None:
        """Add the statement's time to its kind."""
        elapsed = time.perf_counter() - conn.info.pop("bench_t0", time.perf_counter())
        verb = statement.lstrip().split(None, 1)[0].lower()
        table = _TABLE.search(statement)
        kind = f"{verb}_{table.group(1).lower()}" if table else verb
        if "pg_advisory" in statement:
            kind = "advisory_lock"
        self.seconds[kind] += elapsed

    def report(self) -> dict[str, float]:
        """The totals, largest first, rounded to milliseconds."""
        return {k: round(v, 3) for k, v in sorted(self.seconds.items(), key=lambda kv: -kv[1])}


# -- PostgreSQL with durable commits ------------------------------------------------------------


def postgres_missing() -> str | None:
    """Why the PostgreSQL figures cannot be measured on this machine, or None if they can."""
    try:
        import psycopg  # noqa: F401, PLC0415 - optional: the bench extra
    except ImportError:
        return "psycopg is not installed (the 'bench' extra: make bench-setup)"
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb") and shutil.which("initdb") is None:
        return "the PostgreSQL server is not installed (Debian's postgresql: make bench-setup)"
    return None


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary (the newest installed major version)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    path = found[-1] if found else shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is missing: apt-get install postgresql")
    return path


@dataclass(frozen=True)
class Postgres:
    """A running throwaway cluster on 127.0.0.1."""

    port: int
    version: str

    def url(self, dbname: str = PG_DATABASE) -> str:
        """SQLAlchemy URL of a database in the cluster."""
        return f"postgresql+psycopg://postgres@{HOST}:{self.port}/{dbname}"

    def conninfo(self, dbname: str = PG_DATABASE) -> str:
        """psycopg connection string of a database in the cluster."""
        return f"host={HOST} port={self.port} user=postgres dbname={dbname}"


def start_postgres(stack: ExitStack) -> Postgres:
    """initdb and start a cluster with fsync on; ``stack`` stops it and removes its files."""
    as_postgres = os.geteuid() == 0  # initdb refuses to run as root
    base = Path(tempfile.mkdtemp(prefix="bench-audit-pg-"))
    stack.callback(shutil.rmtree, base, ignore_errors=True)
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
    datadir = base / "data"

    def run(*argv: str, check: bool = True) -> None:
        """Run a server tool, as the postgres user when we are root."""
        command = ["runuser", "-u", "postgres", "--", *argv] if as_postgres else list(argv)
        subprocess.run(command, check=check, capture_output=True, timeout=120)

    run(pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8")
    port = free_port()
    options = (
        f"-k {base} -h {HOST} -p {port} -c max_connections=20 "
        "-c fsync=on -c synchronous_commit=on -c full_page_writes=on"
    )

    def stop() -> None:
        """Stop the cluster if it runs (fast shutdown)."""
        if (datadir / "postmaster.pid").exists():
            run(pg_bin("pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "stop", check=False)
            log("PostgreSQL: stopped")

    stack.callback(stop)
    run(pg_bin("pg_ctl"), "-D", str(datadir), "-w", "-l", str(base / "log"), "-o", options, "start")
    import psycopg  # noqa: PLC0415 - optional (see postgres_missing)

    with psycopg.connect(Postgres(port, "").conninfo("postgres"), autocommit=True) as db:
        settings = {
            name: db.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("fsync", "synchronous_commit", "server_version")
        }
        if settings["fsync"] != "on" or settings["synchronous_commit"] != "on":
            raise RuntimeError(f"PostgreSQL must commit durably, got {settings}")
        db.execute(f"CREATE DATABASE {PG_DATABASE}")
    version = settings["server_version"]
    log(f"PostgreSQL {version} on {HOST}:{port}: fsync=on, synchronous_commit=on")
    return Postgres(port, version)


def settle_postgres(engine: sa.Engine) -> None:
    """Checkpoint and vacuum after the writes, so that reads are not timed with their aftermath.

    Right after the appends the cluster is still writing back dirty pages, and the first
    read of each new row sets its hint bits (dirtying the page again); autovacuum would get to
    the same state on its own a little later.
    """
    began = time.perf_counter()
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.exec_driver_sql("CHECKPOINT")
        conn.exec_driver_sql("VACUUM (ANALYZE) audit_log, audit_nodes, audit_checkpoints")
        conn.exec_driver_sql("CHECKPOINT")
    log(f"pg: CHECKPOINT, VACUUM (ANALYZE) of the log tables: {time.perf_counter() - began:.1f} s")


# -- 1. append ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppendResult:
    """The append run's figures."""

    events: int
    seconds: float
    store_s: float
    commit_s: float
    sequencer_s: float
    checkpoints: int
    sql_s: dict[str, float]

    @property
    def per_s(self) -> float:
        """Events appended, sequenced and checkpointed per second."""
        return rate(self.events, self.seconds)

    def phases(self) -> dict[str, float]:
        """Seconds by phase: ``append()`` calls, their commits, the sequencer runs."""
        return {
            "store_append": round(self.store_s, 3),
            "commit": round(self.commit_s, 3),
            "sequencer": round(self.sequencer_s, 3),
        }


def append_run(
    engine: sa.Engine,
    events: Sequence[AuditEvent],
    sequencer: Sequencer,
    *,
    txn: int,
    every: int,
) -> AppendResult:
    """Append ``events`` in transactions of ``txn``, sequencing after every ``every`` of them."""
    timer = SqlTimer()
    timer.attach(engine)
    gc.collect()
    store_s = commit_s = sequencer_s = 0.0
    checkpoints = 0
    try:
        start = time.perf_counter()
        for number, pos in enumerate(range(0, len(events), txn), 1):
            t0 = time.perf_counter()
            with engine.begin() as conn:
                SqlAuditStore(conn).append(events[pos : pos + txn])
                t1 = time.perf_counter()
            t2 = time.perf_counter()
            store_s += t1 - t0
            commit_s += t2 - t1
            if number % every == 0:
                checkpoints += sequencer.run_once().checkpoint is not None
                sequencer_s += time.perf_counter() - t2
        t3 = time.perf_counter()
        final = sequencer.run_once()
        end = time.perf_counter()
        sequencer_s += end - t3
        checkpoints += final.checkpoint is not None
    finally:
        timer.detach(engine)
    with engine.connect() as conn:
        reader = SqlLogReader(conn)
        latest = reader.latest_checkpoint()
        size, pending = reader.size(), reader.pending()
    if size != len(events) or pending or latest is None or latest.size != size:
        raise RuntimeError(
            f"after appending {len(events)} events the log holds {size}, {pending} are still "
            f"queued and the latest checkpoint is at {latest.size if latest else None}"
        )
    return AppendResult(
        len(events), end - start, store_s, commit_s, sequencer_s, checkpoints, timer.report()
    )


def log_append(db: str, result: AppendResult, raw_per_s: float) -> None:
    """Report an append run on stderr."""
    log(
        f"{db}: append {result.per_s:,.0f} events/s ({result.events:,} events, "
        f"{result.seconds:.1f} s, {result.checkpoints} checkpoints); raw insert "
        f"{raw_per_s:,.0f}/s; ratio {result.per_s / raw_per_s:.3f}"
    )
    log(f"{db}: phases (s) {result.phases()}")
    log(f"{db}: SQL by kind (s) {result.sql_s}")


def raw_sqlite(path: Path, entries: Sequence[bytes], txn: int) -> float:
    """Seconds to insert ``entries`` with sqlite3's executemany, one durable txn per ``txn``."""
    db = sqlite3.connect(path, isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE raw_entries (id INTEGER PRIMARY KEY, entry BLOB NOT NULL)")
        start = time.perf_counter()
        for pos in range(0, len(entries), txn):
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO raw_entries (entry) VALUES (?)",
                [(e,) for e in entries[pos : pos + txn]],
            )
            db.execute("COMMIT")
        seconds = time.perf_counter() - start
        (count,) = db.execute("SELECT count(*) FROM raw_entries").fetchone()
    finally:
        db.close()
    if count != len(entries):
        raise RuntimeError(f"raw SQLite insert stored {count} of {len(entries)} entries")
    return seconds


def raw_pg(conninfo: str, entries: Sequence[bytes], txn: int) -> float:
    """Seconds to insert ``entries`` with psycopg's executemany, one durable txn per ``txn``."""
    import psycopg  # noqa: PLC0415 - optional (see postgres_missing)

    with psycopg.connect(conninfo) as db:
        db.execute(
            "CREATE TABLE raw_entries "
            "(id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, entry bytea NOT NULL)"
        )
        db.commit()
        start = time.perf_counter()
        for pos in range(0, len(entries), txn):
            with db.cursor() as cur:
                cur.executemany(
                    "INSERT INTO raw_entries (entry) VALUES (%s)",
                    [(e,) for e in entries[pos : pos + txn]],
                )
            db.commit()
        seconds = time.perf_counter() - start
        count = db.execute("SELECT count(*) FROM raw_entries").fetchone()[0]  # type: ignore[index]
        db.execute("DROP TABLE raw_entries")
        db.commit()
    if count != len(entries):
        raise RuntimeError(f"raw PostgreSQL insert stored {count} of {len(entries)} entries")
    return seconds


def new_sequencer(engine: sa.Engine, signer: Ed25519Signer, witness: WitnessFile) -> Sequencer:
    """The sequencer as the control plane wires it (default batch, a witness file)."""
    return Sequencer(engine, signer, ORIGIN, witness=witness)


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
    """Write a log of ``count`` events as the sequencer would, a checkpoint every ``every``.

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
    return sha_s


def measure_verify(
    engine: sa.Engine, signer: Ed25519Signer, witness: WitnessFile, size: int, db: str
) -> tuple[float, float]:
    """Seconds ``verify_log`` takes over the whole log (which must hold ``size`` events):
    as ``sovereign audit verify`` runs it (tree and filter columns), and the tree alone."""
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
        with engine.connect() as conn:
            start = time.perf_counter()
            report = verify_log(
                SqlLogReader(conn),
                [signer.verifier],
                ORIGIN,
                witness=witness.read(),
                progress=progress,
                check_columns=check_columns,
            )
            seconds = time.perf_counter() - start
        if report.size != size or report.witnessed != report.checkpoints:
            raise RuntimeError(f"{db}: verified {report}, expected {size} events, all witnessed")
        log(
            f"{db}: verify_log ({what}) {rate(size, seconds):,.0f} events/s ({size:,} events, "
            f"{report.checkpoints} checkpoints, {seconds:.1f} s)"
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


# -- profile ------------------------------------------------------------------------------------

#: Functions whose cumulative time the profile summary shows, by a readable name.
PROFILE_FUNCTIONS = {
    "serialise (AuditEvent.canonical_bytes)": ("audit/event.py", "canonical_bytes"),
    "SqlAuditStore.append (incl. serialise)": ("audit/sql.py", "append"),
    "sequencer: _sequence_batch": ("audit/sequencer.py", "_sequence_batch"),
    "sequencer: _trusted_frontier": ("audit/sequencer.py", "_trusted_frontier"),
    "sequencer: index_columns": ("audit/store.py", "index_columns"),
    "sequencer: Frontier.extend": ("audit/merkle.py", "extend"),
    "sequencer: consistency_proof": ("audit/merkle.py", "consistency_proof"),
    "sequencer: _checkpoint": ("audit/sequencer.py", "_checkpoint"),
    "open_checkpoint (Ed25519 verify)": ("audit/checkpoint.py", "open_checkpoint"),
    "sign_checkpoint (Ed25519 sign)": ("audit/checkpoint.py", "sign_checkpoint"),
    "witness append (fsync)": ("audit/witness.py", "append"),
    "SQLAlchemy compile": ("sqlalchemy/sql/compiler.py", "__init__"),
    "sqlite3 executemany": ("~", "<method 'executemany' of 'sqlite3.Cursor' objects>"),
    "sqlite3 execute": ("~", "<method 'execute' of 'sqlite3.Cursor' objects>"),
    "sqlite3 commit": ("~", "<method 'commit' of 'sqlite3.Connection' objects>"),
}


def profile_append(
    workdir: Path, events: Sequence[AuditEvent], signer: Ed25519Signer, txn: int, every: int
) -> dict[str, float]:
    """Run the SQLite append path under cProfile; print and return the time by function."""
    url = f"sqlite:///{workdir / 'profile.db'}"
    upgrade(url)
    engine = create_engine(url)
    profiler = cProfile.Profile()
    try:
        sequencer = new_sequencer(engine, signer, WitnessFile(workdir / "profile-witness.jsonl"))
        profiler.enable()
        result = append_run(engine, events, sequencer, txn=txn, every=every)
        profiler.disable()
    finally:
        engine.dispose()
    stats = pstats.Stats(profiler)
    total = result.seconds
    summary: dict[str, float] = {}
    for name, (file_part, func) in PROFILE_FUNCTIONS.items():
        seconds = sum(
            v[3]  # cumulative time
            for (file, _line, fn), v in stats.stats.items()  # type: ignore[attr-defined]
            if fn == func and file_part in file
        )
        summary[name] = round(seconds, 3)
    log(f"profile: {result.events:,} events, {total:.1f} s under cProfile ({result.per_s:,.0f}/s)")
    for name, spent in summary.items():
        log(f"profile: {spent:8.3f} s {spent / total:6.1%}  {name}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(25)
    print(out.getvalue(), file=sys.stderr)
    return summary


# -- main ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """What to run, from the command line."""

    events: int
    checkpoint_every: int
    append: int
    pg_append: int
    txn: int
    every: int
    proofs: int
    seed: int
    profile: bool


def parse_args() -> Settings:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000, help="size of the verify log")
    parser.add_argument("--append", type=int, default=200_000, help="events appended (SQLite)")
    parser.add_argument("--pg-append", type=int, default=200_000, help="events appended (PG)")
    parser.add_argument("--txn", type=int, default=1000, help="events per append transaction")
    parser.add_argument(
        "--sequence-every", type=int, default=10, help="append transactions per sequencer run"
    )
    parser.add_argument("--proofs", type=int, default=1000, help="proofs timed per database")
    parser.add_argument("--seed", type=int, default=2026, help="random seed")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run")
    parser.add_argument("--profile", action="store_true", help="also profile the append path")
    args = parser.parse_args()
    if args.quick:
        args.events, args.append, args.pg_append, args.proofs = 20_000, 10_000, 10_000, 100
    if min(args.events, args.append, args.pg_append, args.txn, args.sequence_every) < 1:
        parser.error("sizes must be positive")
    return Settings(
        events=args.events,
        checkpoint_every=min(100_000, max(1, args.events // 4)),
        append=args.append,
        pg_append=args.pg_append,
        txn=args.txn,
        every=args.sequence_every,
        proofs=args.proofs,
        seed=args.seed,
        profile=args.profile,
    )


def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so that every cleanup runs."""
    raise SystemExit(143)


@dataclass(frozen=True)
class Context:
    """What every section shares: settings, cleanups, a temporary folder and the log key."""

    settings: Settings
    stack: ExitStack
    workdir: Path
    signer: Ed25519Signer


def sqlite_append(ctx: Context, events: list[AuditEvent], entries: list[bytes]) -> dict[str, Any]:
    """Section 1 on SQLite: raw insert, then the append path on a migrated database."""
    s = ctx.settings
    n = s.append
    raw_s = raw_sqlite(ctx.workdir / "raw.db", entries[:n], s.txn)
    url = f"sqlite:///{ctx.workdir / 'append.db'}"
    upgrade(url)
    engine = create_engine(url)
    ctx.stack.callback(engine.dispose)
    sequencer = new_sequencer(engine, ctx.signer, WitnessFile(ctx.workdir / "append-wit.jsonl"))
    result = append_run(engine, events[:n], sequencer, txn=s.txn, every=s.every)
    engine.dispose()
    log_append("sqlite", result, rate(n, raw_s))
    return {
        "sqlite_version": sqlite3.sqlite_version,
        "sqlite_append_events": n,
        "sqlite_append_per_s": result.per_s,
        "sqlite_raw_insert_per_s": rate(n, raw_s),
        "sqlite_append_ratio": round(result.per_s / rate(n, raw_s), 3),
        "sqlite_append_phase_s": result.phases(),
        "sqlite_append_sql_s": result.sql_s,
    }


def postgres(ctx: Context, events: list[AuditEvent], entries: list[bytes]) -> dict[str, Any]:
    """Sections 1 to 3 on PostgreSQL: raw insert, append, then verify and proofs of that log."""
    s = ctx.settings
    n = s.pg_append
    cluster = start_postgres(ctx.stack)
    raw_s = raw_pg(cluster.conninfo(), entries[:n], s.txn)
    upgrade(cluster.url())
    engine = create_engine(cluster.url())
    ctx.stack.callback(engine.dispose)
    witness = WitnessFile(ctx.workdir / "pg-witness.jsonl")
    sequencer = new_sequencer(engine, ctx.signer, witness)
    result = append_run(engine, events[:n], sequencer, txn=s.txn, every=s.every)
    log_append("pg", result, rate(n, raw_s))
    settle_postgres(engine)
    verify_s, tree_s = measure_verify(engine, ctx.signer, witness, n, "pg")
    p50, p99 = measure_proofs(engine, ctx.signer, size=n, count=s.proofs, seed=s.seed, db="pg")
    engine.dispose()
    return {
        "pg_version": cluster.version,
        "pg_append_events": n,
        "pg_append_per_s": result.per_s,
        "pg_raw_insert_per_s": rate(n, raw_s),
        "pg_append_ratio": round(result.per_s / rate(n, raw_s), 3),
        "pg_append_phase_s": result.phases(),
        "pg_append_sql_s": result.sql_s,
        "pg_verify_events": n,
        "pg_verify_per_s": rate(n, verify_s),
        "pg_verify_tree_only_per_s": rate(n, tree_s),
        "pg_proof_p50_ms": round(p50, 3),
        "pg_proof_p99_ms": round(p99, 3),
    }


def sqlite_verify(ctx: Context) -> dict[str, Any]:
    """Sections 2 and 3 on SQLite: bulk-load a large log, verify it whole, time proofs."""
    s = ctx.settings
    n = s.events
    path = ctx.workdir / "verify.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    engine = create_engine(url)
    ctx.stack.callback(engine.dispose)
    witness = WitnessFile(ctx.workdir / "verify-witness.jsonl")
    sha_s = bulk_load(
        path,
        engine,
        count=n,
        every=s.checkpoint_every,
        signer=ctx.signer,
        witness=witness,
        seed=s.seed,
    )
    log(f"raw sha256 leaf hashing {rate(n, sha_s):,.0f}/s")
    verify_s, tree_s = measure_verify(engine, ctx.signer, witness, n, "sqlite")
    p50, p99 = measure_proofs(engine, ctx.signer, size=n, count=s.proofs, seed=s.seed, db="sqlite")
    check_sequencer_extends(engine, ctx.signer, witness, n, s.seed + 1)
    engine.dispose()
    return {
        "verify_events": n,
        "verify_checkpoints": -(-n // s.checkpoint_every),
        "verify_per_s": rate(n, verify_s),
        "raw_sha256_per_s": rate(n, sha_s),
        "verify_ratio": round(sha_s / verify_s, 3),
        "verify_tree_only_per_s": rate(n, tree_s),
        "verify_tree_only_ratio": round(sha_s / tree_s, 3),
        "proof_count": s.proofs,
        "proof_p50_ms": round(p50, 3),
        "proof_p99_ms": round(p99, 3),
    }


def run(settings: Settings, stack: ExitStack) -> dict[str, Any]:
    """Run every section; return the figures."""
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-audit-")))
    ctx = Context(settings, stack, workdir, Ed25519Signer.generate(KEY_NAME))
    figures: dict[str, Any] = {"bench": "audit", "cpu_count": os.cpu_count()}
    figures |= {"txn_events": settings.txn, "sequence_every_txns": settings.every}

    count = max(settings.append, settings.pg_append)
    events = EventSource(settings.seed).events(count)
    began = time.perf_counter()
    entries = [e.canonical_bytes() for e in events]
    serialise_s = time.perf_counter() - began
    sizes = sorted(map(len, entries))
    log(
        f"{count:,} events built; canonical_bytes {rate(count, serialise_s):,.0f}/s; "
        f"entry bytes p50 {percentile(sizes, 0.5)}, min {sizes[0]}, max {sizes[-1]}"
    )
    figures["serialize_per_s"] = rate(count, serialise_s)
    figures["entry_bytes_p50"] = percentile(sizes, 0.5)

    figures |= sqlite_append(ctx, events, entries)
    missing = postgres_missing()
    if missing is None:
        figures |= postgres(ctx, events, entries)
    else:
        log(f"PostgreSQL figures skipped: {missing}")
        figures["pg_skipped"] = missing
    del events, entries  # the bulk load needs the memory
    figures |= sqlite_verify(ctx)
    if missing is None:
        figures["pg_verify_ratio"] = round(
            figures["pg_verify_per_s"] / figures["raw_sha256_per_s"], 3
        )

    if settings.profile:
        events = EventSource(settings.seed + 2).events(min(settings.append, 50_000))
        summary = profile_append(workdir, events, ctx.signer, settings.txn, settings.every)
        figures["sqlite_append_profile_s"] = summary
    return figures


def main() -> int:
    """Measure, print the figures as one JSON line, clean up."""
    settings = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with ExitStack() as stack:
        figures = run(settings, stack)
    figures["goals"] = GOALS
    figures["goals_met"] = {
        "append_ratio": figures["sqlite_append_ratio"] >= GOALS["append_ratio"],
        "sqlite_append_per_s": figures["sqlite_append_per_s"] >= GOALS["sqlite_append_per_s"],
        "verify_ratio": figures["verify_ratio"] >= GOALS["verify_ratio"],
        "proof_p99_ms": figures["proof_p99_ms"] <= GOALS["proof_p99_ms"],
    }
    figures["duration_s"] = round(time.monotonic() - _STARTED, 1)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    benchkit.run(main, log)
