"""A throwaway PostgreSQL cluster for the test session (see shared ENVIRONMENT.md).

initdb refuses to run as root, so as root the cluster is made and started as the ``postgres``
user. Missing binaries are an error, never a skip: CI must run these tests.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa


def pg_bin(name: str) -> str:
    """Path of a PostgreSQL server binary. :raises RuntimeError: if it is not installed."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise RuntimeError(
        f"PostgreSQL's {name} is missing: apt-get install postgresql (make test does)"
    )


@dataclass
class PgCluster:
    """A running cluster; ``url(db)`` gives a SQLAlchemy URL for a database in it."""

    datadir: Path
    port: int
    _as_postgres: bool

    def _run(self, *argv: str) -> None:
        cmd = list(argv)
        if self._as_postgres:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True)

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        engine = sa.create_engine(self.url(), isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}"')
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        engine.dispose()
        return self.url(name)

    def stop(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.datadir.parent, ignore_errors=True)


def start_cluster(port: int) -> PgCluster:
    """initdb + start on 127.0.0.1:port with trust auth; about a second."""
    as_postgres = os.geteuid() == 0
    base = Path(tempfile.mkdtemp(prefix="sovereign-pg-"))
    datadir = base / "data"
    if as_postgres:
        shutil.chown(base, "postgres", "postgres")
    cluster = PgCluster(datadir, port, as_postgres)
    cluster._run(
        pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "--auth=trust", "-E", "UTF8"
    )
    cluster._run(
        pg_bin("pg_ctl"),
        "-D",
        str(datadir),
        "-w",
        "-l",
        str(base / "log"),
        "-o",
        f"-k {base} -h 127.0.0.1 -p {port} -c fsync=off -c max_connections=50",
        "start",
    )
    return cluster
