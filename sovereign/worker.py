"""The background work of the control plane, all of it: what runs besides the API, and how.

Runs four things, and owns every loop that runs them:

- **reconciler passes** (:class:`~sovereign.services.reconciler.Reconciler`), by
  :class:`PassLoop`: a pass that changed something is followed at once by the next; an idle
  one, or one that only reported drift, waits the interval or a domain event;
- **audit sequencing** (the :class:`~sovereign.services.ports.AuditSequencer` entry point:
  queued events get indices, a checkpoint is signed, the signing key published first);
- **job runner passes** (:class:`~sovereign.services.jobrunner.JobRunner`), by
  :class:`JobLoop`: at once after a pass that progressed, every ``JOB_POLL_INTERVAL_S`` while
  jobs run, otherwise after a short idle wait or as soon as a job is submitted or cancelled in
  this process (the services' job signal);
- their hosts: :class:`ReconcilerThread`, :class:`JobThread` and :class:`SequencerThread`,
  daemon threads of the embedded default (``sovereign dev``), and :func:`run_worker`, the
  ``sovereign worker`` process of production (one or more beside the API), which sequences
  after every pass and runs jobs in a thread of its own.

Must not do a pass's or a sequencer run's work itself, nor pick backends (the assembly does).
Crash testing: outside production, ``SOVEREIGN_CRASH_AFTER=provision:define`` (or a job step:
``job:staged``, ``job:start``, ``job:log``, ``job:finish``, ``job:discard``) makes the worker
kill itself with SIGKILL right after recording that step, as a power cut would.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from sovereign.errors import (
    ConflictError,
    DependencyUnavailableError,
    SovereignError,
)
from sovereign.services.drift import LogLimiter, held_note
from sovereign.services.jobrunner import JobRunner
from sovereign.services.ports import AuditSequencer
from sovereign.services.reconciler import PassReport, Reconciler
from sovereign.services.recording import utcnow
from sovereign.text import for_log

if TYPE_CHECKING:
    from sovereign.bootstrap import Services

log = logging.getLogger(__name__)

#: Passes that did work run back to back at most this many times before one interval's wait.
MAX_BUSY_STREAK = 50


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
            ("quarantined", report.quarantined),
            ("repaired", report.repaired),
        )
        if value
    ]
    parts += [f"drift: {d}" for d in report.drift]
    return "; ".join(parts)


class PassLoop:
    """Reconciler passes, one after another: at once after a pass that did work, otherwise
    after the interval or a wake-up (a domain event, an approval).

    Shared by the in-process thread and ``sovereign worker``. Reported drift is not work, so a
    host carrying a domain nobody recorded does not make it spin; and at most
    :data:`MAX_BUSY_STREAK` passes run back to back before it waits once anyway, so no bug that
    reports work every pass can either. A pass that fails is logged, a repeated failure at most
    once a minute.
    """

    def __init__(
        self,
        reconciler: Reconciler | None,
        interval_s: float,
        *,
        on_report: Callable[[PassReport], None] | None = None,
        after_pass: Callable[[], None] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self._interval = interval_s
        self._on_report = on_report
        self._after_pass = after_pass
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._limiter = LogLimiter(utcnow)
        #: Passes run and waits made so far (for tests and progress).
        self.passes = 0
        self.waits = 0

    def wake(self) -> None:
        """Run the next pass now."""
        self._wake.set()

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop.set()
        self._wake.set()

    def run(self, max_passes: int | None = None) -> None:
        """Run passes until :meth:`stop` (or ``max_passes`` passes, for tests)."""
        streak = 0
        while not self._stop.is_set() and (max_passes is None or self.passes < max_passes):
            busy = self.run_pass()
            streak = streak + 1 if busy else 0
            if not busy or streak >= MAX_BUSY_STREAK:
                streak = 0
                self.waits += 1
                self._wake.wait(self._interval)
                self._wake.clear()

    def run_pass(self) -> bool:
        """One pass (and ``after_pass``); whether it did work."""
        busy = False
        try:
            if self.reconciler is not None:
                self.reconciler.watch_hosts(self.wake)
                report = self.reconciler.run_once()
                busy = report.busy
                if report.notable and self._on_report is not None:
                    self._on_report(report)
            if self._after_pass is not None:
                self._after_pass()
        except SovereignError as e:
            self._warn(e.message, "reconciler pass failed: %s%s", for_log(e.message))
        except Exception as e:
            # A bug in one pass must not stop reconciliation for good; it is logged loudly.
            held = self._limiter.allow(f"crash:{type(e).__name__}:{e}")
            if held is not None:
                log.exception("reconciler pass crashed%s", held_note(held))
        finally:
            self.passes += 1
        return busy

    def _warn(self, key: str, fmt: str, *args: object) -> None:
        held = self._limiter.allow(key)
        if held is not None:
            log.warning(fmt, *args, held_note(held))


class ReconcilerThread:
    """Runs a :class:`PassLoop` in a daemon thread until stopped (the embedded default)."""

    def __init__(
        self,
        reconciler: Reconciler,
        interval_s: float,
        *,
        on_report: Callable[[PassReport], None] | None = None,
    ) -> None:
        self.reconciler = reconciler
        self.loop = PassLoop(reconciler, interval_s, on_report=on_report)
        self._thread = threading.Thread(target=self.loop.run, name="reconciler", daemon=True)

    @property
    def passes(self) -> int:
        """Passes run so far."""
        return self.loop.passes

    def start(self) -> None:
        """Start the loop."""
        self._thread.start()

    def wake(self) -> None:
        """Run the next pass now (after an approval or a termination)."""
        self.loop.wake()

    def stop(self) -> None:
        """Stop after the current pass."""
        self.loop.stop()
        self._thread.join(timeout=30)
        self.reconciler.unwatch()


class SequencerThread:
    """Runs the audit sequencer every ``interval_s`` in a daemon thread (the embedded default)."""

    def __init__(self, sequencer: AuditSequencer, interval_s: float = 0.5) -> None:
        self._sequencer = sequencer
        self._interval = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-sequencer", daemon=True)

    def start(self) -> None:
        """Sequence once now (which publishes the signing key before anything else is signed),
        then go on in the background."""
        self._once()
        self._thread.start()

    def stop(self) -> None:
        """Stop after a last run, so nothing queued is left unsequenced."""
        self._stop.set()
        self._thread.join(timeout=10)
        self._once()

    def _once(self) -> None:
        try:
            self._sequencer.sequence()
        except (ConflictError, DependencyUnavailableError) as e:
            log.error("audit sequencer: %s", for_log(e.message))  # noqa: TRY400 - the message says it all

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._once()


#: Seconds a job loop with no queued or running job waits for a signal before looking again
#: (jobs submitted through another process are found this late at worst).
JOB_IDLE_S = 0.5


class JobLoop:
    """Job runner passes, one after another: at once after one that progressed (at most
    :data:`MAX_BUSY_STREAK` in a row), every ``poll_s`` while jobs are active, otherwise after
    ``idle_s`` or when ``signal`` is set (a job submitted or cancelled). A failing pass is
    logged, a repeated failure at most once a minute."""

    def __init__(
        self,
        runner: JobRunner,
        signal: threading.Event,
        *,
        poll_s: float,
        idle_s: float = JOB_IDLE_S,
    ) -> None:
        self.runner = runner
        self._signal = signal
        self._poll = poll_s
        self._idle = idle_s
        self._stop = threading.Event()
        self._limiter = LogLimiter(utcnow)
        self.passes = 0

    def stop(self) -> None:
        """Stop after the current pass."""
        self._stop.set()
        self._signal.set()

    def run(self, max_passes: int | None = None) -> None:
        """Run passes until :meth:`stop` (or ``max_passes`` passes, for tests)."""
        streak = 0
        while not self._stop.is_set() and (max_passes is None or self.passes < max_passes):
            progressed, active = self.run_pass()
            streak = streak + 1 if progressed else 0
            if progressed and streak < MAX_BUSY_STREAK:
                continue
            streak = 0
            self._signal.wait(self._poll if active else self._idle)
            self._signal.clear()

    def run_pass(self) -> tuple[bool, bool]:
        """One pass; whether it progressed and whether jobs remain active."""
        try:
            report = self.runner.run_once()
        except SovereignError as e:
            held = self._limiter.allow(e.message)
            if held is not None:
                log.warning("job runner pass failed: %s%s", for_log(e.message), held_note(held))
            return False, True
        except Exception as e:
            held = self._limiter.allow(f"crash:{type(e).__name__}:{e}")
            if held is not None:
                log.exception("job runner pass crashed%s", held_note(held))
            return False, True
        finally:
            self.passes += 1
        return report.progressed, report.active > 0


class JobThread:
    """Runs a :class:`JobLoop` in a daemon thread until stopped."""

    def __init__(
        self,
        runner: JobRunner,
        signal: threading.Event,
        *,
        poll_s: float,
        idle_s: float = JOB_IDLE_S,
    ) -> None:
        self.loop = JobLoop(runner, signal, poll_s=poll_s, idle_s=idle_s)
        self._thread = threading.Thread(target=self.loop.run, name="job-runner", daemon=True)

    def start(self) -> None:
        """Start the loop."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the current pass."""
        self.loop.stop()
        self._thread.join(timeout=30)


def start_jobs(services: Services, poll_s: float, environment: str) -> JobThread:
    """A started :class:`JobThread` over ``services`` (with the crash hook outside
    production)."""
    runner = services.jobrunner(after_step=crash_hook(environment))
    thread = JobThread(runner, services.job_signal, poll_s=poll_s)
    thread.start()
    return thread


def run_worker(
    services: Services,
    interval_s: float,
    *,
    reconcile: bool = True,
    environment: str = "production",
    echo: Callable[[str], None] = print,
    max_passes: int | None = None,
    job_poll_s: float | None = None,
) -> None:
    """Run ``sovereign worker``: reconciler passes (unless ``reconcile`` is false), each
    followed by an audit sequencer run, and the job runner in a thread of its own (with the
    reconciler, every ``job_poll_s`` while jobs run), until stopped (or ``max_passes``, for
    tests).

    :raises DependencyUnavailableError: if no audit log is configured.
    """
    sequencer = services.sequencer
    if sequencer is None:
        raise DependencyUnavailableError(dependency="audit log")
    reconciler = services.reconciler(after_step=crash_hook(environment)) if reconcile else None
    what = "reconciling and sequencing" if reconciler else "sequencing the audit log"
    echo(f"worker {reconciler.worker if reconciler else ''}: {what} every {interval_s} s")

    def sequence() -> None:
        run = sequencer.sequence()
        # On SQLite appends are sequenced in their own transactions: only a checkpoint shows.
        if run.sequenced or run.checkpoint is not None:
            echo(f"sequenced {run.sequenced}; size {run.size}")

    jobs = start_jobs(services, job_poll_s or 0.15, environment) if reconciler else None
    # Domain lifecycle events (a guest crashed, someone stopped it) wake the loop at once.
    try:
        PassLoop(
            reconciler,
            interval_s,
            on_report=lambda report: echo(describe(report)),
            after_pass=sequence,
        ).run(max_passes)
    finally:
        if jobs is not None:
            jobs.stop()
