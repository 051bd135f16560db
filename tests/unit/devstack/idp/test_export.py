"""The one realm definition: the dev IdP serves what the realm export defines, and refuses
users and clients outside it."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from devstack.idp import (
    CLI_CLIENT_ID,
    CONSOLE_CLIENT_ID,
    DEMO_PASSWORD,
    DEMO_USERS,
    DemoUser,
    RealmExport,
    RealmExportError,
    create_idp_app,
    realm_export_path,
)

ROOT = Path(__file__).resolve().parents[4]
ROLE_COPY = ROOT / "ansible" / "roles" / "keycloak" / "files" / "realm-sovereign.json"


def export() -> dict[str, Any]:
    return json.loads(realm_export_path().read_text())


def test_the_role_and_the_package_read_the_same_file() -> None:
    assert ROLE_COPY.resolve() == realm_export_path().resolve()


def test_roles_groups_clients_and_settings_come_from_the_export() -> None:
    data = export()
    realm = RealmExport.load()
    assert realm.name == data["realm"] == "sovereign"
    assert realm.roles == {"analyst", "security-officer", "auditor", "operator"}
    assert realm.groups == {"/tenants", "/tenants/research", "/tenants/defence"}
    assert {c.client_id for c in realm.clients} == {CONSOLE_CLIENT_ID, CLI_CLIENT_ID}
    by_id = {c.client_id: c for c in realm.clients}
    for rep in data["clients"]:
        client = by_id[rep["clientId"]]
        assert client.redirect_uris == tuple(rep["redirectUris"])
        assert client.is_public is rep["publicClient"]
        assert client.direct_access_grants is rep["directAccessGrantsEnabled"]
        assert client.pkce_required is (rep["attributes"]["pkce.code.challenge.method"] == "S256")
        assert client.audience == "sovereign"
    assert realm.brute_force is not None
    assert realm.brute_force.failure_factor == data["failureFactor"] == 5
    assert realm.brute_force.max_delta_time_s == data["maxDeltaTimeSeconds"]
    assert realm.access_token_ttl == data["accessTokenLifespan"]
    assert data["eventsEnabled"] is True
    assert "LOGIN_ERROR" in data["enabledEventTypes"]
    assert "users" not in data
    assert all("secret" not in c for c in data["clients"])


def test_every_demo_user_is_possible_in_the_realm() -> None:
    assert RealmExport.load().check_users(DEMO_USERS) == DEMO_USERS
    tenants = {
        t["name"] for t in json.loads((ROOT / "sovereign/data/demo.json").read_text())["tenants"]
    }
    assert {f"/tenants/{t}" for t in tenants} <= RealmExport.load().groups


@pytest.mark.parametrize(
    ("roles", "groups", "missing"),
    [(("root",), (), "root"), (("analyst",), ("/tenants/nowhere",), "/tenants/nowhere")],
)
def test_a_demo_user_outside_the_realm_is_refused(
    roles: tuple[str, ...], groups: tuple[str, ...], missing: str
) -> None:
    stranger = DemoUser(
        username="stranger",
        password=DEMO_PASSWORD,
        name="Stranger",
        roles=roles,
        groups=groups,
        clearance=None,
        compartments=(),
    )
    with pytest.raises(RealmExportError, match=rf"dev user 'stranger'.*{missing}"):
        create_idp_app(
            environment="testing",
            issuer_base="http://127.0.0.1:1",
            users=(*DEMO_USERS, stranger),
        )


def test_a_client_outside_the_realm_is_refused() -> None:
    import dataclasses

    other = dataclasses.replace(RealmExport.load().clients[0], client_id="rogue")
    with pytest.raises(RealmExportError, match="client 'rogue' is not in realm"):
        create_idp_app(environment="testing", issuer_base="http://127.0.0.1:1", clients=[other])


def test_the_served_realm_follows_the_export(tmp_path: Path) -> None:
    data = export()
    data["realm"] = "elsewhere"
    data["accessTokenLifespan"] = 120
    for client in data["clients"]:
        client["directAccessGrantsEnabled"] = client["clientId"] != CLI_CLIENT_ID
    path = tmp_path / "realm.json"
    path.write_text(json.dumps(data))
    app = create_idp_app(
        environment="testing",
        issuer_base="http://127.0.0.1:1",
        realm_export=RealmExport.load(path),
    )
    http = app.test_client()
    assert http.get("/realms/elsewhere/.well-known/openid-configuration").status_code == 200
    refused = http.post(
        "/realms/elsewhere/protocol/openid-connect/token",
        data={
            "grant_type": "password",
            "client_id": CLI_CLIENT_ID,
            "username": "operator",
            "password": DEMO_PASSWORD,
        },
    )
    assert refused.status_code == 400
    assert refused.json is not None
    assert refused.json["error"] == "unauthorized_client"


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update(users=[{"username": "x"}]), "no users"),
        (lambda d: d["clients"][0].update(secret="s"), "carries a secret"),
        (
            lambda d: d["clientScopes"][0]["protocolMappers"].pop(0),
            "exactly one audience mapper",
        ),
        (
            lambda d: d["clientScopes"][0]["protocolMappers"][4]["config"].update(
                multivalued="false"
            ),
            "compartments attribute, multivalued",
        ),
        (lambda d: d.update(permanentLockout=True), "temporary lockout only"),
    ],
)
def test_an_unusable_export_is_refused(mutate: Any, message: str) -> None:
    data = copy.deepcopy(export())
    mutate(data)
    with pytest.raises(RealmExportError, match=message):
        RealmExport.parse(data)


def test_python_m_devstack_idp_refuses_a_bad_realm_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    done = subprocess.run(
        [sys.executable, "-m", "devstack.idp", "--realm-file", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "no realm name" in done.stderr


def test_python_m_devstack_idp_serves_the_realm() -> None:
    import requests

    with subprocess.Popen(
        [sys.executable, "-m", "devstack.idp", "--port", "0", "--realm-file", str(ROLE_COPY)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as proc:
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            assert url.startswith("http://127.0.0.1:")
            doc = requests.get(
                f"{url}realms/sovereign/.well-known/openid-configuration", timeout=10
            ).json()
            assert doc["sovereign_dev_idp"] is True
        finally:
            proc.terminate()
            assert proc.wait(timeout=10) == 0
