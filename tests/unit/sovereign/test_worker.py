"""The pass loop: work runs back to back, but never without a pause for long."""

from __future__ import annotations

from typing import Any

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
