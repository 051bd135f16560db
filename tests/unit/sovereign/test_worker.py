"""The background loops: passes run back to back but never without a pause for long; audit
sequencing runs through its own entry point, after every pass and once more at shutdown."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest

from sovereign.errors import DependencyUnavailableError
from sovereign.services.reconciler import PassReport
from sovereign.worker import MAX_BUSY_STREAK, PassLoop, SequencerThread, run_worker


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


class CountingSequencer:
    """An audit sequencer that counts its runs and says it sequenced two events each time."""

    def __init__(self) -> None:
        self.runs = 0

    def sequence(self) -> Any:
        self.runs += 1
        return SimpleNamespace(sequenced=2, size=2 * self.runs, checkpoint=None)


def test_the_sequencer_thread_runs_at_start_and_once_more_when_stopped():
    sequencer = CountingSequencer()
    thread = SequencerThread(sequencer, interval_s=3600)
    thread.start()
    # At start, before anything else is signed: the signing key is published at once.
    assert sequencer.runs == 1
    thread.stop()
    assert sequencer.runs == 2, "nothing queued is left unsequenced at shutdown"


class Services:
    """Just what ``run_worker`` reads of the assembled services."""

    def __init__(self, sequencer: CountingSequencer | None) -> None:
        self.sequencer = sequencer

    def reconciler(self, **_: Any) -> Any:
        raise AssertionError("--no-reconcile builds no reconciler")


def test_the_worker_sequences_after_every_pass_through_its_own_entry_point():
    sequencer = CountingSequencer()
    lines: list[str] = []
    run_worker(
        Services(sequencer),  # type: ignore[arg-type]
        0,
        reconcile=False,
        echo=lines.append,
        max_passes=3,
    )
    assert sequencer.runs == 3
    assert lines == [
        "worker : sequencing the audit log every 0 s",
        "sequenced 2; size 2",
        "sequenced 2; size 4",
        "sequenced 2; size 6",
    ]


def test_a_worker_without_an_audit_log_refuses_to_start():
    with pytest.raises(DependencyUnavailableError):
        run_worker(Services(None), 0, reconcile=False, max_passes=1)  # type: ignore[arg-type]
