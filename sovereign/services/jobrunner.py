"""The job runner: drives each job through its enclave's agent, one recorded step at a time.

Owns one runner pass (:meth:`JobRunner.run_once`): claim the jobs with work left (as the
reconciler claims enclaves), and for each open a :class:`~sovereign.services.ports.Workloads`
session and advance it: ``new`` -> put the code and inputs (unsealed in memory only) ->
``staged`` -> run (``job:start``) -> ``started``: poll the status and pull new log bytes (each
chunk sealed and stored with the new log offset, in one transaction; the first bytes at once,
then in batches: when :data:`LOG_PULL_BYTES` wait, :data:`LOG_PULL_INTERVAL_S` after the last
pull, or at the end, so a job printing a byte at a time makes few blobs) -> on a terminal state
collect the outputs (bounded), plant the enclave's GPU canary over the memory the job freed
(:meth:`~sovereign.services.ports.AgentSession.plant_canary`, with the enclave's canary nonce,
which only the control plane keeps; the next GPU hand-over looks for it), seal and store the
outputs with the final state (``job:finish``: exit code, runtime, output hashes, the agent's
answer to the canary) -> ``finished`` -> discard the job's directory -> ``done``.

Each step's effect and its record commit together, and every agent operation is idempotent
(resumable puts, ``run`` of a started job answers its status), so a runner killed between any
two steps is resumed by the next one, which finishes the job exactly once (one ``job:start``,
one ``job:finish``). An agent that misbehaves (:class:`~sovereign.errors.WorkloadError`, sealed
data that does not open, code that no longer matches its submitted hash) fails its job with the
reason, never the runner; so does any other permanent refusal, so no job stays claimable for
ever. An agent that cannot be reached is retried on the next pass, and not asked again in this
one for the enclave's other jobs; a job past its deadline (or asked to cancel) whose agent
cannot be reached is ended without it (``timed_out`` or ``cancelled``). A job whose enclave has
ended fails, and the enclave's process enclave is released. Must not decide who may do what: the
job service did, at submission. The loop that runs passes is :mod:`sovereign.worker`.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sovereign.domain.fleet import Enclave, Host
from sovereign.domain.identity import Principal
from sovereign.domain.jobs import (
    AGENT_STATES,
    MAX_ERROR,
    AgentJobStatus,
    BlobKind,
    Job,
    JobLimits,
    JobState,
    JobStep,
    OutputFile,
    check_path,
)
from sovereign.domain.labels import Label
from sovereign.domain.requests import RequestState
from sovereign.envelope import EnvelopeError
from sovereign.errors import (
    ConcurrentUpdateError,
    DependencyUnavailableError,
    GoneError,
    SovereignError,
    WorkloadError,
)
from sovereign.services.ports import (
    AGENT_DEPENDENCY,
    AgentSession,
    SecretStore,
    UnitOfWork,
    UnitOfWorkFactory,
    Workloads,
)
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow
from sovereign.services.sealing import Sealer, job_target
from sovereign.text import for_log

log = logging.getLogger(__name__)

#: Log bytes asked of the agent per request (the protocol's largest payload).
LOG_CHUNK = 1 << 20
#: Seconds between two looks for enclaves that stopped running (to release their agents).
RELEASE_CHECK_S = 1.0
#: Seconds past a job's max_runtime_s after which the runner stops waiting for the agent to end
#: it (the agent kills it at its deadline; one that does not is misbehaving).
OVERDUE_GRACE_S = 60
#: Bounds on the agent's answer to ``canary``: bytes planted (far above any device memory)
#: and the device's name.
MAX_CANARY_BYTES = 2**50
CANARY_DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9:._-]{0,63}")
#: Log chunks pulled per job and pass, so one chatty job does not hold the pass.
LOG_CHUNKS_PER_PASS = 8
#: A running job's new log bytes are pulled (and sealed as one blob, one data key) once this
#: many wait in the agent ...
LOG_PULL_BYTES = 64 << 10
#: ... or this many seconds after the last pull; the first bytes are pulled at once (the first
#: log line shows within a second of the submission), and all of them when the job ends.
LOG_PULL_INTERVAL_S = 1.0


@dataclass
class RunnerReport:
    """What one pass did."""

    started: int = 0
    finished: int = 0
    failed: int = 0
    #: Jobs still queued or running after the pass (the loop polls sooner while there are).
    active: int = 0
    #: Whether a job moved on a step (the loop runs the next pass at once).
    progressed: bool = False
    #: Log bytes stored (new log alone does not hurry the loop: it polls at its interval).
    logged: int = 0


class _JobFailedError(Exception):
    """A job must fail with ``reason`` (raised inside a step, handled by the pass)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobRunner:
    """One worker's job passes."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        store: SecretStore,
        workloads: Workloads,
        scheme_top: Label,
        *,
        limits: JobLimits,
        worker: str,
        claim_ttl: timedelta = timedelta(minutes=5),
        batch: int = 32,
        after_step: Callable[[str], None] | None = None,
        clock: Clock = utcnow,
    ) -> None:
        self._uow = uow_factory
        self._sealer = Sealer(store)
        self._workloads = workloads
        self._limits = limits
        self.worker = worker
        self._ttl = claim_ttl
        self._batch = batch
        self._after_step = after_step
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)
        self.ctx = CallContext(
            principal=Principal(
                subject="system:jobrunner", username="jobrunner", clearance=scheme_top
            ),
            actor="system:jobrunner",
            source=worker,
        )
        #: Enclaves this runner opened sessions to, released when they end.
        self._opened: set[uuid.UUID] = set()
        #: Enclaves running at the last check, and when that was.
        self._running: set[uuid.UUID] = set()
        self._checked_at: datetime | None = None
        #: When each running job's log was last pulled (forgotten when the job ends).
        self._pulled_at: dict[uuid.UUID, datetime] = {}

    # -- the pass ----------------------------------------------------------------------------

    def run_once(self) -> RunnerReport:
        """Claim jobs with work left and advance each as far as it goes now."""
        report = RunnerReport()
        #: Enclaves whose agent could not be reached in this pass: not asked again in it.
        unreachable: set[uuid.UUID] = set()
        for job, enclave, host, running in self._claim():
            try:
                self._advance(job, enclave, host, running, report, unreachable=unreachable)
            except DependencyUnavailableError as e:
                # The agent, Vault or the database cannot be reached now: retried next pass.
                log.warning("job %s: %s (retrying)", job.id, for_log(e.message))
                self._release(job)
            except Exception:
                # A bug with one job must not stop the others; it is logged loudly and the
                # job retried when its claim is given back.
                log.exception("job %s: the runner crashed on it", job.id)
                self._release(job)
            if not job.state.terminal:
                report.active += 1
        self._release_ended()
        return report

    def _claim(self) -> list[tuple[Job, Enclave, Host, bool]]:
        claimed = []
        now = self._clock()
        with self._uow() as uow:
            for job in uow.jobs.claimable(self.worker, now, self._batch):
                enclave = uow.enclaves.get(job.enclave_id)
                request = uow.requests.get(job.enclave_id)
                assert enclave is not None, "foreign key"
                assert request is not None, "foreign key"
                host = uow.hosts.get(enclave.host)
                assert host is not None, "foreign key"
                running = request.state is RequestState.RUNNING and enclave.ended_at is None
                job.claim(self.worker, now, self._ttl)
                uow.jobs.update(job)
                claimed.append((job, enclave, host, running))
            uow.commit()
        return claimed

    def _advance(
        self,
        job: Job,
        enclave: Enclave,
        host: Host,
        running: bool,
        report: RunnerReport,
        *,
        unreachable: set[uuid.UUID],
    ) -> None:
        """Advance ``job`` as far as it goes now.

        :raises DependencyUnavailableError: the agent, Vault or the database cannot be reached
            (the pass gives the claim back; the job is retried next pass).
        """
        if not running:
            self._enclave_ended(job, report)
            return
        # Decided before the agent is asked, so that a silent agent cannot keep a job open.
        due = self._due(job)
        if enclave.id in unreachable:
            # Its agent did not answer earlier in this pass: do not wait on it again.
            if due is None:
                raise DependencyUnavailableError(
                    f"the agent of enclave {enclave.id} did not answer in this pass",
                    dependency=AGENT_DEPENDENCY,
                )
            self._end_unreachable(job, due, "the enclave's agent does not answer", report)
            return
        try:
            with self._workloads.session(enclave, host) as agent:
                self._opened.add(enclave.id)
                self._steps(agent, job, enclave, report)
        except DependencyUnavailableError as e:
            if e.dependency != AGENT_DEPENDENCY:
                raise  # Vault or the database: retried next pass
            unreachable.add(enclave.id)
            if due is None:
                raise
            self._end_unreachable(job, due, e.message, report)
        except (_JobFailedError, WorkloadError, EnvelopeError, GoneError) as e:
            reason = e.reason if isinstance(e, _JobFailedError) else e.message
            log.warning("job %s failed: %s", job.id, for_log(reason))
            self._finish_failed(job, reason, report)
        except ConcurrentUpdateError:
            # Someone else changed the job (a cancel request): the next pass reads it again.
            self._release(job)
        except SovereignError as e:
            # Any other refusal (an argument the agent client will not send, ...) is permanent:
            # retrying it would hold a claim slot on every pass for ever.
            log.warning("job %s failed: %s", job.id, for_log(e.message))
            self._finish_failed(job, e.message, report)

    def _due(self, job: Job) -> JobState | None:
        """How the job ends if its agent cannot be reached: ``timed_out`` past its deadline
        (and grace), ``cancelled`` when a cancel was asked for; None while it may wait."""
        if job.state.terminal:
            return None
        if self._overdue(job):
            return JobState.TIMED_OUT
        if job.cancel_requested:
            return JobState.CANCELLED
        return None

    def _end_unreachable(
        self, job: Job, state: JobState, reason: str, report: RunnerReport
    ) -> None:
        """End a due job whose agent cannot be reached (``job:finish`` with the reason); its
        directory in the enclave is discarded on a later pass, once the agent answers."""
        why = "past its max_runtime_s" if state is JobState.TIMED_OUT else "cancelled"
        error = f"ended without the enclave's agent ({why}): {reason}"
        log.warning("job %s: %s", job.id, for_log(error))
        with contextlib.suppress(ConcurrentUpdateError):  # changed: the next pass reads it
            self._finish(job, state, None, [], report, error=error)
        self._release(job)

    def _steps(self, agent: AgentSession, job: Job, enclave: Enclave, report: RunnerReport) -> None:
        if job.step is JobStep.NEW and job.cancel_requested:
            self._finish(job, JobState.CANCELLED, None, [], report, error="cancelled before it ran")
        if job.step is JobStep.NEW:
            self._stage(agent, job, report)
        if job.step is JobStep.STAGED:
            if job.cancel_requested:
                # A runner may have started it and died before recording so: stop it first.
                with contextlib.suppress(WorkloadError):
                    agent.cancel(str(job.id))
                self._finish(
                    job, JobState.CANCELLED, None, [], report, error="cancelled before it ran"
                )
            else:
                self._start(agent, job, report)
        if job.step is JobStep.STARTED:
            self._poll(agent, job, enclave, report)
        if job.step is JobStep.FINISHED:
            agent.discard(str(job.id))
            self._commit(job, step=JobStep.DONE, release=True)
            self._stepped("job:discard")
            report.progressed = True
        else:
            self._release(job, keep=True)

    # -- steps -------------------------------------------------------------------------------

    def _stage(self, agent: AgentSession, job: Job, report: RunnerReport) -> None:
        name = str(job.id)
        with self._uow(readonly=True) as uow:
            code = [uow.blobs.get(job.id, BlobKind.CODE, f.name) for f in job.files]
            if any(blob is None for blob in code):
                raise _JobFailedError("the job's code is missing from the database")
            datasets = [uow.datasets.get(i) for i in job.manifest.inputs]
            inputs = []
            for dataset in datasets:
                if dataset is None:
                    raise _JobFailedError("an input dataset is missing from the database")
                inputs.append((dataset, self._sealer.open_dataset(uow, dataset)))
        plain = self._sealer.open([b for b in code if b is not None], job.id, job.label)
        for info, data in zip(job.files, plain, strict=True):
            # What was submitted (and audited by hash) is what runs: a blob swapped in the
            # database, even one sealed for this job, is refused before it enters the enclave.
            if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
                raise _JobFailedError(f"the stored code file {info.name} does not match its hash")
        for info, data in zip(job.files, plain, strict=True):
            self._put(agent, name, "code", info.name, data)
        for dataset, data in inputs:
            self._put(agent, name, "input", dataset.name, data)
        self._commit(job, step=JobStep.STAGED)
        self._stepped("job:staged")
        report.progressed = True

    @staticmethod
    def _put(agent: AgentSession, job: str, area: str, path: str, data: bytes) -> None:
        digest = agent.put(job, area, path, data)
        if digest != hashlib.sha256(data).hexdigest():
            raise WorkloadError(reason=f"the agent stored {path} with another hash")

    def _start(self, agent: AgentSession, job: Job, report: RunnerReport) -> None:
        m = job.manifest
        status = agent.run(
            str(job.id), entrypoint=m.entrypoint, args=m.args, max_runtime_s=m.max_runtime_s
        )
        self._check_status(status)
        with self._uow() as uow:
            current = self._reload(uow, job)
            current.transition(JobState.RUNNING, self._clock())
            current.step = JobStep.STARTED
            uow.jobs.update(current)
            self._recorder.record(
                uow,
                self.ctx,
                "job:start",
                job_target(job.id),
                label=job.label,
                details={
                    "enclave": str(job.enclave_id),
                    "submitted_by": job.submitted_by,
                    "simulated": job.simulated,
                },
            )
            uow.commit()
        _copy(current, job)
        self._stepped("job:start")
        report.started += 1
        report.progressed = True

    def _poll(self, agent: AgentSession, job: Job, enclave: Enclave, report: RunnerReport) -> None:
        name = str(job.id)
        overdue = self._overdue(job)
        stop = job.cancel_requested or overdue
        status = agent.cancel(name) if stop else agent.status(name)
        self._check_status(status)
        if status.state in ("unknown", "ready"):
            raise _JobFailedError(f"the agent no longer runs the job (it answers {status.state!r})")
        final = status.terminal
        exhausted = (final is not None or self._log_due(job, status)) and self._pull_logs(
            agent, job, status, report
        )
        if final is None:
            if overdue:
                # The agent should have killed it at its deadline; it did not end it.
                raise _JobFailedError("the job ran past its max_runtime_s and did not stop")
            return
        if not exhausted:
            return  # more log to pull first (next pass)
        error = ""
        if overdue and not job.cancel_requested and final is JobState.CANCELLED:
            final, error = JobState.TIMED_OUT, "stopped by the runner past its max_runtime_s"
        outputs = self._collect(agent, job)
        canary = self._plant_canary(agent, enclave)
        self._finish(job, final, status, outputs, report, error=error, canary=canary)

    @staticmethod
    def _plant_canary(agent: AgentSession, enclave: Enclave) -> dict[str, Any]:
        """Plant the enclave's canary over the GPU memory the job freed; what the agent said,
        for the ``job:finish`` event (never the nonce). A refusal (another job of the enclave
        still runs) or no answer is recorded, never fatal: the job's outputs are collected
        already, and the hand-over scrubs the GPU all the same.

        :raises DependencyUnavailableError: Vault or the database (not the agent) is down.
        """
        if enclave.canary_nonce is None:
            return {"planted": False, "reason": "the enclave has no canary nonce"}
        try:
            answer = agent.plant_canary(enclave.canary_nonce)
        except DependencyUnavailableError as e:
            if e.dependency != AGENT_DEPENDENCY:
                raise
            return {"planted": False, "reason": e.message[:MAX_ERROR]}
        except WorkloadError as e:
            return {"planted": False, "reason": e.message[:MAX_ERROR]}
        planted = answer.get("planted_bytes") if isinstance(answer, dict) else None
        device = answer.get("device") if isinstance(answer, dict) else None
        if (
            not isinstance(planted, int)
            or isinstance(planted, bool)
            or not 0 <= planted <= MAX_CANARY_BYTES
            or not isinstance(device, str)
            or not CANARY_DEVICE.fullmatch(device)
        ):
            return {"planted": False, "reason": "the agent's answer to canary is malformed"}
        return {"planted": planted > 0, "planted_bytes": planted, "device": device}

    def _overdue(self, job: Job) -> bool:
        """Whether the job runs well past its runtime bound (which the agent enforces)."""
        if job.started_at is None:
            return False
        limit = job.manifest.max_runtime_s + OVERDUE_GRACE_S
        return (self._clock() - job.started_at).total_seconds() > limit

    def _log_due(self, job: Job, status: AgentJobStatus) -> bool:
        """Whether a running job's new log bytes are pulled now (see :data:`LOG_PULL_BYTES`)."""
        waiting = min(status.log_size, self._limits.max_log_bytes) - job.log_size
        if waiting <= 0:
            return False
        if job.log_size == 0 or waiting >= LOG_PULL_BYTES:
            return True  # the first bytes at once; a full batch
        last = self._pulled_at.get(job.id)
        return last is None or (self._clock() - last).total_seconds() >= LOG_PULL_INTERVAL_S

    def _pull_logs(
        self, agent: AgentSession, job: Job, status: AgentJobStatus, report: RunnerReport
    ) -> bool:
        """Pull and store new log bytes; whether the log is exhausted (all there is, up to
        the limit, or the agent has no more to give, whatever size it claimed)."""
        name = str(job.id)
        wanted = min(max(status.log_size, 0), self._limits.max_log_bytes)
        for _ in range(LOG_CHUNKS_PER_PASS):
            if job.log_size >= wanted:
                return True
            limit = min(LOG_CHUNK, wanted - job.log_size)
            data = agent.logs(name, job.log_size, limit)
            if len(data) > limit:
                raise WorkloadError(reason="the agent sent more log bytes than asked for")
            if not data:
                return True
            with self._uow() as uow:
                key = self._sealer.enclave_key(uow, job)
                current = self._reload(uow, job)
                for blob in self._sealer.seal(
                    key, job.id, job.label, BlobKind.LOG, [("log", job.log_size, data)]
                ):
                    uow.blobs.put(blob)
                current.log_size += len(data)
                current.updated_at = self._clock()
                uow.jobs.update(current)
                uow.commit()
            _copy(current, job)
            self._pulled_at[job.id] = self._clock()
            self._stepped("job:log")
            report.logged += len(data)
        return job.log_size >= wanted

    def _collect(self, agent: AgentSession, job: Job) -> list[tuple[OutputFile, bytes]]:
        name = str(job.id)
        if not job.manifest.outputs:
            return []
        listed = agent.outputs(name, job.manifest.outputs)
        if len(listed) > self._limits.max_output_files:
            raise _JobFailedError(
                f"the job left {len(listed)} output files; at most "
                f"{self._limits.max_output_files} are collected"
            )
        total = sum(f.size for f in listed)
        if total > self._limits.max_output_bytes:
            raise _JobFailedError(
                f"the job's outputs hold {total} bytes; at most "
                f"{self._limits.max_output_bytes} are collected"
            )
        seen: set[str] = set()
        collected = []
        for info in listed:
            try:
                check_path(info.name, "output name")
            except SovereignError as e:
                raise WorkloadError(reason=e.message) from e
            if info.name in seen or info.size < 0:
                raise WorkloadError(reason=f"the agent listed {info.name} twice or oddly")
            seen.add(info.name)
            data = agent.get(
                name, info.name, size=info.size, sha256=info.sha256, max_bytes=info.size
            )
            if len(data) != info.size or hashlib.sha256(data).hexdigest() != info.sha256:
                raise WorkloadError(reason=f"the output {info.name} does not match its listing")
            collected.append((info, data))
        return collected

    def _finish(
        self,
        job: Job,
        state: JobState,
        status: AgentJobStatus | None,
        outputs: list[tuple[OutputFile, bytes]],
        report: RunnerReport,
        *,
        error: str = "",
        canary: dict[str, Any] | None = None,
    ) -> None:
        """End the job in ``state``: outputs sealed and stored, ``job:finish`` recorded (with
        the canary planted after it, where one was)."""
        with self._uow() as uow:
            current = self._reload(uow, job)
            if outputs:
                key = self._sealer.enclave_key(uow, job)
                for blob in self._sealer.seal(
                    key, job.id, job.label, BlobKind.OUTPUT, [(f.name, 0, d) for f, d in outputs]
                ):
                    uow.blobs.put(blob)
            current.transition(state, self._clock())
            current.step = JobStep.FINISHED
            current.results = tuple(f for f, _ in outputs)
            if status is not None:
                current.exit_code = status.exit_code
                current.runtime_s = status.runtime_s
            current.error = error[:MAX_ERROR]
            uow.jobs.update(current)
            self._record_finish(uow, current, canary)
            uow.commit()
        _copy(current, job)
        self._pulled_at.pop(job.id, None)
        self._stepped("job:finish")
        report.finished += 1
        report.failed += state is JobState.FAILED
        report.progressed = True

    def _record_finish(
        self, uow: UnitOfWork, job: Job, canary: dict[str, Any] | None = None
    ) -> None:
        details: dict[str, Any] = {
            "enclave": str(job.enclave_id),
            "state": job.state.value,
            "exit_code": job.exit_code,
            "runtime_s": job.runtime_s,
            "outputs": [r.to_dict() for r in job.results],
            "simulated": job.simulated,
        }
        if job.error:
            details["error"] = job.error
        if canary is not None:
            details["canary"] = canary
        self._recorder.record(
            uow, self.ctx, "job:finish", job_target(job.id), label=job.label, details=details
        )

    def _finish_failed(self, job: Job, reason: str, report: RunnerReport) -> None:
        if job.state.terminal:
            # Finished already (only the discard failed): leave the agent's directory.
            self._commit(job, step=JobStep.DONE, release=True)
            return
        try:
            self._finish(job, JobState.FAILED, None, [], report, error=reason)
        except ConcurrentUpdateError:
            self._release(job)

    def _enclave_ended(self, job: Job, report: RunnerReport) -> None:
        if job.state.terminal:
            self._commit(job, step=JobStep.DONE, release=True)
        else:
            self._finish(job, JobState.FAILED, None, [], report, error="the enclave ended")
            self._commit(job, step=JobStep.DONE, release=True)
        self._release_agent(job.enclave_id)
        self._opened.discard(job.enclave_id)

    def _release_ended(self) -> None:
        """Release the agents of enclaves that stopped running since the last look (at most
        every :data:`RELEASE_CHECK_S`): those this runner used, and any open enclave seen
        running before, jobs or not."""
        now = self._clock()
        if self._checked_at is not None and (now - self._checked_at).total_seconds() < (
            RELEASE_CHECK_S
        ):
            return
        self._checked_at = now
        with self._uow(readonly=True) as uow:
            running = set()
            for enclave in uow.enclaves.list(open_only=True):
                request = uow.requests.get(enclave.id)
                if request is not None and request.state is RequestState.RUNNING:
                    running.add(enclave.id)
        for eid in sorted((self._opened | self._running) - running):
            self._release_agent(eid)
        self._opened &= running
        self._running = running

    def _release_agent(self, enclave_id: uuid.UUID) -> None:
        try:
            self._workloads.release(enclave_id)
        except SovereignError as e:
            # Tried again only if a job of the enclave is found later; logged for operators.
            log.warning("could not release enclave %s's agent: %s", enclave_id, for_log(e.message))

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _check_status(status: AgentJobStatus) -> None:
        if status.state not in AGENT_STATES:
            raise WorkloadError(reason=f"the agent answered an unknown state {status.state!r}")

    @staticmethod
    def _reload(uow: UnitOfWork, job: Job) -> Job:
        current = uow.jobs.get(job.id, for_update=True)
        if current is None or current.version != job.version:
            raise ConcurrentUpdateError(kind="job", ident=str(job.id))
        return current

    def _commit(self, job: Job, *, step: JobStep | None = None, release: bool = False) -> None:
        with self._uow() as uow:
            current = self._reload(uow, job)
            if step is not None:
                current.step = step
            if release:
                current.claimed_by = current.claim_until = None
            current.updated_at = self._clock()
            uow.jobs.update(current)
            uow.commit()
        _copy(current, job)

    def _release(self, job: Job, *, keep: bool = False) -> None:
        """Give the claim back (``keep``: the job stays this worker's, claim lapsing)."""
        if keep:
            return
        # If it cannot be given back now, the claim lapses by itself.
        with contextlib.suppress(ConcurrentUpdateError, DependencyUnavailableError):
            self._commit(job, release=True)

    def _stepped(self, step: str) -> None:
        if self._after_step is not None:
            self._after_step(step)


def _copy(source: Job, target: Job) -> None:
    """Make ``target`` (the pass's copy) what was just stored."""
    for name in Job.__dataclass_fields__:
        setattr(target, name, getattr(source, name))
