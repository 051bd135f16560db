"""What a reconciler worker has reported about drift, so each condition is reported once.

Owns :class:`DriftLedger`: the drift conditions seen on each host (keyed by host, subject and
kind, e.g. ``("civil-1", "intruder", "unknown-domain")``) and what was last reported about each.
A condition is reported when it appears, again only when its description changes, and once more
when it clears; a condition that keeps changing is reported at most :data:`BURST` times per
``min_interval`` (the state it settled in is reported once the interval allows, with the number
of changes skipped), so no one condition can flood the log or the audit trail however often the
reconciler runs.

It decides only *whether* to report; the reconciler logs and audits what it returns. It keeps no
state across processes: a restarted worker reports each standing condition once more.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sovereign.services.recording import Clock

#: (host, subject, kind): one drift condition.
DriftKey = tuple[str, str, str]

#: A condition that keeps changing is reported at most BURST times per this interval.
DEFAULT_MIN_INTERVAL = timedelta(seconds=60)
BURST = 3


@dataclass(frozen=True)
class DriftChange:
    """A condition to report: it appeared, changed or cleared."""

    host: str
    subject: str
    kind: str
    #: What was reported before (None: nothing, the condition is new).
    before: str | None
    #: What holds now (None: the condition cleared).
    after: str | None
    #: Changes seen since the last report that were not reported (rate bound).
    skipped: int = 0

    @property
    def cleared(self) -> bool:
        """Whether the condition no longer holds."""
        return self.after is None

    @property
    def message(self) -> str:
        """One line saying what happened."""
        if self.after is None and self.before is None:
            text = f"{self.kind} {self.subject} on host {self.host} came and went again"
        elif self.after is None:
            text = f"cleared: {self.before}"
        elif self.before is None or self.before == self.after:
            text = self.after
        else:
            text = f"{self.after} (was: {self.before})"
        if self.skipped:
            text += f" [{self.skipped} earlier changes not reported]"
        return text


class DriftLedger:
    """Known drift conditions per host and when each was last reported."""

    def __init__(self, clock: Clock, min_interval: timedelta = DEFAULT_MIN_INTERVAL) -> None:
        self._clock = clock
        self._min_interval = min_interval
        #: What was last reported per condition (absent: nothing standing was reported).
        self._reported: dict[DriftKey, str] = {}
        #: What holds now per condition, as last observed.
        self._current: dict[DriftKey, str] = {}
        #: When each condition was reported within the last interval (at most BURST times).
        self._recent: dict[DriftKey, list[datetime]] = {}
        #: Changes observed since the condition was last reported.
        self._pending: dict[DriftKey, int] = {}

    def known(self, host: str) -> dict[DriftKey, str]:
        """The conditions standing on ``host`` as last observed."""
        return {key: text for key, text in self._current.items() if key[0] == host}

    def forget(self, host: str) -> None:
        """Forget what was reported about ``host`` (the report could not be recorded)."""
        for table in (self._reported, self._current, self._recent, self._pending):
            for key in [k for k in table if k[0] == host]:
                del table[key]

    def observe(self, host: str, conditions: dict[tuple[str, str], str]) -> list[DriftChange]:
        """Record every condition found on ``host`` in this pass and return what to report.

        ``conditions`` maps (subject, kind) to a description; one missing from it that held
        before has cleared. Only hosts actually checked may be observed (a host that could not
        be listed keeps its conditions).
        """
        now = self._clock()
        seen = {(host, subject, kind): text for (subject, kind), text in conditions.items()}
        before_pass = self.known(host)
        for key in before_pass.keys() | seen.keys():
            if before_pass.get(key) != seen.get(key):
                self._pending[key] = self._pending.get(key, 0) + 1
            if key in seen:
                self._current[key] = seen[key]
            else:
                del self._current[key]
        changes = []
        for key in sorted(k for k in self._pending if k[0] == host):
            before, after = self._reported.get(key), self._current.get(key)
            recent = [t for t in self._recent.get(key, []) if now - t < self._min_interval]
            self._recent[key] = recent
            if len(recent) >= BURST:
                continue
            # The change reported now is one of the pending ones and the rest went unreported;
            # a condition that changed and changed back is reported with what it skipped.
            pending = self._pending.pop(key)
            changes.append(DriftChange(*key, before, after, pending - (before != after)))
            recent.append(now)
            if after is None:
                del self._reported[key]
            else:
                self._reported[key] = after
        # Forget the report times of conditions long gone (names come and go for ever).
        for key, times in list(self._recent.items()):
            gone = key not in self._reported and key not in self._pending
            if gone and all(now - t >= self._min_interval for t in times):
                del self._recent[key]
        return changes


class LogLimiter:
    """At most one log line per key per interval, counting the lines held back.

    For conditions that are not drift but repeat every pass (a host that cannot be listed, a
    pass that fails the same way): the first line is written, later ones only once the
    interval has passed, saying how many were held back meanwhile.
    """

    def __init__(self, clock: Clock, min_interval: timedelta = DEFAULT_MIN_INTERVAL) -> None:
        self._clock = clock
        self._min_interval = min_interval
        self._last: dict[str, datetime] = {}
        self._held: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None to hold this line back; else how many lines for ``key`` were held back."""
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._min_interval:
            self._held[key] = self._held.get(key, 0) + 1
            return None
        self._last = {k: t for k, t in self._last.items() if now - t < self._min_interval}
        self._last[key] = now
        return self._held.pop(key, 0)


def held_note(count: int) -> str:
    """The suffix of a log line saying how many like it :class:`LogLimiter` held back."""
    return f" ({count} like lines held back)" if count else ""
