"""bench/audit.py's append measurement: the append run with its sequencer, SQL timed by kind,
the raw-insert baselines, the throwaway PostgreSQL cluster and the cProfile pass.
"""

from __future__ import annotations

import cProfile
import gc
import glob
import io
import os
import pstats
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchkit  # noqa: F401 - first: it stops bench/audit.py shadowing the audit package
import sqlalchemy as sa
from auditbench_events import ORIGIN, log, rate
from sqlalchemy import event

from audit.event import AuditEvent
from audit.sequencer import Sequencer
from audit.signer import Ed25519Signer
from audit.sql import SqlAuditStore, SqlLogReader
from audit.witness import WitnessFile
from devstack.stack import free_port
from sovereign.adapters.database import create_engine
from sovereign.adapters.migrations import upgrade

HOST = "127.0.0.1"
PG_DATABASE = "sovereign_bench"


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


# -- profile ------------------------------------------------------------------------------------

#: Functions whose cumulative time the profile summary shows, by a readable name.
PROFILE_FUNCTIONS = {
    "SqlAuditStore.append (all of the append)": ("audit/sql.py", "append"),
    "serialise (AuditEvent.canonical_bytes)": ("audit/event.py", "canonical_bytes"),
    "filter columns (event_columns)": ("audit/store.py", "event_columns"),
    "leaf hashes": ("audit/merkle.py", "leaf_hashes"),
    "append: frontier (cached or restored)": ("audit/sql.py", "_frontier"),
    "Frontier.extend": ("audit/merkle.py", "extend"),
    "rows (log_rows, incl. time text)": ("audit/sql.py", "log_rows"),
    "insert_many (driver executemany)": ("audit/sql.py", "insert_many"),
    "sequencer: _sequence_batch (empty queue on SQLite)": ("audit/sequencer.py", "_sequence_batch"),
    "sequencer: _trusted_frontier": ("audit/sequencer.py", "_trusted_frontier"),
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
