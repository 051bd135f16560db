"""The SecretStore port, held to one behaviour on every backend: in memory, and a real OpenBao
dev server (one per module, laid out by ``bootstrap_dev_vault``) through the root token."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator

import pytest

from devstack.stack import OpenBaoDevServer
from devstack.vault import bootstrap_dev_vault
from sovereign.adapters.memory_secrets import MemorySecretStore
from sovereign.adapters.vault import VaultSecretStore
from sovereign.domain.keys import KeyRef, WrappedSecret
from sovereign.errors import DependencyUnavailableError, InvalidInputError, NotFoundError
from sovereign.services.ports import SecretStore

MOUNT = "sovereign-civilian"
CONTEXT = b"enclave:1234|label:SECRET"


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    with OpenBaoDevServer(tmp_path_factory.mktemp("bao-contract")) as server:
        bootstrap_dev_vault(server.addr, server.token)
        yield server


@pytest.fixture(params=["memory", pytest.param("vault", marks=pytest.mark.vault)])
def store(request: pytest.FixtureRequest) -> Iterator[SecretStore]:
    if request.param == "memory":
        yield MemorySecretStore()
        return
    server: OpenBaoDevServer = request.getfixturevalue("bao")
    vault = VaultSecretStore(server.addr, server.token, timeout_s=5)
    yield vault
    vault.close()


def fresh_key(store: SecretStore) -> KeyRef:
    return store.create_key(MOUNT, f"enclave-{uuid.uuid4()}")


def encodings(secret: bytes) -> list[str]:
    return [
        base64.b64encode(secret).decode(),
        base64.urlsafe_b64encode(secret).decode(),
        secret.hex(),
    ]


def test_create_key_is_idempotent_and_keeps_the_version(store: SecretStore):
    name = f"enclave-{uuid.uuid4()}"
    first = store.create_key(MOUNT, name)
    assert first == KeyRef(MOUNT, name, 1)
    assert store.create_key(MOUNT, name) == first
    store.rotate(first)
    # Creating again neither fails nor resets the key: it reports the latest version.
    assert store.create_key(MOUNT, name) == KeyRef(MOUNT, name, 2)


def test_data_key_round_trips_and_the_wrapped_copy_hides_it(store: SecretStore):
    ref = fresh_key(store)
    plaintext, wrapped = store.data_key(ref, CONTEXT)
    assert len(plaintext) == 32
    assert wrapped.key == ref
    assert wrapped.ciphertext.startswith("vault:v1:")
    assert plaintext not in wrapped.ciphertext.encode()
    for text in encodings(plaintext):
        assert text not in wrapped.ciphertext
    assert store.unwrap(wrapped, CONTEXT) == plaintext

    other, other_wrapped = store.data_key(ref, CONTEXT)
    assert other != plaintext
    assert other_wrapped.ciphertext != wrapped.ciphertext


def test_context_is_not_bound_by_the_store(store: SecretStore):
    # Documented on both backends: the context is the caller's AES-GCM associated data; the
    # store's keys are not derived, so it does not bind the wrapped copy.
    ref = fresh_key(store)
    plaintext, wrapped = store.data_key(ref, CONTEXT)
    assert store.unwrap(wrapped, b"another context") == plaintext


def test_rotate_then_rewrap_moves_to_v2_without_changing_the_plaintext(store: SecretStore):
    ref = fresh_key(store)
    plaintext, wrapped = store.data_key(ref, CONTEXT)

    rotated = store.rotate(ref)
    assert rotated == KeyRef(ref.mount, ref.name, 2)

    rewrapped = store.rewrap(wrapped, CONTEXT)
    assert rewrapped.key == rotated
    assert rewrapped.ciphertext.startswith("vault:v2:")
    assert rewrapped.ciphertext != wrapped.ciphertext
    for text in encodings(plaintext):
        assert text not in rewrapped.ciphertext
    assert store.unwrap(rewrapped, CONTEXT) == plaintext
    # The old version still decrypts until someone raises the minimum version.
    assert store.unwrap(wrapped, CONTEXT) == plaintext
    # New data keys use the latest version.
    assert store.data_key(ref, CONTEXT)[1].ciphertext.startswith("vault:v2:")
    assert store.rotate(rotated).version == 3


def test_destroy_erases_the_key_and_is_idempotent(store: SecretStore):
    ref = fresh_key(store)
    plaintext, wrapped = store.data_key(ref, CONTEXT)
    store.rotate(ref)

    answer = store.destroy_key(ref)
    assert answer == {
        "mount": ref.mount,
        "name": ref.name,
        "deleted": True,
        "already_deleted": False,
        "status": 204,
    }

    with pytest.raises(NotFoundError) as e:
        store.unwrap(wrapped, CONTEXT)
    assert e.value.kwargs == {"kind": "key", "ident": f"{ref.mount}/{ref.name}"}
    with pytest.raises(NotFoundError):
        store.data_key(ref, CONTEXT)
    with pytest.raises(NotFoundError):
        store.rotate(ref)
    with pytest.raises(NotFoundError):
        store.rewrap(wrapped, CONTEXT)

    again = store.destroy_key(ref)
    assert again["deleted"] is True
    assert again["already_deleted"] is True
    assert {"mount", "name"} <= again.keys()
    # Nothing secret in what goes into the audit event.
    for text in [*encodings(plaintext), wrapped.ciphertext]:
        assert text not in repr(answer) + repr(again)

    # A key created again under the same name is a new key: the old data key stays lost.
    store.create_key(ref.mount, ref.name)
    with pytest.raises(InvalidInputError):
        store.unwrap(wrapped, CONTEXT)


def test_unknown_key_is_not_found(store: SecretStore):
    unknown = KeyRef(MOUNT, f"enclave-{uuid.uuid4()}")
    with pytest.raises(NotFoundError) as e:
        store.data_key(unknown, CONTEXT)
    assert e.value.kwargs["ident"] == f"{MOUNT}/{unknown.name}"
    forged = WrappedSecret(unknown, "vault:v1:" + base64.b64encode(bytes(60)).decode())
    with pytest.raises(NotFoundError):
        store.unwrap(forged, CONTEXT)
    with pytest.raises(NotFoundError):
        store.rotate(unknown)


def test_tampered_or_misattributed_ciphertext_is_rejected(store: SecretStore):
    ref = fresh_key(store)
    other = fresh_key(store)
    _plaintext, wrapped = store.data_key(ref, CONTEXT)
    body = bytearray(base64.b64decode(wrapped.ciphertext.removeprefix("vault:v1:")))
    body[-1] ^= 1
    tampered = WrappedSecret(ref, "vault:v1:" + base64.b64encode(bytes(body)).decode())
    with pytest.raises(InvalidInputError):
        store.unwrap(tampered, CONTEXT)
    # The wrapped copy only opens under the key that wrapped it.
    with pytest.raises(InvalidInputError):
        store.unwrap(WrappedSecret(other, wrapped.ciphertext), CONTEXT)


def test_ping_answers(store: SecretStore):
    store.ping()


def test_memory_store_down_fails_every_call_like_vault():
    store = MemorySecretStore()
    ref = store.create_key(MOUNT, "enclave-down")
    plaintext, wrapped = store.data_key(ref, CONTEXT)
    store.down = True
    calls = [
        lambda: store.create_key(MOUNT, "x"),
        lambda: store.data_key(ref, CONTEXT),
        lambda: store.unwrap(wrapped, CONTEXT),
        lambda: store.rotate(ref),
        lambda: store.rewrap(wrapped, CONTEXT),
        lambda: store.destroy_key(ref),
        store.ping,
    ]
    for call in calls:
        with pytest.raises(DependencyUnavailableError) as e:
            call()
        assert e.value.dependency == "vault"
    store.down = False
    # Nothing happened while it was down: not destroyed, not rotated.
    assert store.unwrap(wrapped, CONTEXT) == plaintext
    assert store.rotate(ref).version == 2
