"""Enclave keys against a real OpenBao: created at approval, never stored in clear, destroyed
by crypto-erase, and a Vault failure at approval answers 503 and changes nothing."""

from __future__ import annotations

import base64
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import hvac
import pytest
from flask import Flask

from devstack.stack import OpenBaoDevServer
from devstack.vault import bootstrap_dev_vault
from sovereign import create_app
from sovereign.adapters.migrations import upgrade
from sovereign.cli import _bootstrap
from sovereign.errors import NotFoundError
from sovereign.services.recording import CallContext
from tests.support.factories import OFFICER_1

pytestmark = [pytest.mark.vault, pytest.mark.idp]

BODY: dict[str, Any] = {
    "tenant": "defence",
    "label": {"level": "SECRET", "compartments": ["NATO"]},
    "resources": {
        "vcpus": 4,
        "memory_mib": 8192,
        "gpus": 1,
        "gpu_model": "H100-SXM5-80GB",
        "disk_gib": 20,
    },
    "image": "debian-12-cuda",
    "purpose": "keys",
    "lease_hours": 4,
}


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBaoDevServer]:
    with OpenBaoDevServer(tmp_path / "bao") as server:
        bootstrap_dev_vault(server.addr, server.token)
        yield server


@pytest.fixture
def app(tmp_path: Path, idp: Any, bao: OpenBaoDevServer) -> Iterator[Flask]:
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    upgrade(url)
    app = create_app(
        {
            "ENV": "testing",
            "DATABASE_URL": url,
            "IDP_URL": idp.url,
            "VAULT_ADDR": bao.addr,
            "VAULT_TOKEN": bao.token,
            "AUDIT_WITNESS_PATH": str(tmp_path / "witness.jsonl"),
        }
    )
    _bootstrap(app, json.loads((resources.files("sovereign") / "data" / "demo.json").read_text()))
    yield app
    app.extensions["sovereign"].close()


def approve_all(app: Flask, token: Callable[[str], str]) -> str:
    client = app.test_client()
    auth = lambda user: {"Authorization": f"Bearer {token(user)}"}  # noqa: E731
    rid = client.post("/api/v1/requests", json=BODY, headers=auth("analyst-defence")).get_json()[
        "id"
    ]
    assert (
        client.post(f"/api/v1/requests/{rid}/approve", headers=auth("officer-1")).status_code == 200
    )
    final = client.post(f"/api/v1/requests/{rid}/approve", headers=auth("officer-2"))
    assert final.status_code == 200, final.get_json()
    return str(rid)


def test_keys_live_in_vault_and_die_with_crypto_erase(
    app: Flask, bao: OpenBaoDevServer, token: Callable[[str], str], tmp_path: Path, caplog: Any
):
    caplog.set_level(logging.DEBUG)
    rid = approve_all(app, token)
    services = app.extensions["sovereign"]
    root = hvac.Client(url=bao.addr, token=bao.token)
    key = root.secrets.transit.read_key(name=f"enclave-{rid}", mount_point="sovereign-defence")
    assert key["data"]["type"] == "aes256-gcm96"
    assert key["data"]["exportable"] is False
    secrets = services.keys.secrets(uuid.UUID(rid))
    assert len(secrets.luks_passphrase) == 32

    services.keys.crypto_erase(
        CallContext(principal=OFFICER_1, actor="system:test"), uuid.UUID(rid)
    )
    with pytest.raises(NotFoundError):
        services.keys.secrets(uuid.UUID(rid))
    with pytest.raises(hvac.exceptions.InvalidPath):
        root.secrets.transit.read_key(name=f"enclave-{rid}", mount_point="sovereign-defence")
    services.audit.log.sequence()
    actions = [e["action"] for e in map(json.loads, _entries(tmp_path / "keys.db"))]
    assert "key:create" in actions
    assert "key:destroy" in actions

    # No plaintext key material anywhere: database file, application logs, Vault's audit log.
    haystacks = [(tmp_path / "keys.db").read_bytes(), caplog.text.encode()]
    if bao.audit_log is not None and Path(bao.audit_log).exists():
        haystacks.append(Path(bao.audit_log).read_bytes())
    for secret in (secrets.luks_passphrase, secrets.vtpm_secret):
        for form in (secret, base64.b64encode(secret), secret.hex().encode()):
            for haystack in haystacks:
                assert form not in haystack


def _entries(db: Path) -> list[bytes]:
    conn = sqlite3.connect(db)
    try:
        return [row[0] for row in conn.execute("SELECT entry FROM audit_log ORDER BY seq")]
    finally:
        conn.close()


def test_vault_down_at_approval_is_a_503_and_nothing_changes(
    app: Flask, bao: OpenBaoDevServer, token: Callable[[str], str]
):
    client = app.test_client()
    auth = lambda user: {"Authorization": f"Bearer {token(user)}"}  # noqa: E731
    rid = client.post("/api/v1/requests", json=BODY, headers=auth("analyst-defence")).get_json()[
        "id"
    ]
    client.post(f"/api/v1/requests/{rid}/approve", headers=auth("officer-1"))
    hvac.Client(url=bao.addr, token=bao.token).sys.seal()
    sealed = client.post(f"/api/v1/requests/{rid}/approve", headers=auth("officer-2"))
    assert sealed.status_code == 503
    assert sealed.mimetype == "application/problem+json"
    assert sealed.get_json()["dependency"] == "vault"
    bao.stop()
    down = client.post(f"/api/v1/requests/{rid}/approve", headers=auth("officer-2"))
    assert down.status_code == 503
    state = client.get(f"/api/v1/requests/{rid}", headers=auth("officer-1")).get_json()
    assert state["state"] == "pending"
    assert state["approvals_received"] == 1
    # The failures are on the record (in the log; no checkpoint signed while Vault is down).
    db = sqlite3.connect(app.config["DATABASE_URL"].removeprefix("sqlite:///"))
    try:
        rows = [r[0] for r in db.execute("SELECT entry FROM audit_pending")]
        rows += [r[0] for r in db.execute("SELECT entry FROM audit_log")]
    finally:
        db.close()
    failures = [
        e
        for e in map(json.loads, rows)
        if e["action"] == "request:approve" and e["outcome"] == "error"
    ]
    assert len(failures) == 2
    assert all("vault" in e["reason"] for e in failures)


def test_officer_rotates_through_the_api(app: Flask, token: Callable[[str], str]):
    rid = approve_all(app, token)
    client = app.test_client()
    before = app.extensions["sovereign"].keys.secrets(uuid.UUID(rid))
    denied = client.post(
        f"/api/v1/requests/{rid}/keys/rotate",
        headers={"Authorization": f"Bearer {token('analyst-defence')}"},
    )
    assert denied.status_code == 403
    r = client.post(
        f"/api/v1/requests/{rid}/keys/rotate",
        headers={"Authorization": f"Bearer {token('officer-1')}"},
    )
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["version"] == 2
    assert r.get_json()["mount"] == "sovereign-defence"
    assert app.extensions["sovereign"].keys.secrets(uuid.UUID(rid)) == before
