"""Enclaves through the whole control plane on a real libvirtd with QEMU: shared by the
end-to-end tests (``tests/e2e/test_real_guests.py``) and ``bench/enclaves.py``.

:func:`real_fleet` builds the services (SQLite, real clock) over :class:`LibvirtHypervisor` with
``qemu:///system`` registered as a SECRET host of domain type ``qemu`` (TCG: KVM cannot boot
guests on these machines), the test guest's kernel and initramfs as direct boot, and guest
files in a directory QEMU's user can traverse. :func:`leftovers` lists what an enclave left on
the host, so tests can prove that teardown removes everything.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from enclaves.enclave import POOL_NAME, secret_uuid
from enclaves.steps import HOST_TEARDOWN_STEPS
from sovereign.bootstrap import build_hypervisor
from sovereign.services.recording import utcnow
from tests.support.fleet import Fleet, make_fleet
from tests.support.guest_image import MARKER_PREFIX, GuestImage, wait_for_line

URI = "qemu:///system"
SECRET_ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}
#: TCG boots to the marker in ~5-12 s; generous for a loaded 2-core CI machine.
BOOT_TIMEOUT_S = 90.0
SWTPM_STATE = Path("/var/lib/libvirt/swtpm")


def guest_dir() -> Path:
    """A temporary directory QEMU (running as libvirt-qemu) can traverse."""
    path = Path(tempfile.mkdtemp(prefix="sovereign-enclaves-"))
    path.chmod(0o711)
    return path


def real_config(folder: Path, image: GuestImage, marker: str) -> dict[str, Any]:
    """The ENCLAVE_* settings of a control plane booting the test guest."""
    return {
        "ENCLAVE_POOL_PATH": str(folder / "pool"),
        "ENCLAVE_CONSOLE_DIR": str(folder / "console"),
        "ENCLAVE_KERNEL": str(image.kernel),
        "ENCLAVE_INITRD": str(image.initrd),
        "ENCLAVE_CMDLINE": image.cmdline(marker),
        "ENCLAVE_STOP_TIMEOUT_S": 10,
        # The local daemon's socket (qemu:///system), opted into like production would.
        "HYPERVISOR_TRANSPORTS": ["qemu"],
    }


def real_fleet(
    database_url: str, folder: Path, image: GuestImage, marker: str, **options: Any
) -> Fleet:
    """Services over a real libvirtd with ``qemu:///system`` as the only (SECRET) host."""
    reset_pool()
    (folder / "console").mkdir(exist_ok=True)
    (folder / "console").chmod(0o777)
    config = real_config(folder, image, marker)
    from sovereign import config as settings

    app = settings.new_app()
    settings.load(app, {"ENV": "testing", **config}, check=False)
    return make_fleet(
        database_url,
        folder=folder,
        hypervisor=build_hypervisor(app.config),
        hosts={"qemu-1": (URI, SECRET_ALL, None)},
        domain_type="qemu",
        clock=utcnow,
        **config,
        **options,
    )


def console_path(fleet: Fleet, enclave_id: uuid.UUID) -> Path:
    """Where the enclave's serial console goes."""
    with fleet.services.uow(readonly=True) as uow:
        enclave = uow.enclaves.get(enclave_id)
    assert enclave is not None
    plan = fleet.reconciler().plan(enclave)
    hypervisor = fleet.services.hypervisor
    return Path(hypervisor._enclave(plan).console_path)  # type: ignore[attr-defined]


def settle_until(fleet: Fleet, done: Callable[[], bool], timeout_s: float = 60.0) -> None:
    """Run reconciler passes until ``done()`` holds.

    :raises AssertionError: if it does not within ``timeout_s``.
    """
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            recent = [
                f"{e.action} {e.outcome} {e.details.get('step', '')} {e.reason}"
                for e in fleet.events()[-30:]
            ]
            raise AssertionError(
                "the reconciler did not converge in time; last events:\n" + "\n".join(recent)
            )
        if not fleet.reconciler().run_once().busy:
            time.sleep(0.2)


def leftovers(enclave_id: uuid.UUID, domain_name: str, folder: Path) -> list[str]:
    """What of the enclave is still on the host: domain, volume, secrets, network, TPM state."""
    import libvirt

    from enclaves.designer import isolated_network_name

    found = []
    conn = libvirt.open(URI)
    try:
        names = {d.name() for d in conn.listAllDomains(0)}
        if domain_name in names:
            found.append(f"domain {domain_name}")
        secrets = {s.UUIDString() for s in conn.listAllSecrets(0)}
        for usage in ("luks", "vtpm"):
            if str(secret_uuid(enclave_id, usage)) in secrets:
                found.append(f"secret {usage}")
        if isolated_network_name(enclave_id) in {n.name() for n in conn.listAllNetworks(0)}:
            found.append("network")
        pools = {p.name(): p for p in conn.listAllStoragePools(0)}
        pool = pools.get(POOL_NAME)
        if pool is not None and pool.isActive():
            pool.refresh(0)
            if domain_name in pool.listVolumes():
                found.append("volume (libvirt)")
    finally:
        conn.close()
    if (folder / "pool" / domain_name).exists():
        found.append("volume file")
    if (SWTPM_STATE / str(enclave_id)).exists():
        found.append("TPM state")
    return found


def remove_everything(fleet: Fleet) -> None:
    """Tear down every enclave of the fleet on the host, whatever state it is in (cleanup)."""
    with fleet.services.uow(readonly=True) as uow:
        enclaves = uow.enclaves.list(open_only=False)
    reconciler = fleet.reconciler("cleanup")
    for enclave in enclaves:
        plan = reconciler.plan(enclave)
        for step in HOST_TEARDOWN_STEPS:
            # Best effort: the test already passed or failed; this only keeps the host clean.
            with contextlib.suppress(Exception):
                fleet.services.hypervisor.teardown(step, plan)
    reset_pool()


def reset_pool() -> None:
    """Forget a test pool left by an earlier test (its directory is a temporary one).

    The adapter refuses to reuse a pool of the same name at another path, as it should in
    production; each test here has its own directory, so the pool goes with the test.
    """
    import libvirt

    conn = libvirt.open(URI)
    try:
        for pool in conn.listAllStoragePools(0):
            if pool.name() != POOL_NAME:
                continue
            if pool.isActive():
                pool.destroy()
            pool.undefine()
    finally:
        conn.close()


def drop(folder: Path) -> None:
    """Remove the guest directory."""
    shutil.rmtree(folder, ignore_errors=True)


def boot_through_control_plane(log: Callable[[str], None]) -> dict[str, float]:
    """Seconds from the final approval to running and to the guest's boot marker, on a real
    libvirtd (started if none answers), through the reconciler; everything is removed again.

    Used by ``bench/enclaves.py``; keys live in the in-memory secret store there (the keys'
    own benchmark measures Vault).
    """
    from sovereign.adapters.migrations import upgrade
    from tests.support.guest_image import build_guest_image
    from tests.support.libvirtd import start_libvirtd

    daemon = start_libvirtd()
    folder = guest_dir()
    try:
        image = build_guest_image()
        url = f"sqlite:///{folder / 'bench.db'}"
        upgrade(url)
        fleet = real_fleet(url, folder, image, "bench-marker")
        try:
            rid = fleet.request(gpus=0, vcpus=1, memory_mib=256, disk_gib=1, approve_last=False)
            log("real QEMU: approving and provisioning (LUKS volume, secrets, vTPM, network)")
            started = time.monotonic()
            fleet.approve_last(rid)
            settle_until(fleet, lambda: fleet.state(rid) == "running")
            running = time.monotonic() - started
            wait_for_line(console_path(fleet, rid), MARKER_PREFIX, BOOT_TIMEOUT_S)
            marker = time.monotonic() - started
            log(f"real QEMU: running after {running:.2f} s, boot marker after {marker:.2f} s")
        finally:
            remove_everything(fleet)
            fleet.services.close()
    finally:
        drop(folder)
        daemon.stop()
    return {"approval_to_running_s": running, "boot_marker_s": marker}
