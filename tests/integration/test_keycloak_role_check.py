"""The keycloak role's realm tasks, run for real in check mode against the dev IdP stand-in.

No Keycloak server exists on these machines, so ``ansible-playbook --check --diff`` runs the
role's ``realm.yml`` (community.general's keycloak_* modules, every argument from the one realm
export) against the dev identity provider's read-only admin API (:mod:`devstack.idp.admin`),
which serves that same export as Keycloak would. Check mode only reads: the modules fetch an
admin token and GET the realm, roles, groups, client scopes, clients and user profile, then
report what they would change.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from devstack.idp import CONSOLE_CLIENT_SECRET, create_idp_app, realm_export_path
from devstack.idp.admin import DEV_ADMIN_PASSWORD, DEV_ADMIN_USERNAME

pytestmark = pytest.mark.idp

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
ANSIBLE_PLAYBOOK = Path(sys.executable).with_name("ansible-playbook")

#: Every task of roles/keycloak/tasks/realm.yml, in order.
REALM_TASKS = (
    "Create the realm with its token, brute-force and event settings",
    "Declare the clearance and compartments user attributes",
    "Create the realm roles",
    "Create the top-level groups",
    "Create the tenant groups",
    "Create the client scopes with their token mappers",
    "Create the clients",
)

PLAYBOOK = """\
---
- name: The keycloak role's realm tasks
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Converge the realm
      ansible.builtin.include_role:
        name: keycloak
        tasks_from: realm
"""


def _export() -> dict[str, Any]:
    return dict(json.loads(realm_export_path().read_text(encoding="utf-8")))


def _console(export: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in export["clients"] if c["clientId"] == "sovereign")


def _dev_values(idp: Any) -> dict[str, Any]:
    """Extra vars giving the role exactly what the stand-in serves (its dev secret and URIs)."""
    console = _console(_export())
    post_logout = console["attributes"]["post.logout.redirect.uris"].split("##")
    return {
        "keycloak_admin_url": idp.url,
        "keycloak_admin_user": DEV_ADMIN_USERNAME,
        "keycloak_admin_password": DEV_ADMIN_PASSWORD,
        "keycloak_console_client_secret": CONSOLE_CLIENT_SECRET,
        "keycloak_console_redirect_uris": console["redirectUris"],
        "keycloak_console_post_logout_redirect_uris": post_logout,
        "ansible_python_interpreter": sys.executable,
    }


def _check(tmp_path: Path, extra_vars: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Run the realm tasks with --check --diff; {task name: its result for localhost}."""
    playbook = tmp_path / "realm-check.yml"
    playbook.write_text(PLAYBOOK, encoding="utf-8")
    variables = tmp_path / "vars.json"
    variables.write_text(json.dumps(extra_vars), encoding="utf-8")
    variables.chmod(0o600)
    env = dict(
        os.environ,
        ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
        ANSIBLE_STDOUT_CALLBACK="ansible.posix.json",
        ANSIBLE_LOCAL_TEMP=str(tmp_path / "ansible-tmp"),
        ANSIBLE_NOCOLOR="1",
    )
    proc = subprocess.run(
        [
            str(ANSIBLE_PLAYBOOK),
            str(playbook),
            "-c",
            "local",
            "-i",
            "localhost,",
            "--check",
            "--diff",
            "-e",
            f"@{variables}",
        ],
        cwd=ANSIBLE_DIR,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout[proc.stdout.index("{") :])
    results = {
        task["task"]["name"].removeprefix("keycloak : "): task["hosts"]["localhost"]
        for play in report["plays"]
        for task in play["tasks"]
        if "localhost" in task["hosts"]
    }
    assert report["stats"]["localhost"]["failures"] == 0
    for name in REALM_TASKS:
        assert name in results, f"task {name!r} did not run: {sorted(results)}"
        assert not results[name].get("failed"), (name, results[name])
    return results


def _changed_items(result: dict[str, Any]) -> list[bool]:
    return [bool(r.get("changed")) for r in result["results"]]


@pytest.fixture(scope="module")
def anonymous_admin() -> FlaskClient:
    app = create_idp_app(environment="testing", issuer_base="http://127.0.0.1:1")
    return app.test_client()


def test_check_mode_finds_the_stand_in_identical_to_the_export(idp: Any, tmp_path: Path) -> None:
    """Given the stand-in's own secret and URIs, nothing would change: every task is ok."""
    results = _check(tmp_path, _dev_values(idp))
    changed = [name for name in REALM_TASKS if results[name].get("changed")]
    assert changed == []
    # Every loop item was compared, none would change.
    assert _changed_items(results["Create the realm roles"]) == [False] * 4
    assert _changed_items(results["Create the tenant groups"]) == [False, False]
    assert _changed_items(results["Create the clients"]) == [False, False]


def test_check_mode_reports_the_deploy_time_console_values(idp: Any, tmp_path: Path) -> None:
    """Production's console URLs and generated secret differ: only the console client changes."""
    values = _dev_values(idp) | {
        "keycloak_console_client_secret": "generated-at-deploy-time-" + "x" * 16,
        "keycloak_console_redirect_uris": ["https://cp1.es.sovereign.example/auth/callback"],
        "keycloak_console_post_logout_redirect_uris": ["https://cp1.es.sovereign.example/"],
    }
    results = _check(tmp_path, values)
    changed = [name for name in REALM_TASKS if results[name].get("changed")]
    assert changed == ["Create the clients"]
    # The export's clients are [sovereign (console), sovereign-cli]: only the console changes.
    assert [c["clientId"] for c in _export()["clients"]] == ["sovereign", "sovereign-cli"]
    assert _changed_items(results["Create the clients"]) == [True, False]


def test_check_mode_reports_a_role_the_realm_lacks(idp: Any, tmp_path: Path) -> None:
    """A definition that differs from the served realm (one more role) is reported as changed."""
    definition = _export()
    definition["roles"]["realm"].append({"name": "intruder", "description": "Not in the realm."})
    results = _check(tmp_path, _dev_values(idp) | {"keycloak_realm_definition": definition})
    changed = [name for name in REALM_TASKS if results[name].get("changed")]
    assert changed == ["Create the realm roles"]
    assert _changed_items(results["Create the realm roles"]) == [False] * 4 + [True]


def test_check_mode_reports_a_changed_mapper(idp: Any, tmp_path: Path) -> None:
    """A protocol mapper that differs (clearance not in access tokens) is reported as changed."""
    definition = _export()
    scope = definition["clientScopes"][0]
    clearance = next(m for m in scope["protocolMappers"] if m["name"] == "clearance")
    clearance["config"]["access.token.claim"] = "false"
    results = _check(tmp_path, _dev_values(idp) | {"keycloak_realm_definition": definition})
    changed = [name for name in REALM_TASKS if results[name].get("changed")]
    assert changed == ["Create the client scopes with their token mappers"]


def test_admin_api_is_read_only_and_needs_the_dev_admin(anonymous_admin: FlaskClient) -> None:
    client = anonymous_admin
    token_url = "/realms/master/protocol/openid-connect/token"
    form = {
        "grant_type": "password",
        "client_id": "admin-cli",
        "username": DEV_ADMIN_USERNAME,
        "password": "wrong",
    }
    assert client.post(token_url, data=form).status_code == 401
    assert client.get("/admin/realms/sovereign").status_code == 401
    token = client.post(token_url, data=form | {"password": DEV_ADMIN_PASSWORD}).json
    assert token is not None
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    realm = client.get("/admin/realms/sovereign", headers=auth)
    assert realm.status_code == 200
    assert realm.json is not None
    assert realm.json["id"] == "sovereign"
    assert "clients" not in realm.json
    assert client.get("/admin/realms/other", headers=auth).status_code == 404
    assert client.get("/admin/realms/sovereign/users", headers=auth).status_code == 501
    for method in ("post", "put", "delete"):
        refused = getattr(client, method)("/admin/realms/sovereign/roles", headers=auth, json={})
        assert refused.status_code == 405
        assert "read-only" in refused.json["error"]
