"""Phase 3 of a pass: claimed enclaves advanced one idempotent step at a time.

Owns claims and steps. Provisioning is volume, secrets (unwrapped from Vault, handed to
libvirt, never stored), network, define, start, then ``running``; teardown is stop, undefine
(with NVRAM and TPM state), volume, secrets, network, keys (crypto-erase), then the GPUs go
``dirty`` and the request ``terminated``. Every step is recorded (step name in the
``enclaves`` row and an audit event, in one transaction) *after* it was done on the
hypervisor; a crash in between repeats the step, which is idempotent, so any crash converges.
Workers claim enclaves with a lease (``claimed_by``, ``claim_until``; ``FOR UPDATE SKIP
LOCKED`` on PostgreSQL), so several may run at once. A step that fails for an unavailable
dependency is retried with backoff; a step the hypervisor refuses, or the last retry, fails
the enclave and tears it down. Must not talk to libvirt other than through the port.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import timedelta

from audit import Outcome
from enclaves.steps import PROVISION_STEPS, TEARDOWN_STEPS, ProvisionStep, TeardownStep
from sovereign.domain.fleet import Enclave
from sovereign.domain.keys import EnclaveSecrets
from sovereign.domain.labels import Label
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.errors import (
    ConcurrentUpdateError,
    ConflictError,
    DependencyUnavailableError,
    InvalidTransitionError,
    NotFoundError,
    SovereignError,
)
from sovereign.services.collaborators import EnclaveKeyring
from sovereign.services.reconciler.context import PassContext, PassReport, S, enclave_target
from sovereign.text import for_log

log = logging.getLogger(__name__)

#: Request states in which a claimed enclave has work to do.
WORK_STATES = (S.PROVISIONING, S.TERMINATING, S.EXPIRED, S.FAILED)
#: Prefixes of the ``step`` column, so provisioning and teardown steps never mix up.
PROVISION, TEARDOWN = "provision:", "teardown:"


class _StepFailedError(Exception):
    """A step failed; the enclave's attempt counter and error were recorded."""


class _SupersededError(Exception):
    """The request changed state under us (terminated while provisioning); stop working."""


class Steps:
    """Claims enclaves with work to do and runs their remaining steps."""

    def __init__(
        self,
        c: PassContext,
        keys: EnclaveKeyring,
        *,
        max_attempts: int,
        after_step: Callable[[str], None],
    ) -> None:
        self._c = c
        self._keys = keys
        self._max_attempts = max_attempts
        #: Called with ``provision:define`` etc. after each recorded step (crash tests).
        self._after_step = after_step

    def run(self, report: PassReport) -> None:
        """Claim up to one batch of enclaves and advance each as far as it goes."""
        for enclave_id in self._claim():
            self._advance(enclave_id, report)

    def _claim(self) -> list[uuid.UUID]:
        c = self._c
        now = c.clock()
        claimed = []
        try:
            with c.uow() as uow:
                for enclave in uow.enclaves.claimable(
                    c.worker, now, c.batch, states=[s.value for s in WORK_STATES]
                ):
                    enclave.claim(c.worker, now, c.claim_ttl)
                    uow.enclaves.update(enclave)
                    claimed.append(enclave.id)
                uow.commit()
        except ConcurrentUpdateError:
            return []
        return claimed

    def _advance(self, enclave_id: uuid.UUID, report: PassReport) -> None:
        """Run every remaining step of one claimed enclave, then release it."""
        try:
            with self._c.uow(readonly=True) as uow:
                request = uow.requests.get(enclave_id)
                enclave = uow.enclaves.get(enclave_id)
            if request is None or enclave is None or enclave.claimed_by != self._c.worker:
                return
            if request.state in (S.EXPIRED, S.FAILED):
                self._transition(enclave_id, S.TERMINATING, "enclave:terminate", request.reason)
                request.state = S.TERMINATING
            if request.state is S.PROVISIONING:
                self._provision(request, enclave, report)
            elif request.state is S.TERMINATING:
                self._teardown(request, enclave, report)
        except _StepFailedError:
            report.failed += 1
        except (_SupersededError, InvalidTransitionError):
            log.info("enclave %s changed state while being worked on; next pass", enclave_id)
        except (ConcurrentUpdateError, DependencyUnavailableError) as e:
            log.warning("enclave %s: %s; will retry", enclave_id, for_log(e))
        # Released on every handled outcome; a worker that dies keeps its claim until the TTL
        # lapses, and then another worker resumes from the last recorded step.
        self._release(enclave_id)

    def _release(self, enclave_id: uuid.UUID) -> None:
        try:
            with self._c.uow() as uow:
                enclave = uow.enclaves.get(enclave_id)
                if enclave is not None and enclave.claimed_by == self._c.worker:
                    enclave.release(self._c.clock())
                    uow.enclaves.update(enclave)
                    uow.commit()
        except SovereignError:
            # The claim lapses on its own after the TTL.
            log.warning("could not release enclave %s", enclave_id, exc_info=True)

    def _provision(self, request: EnclaveRequest, enclave: Enclave, report: PassReport) -> None:
        plan = self._c.plan(enclave)
        done = _done_steps(enclave.step, PROVISION)
        for step in PROVISION_STEPS[done:]:
            secrets: EnclaveSecrets | None = None
            try:
                if step is ProvisionStep.SECRETS:
                    secrets = self._keys.secrets(enclave.id)
                note = self._c.hypervisor.provision(step, plan, secrets)
            except (DependencyUnavailableError, ConflictError, NotFoundError) as e:
                self._step_failed(request, enclave, PROVISION + step, e)
            self._record_step(enclave, request.label, PROVISION + step, note)
            report.steps += 1
        self._transition(enclave.id, S.RUNNING, "enclave:running", "")
        report.running += 1

    def _teardown(self, request: EnclaveRequest, enclave: Enclave, report: PassReport) -> None:
        plan = self._c.plan(enclave)
        done = _done_steps(enclave.step, TEARDOWN)
        for step in TEARDOWN_STEPS[done:]:
            try:
                if step is TeardownStep.KEYS:
                    note = self._erase_keys(enclave.id)
                else:
                    note = self._c.hypervisor.teardown(step, plan)
            except (DependencyUnavailableError, ConflictError) as e:
                self._step_failed(request, enclave, TEARDOWN + step, e, give_up=False)
            self._record_step(enclave, request.label, TEARDOWN + step, note)
            report.steps += 1
        self._finish(enclave.id)
        report.terminated += 1

    def _erase_keys(self, enclave_id: uuid.UUID) -> str:
        with self._c.uow(readonly=True) as uow:
            keys = uow.keys.get(enclave_id)
        if keys is None:
            return "no keys were created for this enclave"
        if keys.destroyed_at is not None:
            return f"keys already crypto-erased at {keys.destroyed_at.isoformat()}"
        self._keys.crypto_erase(self._c.ctx, enclave_id)
        return f"key {keys.key.mount}/{keys.key.name} crypto-erased (see key:destroy)"

    def _record_step(self, enclave: Enclave, label: Label, step: str, note: str) -> None:
        """Record ``step`` as done (row and event in one transaction), renewing the claim.

        :raises ConcurrentUpdateError: our claim lapsed. :raises _SupersededError: the step is
            recorded but the request left the phase being worked on.
        """
        c = self._c
        superseded = False
        with c.uow() as uow:
            current = uow.enclaves.get(enclave.id, for_update=True)
            if current is None or current.claimed_by != c.worker:
                # Our claim lapsed and another worker took over: stop here, it continues.
                raise ConcurrentUpdateError(kind="enclave", ident=str(enclave.id))
            request = uow.requests.get(enclave.id)
            expected = S.PROVISIONING if step.startswith(PROVISION) else S.TERMINATING
            if request is None or request.state is not expected:
                # Terminated (or killed) while we provisioned: the step is done on the host
                # and recorded, but we stop here; the next pass tears everything down.
                superseded = True
            current.step, current.attempts, current.error = step, 0, ""
            current.claim(c.worker, c.clock(), c.claim_ttl)
            uow.enclaves.update(current)
            c.event(
                uow,
                _action(step),
                enclave_target(enclave.id),
                label=label,
                details={"step": step.split(":", 1)[1], "host": enclave.host, "note": note},
            )
            uow.commit()
        enclave.step = step
        self._after_step(step)
        if superseded:
            raise _SupersededError(step)

    def _step_failed(
        self,
        request: EnclaveRequest,
        enclave: Enclave,
        step: str,
        error: SovereignError,
        *,
        give_up: bool = True,
    ) -> None:
        """Record a failed step; fail the enclave when retrying cannot help.

        :raises _StepFailedError: always (the caller stops working on the enclave).
        """
        c = self._c
        now = c.clock()
        retryable = isinstance(error, DependencyUnavailableError)
        with c.uow() as uow:
            current = uow.enclaves.get(enclave.id, for_update=True)
            assert current is not None
            current.attempts += 1
            current.error = error.message
            # Exponential backoff, capped at five minutes.
            current.retry_at = now + timedelta(seconds=min(300, 2**current.attempts))
            uow.enclaves.update(current)
            fail = give_up and (not retryable or current.attempts >= self._max_attempts)
            c.event(
                uow,
                _action(step),
                enclave_target(enclave.id),
                label=request.label,
                outcome=Outcome.ERROR,
                reason=error.message,
                details={"step": step.split(":", 1)[1], "attempt": current.attempts},
            )
            if fail:
                current_request = uow.requests.get(enclave.id, for_update=True)
                assert current_request is not None
                current_request.reason = error.message
                current_request.transition(S.FAILED, now)
                uow.requests.update(current_request)
                current.retry_at = None
                uow.enclaves.update(current)
                c.event(
                    uow,
                    "enclave:fail",
                    enclave_target(enclave.id),
                    label=request.label,
                    reason=error.message,
                    details={"step": step.split(":", 1)[1], "to": "failed"},
                )
            uow.commit()
        raise _StepFailedError(step)

    def _transition(
        self, enclave_id: uuid.UUID, target: RequestState, action: str, reason: str
    ) -> None:
        with self._c.uow() as uow:
            request = uow.requests.get(enclave_id, for_update=True)
            assert request is not None
            before = request.state
            request.transition(target, self._c.clock())
            uow.requests.update(request)
            self._c.event(
                uow,
                action,
                enclave_target(enclave_id),
                label=request.label,
                reason=reason,
                details={"from": before.value, "to": target.value},
            )
            uow.commit()

    def _finish(self, enclave_id: uuid.UUID) -> None:
        """GPUs dirty, enclave ended, request terminated: one transaction."""
        now = self._c.clock()
        with self._c.uow() as uow:
            request = uow.requests.get(enclave_id, for_update=True)
            enclave = uow.enclaves.get(enclave_id, for_update=True)
            assert request is not None
            assert enclave is not None
            dirty = []
            for gpu in uow.gpus.for_enclave(enclave_id):
                if gpu.state == "allocated":
                    gpu.move("dirty", now)
                    uow.gpus.update(gpu, "allocated")
                    dirty.append(gpu.address)
            enclave.ended_at = now
            enclave.release(now)
            uow.enclaves.update(enclave)
            request.transition(S.TERMINATED, now)
            uow.requests.update(request)
            self._c.event(
                uow,
                "enclave:terminated",
                enclave_target(enclave_id),
                label=request.label,
                details={"host": enclave.host, "gpus_dirty": dirty},
            )
            uow.commit()


def _action(step: str) -> str:
    """The audit action of a recorded (or failed) step."""
    return "enclave:provision" if step.startswith(PROVISION) else "enclave:teardown"


def _done_steps(step: str, prefix: str) -> int:
    """How many steps of a phase are recorded as done."""
    if not step.startswith(prefix):
        return 0
    steps = PROVISION_STEPS if prefix == PROVISION else TEARDOWN_STEPS
    return steps.index(step.removeprefix(prefix)) + 1
