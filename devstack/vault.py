"""The development Vault layout: what ``sovereign dev`` and the tests lay out in an OpenBao dev
server, as production has it (ansible lays out production's).

Owns the transit mounts of the embedded default, the checkpoint key, the KV mount, the ACL
policies read from ``ansible/vault/policies`` and the AppRole roles bound to them, set up
idempotently through the root token. It uses the control plane's Vault adapter
(:class:`~sovereign.adapters.vault.VaultSecretStore`), which translates hvac's errors; the control
plane never imports this module.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import hvac
from hvac import exceptions as hvac_exc

from sovereign.adapters.vault import (
    AUDIT_KEY,
    AUDIT_KEY_TYPE,
    AUDIT_MOUNT,
    CONFIG_MOUNT,
    VaultSecretStore,
    ensure_engine,
)
from sovereign.domain.keys import KeyRef
from sovereign.errors import ConfigurationError, ConflictError

#: The default security domains of the embedded default and the tests.
DEFAULT_TRANSIT_MOUNTS = ("sovereign-civilian", "sovereign-defence")
#: The policy files in a source checkout; deployments copy them (ansible).
POLICY_DIR = Path(__file__).resolve().parents[1] / "ansible" / "vault" / "policies"
#: AppRole role name -> the policy file (stem) it is bound to; the policy has the role's name.
ROLES = {"sovereign-control-plane": "control-plane", "sovereign-worker": "worker"}
#: Tokens of the dev roles. Service tokens (batch tokens cannot be renewed), one hour, renewed
#: by AppRoleAuth until the max TTL, after which it logs in again. (Durations, not secrets.)
DEV_ROLE_TOKEN_TTL = "1h"  # noqa: S105
DEV_ROLE_TOKEN_MAX_TTL = "24h"  # noqa: S105


def bootstrap_dev_vault(
    addr: str,
    root_token: str,
    mounts: Iterable[str] = DEFAULT_TRANSIT_MOUNTS,
    policy_dir: Path = POLICY_DIR,
    *,
    timeout_s: float = 5,
) -> dict[str, str]:
    """Lay out a development Vault (idempotent; a second run changes nothing): transit
    ``mounts``, KV v2 at :data:`CONFIG_MOUNT`, the Ed25519 key :data:`AUDIT_KEY` in
    :data:`AUDIT_MOUNT`, the policies from ``policy_dir``, and the AppRole roles of
    :data:`ROLES` bound to them. Returns the role ids by role name.

    :raises ConfigurationError: a policy file is missing, does not name a mount, or a path holds
        another engine.
    :raises DependencyUnavailableError: Vault down, sealed or refusing the token.
    """
    mounts = list(mounts)
    policies: dict[str, str] = {}
    for role, stem in ROLES.items():
        path = policy_dir / f"{stem}.hcl"
        try:
            policies[role] = path.read_text()
        except OSError as e:
            raise ConfigurationError(reason=f"missing vault policy file {path}") from e
    unnamed = [m for m in mounts if f'"{m}/' not in policies["sovereign-control-plane"]]
    if unnamed:
        raise ConfigurationError(
            reason=f"the control-plane policy does not grant the transit mounts {unnamed}"
        )

    store = VaultSecretStore(addr, root_token, timeout_s=timeout_s)
    try:
        for mount in [*mounts, AUDIT_MOUNT]:
            store.ensure_mount(mount)
        store.call(
            "enable the KV mount",
            lambda c: ensure_engine(c, CONFIG_MOUNT, "kv", {"version": "2"}),
        )
        audit = KeyRef(AUDIT_MOUNT, AUDIT_KEY)
        answer = store.call(
            "create the checkpoint key",
            lambda c: c.secrets.transit.create_key(
                AUDIT_KEY,
                key_type=AUDIT_KEY_TYPE,
                exportable=False,
                allow_plaintext_backup=False,
                mount_point=AUDIT_MOUNT,
            ),
            audit,
        )
        if isinstance(answer, dict) and answer["data"].get("type") != AUDIT_KEY_TYPE:
            raise ConflictError(reason=f"{AUDIT_MOUNT}/{AUDIT_KEY} is not an {AUDIT_KEY_TYPE} key")
        for role, text in policies.items():
            store.call("write a policy", _policy_writer(role, text))
        return store.call("set up AppRole", _ensure_approle_roles)
    finally:
        store.close()


def _policy_writer(name: str, text: str) -> Callable[[hvac.Client], None]:
    """An operation writing the ACL policy ``name`` unless it already reads exactly ``text``."""
    return lambda client: _ensure_policy(client, name, text)


def _ensure_policy(client: hvac.Client, name: str, text: str) -> None:
    """Write the ACL policy ``name`` unless it already reads exactly ``text``."""
    try:
        current = client.sys.read_policy(name)
    except hvac_exc.InvalidPath:
        current = None
    rules = current.get("data", current).get("rules") if isinstance(current, dict) else None
    if rules != text:
        client.sys.create_or_update_policy(name, text, pretty_print=False)


def _ensure_approle_roles(client: hvac.Client) -> dict[str, str]:
    """Enable AppRole if needed and write the roles of :data:`ROLES`; their role ids."""
    methods = client.sys.list_auth_methods()
    if "approle/" not in methods.get("data", methods):
        client.sys.enable_auth_method("approle")
    role_ids: dict[str, str] = {}
    for role in ROLES:
        # Writing identical settings is a no-op and keeps the role id.
        client.auth.approle.create_or_update_approle(
            role,
            token_policies=[role],
            # Only our policy: "default" would add sys/* and cubbyhole paths we do not need.
            token_no_default_policy=True,
            token_type="service",  # noqa: S106 - a token kind, not a secret
            token_ttl=DEV_ROLE_TOKEN_TTL,
            token_max_ttl=DEV_ROLE_TOKEN_MAX_TTL,
            bind_secret_id=True,
        )
        role_ids[role] = str(client.auth.approle.read_role_id(role)["data"]["role_id"])
    return role_ids
