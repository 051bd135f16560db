"""Request pages read an index in page order on SQLite and PostgreSQL: no scan, no sort.

The statements are the read model's own (:meth:`SqlReadModel.request_sql`, built by the
repositories' :func:`request_page`), explained over enough rows, with statistics gathered, that a
planner would rather sort or scan if no index served the page. Every shape a caller can ask for
is covered: an analyst's tenant, a tenant filter, a state filter, an officer's view across
tenants, and each of them on a deep page (with the keyset cursor).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sovereign.adapters.database import create_engine, encode_cursor
from sovereign.adapters.readmodel import SqlReadModel
from sovereign.adapters.tables import approvals, enclave_requests, images, tenants
from sovereign.domain.policy import Visibility
from sovereign.domain.requests import RequestState
from sovereign.services.ports import RequestFilter

LEVELS = ("UNCLASSIFIED", "RESTRICTED", "CONFIDENTIAL", "SECRET")
TENANTS = ("alpha", "beta", "defence", "research")
STATES = tuple(RequestState)
#: Rows per database: enough that a scan or a sort costs a planner more than the index.
ROWS = {"sqlite": 20_000, "postgresql": 40_000}
BASE = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    engine = create_engine(database_url)
    seed(engine, ROWS[engine.dialect.name])
    yield engine
    engine.dispose()


def seed(engine: sa.Engine, count: int) -> None:
    """Tenants, an image and ``count`` requests spread over tenants, states and labels, with a
    few approvals; then the planner's statistics."""
    now = BASE
    with engine.begin() as conn:
        conn.execute(
            tenants.insert(),
            [
                {
                    "id": uuid.uuid4(),
                    "name": name,
                    "kind": "classified",
                    "max_level": "SECRET",
                    "max_compartments": ",NATO,",
                    "quota_vcpus": 1,
                    "quota_memory_mib": 1,
                    "quota_gpus": 1,
                    "quota_disk_gib": 1,
                    "created_at": now,
                    "residency": json.dumps(["ES"]),
                }
                for name in TENANTS
            ],
        )
        conn.execute(
            images.insert(),
            {
                "id": uuid.uuid4(),
                "name": "img",
                "format": "qcow2",
                "checksum": "sha256:0",
                "max_level": "SECRET",
                "max_compartments": ",NATO,",
                "created_at": now,
            },
        )
        rows = []
        for i in range(count):
            at = BASE + timedelta(seconds=i)
            rows.append(
                {
                    "id": uuid.uuid4(),
                    "tenant": TENANTS[i % len(TENANTS)],
                    "requester": "sub",
                    "requester_name": "analyst",
                    "label_level": LEVELS[i % len(LEVELS)],
                    "label_compartments": ",NATO," if i % 2 else ",",
                    "vcpus": 1,
                    "memory_mib": 1,
                    "gpus": 0,
                    "gpu_model": None,
                    "disk_gib": 1,
                    "image": "img",
                    "purpose": "p",
                    "lease_hours": 1,
                    "state": STATES[(i // 7) % len(STATES)].value,
                    "reason": "",
                    "created_at": at,
                    "updated_at": at,
                    "version": 1,
                }
            )
        conn.execute(enclave_requests.insert(), rows)
        conn.execute(
            approvals.insert(),
            [
                {
                    "id": uuid.uuid4(),
                    "request_id": r["id"],
                    "officer": "o",
                    "officer_name": "o",
                    "decision": "approve",
                    "reason": "",
                    "decided_at": r["created_at"],
                }
                for r in rows[::50]
            ],
        )
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
        conn.commit()


ANALYST = Visibility(LEVELS, frozenset({"NATO"}), frozenset({"defence"}))
OFFICER = Visibility(LEVELS, frozenset({"NATO", "EU"}), None)


def deep(count: int) -> str:
    """A cursor a quarter of the way down every tenant's and every state's pages (where many
    rows still follow: a planner that knew only a few did could rightly sort them)."""
    return encode_cursor(BASE + timedelta(seconds=count * 3 // 4, microseconds=1), uuid.UUID(int=0))


SHAPES = {
    "analyst": (ANALYST, RequestFilter()),
    "analyst-tenant-filter": (ANALYST, RequestFilter(tenant="defence")),
    "analyst-state": (ANALYST, RequestFilter(state=RequestState.PENDING)),
    "officer": (OFFICER, RequestFilter()),
    "officer-tenant-filter": (OFFICER, RequestFilter(tenant="research")),
    "officer-state": (OFFICER, RequestFilter(state=RequestState.PENDING)),
    "officer-tenant-and-state": (
        OFFICER,
        RequestFilter(tenant="beta", state=RequestState.APPROVED),
    ),
}


def explain(engine: sa.Engine, sql: str, params: Any) -> Any:
    """The plan of ``sql``: SQLite's EXPLAIN QUERY PLAN rows, PostgreSQL's JSON plan."""
    with engine.connect() as conn:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            if engine.dialect.name == "sqlite":
                cursor.execute(f"EXPLAIN QUERY PLAN {sql}", params)
                return [row[3] for row in cursor.fetchall()]
            cursor.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
            return cursor.fetchone()[0][0]["Plan"]
        finally:
            cursor.close()


def _nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from _nodes(child)


def assert_ordered_by_index(engine: sa.Engine, plan: Any) -> None:
    """The page reads enclave_requests through an index, in page order."""
    if engine.dialect.name == "sqlite":
        lines = "\n".join(plan)
        assert "TEMP B-TREE" not in lines, lines
        mine = [line for line in plan if "enclave_requests" in line]
        assert mine, lines
        assert all("USING INDEX" in line or "USING COVERING INDEX" in line for line in mine), lines
        return
    nodes = list(_nodes(plan))
    text = json.dumps(plan, indent=1)
    assert not any(n["Node Type"] in {"Sort", "Incremental Sort"} for n in nodes), text
    scans = [n for n in nodes if n.get("Relation Name") == "enclave_requests"]
    assert scans, text
    assert all(n["Node Type"] in {"Index Scan", "Index Only Scan"} for n in scans), text


@pytest.mark.parametrize("deep_page", [False, True], ids=["first-page", "deep-page"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_request_pages_walk_an_index_in_order(engine: sa.Engine, shape: str, deep_page: bool):
    visibility, query = SHAPES[shape]
    if deep_page:
        cursor = deep(ROWS[engine.dialect.name])
        query = RequestFilter(state=query.state, tenant=query.tenant, cursor=cursor)
    sql, params = SqlReadModel(engine).request_sql(visibility, query)
    if "OFFSET" in sql:  # SQLAlchemy writes SQLite's LIMIT as LIMIT ? OFFSET ?, always 0
        assert sql.rstrip().endswith("OFFSET ?") and isinstance(params, tuple) and params[-1] == 0
    assert_ordered_by_index(engine, explain(engine, sql, params))


def test_no_listing_pages_by_offset():
    """Keyset pagination throughout: no statement of the control plane or the audit library
    skips rows with OFFSET (SQLAlchemy's ``.offset()``)."""
    root = Path(__file__).resolve().parents[2]
    sources = [*(root / "sovereign").rglob("*.py"), *(root / "audit").rglob("*.py")]
    found = [
        f"{path.relative_to(root)}:{n}"
        for path in sources
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.search(r"\.offset\(|\bOFFSET\s+[?:%]", line)
    ]
    assert not found, found
