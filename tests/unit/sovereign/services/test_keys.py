"""Enclave keys through the approval flow, on the in-memory secret store."""

from __future__ import annotations

from typing import Any

import pytest

from audit import Outcome
from sovereign.adapters.memory import MemoryStore, MemoryUnitOfWorkFactory
from sovereign.adapters.memory_secrets import MemorySecretStore
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import RequestState
from sovereign.errors import DependencyUnavailableError, NotFoundError, PolicyDeniedError
from sovereign.services.keys import KeyService
from sovereign.services.recording import CallContext
from sovereign.services.requests import RequestService
from tests.support.factories import (
    ANALYST_DEFENCE,
    ANALYST_RESEARCH,
    DEFENCE,
    OFFICER_1,
    OFFICER_2,
    RESEARCH,
    ctx,
    draft,
    image,
)


class FlakyStore(MemorySecretStore):
    """Fails the n-th data key request, after the key was created."""

    def __init__(self) -> None:
        super().__init__()
        self.fail_data_key = False

    def data_key(self, key: Any, context: bytes) -> Any:
        if self.fail_data_key:
            raise DependencyUnavailableError("vault timed out (simulated)", dependency="vault")
        return super().data_key(key, context)


@pytest.fixture
def store() -> MemoryStore:
    s = MemoryStore()
    s.tenants = {"defence": DEFENCE, "research": RESEARCH}
    s.images = {i.name: i for i in (image(), image("civ", "UNCLASSIFIED", ()))}
    return s


@pytest.fixture
def vault() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def keys(store: MemoryStore, vault: FlakyStore) -> KeyService:
    return KeyService(MemoryUnitOfWorkFactory(store), vault, policy=AccessPolicy(LabelScheme()))


@pytest.fixture
def service(store: MemoryStore, keys: KeyService) -> RequestService:
    return RequestService(
        MemoryUnitOfWorkFactory(store),
        AccessPolicy(LabelScheme()),
        gpu_models=["H100-SXM5-80GB"],
        keys=keys,
    )


def events(store: MemoryStore) -> list[tuple[str, str]]:
    return [(e.event.action, e.event.outcome.value) for e in store.audit.events]


def test_final_approval_creates_the_enclave_keys(service, store, keys, vault):
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    service.approve(ctx(OFFICER_1), r.id, "")
    assert store.keys == {}  # one approval of two: nothing yet
    assert vault.round_trips == 0
    service.approve(ctx(OFFICER_2), r.id, "")
    record = store.keys[r.id]
    assert record.key.mount == "sovereign-defence"
    assert record.key.name == f"enclave-{r.id}"
    assert vault.round_trips == 3  # create + two data keys
    secrets = keys.secrets(r.id)
    assert len(secrets.luks_passphrase) == 32
    assert secrets.luks_passphrase != secrets.vtpm_secret
    assert secrets.luks_passphrase.hex() not in repr(secrets)
    assert ("key:create", "allow") in events(store)
    # Civilian tenants share the civilian domain's mount; never a classified one's.
    c = service.create(
        ctx(ANALYST_RESEARCH),
        draft(tenant="research", level="UNCLASSIFIED", compartments=(), image="civ"),
    )
    service.approve(ctx(OFFICER_1), c.id, "")
    assert store.keys[c.id].key.mount == "sovereign-civilian"


def test_vault_down_at_approval_changes_nothing_and_can_be_retried(service, store, vault):
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    service.approve(ctx(OFFICER_1), r.id, "")
    vault.down = True
    with pytest.raises(DependencyUnavailableError, match="vault"):
        service.approve(ctx(OFFICER_2), r.id, "")
    request = service.get(ctx(OFFICER_1), r.id)
    assert request.state is RequestState.PENDING
    assert request.approvers == [OFFICER_1.subject]
    assert store.keys == {}
    assert events(store)[-1] == ("request:approve", "error")
    vault.down = False
    assert service.approve(ctx(OFFICER_2), r.id, "").state is RequestState.APPROVED
    assert r.id in store.keys


def test_failure_after_key_creation_leaves_no_orphan_key(service, store, vault):
    r = service.create(ctx(ANALYST_DEFENCE), draft(level="RESTRICTED", compartments=()))
    vault.fail_data_key = True
    with pytest.raises(DependencyUnavailableError):
        service.approve(ctx(OFFICER_1), r.id, "")
    assert vault._keys == {}  # the key created before the failure was destroyed again
    assert store.keys == {}
    assert service.get(ctx(OFFICER_1), r.id).state is RequestState.PENDING


def test_crypto_erase_makes_the_data_keys_unrecoverable(service, store, keys, vault):
    r = service.create(ctx(ANALYST_DEFENCE), draft(level="RESTRICTED", compartments=()))
    service.approve(ctx(OFFICER_1), r.id, "")
    before = store.keys[r.id]
    with pytest.raises(PolicyDeniedError):
        keys.crypto_erase(ctx(ANALYST_DEFENCE), r.id)
    erased = keys.crypto_erase(ctx(OFFICER_1), r.id)
    assert erased.destroyed_at is not None
    with pytest.raises(NotFoundError):
        vault.unwrap(before.luks, b"luks")
    with pytest.raises(NotFoundError):
        keys.secrets(r.id)
    destroy = store.audit.events[-1].event
    assert destroy.action == "key:destroy"
    assert destroy.outcome is Outcome.ALLOW
    assert destroy.details["vault"]["deleted"] is True
    with pytest.raises(NotFoundError):
        keys.crypto_erase(ctx(OFFICER_1), r.id)  # already erased


def test_rotation_rewraps_without_changing_the_secrets(service, store, keys):
    r = service.create(ctx(ANALYST_DEFENCE), draft(level="RESTRICTED", compartments=()))
    service.approve(ctx(OFFICER_1), r.id, "")
    old = keys.secrets(r.id)
    rotated = keys.rotate(ctx(OFFICER_2), r.id)
    assert rotated.key.version == 2
    assert rotated.luks.ciphertext.startswith("vault:v2:")
    assert keys.secrets(r.id) == old


def test_system_actor_may_erase(service, store, keys):
    r = service.create(ctx(ANALYST_DEFENCE), draft(level="RESTRICTED", compartments=()))
    service.approve(ctx(OFFICER_1), r.id, "")
    system = CallContext(principal=OFFICER_1, actor="system:reconciler")
    assert keys.crypto_erase(system, r.id).destroyed_at is not None
