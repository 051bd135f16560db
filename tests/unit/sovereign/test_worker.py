"""The pass loop: work runs back to back, but never without a pause for long."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from sovereign.errors import DependencyUnavailableError
from sovereign.services.reconciler import PassReport
from sovereign.worker import MAX_BUSY_STREAK, PassLoop


class AlwaysBusy:
    """A reconciler that claims to have done work in every pass (a bug, or a flood of work)."""

    def watch_hosts(self, on_event: Any) -> None:
        return None

    def run_once(self) -> PassReport:
        return PassReport(steps=1)


def test_passes_that_keep_reporting_work_still_wait_now_and_then():
    loop = PassLoop(AlwaysBusy(), interval_s=0)  # type: ignore[arg-type]
    loop.run(max_passes=MAX_BUSY_STREAK * 3)
    assert loop.passes == MAX_BUSY_STREAK * 3
    assert loop.waits == 3


class AlwaysFailing(AlwaysBusy):
    """A reconciler whose every pass fails the same way (the database is down)."""

    def run_once(self) -> PassReport:
        raise DependencyUnavailableError("database is unavailable", dependency="database")


def test_a_pass_failing_the_same_way_is_logged_once_a_minute(caplog: pytest.LogCaptureFixture):
    loop = PassLoop(AlwaysFailing(), interval_s=0)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="sovereign.worker"):
        loop.run(max_passes=100)
    assert loop.waits == 100, "a failed pass did no work: it waits"
    failed = [r.getMessage() for r in caplog.records if "pass failed" in r.getMessage()]
    assert failed == ["reconciler pass failed: database is unavailable"]
