"""Authentication failures are audit events, a bounded number of them however many arrive."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import pytest

from audit import AuditEvent, Outcome
from sovereign.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from sovereign.services.authfailures import AUTH_FAILURE, AuthFailureAudit


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def store() -> MemoryStore:
    return MemoryStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def audit(store: MemoryStore, clock: Clock) -> AuthFailureAudit:
    return AuthFailureAudit(MemoryUnitOfWorkFactory(store), interval_s=60, clock=clock)


def written(store: MemoryStore) -> list[AuditEvent]:
    return [e.event for e in store.audit.events]


def forged(audit: AuthFailureAudit, source: str = "203.0.113.7", code: str = "invalid-token"):
    audit.failed(source, AUTH_FAILURE, "api", code, "token does not verify")


def test_a_flood_in_one_interval_is_two_events_whose_counts_add_up(
    audit: AuthFailureAudit, store: MemoryStore, clock: Clock
):
    for _ in range(1000):
        forged(audit)
        clock.now += timedelta(milliseconds=50)  # 1000 failures in 50 s
    assert len(written(store)) == 1  # the first one, at once
    first = written(store)[0]
    assert (first.action, first.outcome, first.actor) == (AUTH_FAILURE, Outcome.DENY, "anonymous")
    assert (first.source, first.details["count"], first.reason) == (
        "203.0.113.7",
        1,
        "token does not verify",
    )
    clock.now += timedelta(seconds=11)
    audit.flush()
    events = written(store)
    assert len(events) == 2
    summary = events[1]
    assert summary.details["aggregated"] is True
    assert summary.details["reasons"] == {"token does not verify": 999}
    assert sum(e.details["count"] for e in events) == 1000


def test_a_flood_over_many_intervals_is_at_most_two_events_per_interval(
    audit: AuthFailureAudit, store: MemoryStore, clock: Clock
):
    n = 0
    for _ in range(10 * 60):  # ten minutes, one forged token a second
        forged(audit)
        n += 1
        clock.now += timedelta(seconds=1)
    audit.flush(everything=True)
    events = written(store)
    assert len(events) <= 2 * 10
    assert sum(e.details["count"] for e in events) == n


def test_sources_and_kinds_are_counted_apart(
    audit: AuthFailureAudit, store: MemoryStore, clock: Clock
):
    for _ in range(5):
        forged(audit, "198.51.100.1")
        forged(audit, "198.51.100.2")
        forged(audit, "198.51.100.1", code="missing-token")
    audit.flush(everything=True)
    counts = {(e.source, e.details["error"], e.details["count"]) for e in written(store)}
    assert counts == {
        (source, code, count)
        for source, code in (
            ("198.51.100.1", "invalid-token"),
            ("198.51.100.2", "invalid-token"),
            ("198.51.100.1", "missing-token"),
        )
        for count in (1, 4)
    }


def test_a_new_failure_writes_the_summaries_that_are_due(
    audit: AuthFailureAudit, store: MemoryStore, clock: Clock
):
    forged(audit, "198.51.100.1")
    forged(audit, "198.51.100.1")
    clock.now += timedelta(seconds=61)
    forged(audit, "198.51.100.9")  # someone else: the old summary is written with it
    assert [(e.source, e.details["count"]) for e in written(store)] == [
        ("198.51.100.1", 1),
        ("198.51.100.1", 1),
        ("198.51.100.9", 1),
    ]


def test_tracked_sources_are_bounded(store: MemoryStore, clock: Clock):
    audit = AuthFailureAudit(MemoryUnitOfWorkFactory(store), clock=clock, max_keys=3)
    for i in range(10):
        forged(audit, f"198.51.100.{i}")
        forged(audit, f"198.51.100.{i}")
    assert len(audit._windows) <= 3
    audit.flush(everything=True)
    assert sum(e.details["count"] for e in written(store)) == 20


def test_visitor_text_is_cut_and_cleaned(audit: AuthFailureAudit, store: MemoryStore):
    audit.failed("x" * 500, AUTH_FAILURE, "api", "invalid-token", "a\nb\x00" + "c" * 500)
    (event,) = written(store)
    assert len(event.source) <= 64 and len(event.reason) <= 200
    assert not any(ord(ch) < 0x20 for ch in event.reason)


def test_an_unwritable_log_loses_no_count_and_raises_nothing(
    audit: AuthFailureAudit, store: MemoryStore, clock: Clock, caplog: pytest.LogCaptureFixture
):
    store.audit.fail = True
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            forged(audit)
    assert "AUDIT EVENTS LOST" in caplog.text
    assert written(store) == []
    store.audit.fail = False
    clock.now += timedelta(seconds=61)
    audit.flush()
    assert sum(e.details["count"] for e in written(store)) == 3


def test_visitor_chosen_reasons_use_bounded_memory(
    audit: AuthFailureAudit, store: MemoryStore, clock: Clock
):
    for i in range(1000):
        audit.failed("203.0.113.7", AUTH_FAILURE, "console", "csrf", f"POST /x/{i}")
    (window,) = audit._windows.values()
    assert len(window.reasons) <= 51
    audit.flush(everything=True)
    summary = written(store)[-1]
    assert len(summary.details["reasons"]) <= 6
    assert sum(summary.details["reasons"].values()) == 999
