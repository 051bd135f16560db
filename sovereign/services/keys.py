"""Use cases for enclave keys: create them at approval, rotate, crypto-erase at termination.

Owns the coordination of the secret store (Vault), the key references in the database and the
audit events about keys. An enclave's key lives in the store of the country the enclave was
pinned to (:class:`~sovereign.services.keystores.KeyStores`); the key record names that country.
Plaintext data keys never leave this module except to the caller that hands them to the
hypervisor, and are never stored or logged. Nothing half-created remains: a key created in Vault
whose references could not be stored is destroyed again.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from sovereign.domain.identity import Role
from sovereign.domain.keys import (
    EnclaveKeys,
    EnclaveSecrets,
    KeyRef,
    enclave_key_name,
    key_mount,
)
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import EnclaveRequest
from sovereign.domain.tenants import Tenant
from sovereign.errors import NotFoundError, PolicyDeniedError, SovereignError
from sovereign.services.keystores import KeyStores
from sovereign.services.ports import SecretStore, UnitOfWork, UnitOfWorkFactory
from sovereign.services.recording import (
    CallContext,
    Clock,
    Decision,
    Recorder,
    request_target,
    utcnow,
)

log = logging.getLogger(__name__)

_Step = Callable[[Decision, UnitOfWork, EnclaveRequest, EnclaveKeys], EnclaveKeys]

#: Associated context of the two data keys of an enclave (what each is for).
LUKS_CONTEXT = b"luks"
VTPM_CONTEXT = b"vtpm"


class KeyService:
    """Per-enclave keys in the secret store, their references in the database."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        store: SecretStore,
        *,
        policy: AccessPolicy,
        mount_prefix: str = "sovereign-",
        stores: KeyStores | None = None,
        clock: Clock = utcnow,
    ) -> None:
        """``stores`` routes keys to their country's store; by default every key is in
        ``store`` under ``mount_prefix``."""
        self._uow = uow_factory
        self.store = store
        self._policy = policy
        #: Where each country's keys live.
        self.stores = stores if stores is not None else KeyStores(store, mount_prefix)
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    @contextmanager
    def provisioned(
        self, uow: UnitOfWork, ctx: CallContext, request: EnclaveRequest, tenant: Tenant
    ) -> Iterator[EnclaveKeys]:
        """Create the enclave's key and data keys inside ``uow`` (3 Vault round trips), in the
        store of the country the request was pinned to.

        If anything after the key's creation fails (Vault, the database, the commit), the key
        is destroyed again so no orphan key remains.

        :raises DependencyUnavailableError: if Vault cannot be used.
        """
        target = self.stores.for_country(request.country)
        store = target.store
        ref = store.create_key(key_mount(tenant, target.mount_prefix), enclave_key_name(request.id))
        try:
            luks = store.data_key(ref, LUKS_CONTEXT)[1]
            vtpm = store.data_key(ref, VTPM_CONTEXT)[1]
            keys = EnclaveKeys(
                request.id,
                luks.key,
                luks,
                vtpm,
                self._clock(),
                country=request.country,
                vault=target.name,
            )
            uow.keys.add(keys)
            self._recorder.record(
                uow,
                ctx,
                "key:create",
                f"key/{ref.mount}/{ref.name}",
                label=request.label,
                details={
                    "request": str(request.id),
                    "key_version": keys.key.version,
                    "country": request.country,
                    "vault_name": target.name,
                },
            )
            yield keys
        except BaseException:
            self._discard(store, ref)
            raise

    def _discard(self, store: SecretStore, ref: KeyRef) -> None:
        try:
            store.destroy_key(ref)
        except SovereignError:
            # Logged, not raised: the original failure is what the caller must see. The key
            # holds no data yet (no wrapped copy was stored), so it protects nothing.
            log.exception("could not discard enclave key %s/%s", ref.mount, ref.name)

    def secrets(self, request_id: uuid.UUID) -> EnclaveSecrets:
        """Unwrap the LUKS passphrase and vTPM secret for the hypervisor (in memory only).

        :raises NotFoundError: no keys, or keys already destroyed.
        """
        with self._uow(readonly=True) as uow:
            keys = uow.keys.get(request_id)
        if keys is None or keys.destroyed_at is not None:
            raise NotFoundError(kind="enclave keys", ident=str(request_id))
        store = self.stores.holding(keys).store
        return EnclaveSecrets(
            luks_passphrase=store.unwrap(keys.luks, LUKS_CONTEXT),
            vtpm_secret=store.unwrap(keys.vtpm, VTPM_CONTEXT),
        )

    def _officer_keys(
        self,
        ctx: CallContext,
        request_id: uuid.UUID,
        request: EnclaveRequest | None,
        uow: UnitOfWork,
    ) -> tuple[EnclaveRequest, EnclaveKeys]:
        # Visibility first: a request the caller may not see answers as a missing one, whatever
        # their role (the system's own work sees everything).
        if request is None or not (_is_system(ctx) or self._policy.can_see(ctx.principal, request)):
            raise NotFoundError(kind="request", ident=str(request_id))
        if not (ctx.principal.has_role(Role.OFFICER) or _is_system(ctx)):
            raise PolicyDeniedError(reason="only security officers manage enclave keys")
        keys = uow.keys.get(request_id)
        if keys is None or keys.destroyed_at is not None:
            raise NotFoundError(kind="enclave keys", ident=str(request_id))
        return request, keys

    def rotate(self, ctx: CallContext, request_id: uuid.UUID) -> EnclaveKeys:
        """Rotate the enclave's key and rewrap its data keys under the new version."""
        return self._guarded(ctx, request_id, "key:rotate", self._rotate)

    def crypto_erase(self, ctx: CallContext, request_id: uuid.UUID) -> EnclaveKeys:
        """Destroy the enclave's key in Vault (crypto-erase) and record Vault's answer.

        Afterwards the wrapped data keys can never be unwrapped again.
        """
        return self._guarded(ctx, request_id, "key:destroy", self._destroy)

    def _rotate(
        self, decision: Decision, uow: UnitOfWork, request: EnclaveRequest, keys: EnclaveKeys
    ) -> EnclaveKeys:
        store = self.stores.holding(keys).store
        new_ref = store.rotate(keys.key)
        luks = store.rewrap(keys.luks, LUKS_CONTEXT)
        vtpm = store.rewrap(keys.vtpm, VTPM_CONTEXT)
        rotated = replace(keys, key=new_ref, luks=luks, vtpm=vtpm)
        uow.keys.update(rotated)
        decision.allow(
            uow,
            target=f"key/{new_ref.mount}/{new_ref.name}",
            label=request.label,
            details={"from_version": keys.key.version, "to_version": new_ref.version},
        )
        return rotated

    def _destroy(
        self, decision: Decision, uow: UnitOfWork, request: EnclaveRequest, keys: EnclaveKeys
    ) -> EnclaveKeys:
        target = self.stores.holding(keys)
        answer = target.store.destroy_key(keys.key)
        destroyed = keys.destroyed(self._clock())
        uow.keys.update(destroyed)
        decision.allow(
            uow,
            target=f"key/{keys.key.mount}/{keys.key.name}",
            label=request.label,
            details={
                "request": str(request.id),
                "vault": answer,
                "country": keys.country,
                "vault_name": target.name,
            },
        )
        return destroyed

    def _guarded(
        self, ctx: CallContext, request_id: uuid.UUID, action: str, step: _Step
    ) -> EnclaveKeys:
        with (
            self._recorder.decision(ctx, action, request_target(request_id)) as decision,
            self._uow() as uow,
        ):
            found = uow.requests.get(request_id)
            # Refusals and failures about an existing request carry its label, so only
            # auditors cleared for the request read of them.
            decision.label = found.label if found is not None else None
            request, keys = self._officer_keys(ctx, request_id, found, uow)
            result = step(decision, uow, request, keys)
            uow.commit()
        return result


def _is_system(ctx: CallContext) -> bool:
    return ctx.actor.startswith("system:")
