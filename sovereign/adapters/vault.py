"""Vault (or OpenBao) through hvac.

Owns the client construction, authentication (AppRole in production, a fixed token for the dev
server), the readiness probe, the :class:`~sovereign.services.ports.SecretStore` backend on the
transit engine, and :func:`ensure_engine` (which the development stack's Vault layout,
``devstack.vault``, uses too). hvac and requests exceptions are translated here, in
:func:`translate_error` only; no ``hvac.exceptions`` value leaves this module. Tokens, secret ids
and plaintext keys are never logged nor put in error messages; only mount and key names and
versions are.

Layout in Vault: one transit mount per security domain (``sovereign-civilian``,
``sovereign-defence``, ...), per-enclave AES-256-GCM keys in them; the Ed25519 key
``audit-checkpoints`` in ``sovereign-audit``; KV v2 at ``sovereign-config`` for non-key
configuration. The ACL policies are ``ansible/vault/policies/*.hcl``.
"""

from __future__ import annotations

import base64
import logging
import re
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol, TypeVar

import hvac
import requests
from hvac import exceptions as hvac_exc

from sovereign.domain.keys import KeyRef, WrappedSecret
from sovereign.errors import (
    ConfigurationError,
    ConflictError,
    DependencyUnavailableError,
    InvalidInputError,
    NotFoundError,
    SovereignError,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Per-enclave keys: AES-256-GCM with a 96-bit nonce, the transit default for encryption.
TRANSIT_KEY_TYPE = "aes256-gcm96"
#: Data keys are AES-256 keys for the callers' own AES-GCM.
DATA_KEY_BITS = 256
#: The checkpoint signing key and its mount (Ed25519, never exportable).
AUDIT_MOUNT = "sovereign-audit"
AUDIT_KEY = "audit-checkpoints"
AUDIT_KEY_TYPE = "ed25519"
#: Non-key configuration (KV version 2).
CONFIG_MOUNT = "sovereign-config"
#: Renew a token when less than this fraction of its TTL remains.
RENEW_WHEN_REMAINING = 1 / 3

# Transit answers 400 (OpenBao and Vault) with these texts for a key that does not exist; a
# missing mount or a read of a missing key answers 404.
_KEY_NOT_FOUND = re.compile(
    r"encryption key not found|\bkey not found|no existing key named"
    r"|could not delete key; not found",
    re.IGNORECASE,
)
_CIPHERTEXT_VERSION = re.compile(r"^vault:v(\d+):")
_STATUS = {
    hvac_exc.InvalidRequest: 400,
    hvac_exc.Unauthorized: 401,
    hvac_exc.Forbidden: 403,
    hvac_exc.InvalidPath: 404,
    hvac_exc.RateLimitExceeded: 429,
    hvac_exc.InternalServerError: 500,
    hvac_exc.VaultNotInitialized: 501,
    hvac_exc.BadGateway: 502,
    hvac_exc.VaultDown: 503,
}


class LoginRefusedError(Exception):
    """Vault refused an AppRole login or the unwrapping of a wrapped secret id (internal:
    :func:`translate_error` turns it into :class:`DependencyUnavailableError`)."""


def translate_error(  # noqa: PLR0911 - one flat table of cases reads best
    exc: Exception, *, what: str, key: KeyRef | None = None
) -> SovereignError:
    """The control plane's error for a failed Vault call; the one place hvac and requests
    exceptions are interpreted. Messages name Vault, the operation and the key, never a token.

    Down, sealed, slow, 5xx and 403 are all :class:`DependencyUnavailableError` (503 for the
    caller): a 403 means the deployment's policy or credentials are wrong, not the caller's
    request. A missing key is :class:`NotFoundError`.
    """
    where = f" on {key.mount}/{key.name}" if key is not None else ""
    if isinstance(exc, LoginRefusedError):
        return DependencyUnavailableError(
            f"vault refused the AppRole login ({exc}); check the role id and secret id",
            dependency="vault",
        )
    if isinstance(exc, requests.Timeout):
        return DependencyUnavailableError(
            f"vault did not answer in time to {what}{where}", dependency="vault"
        )
    if isinstance(exc, requests.RequestException):
        return DependencyUnavailableError(
            f"vault is unreachable ({type(exc).__name__}) to {what}{where}", dependency="vault"
        )
    if isinstance(exc, hvac_exc.Forbidden | hvac_exc.Unauthorized):
        return DependencyUnavailableError(
            f"vault refused the control plane's token to {what}{where}; check its policy",
            dependency="vault",
        )
    if isinstance(exc, hvac_exc.VaultDown):
        return DependencyUnavailableError(
            f"vault is sealed or in standby and cannot {what}", dependency="vault"
        )
    if key is not None and (
        isinstance(exc, hvac_exc.InvalidPath)
        or (isinstance(exc, hvac_exc.InvalidRequest) and _KEY_NOT_FOUND.search(str(exc)))
    ):
        return NotFoundError(kind="key", ident=f"{key.mount}/{key.name}")
    if isinstance(exc, hvac_exc.InvalidRequest | hvac_exc.InvalidPath):
        # E.g. a ciphertext that does not authenticate under the key: Vault's text may quote
        # the input, so it stays in the exception chain (logs), not in the message.
        return InvalidInputError(reason=f"vault rejected the request to {what}{where}")
    status = _STATUS.get(type(exc), "an unexpected status")
    return DependencyUnavailableError(
        f"vault failed ({status}) to {what}{where}", dependency="vault"
    )


def vault_status(exc: BaseException | None) -> int | None:
    """The HTTP status Vault answered, as hvac's exception class tells it, or None."""
    return next((s for cls, s in _STATUS.items() if type(exc) is cls), None)


class VaultAuth(Protocol):
    """Keeps a client token valid: logs in, renews, logs in again."""

    def token(self, client: hvac.Client) -> str:
        """A valid token, logging in or renewing through ``client`` first if needed.

        :raises hvac.exceptions.VaultError, requests.RequestException, LoginRefusedError:
            translated by the caller.
        """
        ...

    def invalidate(self) -> bool:
        """Forget the token so the next call logs in; False if that cannot help."""
        ...


class TokenAuth:
    """A fixed token: the dev server's root token only. Production uses :class:`AppRoleAuth`;
    the service assembly refuses a fixed token outside development."""

    def __init__(self, token: str) -> None:
        log.warning("vault: authenticating with a fixed token; only for the dev server")
        self._token = token

    def token(self, client: hvac.Client) -> str:
        return self._token

    def invalidate(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "TokenAuth(token=<redacted>)"


class AppRoleAuth:
    """AppRole login with a role id and a secret id given inline, in a file, or as a
    response-wrapped token; keeps the token and renews it (``auth/token/renew-self``) when less
    than :data:`RENEW_WHEN_REMAINING` of its TTL remains, logging in again when renewal fails or
    the token reaches its max TTL.

    A secret id file is read at every login (so the deployment may replace it). A wrapped token
    is single-use: it is unwrapped at the first login and the secret id it held is kept in
    memory for later logins.
    """

    def __init__(
        self,
        role_id: str,
        secret_id: str | None = None,
        *,
        secret_id_file: Path | str | None = None,
        wrapped_token: str | None = None,
        mount: str = "approle",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        given = [v for v in (secret_id, secret_id_file, wrapped_token) if v is not None]
        if len(given) != 1:
            raise ConfigurationError(
                reason="AppRole needs exactly one of secret_id, secret_id_file, wrapped_token"
            )
        self.role_id = role_id
        self._secret_id = secret_id
        self._secret_id_file = Path(secret_id_file) if secret_id_file is not None else None
        self._wrapped_token = wrapped_token
        self._mount = mount
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._login_ttl = 0.0
        self._ttl = 0.0
        self._obtained = 0.0
        self._renewable = False
        #: How often it logged in and renewed (for tests and metrics).
        self.logins = 0
        self.renewals = 0

    def __repr__(self) -> str:
        return f"AppRoleAuth(role_id={self.role_id!r}, secret_id=<redacted>)"

    def token(self, client: hvac.Client) -> str:
        with self._lock:
            if self._token is None:
                return self._login(client)
            if self._ttl > 0 and self._remaining() < self._ttl * RENEW_WHEN_REMAINING:
                if not self._renewable:
                    return self._login(client)
                try:
                    return self._renew(client)
                except (hvac_exc.Forbidden, hvac_exc.InvalidRequest, hvac_exc.Unauthorized):
                    # Expired or revoked meanwhile: a fresh login is the way back.
                    log.info("vault token renewal refused; logging in again (approle)")
                    return self._login(client)
            return self._token

    def invalidate(self) -> bool:
        with self._lock:
            self._token = None
        return True

    def _remaining(self) -> float:
        return self._ttl - (self._clock() - self._obtained)

    def _login(self, client: hvac.Client) -> str:
        secret_id = self._current_secret_id(client)
        client.token = None  # login paths need no token; never send a stale one
        try:
            answer = client.auth.approle.login(
                self.role_id, secret_id, use_token=False, mount_point=self._mount
            )
        except (hvac_exc.InvalidRequest, hvac_exc.Forbidden, hvac_exc.Unauthorized) as e:
            raise LoginRefusedError("login") from e
        auth = answer["auth"]
        self._token = str(auth["client_token"])
        self._login_ttl = float(auth.get("lease_duration") or 0)
        self._set_lease(auth)
        self.logins += 1
        log.info("vault approle login: ttl %ss", int(self._ttl))
        return self._token

    def _renew(self, client: hvac.Client) -> str:
        assert self._token is not None
        client.token = self._token
        auth = client.auth.token.renew_self()["auth"]
        self._set_lease(auth)
        self.renewals += 1
        if self._ttl < self._login_ttl * RENEW_WHEN_REMAINING:
            # Capped by the token's max TTL: renewing again would not help for long.
            return self._login(client)
        return self._token

    def _set_lease(self, auth: Mapping[str, Any]) -> None:
        self._ttl = float(auth.get("lease_duration") or 0)
        self._renewable = bool(auth.get("renewable", False))
        self._obtained = self._clock()

    def _current_secret_id(self, client: hvac.Client) -> str:
        if self._secret_id_file is not None:
            try:
                return self._secret_id_file.read_text().strip()
            except OSError as e:
                raise ConfigurationError(
                    reason=f"cannot read the AppRole secret id file {self._secret_id_file}"
                ) from e
        if self._secret_id is None:
            assert self._wrapped_token is not None
            # The wrapping token is the client token of the unwrap call; it is single-use, so
            # a second unwrap (by anyone) fails, which is the point of response wrapping.
            client.token = self._wrapped_token
            try:
                answer = client.sys.unwrap()
            except (hvac_exc.InvalidRequest, hvac_exc.Forbidden, hvac_exc.Unauthorized) as e:
                raise LoginRefusedError("unwrap of the wrapped secret id") from e
            finally:
                client.token = None
            self._secret_id = str(answer["data"]["secret_id"])
            self._wrapped_token = None
        return self._secret_id


class VaultClients:
    """The authenticated hvac client: one HTTP session, the auth's current token, a timeout on
    every request, and a count of HTTP round trips (benchmarks and tests read it)."""

    def __init__(
        self,
        addr: str,
        auth: VaultAuth,
        *,
        timeout_s: float = 5,
        verify: bool | str = True,
    ) -> None:
        self.addr = addr
        self.auth = auth
        self.round_trips = 0
        self._session = requests.Session()
        self._session.verify = verify
        self._session.hooks["response"].append(self._count)
        self._client = hvac.Client(url=addr, timeout=timeout_s, session=self._session)

    def _count(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.round_trips += 1

    def __call__(self) -> hvac.Client:
        """The client, with a valid token set."""
        self._client.token = self.auth.token(self._client)
        return self._client

    def reauthenticate(self) -> bool:
        """Drop the token so the next call logs in afresh; False if that cannot help."""
        return self.auth.invalidate()

    def close(self) -> None:
        """Close the HTTP session."""
        self._session.close()


class VaultProbe:
    """Readiness of Vault: reachable, initialised and unsealed."""

    name = "vault"

    def __init__(
        self,
        addr: str,
        token: str | None = None,
        timeout_s: float = 5,
        *,
        verify: bool | str = True,
    ) -> None:
        # verify: the CA bundle the secret store trusts (VAULT_CA_BUNDLE), so that a Vault
        # with a private CA is not reported unreachable.
        self._client = hvac.Client(url=addr, token=token, timeout=timeout_s, verify=verify)

    def ping(self) -> None:
        """:raises DependencyUnavailableError: unreachable, uninitialised or sealed."""
        try:
            status = self._client.sys.read_seal_status()
        except (hvac_exc.VaultError, requests.RequestException) as e:
            raise DependencyUnavailableError(dependency="vault") from e
        if not status.get("initialized", False):
            raise DependencyUnavailableError("vault is not initialised", dependency="vault")
        if status.get("sealed", True):
            raise DependencyUnavailableError("vault is sealed", dependency="vault")


class VaultSecretStore:
    """:class:`~sovereign.services.ports.SecretStore` on Vault's transit engine.

    Per-enclave keys are non-exportable ``aes256-gcm96`` transit keys; data keys come from
    ``transit/datakey/plaintext`` in one round trip; crypto-erase sets ``deletion_allowed`` and
    deletes the key. Only :class:`KeyRef` and :class:`WrappedSecret` values leave this class,
    besides the plaintext data key handed to the caller.

    About ``context``: transit's own ``context`` only applies to *derived* keys, and ours are
    not derived, so it is never sent to Vault and does not bind the wrapped copy. The parameter
    is the associated data the caller uses for its own AES-GCM under the data key (e.g. the
    enclave id and label); keeping it in the signature keeps that binding visible at each call.
    :class:`~sovereign.adapters.memory_secrets.MemorySecretStore` ignores it the same way.

    Built from an address and ``token`` (dev server: :class:`TokenAuth`), an address and
    ``auth`` (e.g. :class:`AppRoleAuth`), or a ready :class:`VaultClients` / any callable that
    returns an authenticated ``hvac.Client``.
    """

    name = "vault"

    def __init__(
        self,
        clients: str | Callable[[], hvac.Client],
        token: str | None = None,
        *,
        auth: VaultAuth | None = None,
        timeout_s: float = 5,
        verify: bool | str = True,
    ) -> None:
        if isinstance(clients, str):
            if (token is None) == (auth is None):
                raise ConfigurationError(reason="give Vault either a token or an auth method")
            clients = VaultClients(
                clients, auth or TokenAuth(str(token)), timeout_s=timeout_s, verify=verify
            )
        elif token is not None or auth is not None:
            raise ConfigurationError(reason="a client factory brings its own authentication")
        self.clients = clients

    # -- the one wrapper around every call ----------------------------------------------------

    def call(self, what: str, op: Callable[[hvac.Client], T], key: KeyRef | None = None) -> T:
        """Run ``op`` on an authenticated client, translating every failure.

        A 403 is retried once after a fresh login when the auth can log in (the token may have
        been revoked or expired early); a refusal by policy stays a refusal.

        :raises DependencyUnavailableError, NotFoundError, InvalidInputError: see
            :func:`translate_error`.
        """
        try:
            try:
                return op(self.clients())
            except hvac_exc.Forbidden:
                reauth = getattr(self.clients, "reauthenticate", None)
                if reauth is None or not reauth():
                    raise
                return op(self.clients())
        except (hvac_exc.VaultError, requests.RequestException, LoginRefusedError) as e:
            raise translate_error(e, what=what, key=key) from e

    @property
    def round_trips(self) -> int:
        """HTTP round trips made so far (0 when the client factory does not count them)."""
        return int(getattr(self.clients, "round_trips", 0))

    def close(self) -> None:
        """Release the HTTP session."""
        close = getattr(self.clients, "close", None)
        if close is not None:
            close()

    # -- setup --------------------------------------------------------------------------------

    def ensure_mount(self, mount: str) -> None:
        """Enable a transit mount if missing (setup code only; needs a sys/mounts token).

        :raises ConfigurationError: the path holds another engine.
        """
        self.call("enable a transit mount", lambda c: ensure_engine(c, mount, "transit"))

    # -- SecretStore --------------------------------------------------------------------------

    def create_key(self, mount: str, name: str) -> KeyRef:
        """Create a non-exportable AES-256-GCM key (idempotent).

        :raises ConflictError: a key of that name exists with another type or is exportable.
        :raises DependencyUnavailableError: Vault down, sealed, slow or refusing.
        """
        ref = KeyRef(mount, name)
        answer = self.call(
            "create a key",
            lambda c: c.secrets.transit.create_key(
                name,
                key_type=TRANSIT_KEY_TYPE,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=mount,
            ),
            ref,
        )
        if not isinstance(answer, dict):  # Vault before 1.12 answers 204 with no body
            answer = self.call(
                "read a key", lambda c: c.secrets.transit.read_key(name, mount_point=mount), ref
            )
        data = answer["data"]
        # Creating an existing key is a silent no-op in transit, whatever the parameters: check
        # that what is there is what we would have made.
        if (
            data.get("type") != TRANSIT_KEY_TYPE
            or data.get("exportable")
            or data.get("allow_plaintext_backup")
        ):
            raise ConflictError(
                reason=f"key {mount}/{name} exists but is not a non-exportable {TRANSIT_KEY_TYPE}"
            )
        return KeyRef(mount, name, int(data["latest_version"]))

    def data_key(self, key: KeyRef, context: bytes) -> tuple[bytes, WrappedSecret]:
        """A fresh 256-bit data key and its wrapped copy, in one round trip.

        ``context`` is not sent to Vault (see the class docstring).

        :raises NotFoundError: the key does not exist (destroyed).
        """
        answer = self.call(
            "generate a data key",
            lambda c: c.secrets.transit.generate_data_key(
                key.name, key_type="plaintext", bits=DATA_KEY_BITS, mount_point=key.mount
            ),
            key,
        )
        data = answer["data"]
        ciphertext = str(data["ciphertext"])
        version = _version(data.get("key_version"), ciphertext, key.version)
        return (
            base64.b64decode(data["plaintext"]),
            WrappedSecret(KeyRef(key.mount, key.name, version), ciphertext),
        )

    def unwrap(self, wrapped: WrappedSecret, context: bytes) -> bytes:
        """The plaintext of a wrapped data key.

        :raises NotFoundError: the key was destroyed.
        :raises InvalidInputError: the ciphertext does not decrypt under the key.
        """
        key = wrapped.key
        answer = self.call(
            "unwrap a data key",
            lambda c: c.secrets.transit.decrypt_data(
                key.name, ciphertext=wrapped.ciphertext, mount_point=key.mount
            ),
            key,
        )
        return base64.b64decode(answer["data"]["plaintext"])

    def rotate(self, key: KeyRef) -> KeyRef:
        """Rotate the key; returns its new latest version. :raises NotFoundError:."""
        answer = self.call(
            "rotate a key",
            lambda c: c.secrets.transit.rotate_key(key.name, mount_point=key.mount),
            key,
        )
        if not isinstance(answer, dict):  # Vault before 1.12 answers 204 with no body
            answer = self.call(
                "read a key",
                lambda c: c.secrets.transit.read_key(key.name, mount_point=key.mount),
                key,
            )
        return KeyRef(key.mount, key.name, int(answer["data"]["latest_version"]))

    def rewrap(self, wrapped: WrappedSecret, context: bytes) -> WrappedSecret:
        """Re-encrypt under the key's latest version inside Vault. :raises NotFoundError:."""
        key = wrapped.key
        answer = self.call(
            "rewrap a data key",
            lambda c: c.secrets.transit.rewrap_data(
                key.name, ciphertext=wrapped.ciphertext, mount_point=key.mount
            ),
            key,
        )
        ciphertext = str(answer["data"]["ciphertext"])
        version = _version(answer["data"].get("key_version"), ciphertext, key.version)
        return WrappedSecret(KeyRef(key.mount, key.name, version), ciphertext)

    def destroy_key(self, key: KeyRef) -> dict[str, Any]:
        """Crypto-erase: allow deletion, then delete every version of the key (idempotent).

        Returns what Vault answered, for the audit event: mount, name, ``deleted``,
        ``already_deleted`` and the HTTP ``status`` (204 on deletion; for a key already gone,
        the status of the refused config update, 400 on OpenBao).
        """
        result: dict[str, Any] = {"mount": key.mount, "name": key.name, "deleted": True}
        try:
            self.call(
                "allow deletion of a key",
                lambda c: c.secrets.transit.update_key_configuration(
                    key.name, deletion_allowed=True, mount_point=key.mount
                ),
                key,
            )
            answer = self.call(
                "delete a key",
                lambda c: c.secrets.transit.delete_key(key.name, mount_point=key.mount),
                key,
            )
        except NotFoundError as e:
            return result | {"already_deleted": True, "status": vault_status(e.__cause__)}
        status = answer.status_code if isinstance(answer, requests.Response) else 200
        return result | {"already_deleted": False, "status": status}

    def ping(self) -> None:
        """:raises DependencyUnavailableError: unreachable, sealed, or the token is refused."""
        status = self.call("read the seal status", lambda c: c.sys.read_seal_status())
        if status.get("sealed", True):
            raise DependencyUnavailableError("vault is sealed", dependency="vault")
        self.call("look up its own token", lambda c: c.auth.token.lookup_self())


def _version(reported: Any, ciphertext: str, fallback: int) -> int:
    """The key version of a ciphertext: as Vault reports it, else from its prefix."""
    if reported is not None:
        return int(reported)
    m = _CIPHERTEXT_VERSION.match(ciphertext)
    return int(m.group(1)) if m else fallback


def ensure_engine(
    client: hvac.Client, path: str, engine: str, options: Mapping[str, str] | None = None
) -> bool:
    """Enable a secrets engine at ``path`` unless it is there; True if it enabled it. Run it
    through :meth:`VaultSecretStore.call`, which translates hvac's errors.

    :raises ConfigurationError: the path holds another engine or other options.
    """
    mounts = client.sys.list_mounted_secrets_engines()
    existing = mounts.get("data", mounts).get(f"{path}/")
    if existing is None:
        client.sys.enable_secrets_engine(engine, path=path, options=dict(options or {}) or None)
        return True
    found = existing.get("options") or {}
    if existing.get("type") != engine or any(found.get(k) != v for k, v in (options or {}).items()):
        raise ConfigurationError(reason=f"vault path {path}/ holds another engine than {engine}")
    return False
