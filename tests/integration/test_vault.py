"""The Vault backend against a real OpenBao dev server: the layout bootstrap, the AppRole
policies (allowed and refused paths), token renewal and re-login, response-wrapped secret ids,
failure modes (stopped, sealed, silent), and the file audit device."""

from __future__ import annotations

import base64
import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hvac
import pytest
from hvac import exceptions as hvac_exc

from devstack.stack import OpenBaoDevServer, free_port
from devstack.vault import POLICY_DIR, ROLES, bootstrap_dev_vault
from sovereign.adapters.vault import (
    AUDIT_KEY,
    AUDIT_MOUNT,
    CONFIG_MOUNT,
    AppRoleAuth,
    VaultClients,
    VaultSecretStore,
)
from sovereign.domain.keys import KeyRef
from sovereign.errors import (
    ConfigurationError,
    ConflictError,
    DependencyUnavailableError,
    NotFoundError,
)

pytestmark = pytest.mark.vault

MOUNT = "sovereign-civilian"
CONTROL_PLANE = "sovereign-control-plane"
WORKER = "sovereign-worker"
CONTEXT = b"enclave|label"


@dataclass
class Dev:
    server: OpenBaoDevServer
    roles: dict[str, str]
    root: hvac.Client

    @property
    def addr(self) -> str:
        return self.server.addr

    def secret_id(self, role: str) -> str:
        return str(self.root.auth.approle.generate_secret_id(role)["data"]["secret_id"])

    def store(self, role: str, **kwargs: Any) -> VaultSecretStore:
        auth = AppRoleAuth(self.roles[role], self.secret_id(role), **kwargs)
        return VaultSecretStore(self.addr, auth=auth, timeout_s=5)


@pytest.fixture(scope="module")
def dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dev]:
    with OpenBaoDevServer(tmp_path_factory.mktemp("bao")) as server:
        roles = bootstrap_dev_vault(server.addr, server.token)
        yield Dev(server, roles, hvac.Client(url=server.addr, token=server.token, timeout=5))


def new_name() -> str:
    return f"enclave-{uuid.uuid4()}"


def snapshot(root: hvac.Client) -> dict[str, Any]:
    """What bootstrap controls, with accessors, so a re-created mount or role would show."""
    mounts = root.sys.list_mounted_secrets_engines()["data"]
    auths = root.sys.list_auth_methods()["data"]
    return {
        "mounts": {p: (m["type"], m["accessor"], m.get("options")) for p, m in mounts.items()},
        "auth": {p: (m["type"], m["accessor"]) for p, m in auths.items()},
        "policies": {r: root.sys.read_policy(r)["data"]["rules"] for r in ROLES},
        "roles": {r: root.auth.approle.read_role(r)["data"] for r in ROLES},
        "audit_key": root.secrets.transit.read_key(AUDIT_KEY, mount_point=AUDIT_MOUNT)["data"],
    }


def test_bootstrap_lays_out_vault_and_a_second_run_changes_nothing(dev: Dev):
    before = snapshot(dev.root)
    assert bootstrap_dev_vault(dev.addr, dev.server.token) == dev.roles
    assert snapshot(dev.root) == before

    assert set(dev.roles) == {CONTROL_PLANE, WORKER}
    assert {"sovereign-civilian/", "sovereign-defence/", "sovereign-audit/"} <= set(
        before["mounts"]
    )
    assert before["mounts"]["sovereign-civilian/"][0] == "transit"
    assert before["mounts"][f"{CONFIG_MOUNT}/"][0] == "kv"
    assert before["mounts"][f"{CONFIG_MOUNT}/"][2] == {"version": "2"}
    audit_key = before["audit_key"]
    assert audit_key["type"] == "ed25519"
    assert audit_key["exportable"] is False
    assert audit_key["keys"]["1"]["public_key"]
    assert before["policies"][CONTROL_PLANE] == (POLICY_DIR / "control-plane.hcl").read_text()
    assert before["policies"][WORKER] == (POLICY_DIR / "worker.hcl").read_text()
    for role in ROLES:
        assert before["roles"][role]["token_policies"] == [role]
        assert before["roles"][role]["token_no_default_policy"] is True


def test_bootstrap_refuses_a_mount_the_policy_does_not_grant(dev: Dev):
    with pytest.raises(ConfigurationError, match="sovereign-unknown"):
        bootstrap_dev_vault(dev.addr, dev.server.token, mounts=["sovereign-unknown"])
    assert "sovereign-unknown/" not in dev.root.sys.list_mounted_secrets_engines()["data"]


def test_ensure_mount_is_idempotent_and_refuses_another_engine(dev: Dev):
    store = VaultSecretStore(dev.addr, dev.server.token)
    store.ensure_mount("sovereign-extra")
    accessor = dev.root.sys.list_mounted_secrets_engines()["data"]["sovereign-extra/"]["accessor"]
    store.ensure_mount("sovereign-extra")
    mounts = dev.root.sys.list_mounted_secrets_engines()["data"]
    assert mounts["sovereign-extra/"]["accessor"] == accessor
    assert mounts["sovereign-extra/"]["type"] == "transit"
    with pytest.raises(ConfigurationError):
        store.ensure_mount(CONFIG_MOUNT)


def test_create_key_refuses_an_existing_key_of_another_kind(dev: Dev):
    store = VaultSecretStore(dev.addr, dev.server.token)
    signing, exportable = new_name(), new_name()
    dev.root.secrets.transit.create_key(signing, key_type="ed25519", mount_point=MOUNT)
    dev.root.secrets.transit.create_key(exportable, exportable=True, mount_point=MOUNT)
    with pytest.raises(ConflictError):
        store.create_key(MOUNT, signing)
    with pytest.raises(ConflictError):
        store.create_key(MOUNT, exportable)
    made = store.create_key(MOUNT, new_name())
    key = dev.root.secrets.transit.read_key(made.name, mount_point=MOUNT)["data"]
    assert (key["type"], key["exportable"], key["allow_plaintext_backup"]) == (
        "aes256-gcm96",
        False,
        False,
    )
    assert key["deletion_allowed"] is False


def test_data_key_is_one_round_trip(dev: Dev):
    for store in (VaultSecretStore(dev.addr, dev.server.token), dev.store(CONTROL_PLANE)):
        ref = store.create_key(MOUNT, new_name())  # an AppRole store logs in here
        before = store.round_trips
        store.data_key(ref, CONTEXT)
        assert store.round_trips - before == 1


def test_control_plane_role_works_on_its_paths(dev: Dev):
    store = dev.store(CONTROL_PLANE)
    ref = store.create_key(MOUNT, new_name())
    assert store.create_key(MOUNT, ref.name) == ref
    plaintext, wrapped = store.data_key(ref, CONTEXT)
    assert store.unwrap(wrapped, CONTEXT) == plaintext
    assert store.rotate(ref).version == 2
    assert store.rewrap(wrapped, CONTEXT).key.version == 2
    store.ping()
    defence = store.create_key("sovereign-defence", new_name())
    assert store.data_key(defence, CONTEXT)[1].ciphertext.startswith("vault:v1:")

    # Checkpoint signing, and the public key for offline verification.
    message = base64.b64encode(b"checkpoint note").decode()
    signed = store.call(
        "sign",
        lambda c: c.secrets.transit.sign_data(
            AUDIT_KEY, hash_input=message, mount_point=AUDIT_MOUNT
        ),
    )
    assert signed["data"]["signature"].startswith("vault:v1:")
    public = store.call(
        "read", lambda c: c.secrets.transit.read_key(AUDIT_KEY, mount_point=AUDIT_MOUNT)
    )
    assert public["data"]["keys"]["1"]["public_key"]

    # Non-key configuration from KV v2, read only.
    dev.root.secrets.kv.v2.create_or_update_secret(
        "settings", secret={"greeting": "hi"}, mount_point=CONFIG_MOUNT
    )
    read = store.call(
        "read config",
        lambda c: c.secrets.kv.v2.read_secret_version(
            "settings", mount_point=CONFIG_MOUNT, raise_on_deleted_version=True
        ),
    )
    assert read["data"]["data"] == {"greeting": "hi"}


REFUSED: dict[str, Callable[[hvac.Client, str], Any]] = {
    "delete a key": lambda c, k: c.secrets.transit.delete_key(k, mount_point=MOUNT),
    "allow deletion": lambda c, k: c.secrets.transit.update_key_configuration(
        k, deletion_allowed=True, mount_point=MOUNT
    ),
    "make a key exportable": lambda c, k: c.secrets.transit.update_key_configuration(
        k, exportable=True, mount_point=MOUNT
    ),
    "create an exportable key": lambda c, k: c.secrets.transit.create_key(
        k + "-x", exportable=True, mount_point=MOUNT
    ),
    "export a key": lambda c, k: c.secrets.transit.export_key(
        k, key_type="encryption-key", mount_point=MOUNT
    ),
    "read a policy": lambda c, k: c.sys.read_policy(CONTROL_PLANE),
    "list mounts": lambda c, k: c.sys.list_mounted_secrets_engines(),
    "read its role id": lambda c, k: c.auth.approle.read_role_id(CONTROL_PLANE),
    "encrypt with the audit key": lambda c, k: c.secrets.transit.encrypt_data(
        AUDIT_KEY, plaintext="aGk=", mount_point=AUDIT_MOUNT
    ),
    "create a key in the audit mount": lambda c, k: c.secrets.transit.create_key(
        k, mount_point=AUDIT_MOUNT
    ),
    "rotate the audit key": lambda c, k: c.secrets.transit.rotate_key(
        AUDIT_KEY, mount_point=AUDIT_MOUNT
    ),
    "write config": lambda c, k: c.secrets.kv.v2.create_or_update_secret(
        "settings", secret={"a": "b"}, mount_point=CONFIG_MOUNT
    ),
}


def test_control_plane_token_is_refused_outside_its_paths(dev: Dev):
    store = dev.store(CONTROL_PLANE)
    ref = store.create_key(MOUNT, new_name())
    plaintext, wrapped = store.data_key(ref, CONTEXT)

    with pytest.raises(DependencyUnavailableError) as e:
        store.destroy_key(ref)
    assert e.value.dependency == "vault"
    assert "refused the control plane's token" in str(e.value)
    assert isinstance(e.value.__cause__, hvac_exc.Forbidden)

    token = store.clients().token
    for what, op in REFUSED.items():
        with pytest.raises(DependencyUnavailableError) as e:
            store.call(what, lambda c, op=op: op(c, ref.name))
        assert isinstance(e.value.__cause__, hvac_exc.Forbidden), what
        assert "refused" in str(e.value), what
        assert token not in str(e.value)
        assert token not in str(e.value.__cause__)

    # Nothing of it happened: the key is intact, not exportable, still usable.
    key = dev.root.secrets.transit.read_key(ref.name, mount_point=MOUNT)["data"]
    assert (key["exportable"], key["deletion_allowed"]) == (False, False)
    assert store.unwrap(wrapped, CONTEXT) == plaintext
    assert AUDIT_KEY in dev.root.secrets.transit.list_keys(mount_point=AUDIT_MOUNT)["data"]["keys"]
    assert len(dev.root.secrets.transit.list_keys(mount_point=AUDIT_MOUNT)["data"]["keys"]) == 1


def test_worker_crypto_erases_and_sees_no_key_material(dev: Dev):
    control = dev.store(CONTROL_PLANE)
    worker = dev.store(WORKER)
    ref = control.create_key(MOUNT, new_name())
    _plaintext, wrapped = control.data_key(ref, CONTEXT)

    for refused in (
        lambda: worker.data_key(ref, CONTEXT),
        lambda: worker.unwrap(wrapped, CONTEXT),
        lambda: worker.create_key(MOUNT, new_name()),
        lambda: worker.call(
            "make exportable",
            lambda c: c.secrets.transit.update_key_configuration(
                ref.name, exportable=True, mount_point=MOUNT
            ),
        ),
    ):
        with pytest.raises(DependencyUnavailableError) as e:
            refused()
        assert isinstance(e.value.__cause__, hvac_exc.Forbidden)

    answer = worker.destroy_key(ref)
    assert answer == {
        "mount": MOUNT,
        "name": ref.name,
        "deleted": True,
        "already_deleted": False,
        "status": 204,
    }
    with pytest.raises(NotFoundError):
        control.unwrap(wrapped, CONTEXT)
    again = worker.destroy_key(ref)
    assert again["already_deleted"] is True
    assert again["status"] == 400  # OpenBao answers 400 "no existing key" to the config update

    signed = worker.call(
        "sign",
        lambda c: c.secrets.transit.sign_data(
            AUDIT_KEY, hash_input="aGk=", mount_point=AUDIT_MOUNT
        ),
    )
    assert signed["data"]["signature"].startswith("vault:v1:")
    with pytest.raises(DependencyUnavailableError):
        worker.call(
            "audit key", lambda c: c.secrets.transit.rotate_key(AUDIT_KEY, mount_point=AUDIT_MOUNT)
        )


def test_token_is_renewed_then_logged_in_again_after_expiry(dev: Dev):
    # A role with the control plane's policy and 3-second tokens.
    dev.root.auth.approle.create_or_update_approle(
        "sovereign-short",
        token_policies=[CONTROL_PLANE],
        token_no_default_policy=True,
        token_type="service",
        token_ttl="3s",
        token_max_ttl="60s",
    )
    role_id = dev.root.auth.approle.read_role_id("sovereign-short")["data"]["role_id"]
    secret = dev.root.auth.approle.generate_secret_id("sovereign-short")["data"]["secret_id"]
    auth = AppRoleAuth(role_id, secret)
    store = VaultSecretStore(dev.addr, auth=auth)
    start = time.monotonic()
    ref = store.create_key(MOUNT, new_name())
    first = store.clients().token
    assert (auth.logins, auth.renewals) == (1, 0)

    # Less than a third of the TTL left: the next call renews the same token.
    time.sleep(2.2 - (time.monotonic() - start))
    store.data_key(ref, CONTEXT)
    assert (auth.logins, auth.renewals) == (1, 1)
    assert store.clients().token == first

    # Past the original TTL, the renewed token still works (used directly, without renewal).
    time.sleep(3.5 - (time.monotonic() - start))
    raw = hvac.Client(url=dev.addr, token=first, timeout=5)
    answer = raw.secrets.transit.generate_data_key(
        ref.name, key_type="plaintext", mount_point=MOUNT
    )
    assert answer["data"]["ciphertext"].startswith("vault:v1:")

    # Past the renewed TTL, it has expired: renewal is refused and the auth logs in again.
    time.sleep(6.0 - (time.monotonic() - start))
    with pytest.raises(hvac_exc.Forbidden):
        raw.secrets.transit.generate_data_key(ref.name, key_type="plaintext", mount_point=MOUNT)
    store.data_key(ref, CONTEXT)
    assert (auth.logins, auth.renewals) == (2, 1)
    second = store.clients().token
    assert second != first

    # A token revoked behind its back: the 403 makes it log in once more and retry.
    dev.root.auth.token.revoke(second)
    store.data_key(ref, CONTEXT)
    assert auth.logins == 3
    assert store.clients().token not in (first, second)


def test_response_wrapped_and_file_secret_ids(dev: Dev, tmp_path: Path):
    role_id = dev.roles[CONTROL_PLANE]
    wrapping = dev.root.auth.approle.generate_secret_id(CONTROL_PLANE, wrap_ttl="60s")
    token = wrapping["wrap_info"]["token"]
    assert "secret_id" not in (wrapping.get("data") or {})
    store = VaultSecretStore(dev.addr, auth=AppRoleAuth(role_id, wrapped_token=token))
    ref = store.create_key(MOUNT, new_name())
    assert store.data_key(ref, CONTEXT)[1].key == ref
    assert isinstance(store.clients, VaultClients)
    store.clients.reauthenticate()
    store.rotate(ref)  # logs in again with the unwrapped secret id kept in memory

    # A wrapping token opens once: whoever comes second is refused.
    replay = VaultSecretStore(dev.addr, auth=AppRoleAuth(role_id, wrapped_token=token))
    with pytest.raises(DependencyUnavailableError, match="refused the AppRole login"):
        replay.ping()

    secret_file = tmp_path / "secret-id"
    secret_file.write_text(dev.secret_id(CONTROL_PLANE) + "\n")
    from_file = AppRoleAuth(role_id, secret_id_file=secret_file)
    VaultSecretStore(dev.addr, auth=from_file).ping()
    assert from_file.logins == 1

    wrong = VaultSecretStore(dev.addr, auth=AppRoleAuth(role_id, str(uuid.uuid4())))
    with pytest.raises(DependencyUnavailableError, match="refused the AppRole login"):
        wrong.create_key(MOUNT, new_name())


def test_configuration_mistakes_are_refused_and_secrets_never_shown(dev: Dev):
    with pytest.raises(ConfigurationError):
        VaultSecretStore(dev.addr)
    with pytest.raises(ConfigurationError):
        AppRoleAuth("role", "secret", secret_id_file="/nonexistent")
    with pytest.raises(ConfigurationError):
        AppRoleAuth("role")
    auth = AppRoleAuth("role", "s3cret-id")
    assert "s3cret-id" not in repr(auth)
    missing = VaultSecretStore(
        dev.addr, auth=AppRoleAuth("role", secret_id_file="/nonexistent/secret-id")
    )
    with pytest.raises(ConfigurationError):
        missing.ping()


def test_stopped_and_sealed_vault_is_unavailable(tmp_path: Path):
    with OpenBaoDevServer(tmp_path / "bao", audit=False) as server:
        store = VaultSecretStore(server.addr, server.token, timeout_s=2)
        store.ensure_mount(MOUNT)
        ref = store.create_key(MOUNT, new_name())
        _plaintext, wrapped = store.data_key(ref, CONTEXT)
        store.ping()

        hvac.Client(url=server.addr, token=server.token).sys.seal()
        for call in (lambda: store.data_key(ref, CONTEXT), lambda: store.unwrap(wrapped, CONTEXT)):
            with pytest.raises(DependencyUnavailableError) as e:
                call()
            assert e.value.dependency == "vault"
            assert "sealed" in str(e.value)
            assert server.token not in str(e.value)
        with pytest.raises(DependencyUnavailableError, match="vault is sealed"):
            store.ping()

        server.stop()
        for call in (lambda: store.create_key(MOUNT, "x"), store.ping):
            with pytest.raises(DependencyUnavailableError) as e:
                call()
            assert e.value.dependency == "vault"
            assert "vault is unreachable" in str(e.value)
            assert server.token not in str(e.value)


def test_silent_vault_times_out(dev: Dev):
    # Accepts connections (the kernel does, from the backlog) and never answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", free_port()))
        silent.listen(8)
        addr = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for store in (
            VaultSecretStore(addr, "a-token", timeout_s=0.5),
            VaultSecretStore(addr, auth=AppRoleAuth("role", "secret"), timeout_s=0.5),
        ):
            start = time.monotonic()
            with pytest.raises(DependencyUnavailableError) as e:
                store.data_key(KeyRef(MOUNT, "k"), CONTEXT)
            elapsed = time.monotonic() - start
            assert 0.45 <= elapsed < 1.5
            assert e.value.dependency == "vault"
            assert "did not answer in time" in str(e.value)


def test_file_audit_device_records_hmacs_not_secrets(dev: Dev):
    store = VaultSecretStore(dev.addr, dev.server.token)
    ref = store.create_key(MOUNT, new_name())
    plaintext, wrapped = store.data_key(ref, CONTEXT)
    store.unwrap(wrapped, CONTEXT)

    assert dev.server.audit_log is not None
    text = dev.server.audit_log.read_text()
    entries = [json.loads(line) for line in text.splitlines()]
    datakey = [
        e
        for e in entries
        if e["type"] == "response"
        and e["request"]["path"] == f"{MOUNT}/datakey/plaintext/{ref.name}"
    ]
    assert len(datakey) == 1
    assert datakey[0]["response"]["data"]["plaintext"].startswith("hmac-sha256:")
    assert datakey[0]["auth"]["client_token"].startswith("hmac-sha256:")
    decrypt = [
        e
        for e in entries
        if e["type"] == "request" and e["request"]["path"] == f"{MOUNT}/decrypt/{ref.name}"
    ]
    assert len(decrypt) == 1
    for secret in (
        base64.b64encode(plaintext).decode(),
        plaintext.hex(),
        wrapped.ciphertext,
        dev.server.token,
    ):
        assert secret not in text
