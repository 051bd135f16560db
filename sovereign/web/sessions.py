"""Console sessions: kept on the server, named in the browser by an opaque random cookie.

Owns :class:`ConsoleSession` (tokens, CSRF token, pending sign-ins, one-shot messages) and
:class:`MemorySessionStore`. The cookie carries 256 random bits and nothing else; the store
keys sessions by HMAC-SHA256(SECRET_KEY, cookie), so a dump of the table does not hold usable
cookies. Sessions end after an idle period and after an absolute lifetime, whichever comes
first, and a sign-in replaces the session id (no fixation).

Each session also carries a *reference* (:attr:`ConsoleSession.ref`): the first 16 hex digits of
SHA-256 over its store key, so over HMAC-SHA256(SECRET_KEY, cookie). It changes with the key at
sign-in and is what the audit log names the session by; neither the cookie nor the key can be
recovered from it. When the store drops a signed-in session on its own (idle, too old, table
full) it tells ``on_expire``, outside its lock, so the end can be audited. Expiry is noticed
lazily: when the browser comes back, when the session is evicted, or when :meth:`purge` runs
(nothing calls it periodically yet), so an abandoned session's ``session:expire`` may be late.

Limitation, by design of this first version: the store lives in the memory of the process that
created the session. Each replica (and each gunicorn worker) has its own, so run the console
with one worker process per replica (threads are fine) behind sticky sessions, and expect users
to sign in again after a restart. A shared store only needs to implement :class:`SessionStore`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from sovereign.services.sessions import SessionEnd
from sovereign.services.signin import PendingLogin

#: Random bytes in a session cookie and in a CSRF token (256 bits each).
TOKEN_BYTES = 32
#: Sign-ins one session may have in flight at once (several tabs); the oldest is dropped.
MAX_PENDING_LOGINS = 4

Clock = Callable[[], float]
#: Hex digits of the SHA-256 of the store key kept as a session's reference (64 bits: enough
#: to tell sessions apart in the log, and one-way like the key it is cut from).
REF_HEX_DIGITS = 16


@dataclass
class Resume:
    """A decision interrupted by a step-up, shown again (never replayed) after sign-in."""

    request_id: str
    reason: str


@dataclass
class ConsoleSession:
    """One browser's session: anonymous until a sign-in completes."""

    csrf_token: str
    created_at: float
    last_seen: float
    #: The session's name in the audit log (see the module docstring); set by the store.
    ref: str = ""
    subject: str | None = None
    username: str | None = None
    access_token: str | None = None
    refresh_token: str | None = None
    id_token: str | None = None
    #: When the user last typed their password (from the verified ID token), epoch seconds.
    auth_time: int | None = None
    logins: dict[str, PendingLogin] = field(default_factory=dict)
    messages: list[tuple[str, str]] = field(default_factory=list)
    resume: Resume | None = None
    #: Serialises token refreshes: two tabs must not both spend one rotating refresh token.
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def signed_in(self) -> bool:
        """Whether a sign-in completed in this session."""
        return self.access_token is not None

    def add_login(self, login: PendingLogin) -> None:
        """Remember a started sign-in, forgetting the oldest beyond :data:`MAX_PENDING_LOGINS`."""
        self.logins[login.state] = login
        while len(self.logins) > MAX_PENDING_LOGINS:
            self.logins.pop(next(iter(self.logins)))

    def take_login(self, state: str) -> PendingLogin | None:
        """The started sign-in whose ``state`` this is, removed (single use); None otherwise."""
        for known in list(self.logins):
            # Constant-time comparison: the state is the browser binding of the sign-in.
            if hmac.compare_digest(known.encode(), state.encode()):
                return self.logins.pop(known)
        return None

    def flash(self, message: str, category: str = "info") -> None:
        """Queue a message for the next page this session renders."""
        self.messages.append((category, message))

    def pop_messages(self) -> list[tuple[str, str]]:
        """The queued messages, now removed."""
        found, self.messages = self.messages, []
        return found


#: Told about each signed-in session the store drops on its own, and why.
ExpiryHook = Callable[[ConsoleSession, SessionEnd], None]


class SessionStore(Protocol):
    """Where console sessions live; cookie values in, sessions out.

    An implementation sets :attr:`ConsoleSession.ref` whenever it (re)keys a session and reports
    the signed-in sessions it drops by itself (not through :meth:`delete`) to an
    :data:`ExpiryHook`.
    """

    def create(self) -> tuple[str, ConsoleSession]:
        """A new anonymous session and the cookie value naming it."""
        ...

    def get(self, cookie: str) -> ConsoleSession | None:
        """The live session named by ``cookie`` (touched), or None if unknown or expired."""
        ...

    def rotate(self, cookie: str) -> tuple[str, ConsoleSession] | None:
        """Move the session to a new cookie value (after sign-in); None if it is gone."""
        ...

    def delete(self, cookie: str) -> None:
        """End the session named by ``cookie``, if any."""
        ...


class MemorySessionStore:
    """Sessions in this process's memory; see the module docstring for what that implies."""

    def __init__(
        self,
        secret_key: str,
        *,
        idle_timeout_s: float,
        max_age_s: float,
        max_sessions: int = 10000,
        clock: Clock = time.time,
        on_expire: ExpiryHook | None = None,
    ) -> None:
        self._key = secret_key.encode()
        self.idle_timeout_s = idle_timeout_s
        self.max_age_s = max_age_s
        self._max = max_sessions
        self.clock = clock
        self._on_expire = on_expire
        self._lock = threading.Lock()
        self._sessions: OrderedDict[bytes, ConsoleSession] = OrderedDict()

    def _id(self, cookie: str) -> bytes:
        return hmac.new(self._key, cookie.encode(), hashlib.sha256).digest()

    @staticmethod
    def _ref(key: bytes) -> str:
        return hashlib.sha256(key).hexdigest()[:REF_HEX_DIGITS]

    def _expired(self, session: ConsoleSession, now: float) -> SessionEnd | None:
        if now - session.created_at > self.max_age_s:
            return SessionEnd.MAX_AGE
        if now - session.last_seen > self.idle_timeout_s:
            return SessionEnd.IDLE
        return None

    def _report(self, ended: list[tuple[ConsoleSession, SessionEnd]]) -> None:
        """Tell the hook about signed-in sessions that ended; called without the lock held."""
        if self._on_expire is None:
            return
        for session, reason in ended:
            if session.signed_in:
                self._on_expire(session, reason)

    def create(self) -> tuple[str, ConsoleSession]:
        """A new anonymous session. When the table is full the least recently used session
        goes, an unfinished sign-in before any signed-in one, so that a flood of started
        sign-ins cannot push signed-in users out."""
        now = self.clock()
        cookie = secrets.token_urlsafe(TOKEN_BYTES)
        key = self._id(cookie)
        session = ConsoleSession(
            csrf_token=secrets.token_urlsafe(TOKEN_BYTES),
            created_at=now,
            last_seen=now,
            ref=self._ref(key),
        )
        evicted: list[tuple[ConsoleSession, SessionEnd]] = []
        with self._lock:
            self._sessions[key] = session
            while len(self._sessions) > self._max:
                anonymous = next(
                    (k for k, s in self._sessions.items() if not s.signed_in and s is not session),
                    None,
                )
                if anonymous is not None:
                    del self._sessions[anonymous]
                else:
                    evicted.append((self._sessions.popitem(last=False)[1], SessionEnd.EVICTED))
        self._report(evicted)
        return cookie, session

    def get(self, cookie: str) -> ConsoleSession | None:
        """The live session, its idle clock restarted; expired ones are removed."""
        now = self.clock()
        key = self._id(cookie)
        with self._lock:
            session = self._sessions.get(key)
            if session is None:
                return None
            reason = self._expired(session, now)
            if reason is None:
                session.last_seen = now
                self._sessions.move_to_end(key)
                return session
            del self._sessions[key]
        self._report([(session, reason)])
        return None

    def rotate(self, cookie: str) -> tuple[str, ConsoleSession] | None:
        """Same session under a new cookie value and a new CSRF token; the old value dies."""
        fresh = secrets.token_urlsafe(TOKEN_BYTES)
        with self._lock:
            session = self._sessions.pop(self._id(cookie), None)
            if session is None:
                return None
            session.csrf_token = secrets.token_urlsafe(TOKEN_BYTES)
            key = self._id(fresh)
            session.ref = self._ref(key)
            self._sessions[key] = session
        return fresh, session

    def delete(self, cookie: str) -> None:
        """Forget the session."""
        with self._lock:
            self._sessions.pop(self._id(cookie), None)

    def purge(self) -> int:
        """Drop every expired session (reporting the signed-in ones); returns how many went."""
        now = self.clock()
        ended: list[tuple[ConsoleSession, SessionEnd]] = []
        with self._lock:
            for key, session in list(self._sessions.items()):
                reason = self._expired(session, now)
                if reason is not None:
                    del self._sessions[key]
                    ended.append((session, reason))
        self._report(ended)
        return len(ended)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)
