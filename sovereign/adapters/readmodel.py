"""The read model: listings straight from rows to the API's output documents (SQLAlchemy Core).

Owns :class:`SqlReadModel`, the SQL implementation of
:class:`~sovereign.services.ports.ReadModel`: one statement selects exactly the columns a page
shows (one more its requests' approvals, and for enclaves one more their placements), and each
row becomes a JSON-ready dict in one pass, with no domain object and no pydantic model per
item; the API encodes the page with orjson. Writes, and every read that decides something, keep
the domain path (:mod:`sovereign.adapters.database`).

Visibility is not decided here, only applied: requests are narrowed by
:func:`sovereign.adapters.database.request_page`, the very function the request repository lists
with, and events by the same conditions as :meth:`audit.sql.SqlAuditStore.query` (its shape:
``seq < cursor ... ORDER BY seq DESC LIMIT n``), so the read model sees the rows the domain path
sees. The documents must equal what the API's ``*Out.of`` builders make of the same rows: a test
holds them to that and to the OpenAPI document. Must not decide policy (approvals needed) or
write anything.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from audit import AuditQuery
from audit.sql import query_statement
from sovereign.adapters.database import (
    compartment_subsets,
    decode_cursor,
    encode_cursor,
    request_page,
    translate_errors,
)
from sovereign.adapters.tables import approvals, enclave_requests, enclaves, hosts, tenants
from sovereign.domain.policy import Visibility
from sovereign.domain.requests import RequestState
from sovereign.errors import DependencyUnavailableError
from sovereign.services.ports import Document, Page, RequestFilter

#: SQLAlchemy's SQLite text form of a UTC timestamp: ``YYYY-MM-DD HH:MM:SS.ffffff``.
_SQLITE_STAMP_LENGTH = 26
#: Distinct stored labels whose output form is kept (the lattice is small in practice).
_LABEL_CACHE = 4096


def _raw(column: sa.ColumnElement[Any]) -> sa.ColumnElement[Any]:
    """``column`` as the driver returns it, without SQLAlchemy's per-row conversion (parsing
    SQLite's timestamp text into a datetime is most of a page's cost); see :func:`_stamp`."""
    return sa.type_coerce(column, sa.String)


def _stamp(value: Any) -> Any:
    """A stored timestamp as the API writes it: RFC 3339 text in UTC, or an aware datetime
    (which the encoder writes the same way: ``Z``, microseconds only when there are some).

    SQLite hands back SQLAlchemy's text form (UTC, no offset), PostgreSQL an aware datetime.
    """
    if isinstance(value, str):
        if len(value) == _SQLITE_STAMP_LENGTH and value[10] == " " and value[19] == ".":
            fraction = value[20:]
            return f"{value[:10]}T{value[11:19]}{'' if fraction == '000000' else '.' + fraction}Z"
        value = datetime.fromisoformat(value)  # any other ISO form SQLite may hold
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)  # stored as UTC (UtcDateTime)
    return value


def _instant(value: Any) -> datetime:
    """A stored timestamp as an aware datetime (for the keyset cursor)."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    assert isinstance(value, datetime), "a timestamp column"
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _LabelDocs:
    """Stored labels (level, encoded compartments) as ``LabelOut`` documents, each parsed once.

    The documents are shared between items: the encoder only reads them.
    """

    def __init__(self) -> None:
        self._cache: dict[tuple[str, str], Document] = {}

    def __call__(self, level: str, compartments: str) -> Document:
        key = (level, compartments)
        doc = self._cache.get(key)
        if doc is None:
            doc = {"level": level, "compartments": sorted(c for c in compartments.split(",") if c)}
            if len(self._cache) < _LABEL_CACHE:
                self._cache[key] = doc
        return doc


_r = enclave_requests
#: What a request page shows, in the order the rows are read (see :meth:`SqlReadModel.requests`).
_REQUEST_COLUMNS = (
    _r.c.id,
    _r.c.tenant,
    _r.c.requester,
    _r.c.requester_name,
    _r.c.label_level,
    _r.c.label_compartments,
    _r.c.vcpus,
    _r.c.memory_mib,
    _r.c.gpus,
    _r.c.disk_gib,
    _r.c.gpu_model,
    _r.c.image,
    _r.c.purpose,
    _r.c.lease_hours,
    _r.c.state,
    _r.c.reason,
    _raw(_r.c.created_at),
    _raw(_r.c.updated_at),
    # The effective residency: the request's narrowing, else its tenant's (both JSON lists).
    sa.func.coalesce(_r.c.residency, tenants.c.residency),
    _r.c.country,
)
_REQUEST_FROM = _r.join(tenants, tenants.c.name == _r.c.tenant)
_a = approvals
_APPROVAL_COLUMNS = (
    _a.c.request_id,
    _a.c.officer,
    _a.c.officer_name,
    _a.c.decision,
    _a.c.reason,
    _raw(_a.c.decided_at),
)


#: Parameters a statement may hold that no call fills in (compartments_within's separators,
#: SQLite's OFFSET 0); any other value must be a call's, or the read model refuses to prepare it.
_CONSTANTS = frozenset({",", 0})
#: Shapes of statements kept prepared (a shape: which filters, how many levels, compartments,
#: tenants or ids; the lattice and the tenants are few, so this is rarely reached).
_PREPARED_CACHE = 1024


@dataclass(frozen=True)
class _Prepared:
    """A statement compiled once for its shape: the driver's SQL text and, per parameter (in
    the driver's order), a constant or the name of the value each call supplies."""

    sql: str
    #: (parameter name, slot or None, constant, bind processor or None)
    params: tuple[tuple[str, str | None, Any, Callable[[Any], Any] | None], ...]
    positional: bool

    def values(self, given: dict[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        """The driver's parameters for one call's ``given`` values."""
        out = []
        for _, slot, constant, process in self.params:
            value = constant if slot is None else given[slot]
            out.append(value if process is None else process(value))
        if self.positional:
            return tuple(out)
        return {name: value for (name, *_), value in zip(self.params, out, strict=True)}


def _prepare(stmt: sa.Select[Any], slots: dict[Any, str], dialect: sa.Dialect) -> _Prepared:
    """Compile ``stmt``, built with a unique stand-in value for each value a call supplies
    (``slots``: stand-in -> slot name), into SQL text and a parameter recipe.

    :raises ValueError: if a parameter is neither a stand-in nor a known constant (the
        statement changed shape: better to fail than to bind a stale value).
    """
    compiled = stmt.compile(dialect=dialect, compile_kwargs={"render_postcompile": True})
    names = compiled.positiontup if compiled.positiontup is not None else list(compiled.params)
    params: list[tuple[str, str | None, Any, Callable[[Any], Any] | None]] = []
    for name in names:
        value = compiled.params[name]
        bind = compiled.binds.get(name)
        process = None if bind is None else bind.type.dialect_impl(dialect).bind_processor(dialect)
        if isinstance(value, Hashable) and value in slots:
            params.append((name, slots[value], None, process))
        elif isinstance(value, Hashable) and value in _CONSTANTS:
            params.append((name, None, value, process))
        else:
            raise ValueError(f"parameter {name} = {value!r} is neither a call's nor a constant")
    return _Prepared(compiled.string, tuple(params), compiled.positiontup is not None)


#: Stand-ins for the values of a call (unique: no real value equals one).
_CURSOR_AT = datetime(1970, 1, 1, 0, 0, 0, 424242, tzinfo=UTC)
_CURSOR_ID = uuid.UUID(int=0x5E_4D_1E)
_LIMIT = 987_654
_SINCE = datetime(1970, 1, 2, 0, 0, 0, 424242, tzinfo=UTC)
_UNTIL = datetime(1970, 1, 3, 0, 0, 0, 424242, tzinfo=UTC)
_BEFORE = 987_654_321
_AFTER = 987_654_322


@functools.cache
def _derived(compartments: tuple[str, ...]) -> frozenset[str]:
    """The parameters a label filter derives from ``compartments`` (either form of
    :func:`~sovereign.adapters.database._visible`), but the constant empty set."""
    found = {f",{c}," for c in compartments} | set(compartment_subsets(compartments))
    return frozenset(found - _CONSTANTS)


@functools.cache
def _stand_in(kind: str, i: int = 0) -> str:
    """The stand-in for the ``i``-th value of ``kind`` (a NUL never occurs in a real one)."""
    return f"\x00{kind}{i:04d}"


@functools.cache
def _stand_ins(kind: str, count: int) -> tuple[str, ...]:
    return tuple(_stand_in(kind, i) for i in range(count))


#: Requests that never had an enclave: the enclave listing leaves them out.
_NEVER_PLACED = frozenset(
    {RequestState.PENDING.value, RequestState.REJECTED.value, RequestState.CANCELLED.value}
)
_e = enclaves
_PLACEMENT_COLUMNS = (
    _e.c.id,
    _e.c.host,
    _e.c.gpus,
    _e.c.domain_name,
    _raw(_e.c.lease_expires_at),
    _e.c.step,
    _e.c.error,
    _e.c.country,
    hosts.c.site,
    hosts.c.country,
    hosts.c.name,
)


class SqlReadModel:
    """Request and enclave pages and audit events read into documents, each page in one
    read-only transaction.

    Each statement is built by the same code as the domain path's, once per shape, with
    stand-ins for the values, compiled for the engine's dialect, and then run straight on the
    driver's cursor: no statement building, compilation, type conversion or row objects per
    call (those cost more than the query itself on a 50-row page).
    """

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._dialect = engine.dialect
        self._labels = _LabelDocs()
        self._prepared: dict[tuple[Any, ...], _Prepared] = {}
        dbapi = engine.dialect.loaded_dbapi
        self._lost: tuple[type[BaseException], ...] = (dbapi.OperationalError, dbapi.InterfaceError)

    def _statement(
        self, key: tuple[Any, ...], build: Callable[[], tuple[sa.Select[Any], dict[Any, str]]]
    ) -> _Prepared:
        found = self._prepared.get(key)
        if found is None:
            found = _prepare(*build(), self._dialect)
            if len(self._prepared) < _PREPARED_CACHE:
                self._prepared[key] = found
        return found

    def _run(self, *steps: Callable[[Any], Any]) -> list[Any]:
        """Run each step with the driver's cursor, in one read-only transaction.

        :raises DependencyUnavailableError: the database is lost.
        """
        try:
            with translate_errors(), self._engine.connect() as conn:
                ro = conn.execution_options(sovereign_readonly=True)
                with ro.begin():
                    cursor = ro.connection.driver_connection.cursor()  # type: ignore[union-attr]
                    try:
                        return [step(cursor) for step in steps]
                    finally:
                        cursor.close()
        except self._lost as e:
            raise DependencyUnavailableError(dependency="database") from e

    # -- requests --------------------------------------------------------------------------

    def _request_statement(self, visibility: Visibility, query: RequestFilter) -> _Prepared:
        tenants = None if visibility.tenants is None else len(visibility.tenants)
        # The compartments are part of the shape (a clearance's; few distinct ones exist): the
        # strings derived from them are bound as themselves.
        compartments = tuple(sorted(visibility.compartments))
        key = (
            "requests",
            len(visibility.levels),
            compartments,
            tenants,
            query.state is not None,
            query.tenant is not None,
            query.cursor is not None,
        )

        def build() -> tuple[sa.Select[Any], dict[Any, str]]:
            levels = tuple(_stand_in("level", i) for i in range(len(visibility.levels)))
            names = [_stand_in("tenant", i) for i in range(tenants or 0)]
            slots: dict[Any, str] = {s: s for s in (*levels, *names, *_derived(compartments))}
            slots.update({_CURSOR_AT: "cursor_at", _CURSOR_ID: "cursor_id", _LIMIT + 1: "limit"})
            slots[_stand_in("tenant-filter")] = "tenant"
            # A state is an enum: the only other string parameters are stand-ins.
            slots[RequestState.PENDING.value] = "state"
            shape = RequestFilter(
                state=RequestState.PENDING if query.state is not None else None,
                tenant=_stand_in("tenant-filter") if query.tenant is not None else None,
                limit=_LIMIT,
                cursor=encode_cursor(_CURSOR_AT, _CURSOR_ID) if query.cursor is not None else None,
            )
            stand_in = Visibility(
                levels, frozenset(compartments), None if tenants is None else frozenset(names)
            )
            columns = sa.select(*_REQUEST_COLUMNS).select_from(_REQUEST_FROM)
            return request_page(columns, stand_in, shape), slots

        return self._statement(key, build)

    def request_sql(
        self, visibility: Visibility, query: RequestFilter
    ) -> tuple[str, tuple[Any, ...] | dict[str, Any]]:
        """The SQL text and driver parameters a page of :meth:`requests` runs (to explain it, or
        to time it raw).

        :raises InvalidInputError: a cursor that no page returned.
        """
        prepared = self._request_statement(visibility, query)
        given: dict[str, Any] = {"limit": query.limit + 1}
        given.update({_stand_in("level", i): v for i, v in enumerate(visibility.levels)})
        given.update({d: d for d in _derived(tuple(sorted(visibility.compartments)))})
        if visibility.tenants is not None:
            given.update(
                {_stand_in("tenant", i): v for i, v in enumerate(sorted(visibility.tenants))}
            )
        if query.state is not None:
            given["state"] = query.state.value
        if query.tenant is not None:
            given["tenant"] = query.tenant
        if query.cursor is not None:
            given["cursor_at"], given["cursor_id"] = decode_cursor(query.cursor)
        return prepared.sql, prepared.values(given)

    def requests(self, visibility: Visibility, query: RequestFilter) -> Page[Document]:
        """A page of ``RequestOut`` documents (less ``approvals_needed``), newest first."""
        return self._requests(visibility, query)[0]

    def enclaves(self, visibility: Visibility, query: RequestFilter) -> Page[Document]:
        """The page of requests :meth:`requests` reads, less those that never got past
        approval, each as an ``EnclaveOut`` document around its ``RequestOut`` document (less
        ``approvals_needed``); the cursor is the request page's."""
        page, placed = self._requests(visibility, query, enclaves=True)
        items = []
        for doc in page.items:
            if doc["state"] in _NEVER_PLACED:
                continue
            where = placed.get(doc["id"])
            items.append(
                {
                    "id": doc["id"],
                    "state": doc["state"],
                    "request": doc,
                    "host": where["host"] if where else None,
                    "site": where["site"] if where else None,
                    "country": where["country"] if where else None,
                    "gpus": where["gpus"] if where else [],
                    "domain_name": where["domain_name"] if where else None,
                    "lease_expires_at": where["lease_expires_at"] if where else None,
                    "step": where["step"] if where else "",
                    "error": where["error"] if where else "",
                }
            )
        return Page(items, page.next_cursor)

    def _placements(self, cursor: Any, ids: list[Any]) -> dict[str, Document]:
        """Where each of ``ids`` (as the driver returned them) runs, by id text: its enclave's
        row and its host's site and country, as ``EnclaveOut`` reads them."""
        stand_ins = _stand_ins("id", len(ids))

        def build() -> tuple[sa.Select[Any], dict[Any, str]]:
            column = _raw(_e.c.id) if self._dialect.name == "sqlite" else _e.c.id
            stmt = (
                sa.select(*_PLACEMENT_COLUMNS)
                .select_from(_e.outerjoin(hosts, hosts.c.name == _e.c.host))
                .where(column.in_(stand_ins))
            )
            return stmt, {s: s for s in stand_ins}

        prepared = self._statement(("placements", len(ids)), build)
        cursor.execute(prepared.sql, prepared.values(dict(zip(stand_ins, ids, strict=True))))
        found: dict[str, Document] = {}
        for (
            ident,
            host,
            gpus,
            domain,
            lease,
            step,
            error,
            placed,
            site,
            host_country,
            known,
        ) in cursor.fetchall():
            found[_uuid_text(ident)] = {
                "host": host,
                "site": site,
                # Where it was placed (its host's country then), else its host's, as the
                # domain path reads it (an old enclave has "").
                "country": placed or (host_country if known is not None else None),
                "gpus": [g for g in gpus.split(",") if g],
                "domain_name": domain,
                "lease_expires_at": _stamp(lease),
                "step": step,
                "error": error,
            }
        return found

    def _requests(
        self, visibility: Visibility, query: RequestFilter, *, enclaves: bool = False
    ) -> tuple[Page[Document], dict[str, Document]]:
        sql, params = self.request_sql(visibility, query)

        def page(cursor: Any) -> tuple[list[Any], list[Any], dict[str, Document]]:
            cursor.execute(sql, params)
            rows = cursor.fetchmany(query.limit + 1)
            ids = [row[0] for row in rows[: query.limit]]
            if not ids:
                return rows, [], {}
            placed = self._placements(cursor, ids) if enclaves else {}
            return rows, self._approvals(cursor, ids), placed

        ((rows, decisions, placements),) = self._run(page)
        more = len(rows) > query.limit
        rows = rows[: query.limit]
        decided: dict[Any, list[Document]] = {}
        for request_id, officer, officer_name, decision, reason, decided_at in decisions:
            decided.setdefault(request_id, []).append(
                {
                    "officer": officer,
                    "officer_name": officer_name,
                    "decision": decision,
                    "reason": reason,
                    "decided_at": _stamp(decided_at),
                }
            )
        labels = self._labels
        items: list[Document] = []
        for (
            ident,
            tenant,
            requester,
            requester_name,
            level,
            compartments,
            vcpus,
            memory_mib,
            gpus,
            disk_gib,
            gpu_model,
            image,
            purpose,
            lease_hours,
            state,
            reason,
            created_at,
            updated_at,
            residency,
            country,
        ) in rows:
            approvals_of = decided.get(ident, [])
            approvers = {d["officer"] for d in approvals_of if d["decision"] == "approve"}
            items.append(
                {
                    "id": _uuid_text(ident),
                    "tenant": tenant,
                    "requester": requester,
                    "requester_name": requester_name,
                    "label": labels(level, compartments),
                    "resources": {
                        "vcpus": vcpus,
                        "memory_mib": memory_mib,
                        "gpus": gpus,
                        "disk_gib": disk_gib,
                    },
                    "gpu_model": gpu_model,
                    "image": image,
                    "purpose": purpose,
                    "lease_hours": lease_hours,
                    "state": state,
                    "reason": reason,
                    "approvals": approvals_of,
                    "approvals_received": len(approvers),
                    "created_at": _stamp(created_at),
                    "updated_at": _stamp(updated_at),
                    "residency": orjson.loads(residency),
                    "country": country,
                }
            )
        cursor = None
        if more and rows:
            last = rows[-1]
            cursor = encode_cursor(_instant(last[16]), _uuid(last[0]))
        return Page(items, cursor), placements

    def _approvals(self, cursor: Any, ids: list[Any]) -> list[Any]:
        """The rows of the decisions on ``ids`` (as the driver returned them), oldest first."""
        stand_ins = _stand_ins("id", len(ids))

        def build() -> tuple[sa.Select[Any], dict[Any, str]]:
            # The ids are bound as the driver returned them: SQLite's stored text, compared as
            # text; PostgreSQL's UUIDs, compared as uuid.
            column = _raw(_a.c.request_id) if self._dialect.name == "sqlite" else _a.c.request_id
            stmt = (
                sa.select(*_APPROVAL_COLUMNS)
                .where(column.in_(stand_ins))
                .order_by(_a.c.decided_at, _a.c.id)
            )
            return stmt, {s: s for s in stand_ins}

        prepared = self._statement(("approvals", len(ids)), build)
        cursor.execute(prepared.sql, prepared.values(dict(zip(stand_ins, ids, strict=True))))
        return list(cursor.fetchall())

    # -- audit events ----------------------------------------------------------------------

    def events(self, query: AuditQuery) -> list[Document]:
        """``AuditEventOut`` documents of the sequenced events matching ``query``."""
        sql, params = self.event_sql(query)

        def read(cursor: Any) -> list[Any]:
            cursor.execute(sql, params)
            return list(cursor.fetchall())

        (rows,) = self._run(read)
        return [_event(seq, entry, leaf_hash) for seq, entry, leaf_hash in rows]

    def event_sql(self, query: AuditQuery) -> tuple[str, tuple[Any, ...] | dict[str, Any]]:
        """The SQL text and driver parameters :meth:`events` runs for ``query``."""
        levels = None if query.levels is None else len(query.levels)
        compartments = None if query.compartments is None else len(query.compartments)
        key = (
            "events",
            query.actor is not None,
            query.action is not None,
            query.target is not None,
            query.since is not None,
            query.until is not None,
            query.before_seq is not None,
            query.after_seq is not None,
            query.ascending,
            levels,
            compartments,
        )

        def build() -> tuple[sa.Select[Any], dict[Any, str]]:
            level_names = [_stand_in("level", i) for i in range(levels or 0)]
            comp_names = [_stand_in("comp", i) for i in range(compartments or 0)]
            shape = AuditQuery(
                actor=_stand_in("actor") if query.actor is not None else None,
                action=_stand_in("action") if query.action is not None else None,
                target=_stand_in("target") if query.target is not None else None,
                since=_SINCE if query.since is not None else None,
                until=_UNTIL if query.until is not None else None,
                levels=level_names if levels is not None else None,
                compartments=frozenset(comp_names) if compartments is not None else None,
                before_seq=_BEFORE if query.before_seq is not None else None,
                after_seq=_AFTER if query.after_seq is not None else None,
                ascending=query.ascending,
                limit=_LIMIT,
            )
            slots: dict[Any, str] = {s: s for s in level_names}
            slots.update({f",{c},": c for c in comp_names})
            slots.update(
                {
                    _stand_in("actor"): "actor",
                    _stand_in("action"): "action",
                    _stand_in("target"): "target",
                    _SINCE: "since",
                    _UNTIL: "until",
                    _BEFORE: "before",
                    _AFTER: "after",
                    _LIMIT: "limit",
                }
            )
            return query_statement(shape), slots

        prepared = self._statement(key, build)
        given: dict[str, Any] = {
            "actor": query.actor,
            "action": query.action,
            "target": query.target,
            "since": query.since,
            "until": query.until,
            "before": query.before_seq,
            "after": query.after_seq,
            "limit": query.limit,
        }
        given.update({_stand_in("level", i): v for i, v in enumerate(query.levels or ())})
        given.update(
            {_stand_in("comp", i): f",{c}," for i, c in enumerate(sorted(query.compartments or ()))}
        )
        return prepared.sql, prepared.values(given)


def _uuid_text(value: Any) -> str:
    """A stored id as the API writes it: SQLite holds 32 hex digits, PostgreSQL a UUID."""
    if isinstance(value, str) and len(value) == 32:
        return f"{value[:8]}-{value[8:12]}-{value[12:16]}-{value[16:20]}-{value[20:]}"
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(str(value)))


def _uuid(value: Any) -> uuid.UUID:
    """A stored id as a UUID."""
    return value if isinstance(value, uuid.UUID) else uuid.UUID(str(value))


def _event(seq: int, entry: bytes, leaf_hash: bytes) -> Document:
    """One sequenced event as an ``AuditEventOut`` document, from its canonical bytes (which
    hold every field but the two the log adds, in the output's own form)."""
    try:
        e = orjson.loads(entry)
    except orjson.JSONDecodeError:
        e = json.loads(entry)  # e.g. an integer beyond 64 bits: valid JSON all the same
    label = e["label"]
    time = e["time"]
    if not time.endswith("Z"):
        # Canonical bytes write UTC as "Z"; anything else is read as the domain path reads it.
        stamp = datetime.fromisoformat(time)
        time = stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)
    return {
        "seq": seq,
        "leaf_hash": bytes(leaf_hash).hex(),
        "id": e["id"],
        "time": time,
        "actor": e["actor"],
        "action": e["action"],
        "target": e["target"],
        "outcome": e["outcome"],
        "reason": e["reason"],
        "label": {"level": label["level"], "compartments": label["compartments"]}
        if label
        else None,
        "request_id": e["request_id"],
        "source": e["source"],
        "details": e["details"],
    }
