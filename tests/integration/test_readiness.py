"""/readyz against real dependencies: a real OpenBao dev server, sealed and stopped mid-run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hvac
import pytest

from devstack.stack import OpenBaoDevServer, hypervisor_uris
from sovereign import create_app
from sovereign.adapters.migrations import upgrade

pytestmark = [pytest.mark.vault, pytest.mark.idp, pytest.mark.libvirt]

#: The static scrape token, which sees the per-dependency detail as an operator's token does.
SCRAPE = "s" * 40
OPERATOR = {"Authorization": f"Bearer {SCRAPE}"}


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBaoDevServer]:
    with OpenBaoDevServer(tmp_path / "bao") as server:
        yield server


def test_ready_then_vault_sealed_then_stopped(tmp_path: Path, idp: Any, bao: OpenBaoDevServer):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    app = create_app(
        {
            "ENV": "testing",
            "DATABASE_URL": url,
            "AUDIT_SIGNING_KEY": str(tmp_path / "audit.key"),
            "AUDIT_WITNESS_PATH": str(tmp_path / "witness.jsonl"),
            "IDP_URL": idp.url,
            "VAULT_ADDR": bao.addr,
            "VAULT_TOKEN": bao.token,
            "AUDIT_SIGNER": "file",
            "HYPERVISOR_URIS": hypervisor_uris(),
            "METRICS_TOKEN": SCRAPE,
        }
    )
    client = app.test_client()
    ready = client.get("/readyz", headers=OPERATOR)
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"] == {
        "database": "ok",
        "identity provider": "ok",
        "vault": "ok",
        "hypervisors": "ok",
    }
    assert len(hypervisor_uris()) == 3  # the bundled simulated hosts

    hvac.Client(url=bao.addr, token=bao.token).sys.seal()
    anonymous = client.get("/readyz")
    assert anonymous.status_code == 503
    assert anonymous.mimetype == "application/problem+json"
    assert set(anonymous.get_json()) == {"type", "title", "status", "instance", "request_id"}
    assert "vault" not in anonymous.get_data(as_text=True), "no dependency names to strangers"
    sealed = client.get("/readyz", headers=OPERATOR)
    assert sealed.status_code == 503
    assert sealed.mimetype == "application/problem+json"
    assert sealed.get_json()["checks"]["vault"] == "vault is sealed"
    assert sealed.get_json()["detail"] == "unavailable: vault"

    bao.stop()
    down = client.get("/readyz", headers=OPERATOR).get_json()
    assert down["checks"]["vault"] == "vault is unavailable."
    assert down["checks"]["database"] == "ok"
    app.extensions["sovereign"].close()


def test_missing_hypervisor_is_reported(tmp_path: Path, idp: Any):
    url = f"sqlite:///{tmp_path / 'r.db'}"
    upgrade(url)
    app = create_app(
        {
            "ENV": "testing",
            "DATABASE_URL": url,
            "AUDIT_SIGNING_KEY": str(tmp_path / "audit.key"),
            "AUDIT_WITNESS_PATH": str(tmp_path / "witness.jsonl"),
            "IDP_URL": idp.url,
            "HYPERVISOR_URIS": [f"test:///{tmp_path}/missing-host.xml"],
            "METRICS_TOKEN": SCRAPE,
            "HYPERVISOR_TEST_HOSTS_DIR": str(tmp_path),
        }
    )
    body = app.test_client().get("/readyz", headers=OPERATOR).get_json()
    assert body["status"] == 503
    assert "missing-host.xml is unavailable" in body["checks"]["hypervisors"]
    app.extensions["sovereign"].close()
