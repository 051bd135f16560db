"""The in-memory rate-limit storage: the library's counting, without a thread per hit."""

from __future__ import annotations

import threading
import time

import pytest
from limits import RateLimitItemPerSecond
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import FixedWindowRateLimiter

from sovereign.channels import limits as channel_limits
from sovereign.channels.limits import SWEPT_MEMORY, SweptMemoryStorage


def test_the_scheme_names_the_swept_storage():
    assert isinstance(storage_from_string(f"{SWEPT_MEMORY}://"), SweptMemoryStorage)


@pytest.mark.parametrize(
    ("storage_class", "starts"), [(SweptMemoryStorage, False), (MemoryStorage, True)]
)
def test_hits_start_no_thread(
    monkeypatch: pytest.MonkeyPatch, storage_class: type[MemoryStorage], starts: bool
):
    storage = storage_class()
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(1_000_000)
    started: list[threading.Thread] = []
    real_start = threading.Thread.start

    def counting_start(thread: threading.Thread) -> None:
        started.append(thread)
        real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", counting_start)
    for i in range(20):
        assert limiter.hit(item, "subject", str(i % 3))
        time.sleep(0.02)  # longer than the library's 10 ms timer
    # The library's own storage (the reference) does start them: the check can fail.
    assert bool(started) is starts


def test_a_window_still_ends_and_counts_restart():
    storage = SweptMemoryStorage()
    limiter = FixedWindowRateLimiter(storage)
    item = RateLimitItemPerSecond(2)
    assert limiter.hit(item, "k")
    assert limiter.hit(item, "k")
    assert not limiter.hit(item, "k")
    time.sleep(1.05)
    assert limiter.hit(item, "k")


def test_abandoned_counters_are_swept_in_the_callers_thread(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(channel_limits, "SWEEP_S", 0.0)
    storage = SweptMemoryStorage()
    storage.incr("abandoned", expiry=0)
    time.sleep(0.01)
    storage.incr("other", expiry=60)  # the next hit sweeps; nobody reads "abandoned" again
    assert "abandoned" not in storage.storage
    assert storage.storage["other"] == 1
