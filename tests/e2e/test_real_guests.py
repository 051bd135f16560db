"""Enclaves through the whole control plane on a real libvirtd with QEMU (TCG).

Approval to boot marker with a LUKS volume whose passphrase comes from a real OpenBao, a vTPM
with encrypted state and an isolated network; the marker the guest writes is absent from the
encrypted volume on the host; termination removes domain, volume, secrets, TPM state and network
and crypto-erases the key; a ``sovereign worker`` killed with SIGKILL mid-provisioning and
mid-teardown is resumed by another worker; a termination racing provisioning ends consistent.
The ``libvirtd`` and ``guest_image`` fixtures fail loudly when they cannot be had.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import OpenBaoDevServer
from devstack.vault import bootstrap_dev_vault
from enclaves.steps import ProvisionStep, TeardownStep
from sovereign.adapters.migrations import upgrade
from sovereign.adapters.vault import TokenAuth, VaultClients, VaultSecretStore
from sovereign.errors import NotFoundError
from tests.support.factories import ANALYST_DEFENCE, ctx
from tests.support.fleet import Fleet
from tests.support.guest_image import MARKER_PREFIX, GuestImage, wait_for_line
from tests.support.libvirtd import Libvirtd
from tests.support.real_guests import (
    BOOT_TIMEOUT_S,
    console_path,
    drop,
    guest_dir,
    leftovers,
    real_config,
    real_fleet,
    remove_everything,
    settle_until,
)

pytestmark = [pytest.mark.qemu, pytest.mark.vault]
SOVEREIGN = str(Path(sys.executable).with_name("sovereign"))


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[OpenBaoDevServer]:
    with OpenBaoDevServer(tmp_path / "bao") as server:
        bootstrap_dev_vault(server.addr, server.token)
        yield server


@pytest.fixture
def folder() -> Iterator[Path]:
    path = guest_dir()
    yield path
    drop(path)


@pytest.fixture
def fleet(
    libvirtd: Libvirtd,
    guest_image: GuestImage,
    bao: OpenBaoDevServer,
    folder: Path,
    tmp_path: Path,
) -> Iterator[Fleet]:
    url = f"sqlite:///{tmp_path / 'real.db'}"
    upgrade(url)
    store = VaultSecretStore(VaultClients(bao.addr, TokenAuth(bao.token), timeout_s=5))
    made = real_fleet(url, folder, guest_image, "e2e-marker", secrets=store)
    yield made
    remove_everything(made)
    made.services.close()


def enclave_of(fleet: Fleet, rid: uuid.UUID) -> Any:
    with fleet.services.uow(readonly=True) as uow:
        enclave = uow.enclaves.get(rid)
    assert enclave is not None
    return enclave


def test_approval_to_boot_marker_and_back_to_nothing(
    fleet: Fleet, guest_image: GuestImage, folder: Path
):
    rid = fleet.request(gpus=0, vcpus=1, memory_mib=256, disk_gib=1)
    settle_until(fleet, lambda: fleet.state(rid) == "running")
    line = wait_for_line(console_path(fleet, rid), MARKER_PREFIX, BOOT_TIMEOUT_S)
    assert line == guest_image.marker_line("e2e-marker", disk="ok", tpm="yes")
    enclave = enclave_of(fleet, rid)
    volume = folder / "pool" / enclave.domain_name
    data = volume.read_bytes()
    assert b"SOVEREIGN-DISK e2e-marker" not in data, "the guest's write is encrypted on the host"
    assert b"LUKS\xba\xbe" in data, "the qcow2 volume carries a LUKS header"
    notes = [e.details.get("note", "") for e in fleet.events("enclave:provision")]
    assert any("secrets for the LUKS volume and the vTPM" in n for n in notes)

    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "done")
    settle_until(fleet, lambda: fleet.state(rid) == "terminated")
    assert leftovers(rid, enclave.domain_name, folder) == []
    with pytest.raises(NotFoundError):
        fleet.services.keys.secrets(rid)  # crypto-erased in OpenBao


def test_a_termination_racing_provisioning_ends_consistent(fleet: Fleet, folder: Path):
    rid = fleet.request(gpus=0, vcpus=1, memory_mib=256, disk_gib=1)

    def terminate_now(done: str) -> None:
        if done == f"provision:{ProvisionStep.DEFINE}":
            fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "race")

    fleet.reconciler("racer", after_step=terminate_now).run_once()
    settle_until(fleet, lambda: fleet.state(rid) == "terminated")
    assert leftovers(rid, enclave_of(fleet, rid).domain_name, folder) == []


def _worker(env: dict[str, str], crash_after: str) -> subprocess.CompletedProcess[str]:
    """Run ``sovereign worker`` until it kills itself after ``crash_after``."""
    return subprocess.run(
        [SOVEREIGN, "worker", "--interval", "0.2"],
        env={**env, "SOVEREIGN_CRASH_AFTER": crash_after},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_worker_killed_mid_provisioning_and_mid_teardown_is_resumed(
    fleet: Fleet,
    guest_image: GuestImage,
    bao: OpenBaoDevServer,
    idp: Any,
    folder: Path,
    tmp_path: Path,
):
    rid = fleet.request(gpus=0, vcpus=1, memory_mib=256, disk_gib=1)
    config = real_config(folder, guest_image, "e2e-marker")
    env = {
        **os.environ,
        "SOVEREIGN_ENV": "testing",
        "SOVEREIGN_DATABASE_URL": f"sqlite:///{tmp_path / 'real.db'}",
        "SOVEREIGN_IDP_URL": idp.url,
        "SOVEREIGN_IDP_DEV": "true",
        "SOVEREIGN_VAULT_ADDR": bao.addr,
        "SOVEREIGN_VAULT_TOKEN": bao.token,
        "SOVEREIGN_AUDIT_SIGNER": "file",
        # The same log files as the fleet's own services (tests/support/fleet.py).
        "SOVEREIGN_AUDIT_SIGNING_KEY": str(folder / "audit.key"),
        "SOVEREIGN_AUDIT_WITNESS_PATH": str(folder / "witness.jsonl"),
        "SOVEREIGN_RECONCILER_CLAIM_TTL_S": "1",
        # As an operator would write them: JSON for anything that is not a plain string.
        **{f"SOVEREIGN_{k}": v if isinstance(v, str) else json.dumps(v) for k, v in config.items()},
    }
    killed = _worker(env, f"provision:{ProvisionStep.DEFINE}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert fleet.state(rid) == "provisioning"
    # Another worker resumes once the dead one's claim lapsed (1 s here).
    settle_until(fleet, lambda: fleet.state(rid) == "running")
    enclave = enclave_of(fleet, rid)
    import libvirt

    conn = libvirt.open("qemu:///system")
    try:
        ours = [d for d in conn.listAllDomains(0) if d.name() == enclave.domain_name]
        assert len(ours) == 1
        assert ours[0].isActive()
    finally:
        conn.close()

    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "done")
    killed = _worker(env, f"teardown:{TeardownStep.UNDEFINE}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert fleet.state(rid) == "terminating"
    settle_until(fleet, lambda: fleet.state(rid) == "terminated")
    assert leftovers(rid, enclave.domain_name, folder) == []
