"""The keycloak role's realm tasks take their arguments from the one realm definition, and its
templates render; no Keycloak server can be had here, so this is what checks them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ansible")

from ansible.errors import AnsibleValueOmittedError
from ansible.parsing.dataloader import DataLoader
from ansible.template import Templar, trust_as_template

ROLE = Path(__file__).resolve().parents[3] / "ansible" / "roles" / "keycloak"
EXPORT = json.loads((ROLE / "files" / "realm-sovereign.json").read_text())
CONSOLE_URIS = ["https://cp1.es.sovereign.example/auth/callback"]


def templar(**extra: Any) -> Templar:
    variables = {
        "keycloak_def": EXPORT,
        "keycloak_realm_name": EXPORT["realm"],
        "keycloak_console_client_id": "sovereign",
        "keycloak_console_redirect_uris": CONSOLE_URIS,
        "keycloak_console_post_logout_redirect_uris": ["https://cp1.es.sovereign.example/"],
        "keycloak_console_client_secret": "generated",
        **extra,
    }
    return Templar(loader=DataLoader(), variables=variables)


def render(value: Any, **extra: Any) -> Any:
    if isinstance(value, str):
        return templar(**extra).template(trust_as_template(value))
    if isinstance(value, dict):
        rendered = {}
        for k, v in value.items():
            try:
                rendered[k] = render(v, **extra)
            except AnsibleValueOmittedError:  # the module gets no such argument
                continue
        return rendered
    if isinstance(value, list):
        return [render(v, **extra) for v in value]
    return value


def tasks() -> dict[str, dict[str, Any]]:
    block = yaml.safe_load((ROLE / "tasks" / "realm.yml").read_text())[0]["block"]
    return {t["name"]: t for t in block}


def module_args(task: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    module = next(k for k in task if k.startswith("community.general."))
    return module, task[module]


def test_every_realm_setting_of_the_export_reaches_keycloak_realm() -> None:
    task = tasks()["Create the realm with its token, brute-force and event settings"]
    _, args = module_args(task)
    rendered = render(args)
    used = {
        v.split("keycloak_def.")[1].split(" ")[0] for v in args.values() if "keycloak_def." in v
    }
    scalars = {k for k, v in EXPORT.items() if not isinstance(v, (dict, list)) or k.endswith("s")}
    scalars -= {"realm", "roles", "groups", "clients", "clientScopes", "components"}
    assert scalars <= used | {"realm"}, scalars - used
    assert rendered["brute_force_protected"] is True
    assert rendered["failure_factor"] == 5
    assert "LOGIN_ERROR" in rendered["enabled_event_types"]


def test_roles_groups_scopes_and_clients_loop_over_the_export() -> None:
    found = tasks()
    roles = render(found["Create the realm roles"]["loop"])
    assert [r["name"] for r in roles] == ["analyst", "security-officer", "auditor", "operator"]
    subgroups = render(found["Create the tenant groups"]["loop"])
    assert [(g.get("name"), s["path"]) for g, s in subgroups] == [
        ("tenants", "/tenants/research"),
        ("tenants", "/tenants/defence"),
    ]
    scopes = render(found["Create the client scopes with their token mappers"]["loop"])
    mappers = {m["protocolMapper"] for m in scopes[0]["protocolMappers"]}
    assert "oidc-audience-mapper" in mappers
    task = found["Create the clients"]
    _, args = module_args(task)
    by_id = {}
    for item in render(task["loop"]):
        by_id[item["clientId"]] = render(args, item=item)
    console, cli = by_id["sovereign"], by_id["sovereign-cli"]
    assert console["public_client"] is False
    assert console["secret"] == "generated"
    assert console["redirect_uris"] == CONSOLE_URIS
    assert console["attributes"]["pkce.code.challenge.method"] == "S256"
    assert console["attributes"]["post.logout.redirect.uris"] == "https://cp1.es.sovereign.example/"
    assert cli["public_client"] is True
    assert "secret" not in cli
    assert cli["direct_access_grants_enabled"] is True
    assert "sovereign" in cli["default_client_scopes"]
    assert task["no_log"] is True


def test_keycloak_conf_and_unit_render() -> None:
    values = {
        "ansible_managed": "Ansible managed",
        "keycloak_version": "26.0.8",
        "keycloak_hostname": "cp1.es.sovereign.example",
        "keycloak_db_server": "cp1.es.sovereign.example",
        "keycloak_db_name": "keycloak",
        "keycloak_db_user": "keycloak",
        "keycloak_bind_address": "10.10.0.10",
        "keycloak_https_port": 8443,
        "keycloak_user": "keycloak",
        "keycloak_home": "/opt/keycloak",
    }
    conf = render((ROLE / "templates" / "keycloak.conf.j2").read_text(), **values)
    options = dict(
        line.split("=", 1) for line in conf.splitlines() if line and not line.startswith("#")
    )
    assert options["db"] == "postgres"
    assert options["https-port"] == "8443"
    assert options["http-enabled"] == "false"
    assert options["hostname"] == "cp1.es.sovereign.example"
    assert "sslmode=verify-full" in options["db-url-properties"]
    assert "password" not in conf.lower()
    unit = render((ROLE / "templates" / "keycloak.service.j2").read_text(), **values)
    assert "ExecStart=/opt/keycloak/bin/kc.sh start --optimized" in unit
    assert "User=keycloak" in unit
