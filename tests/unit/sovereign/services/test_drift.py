"""The drift ledger and the log limiter: each condition reported once, bounded when it flaps."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sovereign.services.drift import DriftLedger, LogLimiter


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 12, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


FOREIGN = {("vm-1", "unknown-domain"): "domain vm-1 has no record"}


def test_a_standing_condition_is_reported_once_and_its_clearing_once():
    ledger = DriftLedger(Clock())
    first = ledger.observe("h1", FOREIGN)
    assert [(c.subject, c.before, c.after) for c in first] == [
        ("vm-1", None, "domain vm-1 has no record")
    ]
    assert all(ledger.observe("h1", FOREIGN) == [] for _ in range(1000))
    cleared = ledger.observe("h1", {})
    assert [c.message for c in cleared] == ["cleared: domain vm-1 has no record"]
    assert ledger.observe("h1", {}) == []


def test_conditions_are_kept_per_host():
    ledger = DriftLedger(Clock())
    assert len(ledger.observe("h1", FOREIGN)) == 1
    assert len(ledger.observe("h2", FOREIGN)) == 1, "the same name on another host is another"
    assert ledger.observe("h2", {})[0].host == "h2"
    assert ledger.known("h1") == {("h1", "vm-1", "unknown-domain"): "domain vm-1 has no record"}


def test_a_changed_description_is_reported_with_the_old_one():
    ledger = DriftLedger(Clock())
    ledger.observe("h1", FOREIGN)
    [change] = ledger.observe("h1", {("vm-1", "unknown-domain"): "vm-1 stopped"})
    assert change.message == "vm-1 stopped (was: domain vm-1 has no record)"


def test_a_flapping_condition_is_bounded_per_interval():
    clock = Clock()
    ledger = DriftLedger(clock, timedelta(seconds=60))
    reported = 0
    for i in range(1000):
        reported += len(ledger.observe("h1", FOREIGN if i % 2 == 0 else {}))
    assert reported == 3
    clock.now += timedelta(seconds=61)
    [settled] = ledger.observe("h1", {})
    assert settled.cleared
    assert settled.skipped == 996


def test_forget_reports_everything_again():
    ledger = DriftLedger(Clock())
    ledger.observe("h1", FOREIGN)
    ledger.forget("h1")
    assert len(ledger.observe("h1", FOREIGN)) == 1


def test_log_limiter_holds_lines_back_within_the_interval():
    clock = Clock()
    limiter = LogLimiter(clock, timedelta(seconds=60))
    assert limiter.allow("k") == 0
    assert [limiter.allow("k") for _ in range(5)] == [None] * 5
    assert limiter.allow("other") == 0
    clock.now += timedelta(seconds=60)
    assert limiter.allow("k") == 5
