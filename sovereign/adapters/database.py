"""Database engines, repositories and the unit of work (SQLAlchemy 2.0 Core).

Owns the repositories' statements (rows become domain objects through the maps of
:mod:`sovereign.adapters.mappings`), the transaction boundary, SQLite's pragmas,
optimistic locking (``version``) plus ``SELECT ... FOR UPDATE`` where the database has it, and
the translation of driver errors into :mod:`sovereign.errors`, once, here.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import json
import uuid
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Self

import sqlalchemy as sa
from sqlalchemy import event, exc

from audit.sql import SqlAuditStore, compartments_within
from audit.store import encode_compartments
from sovereign.adapters.fleetdb import (
    SqlActionRepository,
    SqlEnclaveRepository,
    SqlGpuRepository,
    SqlHostRepository,
    SqlSiteRepository,
)
from sovereign.adapters.jobsdb import SqlBlobRepository, SqlDatasetRepository, SqlJobRepository
from sovereign.adapters.mappings import APPROVALS, IMAGES, KEYS, REQUESTS, TENANTS
from sovereign.adapters.tables import approvals, enclave_keys, enclave_requests, images, tenants
from sovereign.domain.keys import EnclaveKeys
from sovereign.domain.labels import Label, LabelScheme
from sovereign.domain.policy import Visibility
from sovereign.domain.requests import COMMITTED_STATES, Approval, EnclaveRequest
from sovereign.domain.tenants import Image, Resources, Tenant
from sovereign.errors import (
    ConcurrentUpdateError,
    DependencyUnavailableError,
    InvalidInputError,
)
from sovereign.services.ports import Page, RequestFilter


def create_engine(url: str, *, pool_size: int = 5) -> sa.Engine:
    """An engine for ``url``; SQLite gets WAL, full sync, foreign keys and a busy timeout.

    Statement parameters never appear in SQLAlchemy's error messages (``hide_parameters``):
    they may hold an enclave's canary nonce, and errors reach the logs.
    """
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30}, hide_parameters=True)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return sa.create_engine(url, pool_size=pool_size, pool_pre_ping=True, hide_parameters=True)


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves (see create_engine)
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    # INSERT OR REPLACE must fire delete triggers (append-only tables rely on it).
    cur.execute("PRAGMA recursive_triggers=ON")
    cur.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # pysqlite defers BEGIN on its own; we take control so that writers take the write lock up
    # front (BEGIN IMMEDIATE: no lock-upgrade deadlocks, the busy timeout applies) while
    # read-only units use a plain deferred BEGIN and never wait for writers under WAL.
    mode = "DEFERRED" if conn.get_execution_options().get("sovereign_readonly") else "IMMEDIATE"
    conn.exec_driver_sql(f"BEGIN {mode}")


@contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver errors into the control plane's: lost database -> 503, races -> 409."""
    try:
        yield
    except exc.IntegrityError as e:
        raise ConcurrentUpdateError(kind="record", ident="(constraint)") from e
    except (exc.OperationalError, exc.InterfaceError) as e:
        raise DependencyUnavailableError(dependency="database") from e
    except exc.DBAPIError as e:
        if e.connection_invalidated:
            raise DependencyUnavailableError(dependency="database") from e
        raise


#: What an update of a request may change (its id and creation time never do; the version is
#: bumped by the update itself).
_REQUEST_CHANGES = REQUESTS.dumper(exclude=("id", "created_at", "version"))
_KEY_CHANGES = KEYS.dumper(exclude=("request_id",))


def _decode_compartments(text: str) -> list[str]:
    return [c for c in text.split(",") if c]


class _Labels:
    """Rebuilds labels from their stored form with the configured scheme.

    Labels are immutable and few distinct ones exist, so each stored form is parsed once.
    """

    def __init__(self, scheme: LabelScheme) -> None:
        self.scheme = scheme
        self._cache: dict[tuple[str, str], Label] = {}

    def load(self, level: str, compartments: str) -> Label:
        key = (level, compartments)
        label = self._cache.get(key)
        if label is None:
            label = self.scheme.label(level, _decode_compartments(compartments))
            if len(self._cache) < 4096:  # bounded: the label lattice is small in practice
                self._cache[key] = label
        return label


#: A reader holding at most this many compartments is matched against the list of every subset
#: of them (at most 2**6 = 64 values); one holding more, by :func:`compartments_within`.
SUBSET_LIST_LIMIT = 6


def compartment_subsets(allowed: Collection[str]) -> list[str]:
    """Every subset of ``allowed``, encoded as stored (:func:`audit.store.encode_compartments`:
    sorted, comma-delimited), smallest first."""
    names = sorted(allowed)
    return [
        encode_compartments(chosen)
        for size in range(len(names) + 1)
        for chosen in itertools.combinations(names, size)
    ]


def _visible(
    level_col: sa.ColumnElement[Any], comp_col: sa.ColumnElement[Any], v: Visibility
) -> sa.ColumnElement[bool]:
    """Labels ``v`` dominates: a level it lists and compartments it holds.

    Up to :data:`SUBSET_LIST_LIMIT` compartments the stored set must be one of the encoded
    subsets of the reader's: a plain ``IN`` that PostgreSQL's planner estimates from the
    column's statistics (it guesses 0.5 % for :func:`compartments_within`'s expression, and
    then sorts a bitmap scan rather than walking a page's index in order). Stored sets are
    written only by :func:`encode_compartments`, so the two forms select the same rows.
    """
    within: sa.ColumnElement[bool]
    if len(v.compartments) <= SUBSET_LIST_LIMIT:
        within = comp_col.in_(compartment_subsets(v.compartments))
    else:
        within = compartments_within(comp_col, v.compartments)
    return sa.and_(level_col.in_(v.levels), within)


# Statements every request filing runs, built once (building one costs more than running it).
_INSERT_REQUEST = enclave_requests.insert()
_COMMITTED_USAGE = sa.select(
    *(
        sa.func.coalesce(sa.func.sum(c), 0)
        for c in (
            enclave_requests.c.vcpus,
            enclave_requests.c.memory_mib,
            enclave_requests.c.gpus,
            enclave_requests.c.disk_gib,
        )
    )
).where(
    enclave_requests.c.tenant == sa.bindparam("tenant"),
    enclave_requests.c.state.in_(sorted(s.value for s in COMMITTED_STATES)),
)


class SqlTenantRepository:
    """Tenants in the ``tenants`` table."""

    def __init__(self, conn: sa.Connection, labels: _Labels) -> None:
        self._conn = conn
        self._labels = labels

    def get(self, name: str, *, for_update: bool = False) -> Tenant | None:
        stmt = TENANTS.select().where(tenants.c.name == name)
        if for_update:
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        return TENANTS.load(r, self._labels) if r else None

    def list(self) -> list[Tenant]:
        rows = self._conn.execute(TENANTS.select().order_by(tenants.c.name))
        return TENANTS.load_all(rows, self._labels)

    def add(self, tenant: Tenant) -> None:
        self._conn.execute(
            tenants.insert().values(**TENANTS.values(tenant), created_at=datetime.now(UTC))
        )


class SqlImageRepository:
    """The image catalog in the ``images`` table."""

    def __init__(self, conn: sa.Connection, labels: _Labels) -> None:
        self._conn = conn
        self._labels = labels

    def get(self, name: str) -> Image | None:
        r = self._conn.execute(IMAGES.select().where(images.c.name == name)).first()
        return IMAGES.load(r, self._labels) if r else None

    def list(self) -> list[Image]:
        rows = self._conn.execute(IMAGES.select().order_by(images.c.name))
        return IMAGES.load_all(rows, self._labels)

    def add(self, image: Image) -> None:
        self._conn.execute(
            images.insert().values(**IMAGES.values(image), created_at=datetime.now(UTC))
        )


def encode_cursor(created_at: datetime, ident: uuid.UUID) -> str:
    """An opaque keyset cursor for the row after which the next page starts."""
    raw = json.dumps([created_at.isoformat(), str(ident)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """:raises InvalidInputError: if the cursor was not made by :func:`encode_cursor`."""
    invalid = InvalidInputError(reason="cursor is not valid; use the one a page returned")
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        stamp, text_id = json.loads(raw)
        created_at = datetime.fromisoformat(stamp)
        ident = uuid.UUID(text_id)
    except (binascii.Error, ValueError, TypeError) as e:
        raise invalid from e
    # encode_cursor writes aware times; a naive one was not made there, and cannot be compared
    # with the stored (aware) timestamps.
    if created_at.tzinfo is None:
        raise invalid
    try:
        return created_at.astimezone(UTC), ident
    except OverflowError as e:  # e.g. 0001-01-01T00:00+01:00 is before year 1 in UTC
        raise invalid from e


def request_page(
    stmt: sa.Select[Any], visibility: Visibility, query: RequestFilter
) -> sa.Select[Any]:
    """``stmt`` (a select from ``enclave_requests``) narrowed to the rows ``visibility`` lets
    the caller list and ``query`` asks for, newest first, after the keyset cursor, and one row
    more than a page (which says whether another page follows). The one statement shape both
    the repository and the read model list requests with, so they see exactly the same rows.

    :raises InvalidInputError: if the cursor was not made by :func:`encode_cursor`.
    """
    t = enclave_requests
    stmt = stmt.where(_visible(t.c.label_level, t.c.label_compartments, visibility))
    if visibility.tenants is not None:
        stmt = stmt.where(t.c.tenant.in_(sorted(visibility.tenants)))
    if query.state is not None:
        stmt = stmt.where(t.c.state == query.state.value)
    if query.tenant is not None:
        stmt = stmt.where(t.c.tenant == query.tenant)
    if query.cursor is not None:
        stamp, ident = decode_cursor(query.cursor)
        # (created_at, id) < (stamp, ident), spelled so that both databases seek the index to
        # the cursor (created_at <= stamp bounds the range) instead of walking past every
        # newer row: a deep page costs what the first one does.
        stmt = stmt.where(t.c.created_at <= stamp, sa.or_(t.c.created_at < stamp, t.c.id < ident))
    return stmt.order_by(t.c.created_at.desc(), t.c.id.desc()).limit(query.limit + 1)


class SqlRequestRepository:
    """Requests in ``enclave_requests`` and their decisions in ``approvals``."""

    def __init__(self, conn: sa.Connection, labels: _Labels) -> None:
        self._conn = conn
        self._labels = labels
        # Approvals already stored per loaded request, so update() inserts only new ones.
        self._stored_approvals: dict[uuid.UUID, int] = {}

    def _request(self, r: Any, decisions: list[Approval]) -> EnclaveRequest:
        request = REQUESTS.load(r, self._labels, approvals=decisions)
        self._stored_approvals[request.id] = len(decisions)
        return request

    def _approvals_for(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, list[Approval]]:
        found: dict[uuid.UUID, list[Approval]] = {i: [] for i in ids}
        if not ids:
            return found
        stmt = (
            APPROVALS.select()
            .where(approvals.c.request_id.in_(ids))
            .order_by(approvals.c.decided_at, approvals.c.id)
        )
        for a in self._conn.execute(stmt):
            found[a.request_id].append(APPROVALS.load(a, self._labels))
        return found

    def add(self, request: EnclaveRequest) -> None:
        self._conn.execute(_INSERT_REQUEST, REQUESTS.values(request))
        self._insert_approvals(request, 0)
        self._stored_approvals[request.id] = len(request.approvals)

    def get(self, request_id: uuid.UUID, *, for_update: bool = False) -> EnclaveRequest | None:
        stmt = REQUESTS.select().where(enclave_requests.c.id == request_id)
        if for_update:
            # PostgreSQL locks the row; SQLite ignores it (BEGIN IMMEDIATE already serialises
            # writers there) and the version check in update() catches the rest.
            stmt = stmt.with_for_update()
        r = self._conn.execute(stmt).first()
        # The approvals are read even when no row was found: a missing request and one the
        # caller may not see then cost the same statements, so timing does not tell them apart.
        decisions = self._approvals_for([request_id])[request_id]
        if r is None:
            return None
        return self._request(r, decisions)

    def update(self, request: EnclaveRequest) -> None:
        result = self._conn.execute(
            enclave_requests.update()
            .where(enclave_requests.c.id == request.id)
            .where(enclave_requests.c.version == request.version)
            .values(**_REQUEST_CHANGES(request), version=request.version + 1)
        )
        if result.rowcount != 1:
            raise ConcurrentUpdateError(kind="request", ident=str(request.id))
        request.version += 1
        self._insert_approvals(request, self._stored_approvals.get(request.id, 0))
        self._stored_approvals[request.id] = len(request.approvals)

    def _insert_approvals(self, request: EnclaveRequest, already: int) -> None:
        new = request.approvals[already:]
        if new:
            self._conn.execute(
                approvals.insert(),
                [
                    {"id": uuid.uuid4(), "request_id": request.id, **APPROVALS.values(a)}
                    for a in new
                ],
            )

    def list(self, visibility: Visibility, query: RequestFilter) -> Page[EnclaveRequest]:
        rows = list(self._conn.execute(request_page(REQUESTS.select(), visibility, query)))
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        decisions = self._approvals_for([r.id for r in rows])
        items = [self._request(r, decisions[r.id]) for r in rows]
        last = rows[-1] if more else None
        return Page(items, encode_cursor(last.created_at, last.id) if last else None)

    def committed_usage(self, tenant: str) -> Resources:
        r = self._conn.execute(_COMMITTED_USAGE, {"tenant": tenant}).one()
        return Resources(int(r[0]), int(r[1]), int(r[2]), int(r[3]))


class SqlKeyRepository:
    """Key references in ``enclave_keys``."""

    def __init__(self, conn: sa.Connection, labels: _Labels) -> None:
        self._conn = conn
        self._labels = labels  # keys carry no label; one signature for every repository

    def add(self, keys: EnclaveKeys) -> None:
        self._conn.execute(enclave_keys.insert().values(**KEYS.values(keys)))

    def get(self, request_id: uuid.UUID) -> EnclaveKeys | None:
        r = self._conn.execute(KEYS.select().where(enclave_keys.c.request_id == request_id)).first()
        return None if r is None else KEYS.load(r, self._labels)

    def update(self, keys: EnclaveKeys) -> None:
        self._conn.execute(
            enclave_keys.update()
            .where(enclave_keys.c.request_id == keys.request_id)
            .values(**_KEY_CHANGES(keys))
        )


class SqlUnitOfWork:
    """One database transaction: repositories and the audit store share its connection."""

    tenants: SqlTenantRepository
    images: SqlImageRepository
    requests: SqlRequestRepository
    keys: SqlKeyRepository
    sites: SqlSiteRepository
    hosts: SqlHostRepository
    gpus: SqlGpuRepository
    enclaves: SqlEnclaveRepository
    actions: SqlActionRepository
    jobs: SqlJobRepository
    datasets: SqlDatasetRepository
    blobs: SqlBlobRepository
    audit: SqlAuditStore

    def __init__(
        self,
        engine: sa.Engine,
        scheme: LabelScheme,
        *,
        readonly: bool = False,
        labels: _Labels | None = None,
    ) -> None:
        self._engine = engine
        self._labels = labels or _Labels(scheme)
        self._readonly = readonly
        self._conn: sa.Connection | None = None
        self._tx: sa.RootTransaction | None = None

    def __enter__(self) -> Self:
        with translate_errors():
            self._conn = self._engine.connect()
            if self._readonly:
                self._conn = self._conn.execution_options(sovereign_readonly=True)
            self._tx = self._conn.begin()
        self.tenants = SqlTenantRepository(self._conn, self._labels)
        self.images = SqlImageRepository(self._conn, self._labels)
        self.requests = SqlRequestRepository(self._conn, self._labels)
        self.keys = SqlKeyRepository(self._conn, self._labels)
        self.sites = SqlSiteRepository(self._conn, self._labels)
        self.hosts = SqlHostRepository(self._conn, self._labels)
        self.gpus = SqlGpuRepository(self._conn, self._labels)
        self.enclaves = SqlEnclaveRepository(self._conn, self._labels)
        self.actions = SqlActionRepository(self._conn, self._labels)
        self.jobs = SqlJobRepository(self._conn, self._labels)
        self.datasets = SqlDatasetRepository(self._conn, self._labels)
        self.blobs = SqlBlobRepository(self._conn, self._labels)
        self.audit = SqlAuditStore(self._conn)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if self._tx is not None and self._tx.is_active:
                self._tx.rollback()
        finally:
            if self._conn is not None:
                self._conn.close()
            self._conn = self._tx = None
        if isinstance(exc_value, exc.DBAPIError):
            with translate_errors():
                raise exc_value

    def commit(self) -> None:
        """Commit durably. :raises DependencyUnavailableError: if the database is lost."""
        assert self._tx is not None, "commit() outside of 'with'"
        with translate_errors():
            self._tx.commit()


class SqlUnitOfWorkFactory:
    """Makes :class:`SqlUnitOfWork` instances over one engine."""

    def __init__(self, engine: sa.Engine, scheme: LabelScheme) -> None:
        self.engine = engine
        self.scheme = scheme
        self._labels = _Labels(scheme)

    def __call__(self, *, readonly: bool = False) -> SqlUnitOfWork:
        return SqlUnitOfWork(self.engine, self.scheme, readonly=readonly, labels=self._labels)


class DatabaseProbe:
    """Readiness of the database: a trivial query."""

    name = "database"

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine

    def ping(self) -> None:
        """:raises DependencyUnavailableError: if the query fails."""
        with translate_errors(), self._engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
