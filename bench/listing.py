"""Latency of listing pages at scale: requests and the audit log, first pages and deep ones.

What is measured
    ``GET /api/v1/requests`` over 100,000 seeded requests (two tenants, every state, labels from
    UNCLASSIFIED to SECRET/NATO), as an analyst (their tenant) and as a security officer (every
    tenant), without a filter, by state, by tenant and by both; and ``GET /api/v1/audit/events``
    over a 1,000,000-event log, as an auditor, without a filter and with each one: actor,
    action, target, since and until. Each filter is walked with the keyset cursor from its first
    page on for several pages, and again from a cursor deep in the set (nine tenths of the way
    down the requests, one tenth of the way up the log) for a few more, five times over
    (``--rounds``): a keyset page must cost the same wherever it starts. Every page holds 50
    items (or the end of the set).

    The raw baseline, in the same run: the read model's own page statements (the SQL text and
    parameters it runs) executed straight on :mod:`sqlite3`, without HTTP, Flask, auth or JSON.
    Goal: p99 <= 20 ms per page through the API.

How
    SQLite, migrated to head, the demo catalog bootstrapped; requests and events are written by
    ``executemany`` straight into the tables, each column computed as the repositories and the
    sequencer would (events from ``auditbench_events.EventSource``: canonical bytes, leaf hash,
    filter columns; no Merkle nodes or checkpoints, which listing never reads), stamped 1.5 ms
    apart from just after the bootstrap's own events on, as a log's history runs; the block
    summaries are written as the appender writes them. The app is
    called in-process through Flask's test client (gunicorn would add the same per-call cost
    to every page, and driving it would make the run much longer), each call with a real RS256
    bearer token from the development identity provider. Latency is wall time per call, one
    call at a time.

Output
    Progress on stderr; the last line on stdout is one JSON object: per filter
    ``requests_<filter>_p50_ms``/``_p99_ms`` and ``events_<filter>_p50_ms``/``_p99_ms``, all
    request pages together as ``requests_page_p50_ms``/``_p99_ms``, the raw baseline as
    ``raw_page_p50_ms``/``_p99_ms`` (request pages) and ``raw_events_page_p99_ms``, the goal
    and whether it was met. The exit status is non-zero if a call failed.

Run from the repository root: ``.venv/bin/python bench/listing.py [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import benchkit  # first: it stops bench/audit.py shadowing the audit package
import sqlalchemy as sa
from apibench_seed import IMAGE, prepare_database, token_subject
from auditbench_events import BASE_TIME, EventSource, wire

from audit.event import canonical_json
from audit.merkle import leaf_hash
from audit.sql import audit_log, summarise_time_blocks
from audit.store import AuditQuery, encode_compartments
from devstack.idp import DEMO_PASSWORD, password_token, start_dev_idp
from devstack.stack import free_port
from sovereign import create_app
from sovereign.adapters.database import create_engine, encode_cursor
from sovereign.adapters.readmodel import SqlReadModel
from sovereign.domain.requests import RequestState
from sovereign.services.ports import RequestFilter

PAGE = 50
GOAL_P99_MS = 20.0
#: Pages walked from the first one, and from the deep cursor, per filter.
PAGES = 12
DEEP_PAGES = 6
RAW_REPEATS = 20
ANALYST = "analyst-defence"
OFFICER = "officer-1"
AUDITOR = "auditor"
BASE = datetime(2026, 1, 1, tzinfo=UTC)
#: (tenant, level, compartments) of the seeded requests, cycled; the analyst sees defence's.
LABELS = [
    ("defence", "SECRET", ("NATO",)),
    ("defence", "CONFIDENTIAL", ()),
    ("research", "UNCLASSIFIED", ()),
    ("defence", "SECRET", ("CRYPTO", "NATO")),
    ("defence", "RESTRICTED", ()),
]
STATES = [s.value for s in RequestState]

log = benchkit.progress("bench/listing")


def stamp(at: datetime) -> str:
    """A UTC timestamp as SQLAlchemy stores it in SQLite."""
    return f"{at:%Y-%m-%d %H:%M:%S}.{at.microsecond:06d}"


def seed_requests(path: Path, count: int, subject: str) -> list[tuple[datetime, uuid.UUID]]:
    """``count`` requests, newest last; returns each one's (created_at, id) in that order."""
    keys: list[tuple[datetime, uuid.UUID]] = []
    rows = []
    for i in range(count):
        tenant, level, compartments = LABELS[i % len(LABELS)]
        ident = uuid.UUID(int=(i * 0x9E3779B97F4A7C15) % 2**128, version=4)
        at = BASE + timedelta(seconds=i, microseconds=(i * 7919) % 1_000_000)
        keys.append((at, ident))
        rows.append(
            (
                ident.hex,
                tenant,
                subject,
                ANALYST,
                level,
                encode_compartments(compartments),
                4,
                8192,
                i % 3,
                "H100-SXM5-80GB" if i % 3 else None,
                10,
                IMAGE if tenant == "defence" else "ubuntu-24.04-research",
                f"seeded request {i}",
                8,
                STATES[(i // 3) % len(STATES)],
                "",
                stamp(at),
                stamp(at),
                1,
                '["ES"]' if i % 4 == 1 else None,
                "ES" if i % 2 else None,
            )
        )
    with sqlite3.connect(path) as conn:
        conn.executemany(
            "INSERT INTO enclave_requests (id, tenant, requester, requester_name, label_level,"
            " label_compartments, vcpus, memory_mib, gpus, gpu_model, disk_gib, image, purpose,"
            " lease_hours, state, reason, created_at, updated_at, version, residency, country)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
    return keys


def seed_events(path: Path, count: int) -> tuple[datetime, list[dict[str, Any]]]:
    """``count`` sequenced events after those already logged (on SQLite the bootstrap's own
    events are in the log already), stamped from a second after the last of those on; returns
    the first event's time and their filter columns in order."""
    source = EventSource(seed=7)
    columns: list[dict[str, Any]] = []
    batch: list[tuple[Any, ...]] = []
    with sqlite3.connect(path) as conn:
        (first, latest) = conn.execute(
            "SELECT COALESCE(MAX(seq) + 1, 0), MAX(time) FROM audit_log"
        ).fetchone()
        start = BASE_TIME if latest is None else parse_stamp(latest) + timedelta(seconds=1)
        shift = start - BASE_TIME
        for seq in range(first, first + count):
            fields = source.fields()
            fields["time"] += shift
            entry = canonical_json(wire(fields))
            label = fields["label"]
            at: datetime = fields["time"]
            columns.append(
                {"actor": fields["actor"], "action": fields["action"], "target": fields["target"]}
            )
            batch.append(
                (
                    seq,
                    entry,
                    leaf_hash(entry),
                    stamp(at),
                    fields["actor"],
                    fields["action"],
                    fields["target"],
                    fields["outcome"].value,
                    label["level"] if label else None,
                    encode_compartments(label["compartments"]) if label else None,
                )
            )
            if len(batch) == 50_000:
                _insert_events(conn, batch)
                batch.clear()
                log(f"  {seq + 1 - first} events")
        _insert_events(conn, batch)
    return start, columns


def parse_stamp(text: str) -> datetime:
    """A time as :func:`stamp` writes it (SQLAlchemy's text in SQLite), back as UTC."""
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def summarise(url: str) -> None:
    """Summarise the seeded blocks as the appender does when it completes one."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            size = conn.execute(sa.select(sa.func.count()).select_from(audit_log)).scalar_one()
            summarise_time_blocks(conn, 0, size)
    finally:
        engine.dispose()


def _insert_events(conn: sqlite3.Connection, batch: list[tuple[Any, ...]]) -> None:
    conn.executemany(
        "INSERT INTO audit_log (seq, entry, leaf_hash, time, actor, action, target, outcome,"
        " label_level, label_compartments) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        batch,
    )


def walk(
    call: Callable[[str], dict[str, Any]], path: str, params: dict[str, str], pages: int
) -> list[float]:
    """Latencies (ms) of ``pages`` pages of ``path``, following ``next_cursor``."""
    latencies = []
    query = dict(params)
    for _ in range(pages):
        began = time.perf_counter()
        body = call(f"{path}?{urlencode(query)}")
        latencies.append((time.perf_counter() - began) * 1000.0)
        cursor = body["next_cursor"]
        if cursor is None:
            break
        query["cursor"] = cursor
    return latencies


def summary(values: list[float]) -> tuple[float, float]:
    """(p50, p99) of ``values``, rounded."""
    ordered = sorted(values)
    return (
        round(benchkit.percentile(ordered, 0.50), 2),
        round(benchkit.percentile(ordered, 0.99), 2),
    )


def parse_args() -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000, help="requests seeded")
    parser.add_argument("--events", type=int, default=1_000_000, help="events seeded")
    parser.add_argument("--rounds", type=int, default=5, help="walks of every filter")
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    args = parser.parse_args()
    if args.quick:
        args.requests, args.events, args.rounds = 5_000, 50_000, 1
    return args


def main() -> int:  # noqa: PLR0915 - one straight script: seed, walk, report
    """Seed, walk every filter through the API and raw, print the figures."""
    args = parse_args()
    for key in [k for k in os.environ if k.startswith("SOVEREIGN_")]:
        del os.environ[key]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-listing-")))
        os.environ["SOVEREIGN_INSTANCE_PATH"] = str(workdir)
        idp, _ = start_dev_idp(environment="testing", host="127.0.0.1", port=free_port())
        stack.callback(idp.stop)
        subject = token_subject(password_token(idp.url, ANALYST, DEMO_PASSWORD))
        db = workdir / "sovereign.db"
        url = f"sqlite:///{db}"
        prepare_database(url, idp.url, subject, 0)
        began = time.monotonic()
        keys = seed_requests(db, args.requests, subject)
        log(f"{args.requests} requests seeded in {time.monotonic() - began:.1f} s")
        began = time.monotonic()
        events_start, columns = seed_events(db, args.events)
        summarise(url)
        log(f"{args.events} events seeded in {time.monotonic() - began:.1f} s")
        with sqlite3.connect(db) as conn:
            conn.execute("ANALYZE")

        app = create_app(
            {"ENV": "testing", "DATABASE_URL": url, "IDP_URL": idp.url, "IDP_DEV": True}
        )
        services = app.extensions["sovereign"]
        stack.callback(services.close)
        client = app.test_client()
        tokens = {u: password_token(idp.url, u, DEMO_PASSWORD) for u in (ANALYST, OFFICER, AUDITOR)}
        failures: list[str] = []

        def caller(user: str) -> Callable[[str], dict[str, Any]]:
            headers = {"Authorization": f"Bearer {tokens[user]}"}

            def call(path: str) -> dict[str, Any]:
                r = client.get(path, headers=headers)
                if r.status_code != 200:
                    failures.append(f"{path}: {r.status_code} {r.get_data(as_text=True)[:200]}")
                    return {"items": [], "next_cursor": None}
                body: dict[str, Any] = r.get_json()
                return body

            return call

        # Deep cursors: nine tenths of the way down the requests, a tenth up the log.
        deep_at, deep_id = keys[len(keys) // 10]
        deep_request = encode_cursor(deep_at, deep_id)
        deep_event = str(len(columns) // 10)
        middle = events_start + timedelta(microseconds=1500 * (len(columns) // 2))
        figures: dict[str, Any] = {
            "bench": "listing",
            "requests_seeded": args.requests,
            "events_seeded": args.events,
            "page": PAGE,
            "client": "flask test client, in-process",
        }
        request_filters: dict[str, tuple[str, dict[str, str]]] = {
            "analyst": (ANALYST, {}),
            "analyst_state": (ANALYST, {"state": "pending"}),
            "officer": (OFFICER, {}),
            "officer_state": (OFFICER, {"state": "approved"}),
            "officer_tenant": (OFFICER, {"tenant": "research"}),
            "officer_tenant_state": (OFFICER, {"tenant": "defence", "state": "running"}),
        }
        every_request_page: list[float] = []
        for name, (user, params) in request_filters.items():
            call = caller(user)
            base = {"limit": str(PAGE), **params}
            walk(call, "/api/v1/requests", base, 2)  # warm: statements prepared, caches filled
            latencies = []
            for _ in range(args.rounds):
                latencies += walk(call, "/api/v1/requests", base, PAGES)
                deep = {**base, "cursor": deep_request}
                latencies += walk(call, "/api/v1/requests", deep, DEEP_PAGES)
            every_request_page += latencies
            p50, p99 = summary(latencies)
            figures[f"requests_{name}_p50_ms"], figures[f"requests_{name}_p99_ms"] = p50, p99
            log(
                f"requests {name:<22} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                f"  ({len(latencies)} pages)"
            )
        figures["requests_page_p50_ms"], figures["requests_page_p99_ms"] = summary(
            every_request_page
        )

        target = next(c["target"] for c in columns if c["target"].startswith("vault:"))
        event_filters: dict[str, dict[str, str]] = {
            "all": {},
            "actor": {"actor": columns[0]["actor"]},
            "action": {"action": "request:approve"},
            "target": {"target": target},
            "since": {"since": middle.isoformat().replace("+00:00", "Z")},
            "until": {"until": middle.isoformat().replace("+00:00", "Z")},
        }
        call = caller(AUDITOR)
        every_event_page: list[float] = []
        for name, params in event_filters.items():
            base = {"limit": str(PAGE), **params}
            walk(call, "/api/v1/audit/events", base, 2)
            latencies = []
            for _ in range(args.rounds):
                latencies += walk(call, "/api/v1/audit/events", base, PAGES)
                deep = {**base, "cursor": deep_event}
                latencies += walk(call, "/api/v1/audit/events", deep, DEEP_PAGES)
            every_event_page += latencies
            p50, p99 = summary(latencies)
            figures[f"events_{name}_p50_ms"], figures[f"events_{name}_p99_ms"] = p50, p99
            log(
                f"events   {name:<22} p50 {p50:6.2f} ms  p99 {p99:6.2f} ms"
                f"  ({len(latencies)} pages)"
            )
        figures["events_page_p50_ms"], figures["events_page_p99_ms"] = summary(every_event_page)

        # The raw baseline: the same page statements on sqlite3, no HTTP, Flask, auth or JSON.
        engine = create_engine(url)
        stack.callback(engine.dispose)
        reads = SqlReadModel(engine)
        policy = services.policy
        identity = services.identity
        raw = sqlite3.connect(db)
        stack.callback(raw.close)

        def timed(sql: str, params: Any) -> float:
            began = time.perf_counter()
            raw.execute(sql, params).fetchall()
            return (time.perf_counter() - began) * 1000.0

        raw_pages: list[float] = []
        for user, params in request_filters.values():
            visibility = policy.request_visibility(identity.authenticate(tokens[user]))
            state = RequestState(params["state"]) if "state" in params else None
            for cursor in (None, deep_request):
                query = RequestFilter(
                    state=state, tenant=params.get("tenant"), limit=PAGE, cursor=cursor
                )
                sql, values = reads.request_sql(visibility, query)
                raw_pages += [timed(sql, values) for _ in range(RAW_REPEATS)]
        figures["raw_page_p50_ms"], figures["raw_page_p99_ms"] = summary(raw_pages)
        audit_view = policy.audit_visibility(identity.authenticate(tokens[AUDITOR]))
        raw_events: list[float] = []
        for params in event_filters.values():
            for before in (None, int(deep_event)):
                query = AuditQuery(
                    actor=params.get("actor"),
                    action=params.get("action"),
                    target=params.get("target"),
                    since=datetime.fromisoformat(params["since"]) if "since" in params else None,
                    until=datetime.fromisoformat(params["until"]) if "until" in params else None,
                    levels=audit_view.levels,
                    compartments=audit_view.compartments,
                    before_seq=before,
                    limit=PAGE + 1,
                )
                sql, values = reads.event_sql(query)
                raw_events += [timed(sql, values) for _ in range(RAW_REPEATS)]
        figures["raw_events_page_p50_ms"], figures["raw_events_page_p99_ms"] = summary(raw_events)
        log(
            f"raw      requests p50 {figures['raw_page_p50_ms']:.2f} ms  p99 "
            f"{figures['raw_page_p99_ms']:.2f} ms; events p50 "
            f"{figures['raw_events_page_p50_ms']:.2f} ms  p99 "
            f"{figures['raw_events_page_p99_ms']:.2f} ms"
        )

    worst = max(figures["requests_page_p99_ms"], figures["events_page_p99_ms"])
    figures["goal_p99_ms"] = GOAL_P99_MS
    figures["goal_met"] = worst <= GOAL_P99_MS and not failures
    figures["errors"] = len(failures)
    print(json.dumps(figures), flush=True)
    for failure in failures[:3]:
        log(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    benchkit.run(main, log)
