"""A real QEMU guest booted from the built image through a LUKS clone, running jobs over its
agent channel.

The default image (:mod:`enclaves.imagebuild`, cached by recipe digest: the session fixture
``workload_image`` builds it once) is imported into a fresh image store and the catalog; an
approved enclave on the real libvirtd (TCG) gets a LUKS volume cloned from it after the image
was uploaded into the host's pool (verified by checksum), boots the image's own kernel, has no
``<interface>`` at all, and its agent answers on the virtio-serial channel with the image's
digest. A small job and the example job run inside as the unprivileged job user; their own
reports see only ``lo``. Timings (upload and clone, boot to hello, the example's runtime under
TCG) are printed and attached to the test report as properties.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from enclaves import imagebuild
from enclaves.enclave import IMAGE_VOLUME_PREFIX
from sovereign.adapters.migrations import upgrade
from tests.support.factories import ANALYST_DEFENCE, ctx
from tests.support.fleet import Fleet
from tests.support.libvirtd import Libvirtd
from tests.support.real_guests import (
    URI,
    console_path,
    drop,
    guest_dir,
    leftovers,
    remove_everything,
    settle_until,
)
from tests.support.workload_image import IMAGE_NAME, open_agent, run_job, workload_fleet

pytestmark = [pytest.mark.qemu]
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "train_classifier" / "main.py"
#: A job that reports what it sees: its interfaces, user, and whether it can write its inputs.
PROBE = b"""\
import json, os, socket, sys
report = {
    "interfaces": [name for _, name in socket.if_nameindex()],
    "uid": os.getuid(),
    "cwd": os.getcwd(),
    "python": sys.version.split()[0],
    "env": sorted(os.environ),
}
import numpy, torch
report["torch"] = torch.__version__
report["sum"] = float(torch.arange(10, dtype=torch.float32).sum())
with open("report.json", "w") as out:
    json.dump(report, out)
print("probe done", report["interfaces"])
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    path = guest_dir()
    yield path
    drop(path)


@pytest.fixture
def fleet(
    libvirtd: Libvirtd, workload_image: imagebuild.BuiltImage, folder: Path, tmp_path: Path
) -> Iterator[Fleet]:
    del libvirtd
    url = f"sqlite:///{tmp_path / 'workload.db'}"
    upgrade(url)
    made = workload_fleet(url, folder, workload_image)
    yield made
    remove_everything(made)
    made.services.close()


def _domain_xml(enclave_id: uuid.UUID) -> str:
    conn = libvirt.open(URI)
    try:
        return str(conn.lookupByUUIDString(str(enclave_id)).XMLDesc(0))
    finally:
        conn.close()


def test_the_example_job_runs_in_a_real_guest_booted_from_the_image(
    fleet: Fleet,
    workload_image: imagebuild.BuiltImage,
    folder: Path,
    record_property: Callable[[str, object], None],
) -> None:
    figures: dict[str, float] = {}
    started = time.monotonic()
    rid = fleet.request(gpus=0, vcpus=2, memory_mib=2048, disk_gib=4, image=IMAGE_NAME)
    settle_until(fleet, lambda: fleet.state(rid) == "running", timeout_s=300)
    figures["approval_to_running_s"] = time.monotonic() - started
    running_at = time.monotonic()

    provisioned = fleet.events("enclave:provision")
    notes = [e.details.get("note", "") for e in provisioned]
    assert any(f"cloned from image {IMAGE_NAME}" in n for n in notes), notes
    at = {e.details.get("step"): e.time for e in provisioned}
    # The VOLUME step: the image's upload into the pool (verified) and the LUKS clone.
    figures["upload_and_clone_s"] = (at["volume"] - at["secrets"]).total_seconds()
    xml = _domain_xml(rid)
    assert "<interface" not in xml, "an enclave guest has no network interface at all"
    assert "org.sovereign.agent.0" in xml
    assert f"{IMAGE_VOLUME_PREFIX}" in xml, "the guest boots the image's own kernel from the pool"
    with fleet.services.uow(readonly=True) as uow:
        enclave = uow.enclaves.get(rid)
    assert enclave is not None
    volume = folder / "pool" / enclave.domain_name
    with volume.open("rb") as handle:
        head = handle.read(1 << 20)
    assert head.startswith(b"QFI\xfb"), "the enclave's disk is a qcow2 volume"
    assert b"LUKS\xba\xbe" in volume.read_bytes()[: 64 << 20], "with a LUKS header"
    records = sorted(p.name for p in (folder / "pool").glob(f"{IMAGE_VOLUME_PREFIX}*.sha256"))
    assert [r.rsplit(".", 2)[1] for r in records] == ["initrd", "qcow2", "vmlinuz"], records

    client, hello, host = open_agent(rid)
    try:
        figures["boot_to_hello_s"] = time.monotonic() - running_at
        assert hello.image_digest == workload_image.recipe_digest
        assert hello.simulated is False

        job, status, log = run_job(client, [("probe.py", PROBE)], "probe.py", max_runtime_s=600)
        assert status.state == "succeeded", log.decode(errors="replace")
        files = {f.name: f for f in client.outputs(job, ["report.json"])}
        data = client.get(
            job,
            "report.json",
            size=files["report.json"].size,
            sha256=files["report.json"].sha256,
            max_bytes=1 << 20,
        )
        report = json.loads(data)
        assert report["interfaces"] == ["lo"], report
        assert report["uid"] != 0, "jobs run as the unprivileged job user"
        assert report["torch"].startswith("2.13.0")
        assert report["sum"] == 45.0
        figures["probe_job_s"] = status.runtime_s

        if EXAMPLE.is_file():
            example = EXAMPLE.read_bytes()
            job, status, log = run_job(
                client,
                [("main.py", example)],
                "main.py",
                ["--steps", "50", "--threads", "2"],
                max_runtime_s=900,
            )
            assert status.state == "succeeded", log.decode(errors="replace")
            figures["example_runtime_s"] = status.runtime_s
            outputs = {f.name: f for f in client.outputs(job, ["*.json", "*.pt"])}
            assert {"metrics.json", "weights.pt"} <= set(outputs), outputs
            metrics = json.loads(
                client.get(
                    job,
                    "metrics.json",
                    size=outputs["metrics.json"].size,
                    sha256=outputs["metrics.json"].sha256,
                    max_bytes=1 << 20,
                )
            )
            assert metrics["interfaces"] == ["lo"], metrics
            weights = client.get(
                job,
                "weights.pt",
                size=outputs["weights.pt"].size,
                sha256=outputs["weights.pt"].sha256,
                max_bytes=64 << 20,
            )
            assert hashlib.sha256(weights).hexdigest() == outputs["weights.pt"].sha256
    finally:
        client.close()
        host.close()

    for name, value in figures.items():
        record_property(name, round(value, 2))
    print(f"\nworkload guest figures: {json.dumps(figures)}")
    print(console_path(fleet, rid).read_text(errors="replace")[-2000:])

    fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "done")
    settle_until(fleet, lambda: fleet.state(rid) == "terminated", timeout_s=120)
    assert leftovers(rid, enclave.domain_name, folder) == []
