"""Authentication failures in the audit log, aggregated per source and interval.

Owns :class:`AuthFailureAudit`, which every place that refuses an unauthenticated caller goes
through: a missing or invalid bearer token on the API, a console form without its session's
CSRF token, a refused console sign-in. Anyone can cause these without credentials, so writing
one audit event per failure would let a stranger grow the log without bound. Instead failures
are counted per *key* (source address, action, target, error code) and interval:

* the first failure of a key in an interval is written at once (``count`` 1), with its reason;
* the others in the same interval are summed, and one summary event per key (``count`` = how
  many, ``details.aggregated`` true, up to :data:`MAX_REASONS` distinct reasons with counts) is
  written when the interval is over: at the end of the next request the app serves
  (:meth:`flush`, which costs a lock and a comparison when nothing is due) or at shutdown.

So a flood from one source adds at most two events per key and interval, and the counts of a
key's events add up to the failures it saw. Counting is per process: with several replicas each
one writes its own events (bounded the same way), and the sums still add up across them.

Nothing about a token is recorded: no token, no prefix, no digest; only the verifier's reason
("token has expired"), cut to :data:`MAX_REASON` characters without
control characters. Failure policy: the caller refuses the request whatever happens here. If the
audit log cannot be written, the counts are kept for the next write and the loss is logged at
ERROR; recording an authentication failure never turns a 401 into something else.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from audit import AuditEvent, Outcome
from audit.export import UNSAFE
from sovereign.domain.identity import Principal
from sovereign.services.ports import UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow

log = logging.getLogger(__name__)

#: The action of a refused bearer token or CSRF token (console sign-ins keep ``session:login``).
AUTH_FAILURE = "auth:failure"
#: Who acts in a failure: nobody was verified, so no claimed name is trusted.
ANONYMOUS = "anonymous"
#: Distinct reasons kept per summary (the rest are counted under :data:`OTHER`).
MAX_REASONS = 5
#: Distinct reasons counted per key and interval before the rest go under :data:`OTHER`.
MAX_DISTINCT_REASONS = 50
OTHER = "other"
#: Keys tracked at once; past this the oldest are summarised early (memory stays bounded even
#: when the failures come from very many addresses).
MAX_KEYS = 10_000
#: Longest source address stored (addresses come from the socket or a trusted proxy header).
MAX_SOURCE = 64
#: Longest reason stored; longer (visitor-controlled) text is cut.
MAX_REASON = 200


def clip(text: str, limit: int = MAX_REASON) -> str:
    """``text`` without control characters or line separators (:data:`audit.export.UNSAFE`,
    the one definition) and at most ``limit`` characters long."""
    # Lone surrogates cannot be canonical JSON (RFC 8785): replace them with U+FFFD first.
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = UNSAFE.sub(" ", text)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


@dataclass(frozen=True)
class FailureKey:
    """What failures are counted together: one source, one kind of failure."""

    source: str
    action: str
    target: str
    code: str
    outcome: Outcome = Outcome.DENY


@dataclass
class _Window:
    started: datetime
    last: datetime
    #: Failures not written yet (the first one of a window is written at once).
    pending: int = 0
    reasons: Counter[str] = field(default_factory=Counter)


class AuthFailureAudit:
    """Counts authentication failures and writes them as a bounded number of audit events."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        *,
        interval_s: int = 60,
        clock: Clock = utcnow,
        max_keys: int = MAX_KEYS,
    ) -> None:
        if interval_s <= 0:
            raise ValueError("interval_s must be positive")
        self._recorder = Recorder(uow_factory, clock)
        self._clock = clock
        self._interval = timedelta(seconds=interval_s)
        self._max_keys = max_keys
        self._lock = threading.Lock()
        self._windows: OrderedDict[FailureKey, _Window] = OrderedDict()

    @property
    def interval_s(self) -> int:
        """How long failures of one key are summed into one event, in seconds."""
        return int(self._interval.total_seconds())

    def failed(
        self,
        source: str,
        action: str,
        target: str,
        code: str,
        reason: str,
        *,
        outcome: Outcome = Outcome.DENY,
        request_id: str = "",
    ) -> None:
        """Count one failure from ``source``; write what is due (never raises for the log)."""
        key = FailureKey(clip(source, MAX_SOURCE), action, target, code, outcome)
        reason = clip(reason)
        now = self._clock()
        first: AuditEvent | None = None
        with self._lock:
            due = self._take_due(now)
            window = self._windows.get(key)
            if window is None:
                self._windows[key] = _Window(started=now, last=now)
                first = self._event(key, now, reason, 1, request_id)
                while len(self._windows) > self._max_keys:
                    old_key, old = self._windows.popitem(last=False)
                    due.append((old_key, old))
            else:
                window.last = now
                window.pending += 1
                # Distinct reasons are kept up to a bound (visitors choose some of the text).
                known = reason in window.reasons or len(window.reasons) < MAX_DISTINCT_REASONS
                window.reasons[reason if known else OTHER] += 1
        events = [self._summary(k, w) for k, w in due if w.pending]
        if first is not None:
            events.append(first)
        self._write(events, key)

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of intervals that are over (all of them if ``everything``)."""
        with self._lock:
            if everything:
                due = list(self._windows.items())
                self._windows.clear()
            else:
                due = self._take_due(self._clock())
        self._write([self._summary(k, w) for k, w in due if w.pending], None)

    def _take_due(self, now: datetime) -> list[tuple[FailureKey, _Window]]:
        """Remove and return the windows whose interval is over (caller holds the lock)."""
        # Windows are kept in the order they started, so the due ones are at the front.
        due: list[tuple[FailureKey, _Window]] = []
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.started < self._interval:
                break
            del self._windows[key]
            due.append((key, window))
        return due

    def _event(
        self,
        key: FailureKey,
        now: datetime,
        reason: str,
        count: int,
        request_id: str,
        **extra: object,
    ) -> AuditEvent:
        ctx = CallContext(
            principal=Principal(subject="", username=ANONYMOUS),
            request_id=request_id,
            source=key.source,
            actor=ANONYMOUS,
        )
        return self._recorder.event(
            ctx,
            key.action,
            key.target,
            key.outcome,
            reason=reason,
            details={
                "error": key.code,
                "count": count,
                "interval_s": self.interval_s,
                "first_at": now.isoformat(),
                **extra,
            },
        )

    def _summary(self, key: FailureKey, window: _Window) -> AuditEvent:
        reasons = dict(window.reasons.most_common(MAX_REASONS))
        rest = window.pending - sum(reasons.values())
        if rest:
            reasons[OTHER] = reasons.get(OTHER, 0) + rest
        return self._event(
            key,
            window.started,
            f"{window.pending} more such failures from this source",
            window.pending,
            "",
            aggregated=True,
            last_at=window.last.isoformat(),
            reasons=reasons,
        )

    def _write(self, events: list[AuditEvent], key: FailureKey | None) -> None:
        if not events:
            return
        try:
            self._recorder.commit(*events)
        except Exception as e:
            lost = sum(int(ev.details.get("count", 0)) for ev in events)
            log.exception(
                "AUDIT EVENTS LOST: %d authentication failure event(s) (%d failures, e.g. %s "
                "%s from %s) could not be written; their counts are kept for the next write",
                len(events),
                lost,
                events[0].action,
                events[0].details.get("error"),
                events[0].source,
                exc_info=e,
            )
            self._keep(events)

    def _keep(self, events: list[AuditEvent]) -> None:
        """Put the counts of unwritten events back, so a later summary carries them."""
        now = self._clock()
        with self._lock:
            for ev in events:
                key = FailureKey(
                    ev.source, ev.action, ev.target, str(ev.details.get("error")), ev.outcome
                )
                window = self._windows.setdefault(key, _Window(started=now, last=now))
                count = int(ev.details.get("count", 0))
                window.pending += count
                window.reasons[ev.reason if count == 1 else "unrecorded"] += count
