"""Keycloak's brute-force detection for the development IdP: wrong passwords lock a user out
for a while, and the wait grows with every further run of failures.

Owns :class:`BruteForceSettings` (the realm attributes of the same names, with Keycloak's
defaults) and :class:`BruteForceDetector`, which follows Keycloak's
``DefaultBruteForceProtector`` with permanent lockout off:

* every wrong password for a known user counts a failure; a right one clears the count, and so
  does a failure more than ``max_delta_time_s`` after the previous one;
* after each failure the user must wait ``wait_increment_s * (failures // failure_factor)``
  seconds, at most ``max_failure_wait_s``; a failure within ``quick_login_check_ms`` of the
  previous one that would not otherwise wait waits ``minimum_quick_login_wait_s``;
* while a user must wait, every attempt is refused with the answer a wrong password gets,
  without the password being checked, so a locked-out guesser learns nothing; attempts during
  the wait do not count.

Unknown usernames are not tracked (there is no one to lock out), as in Keycloak.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class BruteForceSettings:
    """Keycloak's realm brute-force attributes (``bruteForceProtected`` and the rest)."""

    #: ``failureFactor``: failures before the first wait.
    failure_factor: int = 30
    #: ``waitIncrementSeconds``: added to the wait for every ``failure_factor`` failures.
    wait_increment_s: int = 60
    #: ``maxFailureWaitSeconds``: the longest wait.
    max_failure_wait_s: int = 900
    #: ``quickLoginCheckMilliSeconds``: failures closer together than this are "quick".
    quick_login_check_ms: int = 1000
    #: ``minimumQuickLoginWaitSeconds``: the wait after a quick failure.
    minimum_quick_login_wait_s: int = 60
    #: ``maxDeltaTimeSeconds``: a failure this long after the last one starts a new count.
    max_delta_time_s: int = 12 * 3600


@dataclass
class _Failures:
    count: int = 0
    last: float = 0.0
    not_before: float = 0.0


class BruteForceDetector:
    """Counts wrong passwords per user and says who must wait."""

    def __init__(
        self, settings: BruteForceSettings, clock: Callable[[], float] = time.time
    ) -> None:
        self.settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._users: dict[str, _Failures] = {}

    def locked(self, username: str) -> bool:
        """Whether ``username`` must wait before the next attempt."""
        with self._lock:
            found = self._users.get(username)
            return found is not None and self._clock() < found.not_before

    def failure(self, username: str) -> None:
        """Count a wrong password for ``username`` and set the wait that follows."""
        s = self.settings
        now = self._clock()
        with self._lock:
            found = self._users.setdefault(username, _Failures())
            delta = now - found.last if found.last else 0.0
            if found.last and delta > s.max_delta_time_s:
                found.count = 0
            found.count += 1
            wait = s.wait_increment_s * (found.count // s.failure_factor)
            if wait == 0 and found.last and delta * 1000 < s.quick_login_check_ms:
                wait = s.minimum_quick_login_wait_s
            found.last = now
            if wait > 0:
                found.not_before = now + min(wait, s.max_failure_wait_s)

    def success(self, username: str) -> None:
        """A right password (outside a wait) clears the count."""
        with self._lock:
            self._users.pop(username, None)
