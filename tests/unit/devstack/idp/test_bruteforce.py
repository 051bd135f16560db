"""Keycloak's brute-force arithmetic, on a clock the tests move."""

from __future__ import annotations

from devstack.idp.bruteforce import BruteForceDetector, BruteForceSettings


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def detector(**kw: int) -> tuple[BruteForceDetector, Clock]:
    clock = Clock()
    return BruteForceDetector(BruteForceSettings(**kw), clock), clock


def fail(d: BruteForceDetector, clock: Clock, times: int, every: float = 5.0) -> None:
    for _ in range(times):
        d.failure("u")
        clock.now += every


def test_keycloak_defaults():
    s = BruteForceSettings()
    assert (s.failure_factor, s.wait_increment_s, s.max_failure_wait_s) == (30, 60, 900)
    assert (s.quick_login_check_ms, s.minimum_quick_login_wait_s) == (1000, 60)
    assert s.max_delta_time_s == 43200


def test_the_wait_is_an_increment_per_failure_factor_capped_at_the_maximum():
    d, clock = detector(failure_factor=3, wait_increment_s=60, max_failure_wait_s=150)
    fail(d, clock, 2)
    assert not d.locked("u")
    d.failure("u")  # third
    clock.now += 59
    assert d.locked("u")
    clock.now += 2
    assert not d.locked("u")
    fail(d, clock, 3, every=0)  # sixth: 120 s
    clock.now += 119
    assert d.locked("u")
    clock.now += 2
    fail(d, clock, 3, every=0)  # ninth: 180 s, capped at 150
    clock.now += 149
    assert d.locked("u")
    clock.now += 2
    assert not d.locked("u")


def test_quick_failures_wait_the_minimum():
    d, clock = detector(failure_factor=30, quick_login_check_ms=1000, minimum_quick_login_wait_s=60)
    d.failure("u")
    clock.now += 0.5
    d.failure("u")
    assert d.locked("u")
    clock.now += 61
    assert not d.locked("u")


def test_a_long_pause_or_a_success_starts_the_count_again():
    d, clock = detector(failure_factor=3, max_delta_time_s=3600)
    fail(d, clock, 2)
    clock.now += 3601
    fail(d, clock, 2)
    assert not d.locked("u")
    d.success("u")
    fail(d, clock, 2)
    assert not d.locked("u")
    d.failure("u")
    assert d.locked("u")
    assert not d.locked("someone-else")
