"""The sovereign role's configuration, rendered by Ansible's own templating (the role's defaults
and vars, the inventory's group and host variables, the role's templates) for the ``ci`` and the
``es`` + ``pt`` estates, is one the control plane's production checks accept.

No host is touched: the env file is parsed as systemd reads an EnvironmentFile (the role writes
no quotes and no backslashes, so systemd's parser and the simple one here agree, which the
test checks), loaded into a real app configuration with :func:`sovereign.config.load` (its
``verify``) and :func:`sovereign.config.verify_console`, and typed by ``Settings``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from sovereign import config as configuration
from sovereign.settings import Settings

ANSIBLE_DIR = Path(__file__).resolve().parents[3] / "ansible"

#: estate -> (inventories, the control plane host, the hypervisors it must list).
ESTATES = {
    "ci": (["ci"], "ci-node.sovereign.test", ["ci-node.sovereign.test"]),
    "iberia": (
        ["es", "pt"],
        "cp1.es.sovereign.example",
        ["hv1.es.sovereign.example", "hv1.pt.sovereign.example", "hv2.pt.sovereign.example"],
    ),
}
ROLE_ID = "5c1a7e0e-0000-4000-8000-00000000c0de"
WORKER_ROLE_ID = "5c1a7e0e-0000-4000-8000-00000000beef"


class Role:
    """The role's variables for one host, and its templates rendered with them."""

    def __init__(
        self, inventories: list[str], host: str, secrets: Path, role: str = "sovereign"
    ) -> None:
        self.root = ANSIBLE_DIR / "roles" / role
        with warnings.catch_warnings():
            # ansible's SSH agent support imports cryptography's deprecated DSA.
            warnings.simplefilter("ignore", DeprecationWarning)
            from ansible.inventory.manager import InventoryManager
            from ansible.parsing.dataloader import DataLoader
            from ansible.plugins.loader import init_plugin_loader
            from ansible.template import Templar, trust_as_template
            from ansible.utils.collection_loader import AnsibleCollectionConfig
            from ansible.vars.manager import VariableManager

            if AnsibleCollectionConfig.collection_finder is None:  # once per process
                init_plugin_loader()
        self._templar_class, self._trust = Templar, trust_as_template
        self.loader = DataLoader()
        inventory = InventoryManager(
            loader=self.loader,
            sources=[str(ANSIBLE_DIR / "inventories" / name) for name in inventories],
        )
        found = inventory.get_host(host)
        assert found is not None, host
        manager = VariableManager(loader=self.loader, inventory=inventory)
        host_vars = manager.get_vars(host=found)
        # What templates read of other hosts (their estate_address, ...), as plays see it.
        host_vars["hostvars"] = {h.name: manager.get_vars(host=h) for h in inventory.get_hosts()}
        # Precedence as in a play: role defaults < inventory < role vars < facts < extra vars.
        self.variables: dict[str, Any] = {
            **self._load("defaults/main.yml"),
            **host_vars,
            **self._load("vars/main.yml"),
            # What the tasks' set_fact reads from the openbao role's files on the controller.
            "sovereign_approle": {"role_id": ROLE_ID, "secret_id": "not-read-here"},
            "sovereign_worker_approle": {"role_id": WORKER_ROLE_ID, "secret_id": "nor-here"},
            # Extra vars: generated passwords go to a scratch directory, not the checkout.
            "estate_secrets_dir": str(secrets),
            "estate_pki_dir": str(secrets / "pki"),
            "ansible_managed": "Ansible managed",
        }

    def _load(self, relative: str) -> dict[str, Any]:
        if not (self.root / relative).is_file():  # not every role has vars/main.yml
            return {}
        loaded: dict[str, Any] = self.loader.load_from_file(
            str(self.root / relative), trusted_as_template=True
        )
        return loaded

    def template(self, expression: Any, **extra: Any) -> Any:
        """``expression`` (a trusted template string, or a structure of them) rendered."""
        templar = self._templar_class(loader=self.loader, variables={**self.variables, **extra})
        return templar.template(expression)

    def task_vars(self, tasks_file: str, task_name: str) -> dict[str, Any]:
        """The ``vars`` of the task named ``task_name``, as written in the role."""
        tasks: list[dict[str, Any]] = self.loader.load_from_file(
            str(self.root / "tasks" / tasks_file), trusted_as_template=True
        )
        (task,) = [t for t in tasks if t["name"] == task_name]
        return {name: self.template(value) for name, value in task.get("vars", {}).items()}

    def render(self, template: str, **extra: Any) -> str:
        """The role's ``templates/<template>`` as the template module renders it."""
        source = self._trust((self.root / "templates" / template).read_text())
        templar = self._templar_class(loader=self.loader, variables={**self.variables, **extra})
        # As the template module does: includes are found beside the template.
        templar = templar.copy_with_new_env(searchpath=[str(self.root / "templates")])
        rendered: str = templar.template(source, escape_backslashes=False)
        return rendered


def parse_env_file(text: str) -> dict[str, str]:
    """KEY=value lines as systemd reads an EnvironmentFile written without quotes or escapes."""
    values: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=value: {line!r}"
        # systemd treats these specially; the role must never write them.
        assert not value.startswith(("'", '"')), line
        assert "\\" not in value and value == value.strip(), line
        assert key not in values, f"{key} twice"
        values[key] = value
    return values


@pytest.fixture(params=sorted(ESTATES))
def estate(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Role, list[str]]:
    inventories, host, hypervisors = ESTATES[request.param]
    return Role(inventories, host, tmp_path / "secrets"), hypervisors


def _env_file(role: Role) -> dict[str, str]:
    task_vars = role.task_vars("config.yml", "Write the control plane's configuration")
    return parse_env_file(role.render("sovereign.env.j2", **task_vars))


def test_production_checks_accept_the_rendered_settings(
    estate: tuple[Role, list[str]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    role, hypervisors = estate
    env = _env_file(role)
    for name in [k for k in os.environ if k.startswith("SOVEREIGN_")]:
        monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    # The instance folder is the host's; here a scratch one (load() creates nothing there for
    # PostgreSQL, but a missing folder must not matter).
    monkeypatch.setenv("SOVEREIGN_INSTANCE_PATH", str(tmp_path / "instance"))
    app = configuration.new_app()
    configuration.load(app)  # raises ConfigurationError on what production refuses
    configuration.verify_console(app.config)
    settings = Settings.from_config(app.config)

    assert settings.production
    assert settings.hypervisor_uris == tuple(f"qemu+tls://{h}/system" for h in hypervisors)
    assert settings.hypervisor_transports == ("qemu+tls",)
    assert settings.trusted_proxies == 1
    assert settings.vault_role_id == ROLE_ID
    assert settings.vault_token is None
    assert settings.audit_signer == "vault"
    assert settings.idp_url and settings.idp_url.endswith("/")
    assert settings.vault_addr and settings.vault_addr.startswith("https://")
    assert settings.secret_key and len(settings.secret_key) >= configuration.MIN_SECRET_KEY_LENGTH
    database = settings.database_url
    assert database.startswith("postgresql+psycopg://sovereign_app:")
    assert (
        "sslmode=verify-full" in database and f"sslrootcert={settings.vault_ca_bundle}" in database
    )
    # The generated secrets are stable: rendering again reads the same files.
    assert _env_file(role)["SOVEREIGN_SECRET_KEY"] == env["SOVEREIGN_SECRET_KEY"]


def test_worker_env_file_replaces_only_the_vault_identity(estate: tuple[Role, list[str]]) -> None:
    role, _ = estate
    worker = parse_env_file(role.render("worker.env.j2"))
    assert worker == {
        "SOVEREIGN_VAULT_ROLE_ID": WORKER_ROLE_ID,
        "SOVEREIGN_VAULT_SECRET_ID_FILE": role.template(
            role.variables["sovereign_worker_vault_secret_id_file"]
        ),
    }
    api = role.render("sovereign-api.service.j2")
    unit = role.render("sovereign-worker.service.j2")
    env_file, worker_file = (
        role.template(role.variables[k])
        for k in ("sovereign_env_file", "sovereign_worker_env_file")
    )
    # systemd applies EnvironmentFile= lines in order: the worker's identity is read last.
    assert unit.index(f"EnvironmentFile={env_file}") < unit.index(f"EnvironmentFile={worker_file}")
    assert "ExecStart=/opt/sovereign/venv/bin/sovereign serve --bind 127.0.0.1:8700 " in api
    assert "ExecStart=/opt/sovereign/venv/bin/sovereign worker\n" in unit
    for text in (api, unit):
        for line in (
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "PrivateTmp=yes",
            "User=sovereign",
        ):
            assert f"\n{line}\n" in text
        assert "\nReadWritePaths=/var/lib/sovereign /var/lib/sovereign-witness\n" in text


def test_sovereign_manage_runs_the_cli_with_the_env_file(
    estate: tuple[Role, list[str]], tmp_path: Path
) -> None:
    """The wrapper the tasks and the libvirt_host role run: the env file's settings; with
    ``--as-owner`` (migrations) the owner's DATABASE_URL from its root-only file first, so the
    owner's password is never on a command line or in Ansible's environment."""
    role, _ = estate
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    cli = venv / "bin" / "sovereign"
    cli.write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'argv': sys.argv[1:], 'env': {k: v for k, v in os.environ.items()"
        " if k.startswith('SOVEREIGN_')}}))\n"
    )
    cli.chmod(0o755)
    env_path = tmp_path / "sovereign.env"
    task_vars = role.task_vars("config.yml", "Write the control plane's configuration")
    env_path.write_text(role.render("sovereign.env.j2", **task_vars))
    owner = "postgresql+psycopg://sovereign_owner:x@db:5432/sovereign?sslmode=verify-full"
    owner_path = tmp_path / "owner.env"
    owner_path.write_text(
        role.render("owner.env.j2", **{**task_vars, "sovereign_owner_database_url": owner})
    )
    wrapper = tmp_path / "sovereign-manage"
    wrapper.write_text(
        role.render(
            "sovereign-manage.j2",
            sovereign_venv=str(venv),
            sovereign_env_file=str(env_path),
            sovereign_owner_env_file=str(owner_path),
        )
    )
    wrapper.chmod(0o755)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SOVEREIGN_")}
    expected = parse_env_file(env_path.read_text())

    def run(*args: str) -> dict[str, object]:
        done = subprocess.run(
            [str(wrapper), *args], env=clean, capture_output=True, text=True, check=True
        )
        seen: dict[str, object] = json.loads(done.stdout)
        return seen

    plain = run("hosts", "list")
    assert plain["argv"] == ["hosts", "list"]
    assert plain["env"] == expected
    migrating = run("--as-owner", "db", "current")
    assert migrating["argv"] == ["db", "current"]
    assert migrating["env"] == {**expected, "SOVEREIGN_DATABASE_URL": owner}
    assert expected["SOVEREIGN_DATABASE_URL"] != owner
