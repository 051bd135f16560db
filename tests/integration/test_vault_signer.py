"""Checkpoints signed by a transit Ed25519 key in a real OpenBao dev server, verified offline
with nothing but the published public keys; rotation, non-exportability and outages."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import hvac
import pytest
from hvac import exceptions as hvac_exc

from audit.checkpoint import Checkpoint, open_checkpoint, sign_checkpoint
from audit.note import (
    InvalidSignatureError,
    NoteVerifier,
    UnverifiedNoteError,
    parse_note,
    parse_verifier_key,
)
from audit.signer import Signer
from devstack.stack import OpenBaoDevServer
from sovereign.adapters.vault_signer import (
    DEFAULT_KEY_NAME,
    DEFAULT_MOUNT,
    VaultTransitSigner,
    ensure_audit_key,
)
from sovereign.errors import ConfigurationError, DependencyUnavailableError

pytestmark = pytest.mark.vault

ORIGIN = "sovereign.test/audit-log"


@pytest.fixture(scope="module")
def bao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBaoDevServer]:
    with OpenBaoDevServer(tmp_path_factory.mktemp("bao")) as server:
        yield server


@pytest.fixture(scope="module")
def client(bao: OpenBaoDevServer) -> hvac.Client:
    return hvac.Client(url=bao.addr, token=bao.token, timeout=5)


@pytest.fixture
def fresh_key(client: hvac.Client) -> str:
    """A key of its own for tests that rotate, so they cannot disturb each other."""
    name = f"audit-{uuid.uuid4().hex[:8]}"
    assert ensure_audit_key(client, key_name=name) == 1
    return name


def checkpoint(size: int) -> Checkpoint:
    return Checkpoint(ORIGIN, size, bytes([size % 256]) * 32)


def test_ensure_audit_key_is_idempotent_and_the_key_cannot_leave(client: hvac.Client) -> None:
    assert ensure_audit_key(client) == 1
    assert ensure_audit_key(client) == 1
    mounts = client.sys.list_mounted_secrets_engines()["data"]
    assert mounts[f"{DEFAULT_MOUNT}/"]["type"] == "transit"
    key = client.secrets.transit.read_key(DEFAULT_KEY_NAME, mount_point=DEFAULT_MOUNT)["data"]
    assert key["type"] == "ed25519"
    assert key["exportable"] is False
    assert key["allow_plaintext_backup"] is False
    for version in (None, "latest", "1"):
        with pytest.raises(hvac_exc.InvalidRequest, match="not exportable"):
            client.secrets.transit.export_key(
                DEFAULT_KEY_NAME, "signing-key", version=version, mount_point=DEFAULT_MOUNT
            )
    with pytest.raises(hvac_exc.VaultError):
        client.secrets.transit.backup_key(DEFAULT_KEY_NAME, mount_point=DEFAULT_MOUNT)


def test_ensure_audit_key_after_another_bootstrap_made_the_mount(client: hvac.Client) -> None:
    client.sys.enable_secrets_engine("transit", path="other-bootstrap")
    assert ensure_audit_key(client, mount="other-bootstrap") == 1
    assert ensure_audit_key(client, mount="other-bootstrap") == 1


def test_ensure_audit_key_refuses_a_wrong_mount_or_key(client: hvac.Client) -> None:
    client.sys.enable_secrets_engine("kv", path="not-transit", options={"version": "2"})
    with pytest.raises(ConfigurationError, match="expected a transit engine"):
        ensure_audit_key(client, mount="not-transit")
    client.secrets.transit.create_key("aes", mount_point=DEFAULT_MOUNT)
    with pytest.raises(ConfigurationError, match="type 'aes256-gcm96'"):
        ensure_audit_key(client, key_name="aes")


def test_signer_refuses_keys_that_could_leave_vault(client: hvac.Client) -> None:
    transit = client.secrets.transit
    transit.create_key("leaky", key_type="ed25519", exportable=True, mount_point=DEFAULT_MOUNT)
    with pytest.raises(ConfigurationError, match="is exportable"):
        _ = VaultTransitSigner(client, ORIGIN, key_name="leaky").public_key
    transit.create_key(
        "backup", key_type="ed25519", allow_plaintext_backup=True, mount_point=DEFAULT_MOUNT
    )
    with pytest.raises(ConfigurationError, match="plaintext backup"):
        _ = VaultTransitSigner(client, ORIGIN, key_name="backup").key_id


def test_checkpoints_signed_in_vault_verify_offline(client: hvac.Client) -> None:
    ensure_audit_key(client)
    signer = VaultTransitSigner(client, ORIGIN)
    assert isinstance(signer, Signer)
    note = sign_checkpoint(checkpoint(7), [signer])

    # Offline: only the published verifier key string, no Vault, no signer object.
    published = signer.verifier_key
    assert open_checkpoint(note, [parse_verifier_key(published)], origin=ORIGIN) == checkpoint(7)
    raw = NoteVerifier.from_public_key(ORIGIN, signer.public_key)
    assert open_checkpoint(note, [raw]) == checkpoint(7)
    _, [line] = parse_note(note)
    assert (line.name, line.key_id, len(line.signature)) == (ORIGIN, signer.key_id, 64)
    assert signer.public_keys_all() == [published]

    # Altered text fails under the same key.
    forged = note.replace("\n7\n", "\n8\n", 1)
    with pytest.raises(InvalidSignatureError):
        open_checkpoint(forged, [parse_verifier_key(published)])


def test_client_factory_is_called_per_request(bao: OpenBaoDevServer) -> None:
    calls: list[int] = []

    def factory() -> hvac.Client:
        calls.append(1)
        return hvac.Client(url=bao.addr, token=bao.token, timeout=5)

    ensure_audit_key(factory())
    signer = VaultTransitSigner(factory, ORIGIN)
    assert calls == [1]  # lazily: nothing read yet
    note = sign_checkpoint(checkpoint(3), [signer])
    assert len(calls) == 3  # the construction above, read_key, sign
    assert open_checkpoint(note, [parse_verifier_key(signer.verifier_key)]).size == 3


def test_rotation_keeps_old_checkpoints_verifiable(client: hvac.Client, fresh_key: str) -> None:
    transit = client.secrets.transit
    signer = VaultTransitSigner(client, ORIGIN, key_name=fresh_key)
    old_note = sign_checkpoint(checkpoint(1), [signer])
    v1 = signer.verifier_key
    assert signer.version == 1

    transit.rotate_key(fresh_key, mount_point=DEFAULT_MOUNT)
    # Until it refreshes, the signer keeps signing with the version it advertises, so a note
    # never mixes the key ID of one version with the signature of another.
    still_v1 = sign_checkpoint(checkpoint(2), [signer])
    assert open_checkpoint(still_v1, [parse_verifier_key(v1)]).size == 2

    assert signer.refresh() is True
    assert signer.refresh() is False
    assert signer.version == 2
    new_note = sign_checkpoint(checkpoint(3), [signer])
    v2 = signer.verifier_key
    assert v2 != v1

    published = signer.public_keys_all()
    assert published == [v2, v1]
    verifiers = [parse_verifier_key(text) for text in published]
    assert open_checkpoint(old_note, verifiers).size == 1
    assert open_checkpoint(new_note, verifiers).size == 3
    # The old checkpoint verifies under the published v1 key alone, the new one needs v2.
    assert open_checkpoint(old_note, [parse_verifier_key(published[1])]).size == 1
    with pytest.raises(UnverifiedNoteError):
        open_checkpoint(new_note, [parse_verifier_key(v1)])


def test_retired_version_fails_once_then_the_latest_signs(
    client: hvac.Client, fresh_key: str
) -> None:
    transit = client.secrets.transit
    signer = VaultTransitSigner(client, ORIGIN, key_name=fresh_key)
    assert signer.version == 1
    transit.rotate_key(fresh_key, mount_point=DEFAULT_MOUNT)
    transit.update_key_configuration(fresh_key, min_encryption_version=2, mount_point=DEFAULT_MOUNT)

    # OpenBao refuses to sign with v1 now (with a 500). The note in progress cannot switch keys
    # half-way, so it fails; the signer has refreshed, and the next note uses v2.
    with pytest.raises(DependencyUnavailableError):
        sign_checkpoint(checkpoint(1), [signer])
    assert signer.version == 2
    note = sign_checkpoint(checkpoint(1), [signer])
    assert open_checkpoint(note, [parse_verifier_key(signer.public_keys_all()[0])]).size == 1
    # Retired for signing is not retired for verifying: v1 stays published.
    assert len(signer.public_keys_all()) == 2


def test_key_replaced_behind_the_signer_fails_once_then_recovers(
    client: hvac.Client, fresh_key: str
) -> None:
    transit = client.secrets.transit
    signer = VaultTransitSigner(client, ORIGIN, key_name=fresh_key)
    old_public_key = signer.public_key
    transit.update_key_configuration(fresh_key, deletion_allowed=True, mount_point=DEFAULT_MOUNT)
    transit.delete_key(fresh_key, mount_point=DEFAULT_MOUNT)
    assert ensure_audit_key(client, key_name=fresh_key) == 1  # a new key, again version 1

    with pytest.raises(DependencyUnavailableError, match="another key than the advertised"):
        sign_checkpoint(checkpoint(1), [signer])
    assert signer.public_key != old_public_key
    note = sign_checkpoint(checkpoint(1), [signer])
    assert open_checkpoint(note, [parse_verifier_key(signer.verifier_key)]).size == 1


def test_missing_key_is_a_dependency_failure(client: hvac.Client) -> None:
    signer = VaultTransitSigner(client, ORIGIN, key_name="never-created")
    with pytest.raises(DependencyUnavailableError):
        _ = signer.public_key
    assert "unread" in repr(signer)


def test_outages_are_dependency_failures_and_never_show_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    with OpenBaoDevServer(tmp_path / "bao") as server:
        client = hvac.Client(url=server.addr, token=server.token, timeout=2)
        ensure_audit_key(client)
        signer = VaultTransitSigner(client, ORIGIN)
        note = sign_checkpoint(checkpoint(5), [signer])
        published = signer.public_keys_all()

        client.sys.seal()
        with pytest.raises(DependencyUnavailableError) as sealed:
            signer.sign(b"checkpoint text\n")
        assert sealed.value.dependency == "vault"
        assert signer.version == 1  # a failed refresh keeps what it had

        server.stop()
        for action in (
            lambda: signer.sign(b"checkpoint text\n"),
            signer.public_keys_all,
            signer.refresh,
            lambda: VaultTransitSigner(client, ORIGIN).public_key,
            lambda: ensure_audit_key(client),
        ):
            with pytest.raises(DependencyUnavailableError) as down:
                action()
            assert down.value.dependency == "vault"
            assert down.value.safe and str(down.value) == "vault is unavailable."
            assert server.token not in str(down.value)

        # What was published before the outage still verifies, with Vault gone.
        assert open_checkpoint(note, [parse_verifier_key(published[0])]).size == 5
        assert server.token not in repr(signer)
        assert server.token not in caplog.text
        assert "vault: cannot sign with sovereign-audit/audit-checkpoints" in caplog.text
