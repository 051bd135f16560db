"""The real workload guest for QEMU tests: the default image, a fleet that boots it, its agent.

:func:`workload_image` builds (or finds in the cache) the default guest image of
:mod:`enclaves.imagebuild`: the session fixture of the same name calls it once, so CI builds it
once per recipe. :func:`workload_fleet` builds the services over the real libvirtd with
``qemu:///system`` as the only (SECRET, TCG) host, the image imported into a fresh image store
and the catalog, guests with no NIC (``ENCLAVE_NETWORK=none``) and QEMU's ``maximum`` CPU model
(numpy and PyTorch need SSE4.2). :func:`open_agent` waits for the guest's agent on its channel
and :func:`run_job` drives one job through it. Used by ``tests/e2e/test_workload_guest.py``.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from enclaves import imagebuild
from enclaves.agent.client import AgentClient, AgentHello, AgentJobStatus
from enclaves.channel import ChannelTransport
from enclaves.errors import EnclaveError
from enclaves.host import LibvirtHost
from enclaves.imagestore import ImageStore
from tests.support.fleet import SYSTEM, Fleet, make_fleet
from tests.support.real_guests import SECRET_ALL, URI, reset_pool

#: The catalog name the tests give the built image.
IMAGE_NAME = "sovereign-workload"
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out"})
#: Systemd, udev and the agent under TCG on a busy 2-core machine.
HELLO_TIMEOUT_S = 240.0


def workload_image(progress: Callable[[str], None] | None = None) -> imagebuild.BuiltImage:
    """The default guest image, built on first use and cached by its recipe digest."""
    if progress is None:
        return imagebuild.build()
    return imagebuild.build(progress=progress)


def workload_config(folder: Path) -> dict[str, Any]:
    """The ENCLAVE_* and IMAGE_DIR settings of a control plane booting the workload image."""
    return {
        "ENCLAVE_POOL_PATH": str(folder / "pool"),
        "ENCLAVE_CONSOLE_DIR": str(folder / "console"),
        "ENCLAVE_NETWORK": "none",
        "ENCLAVE_CPU_MODE": "maximum",
        "ENCLAVE_STOP_TIMEOUT_S": 10,
        "IMAGE_DIR": str(folder / "images"),
        "HYPERVISOR_TRANSPORTS": ["qemu"],
    }


def workload_fleet(database_url: str, folder: Path, built: imagebuild.BuiltImage) -> Fleet:
    """Services over the real libvirtd with the built image imported as :data:`IMAGE_NAME`."""
    from sovereign import config as settings
    from sovereign.bootstrap import build_hypervisor
    from sovereign.services.recording import utcnow

    reset_pool()
    (folder / "console").mkdir(exist_ok=True)
    (folder / "console").chmod(0o777)
    config = workload_config(folder)
    app = settings.new_app()
    settings.load(app, {"ENV": "testing", **config}, check=False)
    fleet = make_fleet(
        database_url,
        folder=folder,
        hypervisor=build_hypervisor(app.config),
        hosts={"qemu-1": (URI, SECRET_ALL, None)},
        domain_type="qemu",
        clock=utcnow,
        **config,
    )
    stored = ImageStore(folder / "images").add(
        built.image,
        kernel=built.kernel,
        initrd=built.initrd,
        cmdline=built.cmdline,
        recipe_digest=built.recipe_digest,
    )
    fleet.services.catalog.import_image(
        SYSTEM,
        name=IMAGE_NAME,
        checksum=stored.checksum,
        max_label=fleet.services.scheme.parse(SECRET_ALL),
    )
    return fleet


def open_agent(
    enclave_id: uuid.UUID, timeout_s: float = HELLO_TIMEOUT_S
) -> tuple[AgentClient, AgentHello, LibvirtHost]:
    """Open the domain's agent channel and wait for its ``hello``.

    :raises AssertionError: if the agent does not answer within ``timeout_s``.
    """
    host = LibvirtHost(URI)
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        try:
            client = AgentClient(ChannelTransport.open(host, enclave_id), timeout_s=5.0)
        except EnclaveError as e:
            last = str(e)
            time.sleep(1.0)
            continue
        try:
            return client, client.hello(), host
        except EnclaveError as e:
            # Not up yet: QEMU holds the host end, nothing reads in the guest.
            last = str(e)
            with contextlib.suppress(EnclaveError):
                client.close()
            time.sleep(1.0)
    host.close()
    raise AssertionError(f"no hello from the agent within {timeout_s:g} s; last: {last}")


def run_job(
    client: AgentClient,
    files: Sequence[tuple[str, bytes]],
    entrypoint: str,
    args: Sequence[str] = (),
    *,
    max_runtime_s: int = 600,
) -> tuple[str, AgentJobStatus, bytes]:
    """Put ``files`` as a new job's code, run it to the end; return (job id, status, log)."""
    job = str(uuid.uuid4())
    for path, data in files:
        client.put(job, "code", path, data)
    status = client.run(job, entrypoint=entrypoint, args=list(args), max_runtime_s=max_runtime_s)
    deadline = time.monotonic() + max_runtime_s + 30
    while status.state not in TERMINAL and time.monotonic() < deadline:
        time.sleep(0.5)
        status = client.status(job)
    log = b""
    while len(log) < status.log_size:
        chunk = client.logs(job, len(log))
        if not chunk:
            break
        log += chunk
    return job, status, log


def clean_pool() -> None:
    """Forget the test pool (its directory goes with the test's folder)."""
    reset_pool()
