"""The read model: listings straight from rows to the API's output documents (SQLAlchemy Core).

Owns :class:`SqlReadModel`, the SQL implementation of :class:`~sovereign.services.ports.ReadModel`:
one statement selects exactly the columns a page shows (a second one its requests' approvals),
and each row becomes a JSON-ready dict in one pass, with no domain object and no pydantic model
per item; the API encodes the page with orjson. Writes, and every read that decides something,
keep the domain path (:mod:`sovereign.adapters.database`).

Visibility is not decided here, only applied: requests are narrowed by
:func:`sovereign.adapters.database.request_page`, the very function the request repository lists
with, and events by the same conditions as :meth:`audit.sql.SqlAuditStore.query` (its shape:
``seq < cursor ... ORDER BY seq DESC LIMIT n``), so the read model sees the rows the domain path
sees. The documents must equal what the API's ``*Out.of`` builders make of the same rows: a test
holds them to that and to the OpenAPI document. Must not decide policy (approvals needed) or
write anything.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson
import sqlalchemy as sa

from audit import AuditQuery
from audit.sql import audit_log, compartments_within
from sovereign.adapters.database import encode_cursor, request_page, translate_errors
from sovereign.adapters.tables import approvals, enclave_requests, tenants
from sovereign.domain.policy import Visibility
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


class SqlReadModel:
    """Request pages and audit events read into documents, each in a read-only transaction."""

    def __init__(self, engine: sa.Engine) -> None:
        self._engine = engine
        self._labels = _LabelDocs()

    def _rows(self, *statements: sa.Select[Any]) -> list[list[Any]]:
        """The rows of each statement, read in one read-only transaction.

        :raises DependencyUnavailableError: the database is lost.
        """
        with translate_errors(), self._engine.connect() as conn:
            ro = conn.execution_options(sovereign_readonly=True)
            with ro.begin():
                return [list(ro.execute(s)) for s in statements]

    def requests(self, visibility: Visibility, query: RequestFilter) -> Page[Document]:
        """A page of ``RequestOut`` documents (less ``approvals_needed``), newest first."""
        columns = sa.select(*_REQUEST_COLUMNS).select_from(_REQUEST_FROM)
        stmt = request_page(columns, visibility, query)
        with translate_errors(), self._engine.connect() as conn:
            ro = conn.execution_options(sovereign_readonly=True)
            with ro.begin():
                rows = list(ro.execute(stmt))
                more = len(rows) > query.limit
                rows = rows[: query.limit]
                decided = self._approvals(ro, [row[0] for row in rows])
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
            decisions = decided.get(ident, ())
            approvers = {o for o, d in decisions if d["decision"] == "approve"}
            items.append(
                {
                    "id": str(ident),
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
                    "approvals": [d for _, d in decisions],
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
            cursor = encode_cursor(_instant(last[16]), last[0])
        return Page(items, cursor)

    @staticmethod
    def _approvals(
        conn: sa.Connection, ids: list[uuid.UUID]
    ) -> dict[uuid.UUID, list[tuple[str, Document]]]:
        """The decisions on each of ``ids``, oldest first: (officer, ``ApprovalOut`` document)."""
        found: dict[uuid.UUID, list[tuple[str, Document]]] = {}
        if not ids:
            return found
        stmt = (
            sa.select(*_APPROVAL_COLUMNS)
            .where(_a.c.request_id.in_(ids))
            .order_by(_a.c.decided_at, _a.c.id)
        )
        for request_id, officer, officer_name, decision, reason, decided_at in conn.execute(stmt):
            found.setdefault(request_id, []).append(
                (
                    officer,
                    {
                        "officer": officer,
                        "officer_name": officer_name,
                        "decision": decision,
                        "reason": reason,
                        "decided_at": _stamp(decided_at),
                    },
                )
            )
        return found

    def events(self, query: AuditQuery) -> list[Document]:
        """``AuditEventOut`` documents of the sequenced events matching ``query``."""
        t = audit_log
        order = t.c.seq.asc() if query.ascending else t.c.seq.desc()
        stmt = sa.select(t.c.seq, t.c.entry, t.c.leaf_hash).order_by(order).limit(query.limit)
        # The conditions of SqlAuditStore.query, in its shape (the log's indexes serve both).
        if query.actor is not None:
            stmt = stmt.where(t.c.actor == query.actor)
        if query.action is not None:
            stmt = stmt.where(t.c.action == query.action)
        if query.target is not None:
            stmt = stmt.where(t.c.target == query.target)
        if query.since is not None:
            stmt = stmt.where(t.c.time >= query.since)
        if query.until is not None:
            stmt = stmt.where(t.c.time < query.until)
        if query.before_seq is not None:
            stmt = stmt.where(t.c.seq < query.before_seq)
        if query.after_seq is not None:
            stmt = stmt.where(t.c.seq > query.after_seq)
        if query.levels is not None:
            stmt = stmt.where(sa.or_(t.c.label_level.is_(None), t.c.label_level.in_(query.levels)))
        if query.compartments is not None:
            stmt = stmt.where(
                sa.or_(
                    t.c.label_compartments.is_(None),
                    compartments_within(t.c.label_compartments, query.compartments),
                )
            )
        (rows,) = self._rows(stmt)
        return [_event(seq, entry, leaf_hash) for seq, entry, leaf_hash in rows]


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
