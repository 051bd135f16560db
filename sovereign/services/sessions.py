"""Console sessions in the audit log: sign-ins, refused sign-ins, sign-outs and expiry.

Owns the ``session:*`` events: ``session:login`` (allow, or deny with the reason),
``session:logout`` and ``session:expire``. It never sees a token, an authorization code, a cookie
or a session id, and must not be given one: sessions are named by a *session reference*, a
short one-way digest of the server-side session key (16 hex digits, checked here), the same at
sign-in, sign-out and expiry, so an auditor can pair them (target ``session/<ref>``) but nobody
can turn it back into anything that opens the session. Strings a visitor controls (an IdP error
description) are cut short without control characters
(:func:`~sovereign.services.authfailures.clip`).

Failure policy, and why it differs between the ends of a session:

* A sign-in is a decision like any other, so it fails closed: :meth:`SessionAuditService.signed_in`
  writes in a unit of work of its own *before* the session receives the user's tokens, and
  raises :class:`~sovereign.errors.AuditUnavailableError` if it cannot; the caller must then
  not create the session. Nobody works in the console without a record of when they came in.
* A refused sign-in needs no credentials, so anyone can cause one: :meth:`sign_in_failed`
  goes through :class:`~sovereign.services.authfailures.AuthFailureAudit`, which writes the
  first refusal per source and kind at once and sums the rest into one event per interval
  (bounded under a flood), and never raises for the log: the sign-in is refused either way.
* Sign-out and expiry cannot fail closed in the same sense: refusing to end a session because
  the log is down would keep a user signed in who asked to leave, or whose time is up, which is
  the less safe outcome. So the session ends anyway; :meth:`signed_out` and :meth:`expired`
  log the lost event at ERROR level with its action, target, actor and reason (never a token)
  for operators to reconcile, and return False.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

from audit import AuditEvent, Outcome
from sovereign.errors import (
    AuditUnavailableError,
    AuthenticationError,
    DependencyUnavailableError,
)
from sovereign.services.collaborators import FailureCounter
from sovereign.services.ports import UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow

log = logging.getLogger(__name__)

LOGIN = "session:login"
LOGOUT = "session:logout"
EXPIRE = "session:expire"
#: The actor of a refused sign-in: nobody was verified, so no claimed name is trusted.
#: The actor of an expiry: the console ends the session, not the user.
EXPIRY_ACTOR = "system:console"
#: What a session reference looks like: 64 bits of a SHA-256, lower-case hex. Anything else
#: (a cookie, a token) is refused before it can reach the log.
SESSION_REF = re.compile(r"^[0-9a-f]{16}$")


class SignInFailure(StrEnum):
    """Why a sign-in was refused; stored as ``details.error``."""

    #: The ``state`` was not started in this browser, was used already, or its session ended
    #: (login CSRF defence).
    UNKNOWN_STATE = "unknown-state"
    TIMED_OUT = "timed-out"
    #: The IdP sent the browser back with ``error=...``.
    IDP_ERROR = "idp-error"
    #: The code was refused, a token did not verify (signature, nonce, ...), or a step-up was
    #: not honoured.
    NOT_VERIFIED = "not-verified"
    #: The IdP could not be reached (outcome ``error`` rather than ``deny``).
    IDP_UNAVAILABLE = "idp-unavailable"


class SessionEnd(StrEnum):
    """Why a session ended without a sign-out; stored as the reason of ``session:expire``."""

    IDLE = "idle"
    MAX_AGE = "max-age"
    #: The session table was full and this was the least recently used signed-in session.
    EVICTED = "evicted"
    #: The access token expired and there is no refresh token to renew it.
    ACCESS_EXPIRED = "access-expired"
    #: The IdP refused to refresh the tokens (session ended or revoked there).
    IDP_SESSION_ENDED = "idp-session-ended"
    #: The refreshed tokens named another user.
    SUBJECT_CHANGED = "subject-changed"


def session_target(session_ref: str) -> str:
    """The audit target of a session: ``session/<ref>``.

    :raises ValueError: if ``session_ref`` is not a session reference (say, a raw cookie).
    """
    if not SESSION_REF.match(session_ref):
        raise ValueError("a session reference is 16 lower-case hex digits")
    return f"session/{session_ref}"


class SessionAuditService:
    """Writes the ``session:*`` events of the console (see the module docstring for when a
    failure to write stops the caller and when it only gets logged)."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        clock: Clock = utcnow,
        *,
        failures: FailureCounter,
    ) -> None:
        self._recorder = Recorder(uow_factory, clock)
        self._failures = failures

    def signed_in(
        self,
        ctx: CallContext,
        *,
        auth_time: int | None,
        session_ref: str,
        step_up: bool = False,
        replaces: str | None = None,
    ) -> None:
        """Record that ``ctx.principal`` signed in to the session ``session_ref``.

        ``replaces`` is the reference the same browser session had before (a step-up, or
        another user signing in over it), so the chain of references stays unbroken.

        :raises AuditUnavailableError: if the event cannot be written; do not create the
            session then.
        """
        details: dict[str, Any] = {
            "username": ctx.principal.username,
            "session_ref": session_ref,
            "auth_time": auth_time,
            "step_up": step_up,
        }
        if replaces is not None:
            session_target(replaces)  # a reference, nothing else
            details["replaces"] = replaces
        self._recorder.commit(
            self._recorder.event(
                ctx, LOGIN, session_target(session_ref), Outcome.ALLOW, details=details
            )
        )

    def sign_in_failed(
        self,
        source: str,
        reason: str,
        *,
        failure: SignInFailure = SignInFailure.NOT_VERIFIED,
        request_id: str = "",
    ) -> None:
        """Count a refused sign-in from ``source`` (``reason`` is cut short), recorded as
        ``session:login`` (deny, or error for an unreachable IdP) aggregated per source,
        failure and interval. Never raises for the log.
        """
        outcome = Outcome.ERROR if failure is SignInFailure.IDP_UNAVAILABLE else Outcome.DENY
        self._failures.failed(
            source,
            LOGIN,
            "session",
            failure.value,
            reason,
            outcome=outcome,
            request_id=request_id,
        )

    @contextmanager
    def attempt(self, source: str, *, request_id: str = "") -> Iterator[None]:
        """Record a refused sign-in for an :class:`AuthenticationError` raised in the block, or
        a failed one for an unreachable IdP, then let the error go on."""
        try:
            yield
        except AuditUnavailableError:
            raise
        except AuthenticationError as e:
            self.sign_in_failed(
                source, e.message, failure=SignInFailure.NOT_VERIFIED, request_id=request_id
            )
            raise
        except DependencyUnavailableError as e:
            self.sign_in_failed(
                source, e.message, failure=SignInFailure.IDP_UNAVAILABLE, request_id=request_id
            )
            raise

    def signed_out(self, ctx: CallContext, session_ref: str) -> bool:
        """Record that ``ctx.principal`` signed out of ``session_ref``; never raises for the log.

        Returns whether the event was written; if not, the loss is logged at ERROR and the
        caller ends the session anyway (module docstring).
        """
        event = self._recorder.event(
            ctx,
            LOGOUT,
            session_target(session_ref),
            Outcome.ALLOW,
            details={"username": ctx.principal.username, "session_ref": session_ref},
        )
        return self._write_or_log(event)

    def expired(self, ctx: CallContext, session_ref: str, *, reason: SessionEnd) -> bool:
        """Record that the session ``session_ref`` of ``ctx.principal`` ended for ``reason``.

        The actor is :data:`EXPIRY_ACTOR`; the user is in ``details``. Returns whether the event
        was written; if not, the loss is logged at ERROR and the session is gone anyway.
        """
        event = self._recorder.event(
            CallContext(
                principal=ctx.principal,
                request_id=ctx.request_id,
                source=ctx.source,
                actor=EXPIRY_ACTOR,
            ),
            EXPIRE,
            session_target(session_ref),
            Outcome.ALLOW,
            reason=reason.value,
            details={"username": ctx.principal.username, "session_ref": session_ref},
        )
        return self._write_or_log(event)

    def _write_or_log(self, event: AuditEvent) -> bool:
        try:
            self._recorder.commit(event)
        except AuditUnavailableError as e:
            # Loud, and enough to reconstruct the event by hand; no token is in it to leak.
            log.exception(
                "AUDIT EVENT LOST: %s %s by %s (%s): the session ended but the audit log "
                "could not record it",
                event.action,
                event.target,
                event.actor,
                event.reason or "-",
                exc_info=e,
            )
            return False
        return True
