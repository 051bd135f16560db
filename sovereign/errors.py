"""The control plane's error tree.

Owns the exception classes that services and the domain raise. It knows nothing about HTTP: the API
and the console map each class to a status in one table (``sovereign.channels.statuses``). Each
error has a ``msg_fmt`` filled from keyword arguments and a ``safe`` flag saying whether its
message may be shown to the caller; unsafe errors are logged and answered with a generic text.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SovereignError(Exception):
    """Base of every error the control plane raises on purpose."""

    msg_fmt: ClassVar[str] = "An unexpected error occurred."
    #: Whether the message may be shown to the caller as the problem ``detail``.
    safe: ClassVar[bool] = False
    #: Short machine-readable slug, used for the problem ``type``.
    code: ClassVar[str] = "internal-error"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.kwargs = kwargs
        if message is None:
            message = self.msg_fmt.format(**kwargs)
        self.message = message
        super().__init__(message)


class InvalidInputError(SovereignError):
    """The input is well-formed but its values are not acceptable."""

    msg_fmt = "Invalid input: {reason}"
    safe = True
    code = "invalid-input"

    def __init__(
        self,
        message: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        self.errors = errors or []
        super().__init__(message, **kwargs)


class LabelError(InvalidInputError):
    """A security label names an unknown level or compartment."""

    msg_fmt = "Invalid label: {reason}"
    code = "invalid-label"


class AuthenticationError(SovereignError):
    """No credentials, or credentials that do not verify."""

    msg_fmt = "Authentication failed: {reason}"
    safe = True
    code = "unauthenticated"


class StepUpRequiredError(AuthenticationError):
    """The caller is known, but the action needs a more recent sign-in than the token shows.

    ``max_age`` is the most seconds since the user last typed their password (OIDC
    ``auth_time``) that the action accepts; RFC 9470 calls for a new authentication this fresh.
    """

    msg_fmt = "{action} needs a sign-in within the last {max_age} seconds; sign in again."
    code = "step-up-required"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.max_age = int(kwargs.get("max_age", 0))
        super().__init__(message, **kwargs)


class RateLimitedError(SovereignError):
    """Too many requests from one client or principal in the current window."""

    msg_fmt = "Too many requests: {limit}. Try again in {retry_after} seconds."
    safe = True
    code = "rate-limited"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.retry_after = max(int(kwargs.get("retry_after", 1)), 1)
        kwargs["retry_after"] = self.retry_after
        super().__init__(message, **kwargs)


class PolicyDeniedError(SovereignError):
    """The caller is known but policy forbids the action."""

    msg_fmt = "Not allowed: {reason}"
    safe = True
    code = "forbidden"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.reason = str(kwargs.get("reason", message or ""))
        super().__init__(message, **kwargs)


class NotFoundError(SovereignError):
    """The thing does not exist, or the caller may not know that it exists."""

    msg_fmt = "{kind} {ident} not found."
    safe = True
    code = "not-found"


class ConflictError(SovereignError):
    """The action does not fit the current state of the thing."""

    msg_fmt = "Conflict: {reason}"
    safe = True
    code = "conflict"


class HostIdentityError(ConflictError):
    """A host's URI reaches another hypervisor than the one recorded (or one recorded under
    another name): nothing may be done there as if it were the same host."""

    msg_fmt = "Host identity: {reason}"
    code = "host-identity"


class InvalidTransitionError(ConflictError):
    """A state machine was asked for a transition it does not have."""

    msg_fmt = "Cannot go from {current} to {target}."
    code = "invalid-transition"


class ConcurrentUpdateError(ConflictError):
    """Someone else changed the same thing at the same moment; retrying may succeed."""

    msg_fmt = "{kind} {ident} was changed concurrently; retry."
    code = "concurrent-update"


class QuotaExceededError(ConflictError):
    """The tenant's quota cannot hold the request."""

    msg_fmt = "Quota exceeded for tenant {tenant}: {reason}"
    code = "quota-exceeded"


class DependencyUnavailableError(SovereignError):
    """A backing system (database, Vault, identity provider, hypervisor) did not answer."""

    msg_fmt = "{dependency} is unavailable."
    safe = True
    code = "dependency-unavailable"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        self.dependency = str(kwargs.get("dependency", "a dependency"))
        super().__init__(message, **kwargs)


class AuditUnavailableError(DependencyUnavailableError):
    """The audit log could not record a decision, so the decision did not happen."""

    msg_fmt = "The audit log could not be written; nothing was changed."
    code = "audit-unavailable"

    def __init__(self, message: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("dependency", "audit log")
        super().__init__(message, **kwargs)


class ConfigurationError(SovereignError):
    """The configuration is inconsistent or unsafe (e.g. the dev IdP in production)."""

    msg_fmt = "Configuration error: {reason}"
    safe = False
    code = "configuration-error"


class WorkloadError(SovereignError):
    """An enclave's agent misbehaved (garbage, a bad hash or name, a refusal): the job it was
    running fails with this message, the runner goes on."""

    msg_fmt = "The enclave's agent misbehaved: {reason}"
    safe = True
    code = "workload-error"


class GpuHandoverError(SovereignError):
    """A GPU's hand-over between tenants failed (the reset or the scrub could not be done, or
    gave no usable answer): the hand-over ends with a failed certificate and the GPU is
    quarantined. ``reason`` (no secret; it may quote libvirt or a guest) goes into the
    certificate, which makes it one bounded, printable line.

    Not for a host that cannot be reached now: that is a
    :class:`DependencyUnavailableError`, retried later.
    """

    msg_fmt = "GPU hand-over failed: {reason}"
    safe = True
    code = "gpu-handover-failed"

    def __init__(self, reason: str | None = None, **kwargs: Any) -> None:
        self.reason = str(reason if reason is not None else kwargs.pop("reason", "unknown"))
        kwargs.pop("reason", None)
        super().__init__(None, reason=self.reason, **kwargs)


class GoneError(SovereignError):
    """The thing existed but can never be read again (e.g. its key was crypto-erased)."""

    msg_fmt = "{kind} {ident} is gone: {reason}"
    safe = True
    code = "gone"


class TooLargeError(SovereignError):
    """The request, or a part of it, is larger than the configured limit."""

    msg_fmt = "Too large: {reason}"
    safe = True
    code = "too-large"
