"""The background work of the control plane: reconciler passes and audit sequencing.

Owns :class:`ReconcilerThread` (the in-process loop of the embedded default) and
:func:`run_worker` (``sovereign worker``, production: one or more processes beside the API).
A pass that changed something is followed at once by the next; an idle one waits the interval.
Crash testing: outside production, ``SOVEREIGN_CRASH_AFTER=provision:define`` makes the worker
kill itself with SIGKILL right after recording that step, as a power cut would.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from sovereign.errors import SovereignError
from sovereign.services.reconciler import PassReport, Reconciler
from sovereign.text import for_log

log = logging.getLogger(__name__)


def crash_hook(environment: str) -> Callable[[str], None] | None:
    """The SIGKILL-after-step hook from ``SOVEREIGN_CRASH_AFTER`` (never in production)."""
    step = os.environ.get("SOVEREIGN_CRASH_AFTER")
    if not step or environment == "production":
        return None

    def after(done: str) -> None:
        if done == step:
            log.warning("SOVEREIGN_CRASH_AFTER=%s: killing this worker with SIGKILL", step)
            os.kill(os.getpid(), signal.SIGKILL)

    return after


def describe(report: PassReport) -> str:
    """One line for a pass that did something."""
    parts = [
        f"{name} {value}"
        for name, value in (
            ("placed", report.placed),
            ("steps", report.steps),
            ("running", report.running),
            ("terminated", report.terminated),
            ("failed", report.failed),
            ("sanitized", report.sanitized),
        )
        if value
    ]
    parts += [f"drift: {d}" for d in report.drift]
    return "; ".join(parts)


class ReconcilerThread:
    """Runs reconciler passes in a daemon thread until stopped (the embedded default)."""

    def __init__(
        self,
        reconciler: Reconciler,
        interval_s: float,
        *,
        on_report: Callable[[PassReport], None] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self._interval = interval_s
        self._on_report = on_report
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)
        #: Passes run so far (for tests and progress).
        self.passes = 0

    def start(self) -> None:
        """Start the loop."""
        self._thread.start()

    def wake(self) -> None:
        """Run the next pass now (after an approval or a termination)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=30)
        self.reconciler.unwatch()

    def _run(self) -> None:
        while not self._stop.is_set():
            busy = False
            try:
                self.reconciler.watch_hosts(self.wake)
                report = self.reconciler.run_once()
                self.passes += 1
                busy = report.busy
                if busy and self._on_report is not None:
                    self._on_report(report)
            except SovereignError as e:
                log.warning("reconciler pass failed: %s", for_log(e.message))
            except Exception:
                # A bug in one pass must not stop reconciliation for good; it is logged loudly.
                log.exception("reconciler pass crashed")
            if not busy:
                self._wake.wait(self._interval)
                self._wake.clear()
