"""A real QEMU sanitizer domain (TCG) booted from the workload image in sanitize mode.

The default image (:mod:`enclaves.imagebuild`, built once per recipe and cached) goes into a
fresh image store; :class:`~sovereign.adapters.sanitizer.LibvirtSanitizer` hands over a GPU on
the real libvirtd exactly as on a production host, except that this machine has no GPU: the
sanitizer settings ask for simulated device memory, so nothing is passed through and nothing is
reset (the evidence says ``simulated: true`` and reset ``none``). The image is uploaded into
the pool, the transient sanitizer domain boots the image's kernel with
``sovereign.mode=sanitize``, its agent runs the scrub program on the simulated memory and
returns the report over the channel, and the domain is destroyed: afterwards nothing of it is
left (no domain, no transient overlay, no QEMU process). A leftover sanitizer domain of the same
GPU (a killed earlier attempt) is destroyed first, and a hand-over that runs out of time fails
and still leaves nothing behind. Timings are printed and attached as test properties.
"""

from __future__ import annotations

import json
import logging
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from xml.etree import ElementTree

import libvirt
import pytest

from enclaves import imagebuild
from enclaves.enclave import EnclaveHost, GuestSettings
from enclaves.imagestore import ImageStore
from enclaves.sanitizer import (
    SANITIZE_ARGUMENT,
    SanitizerSettings,
    SanitizerSpec,
    design_sanitizer,
)
from sovereign.adapters.sanitizer import LibvirtSanitizer
from sovereign.domain.fleet import sanitizer_domain_name
from sovereign.errors import GpuHandoverError
from sovereign.services.ports import HandoverEvidence, HandoverRequest
from tests.support.libvirtd import Libvirtd
from tests.support.real_guests import URI, drop, guest_dir, reset_pool

pytestmark = [pytest.mark.qemu]
ADDRESS = "0000:18:00.0"
NAME = sanitizer_domain_name(ADDRESS)
SIMULATED_MIB = 64
#: Boot to the agent under TCG on a busy 2-core machine, then the scrub.
DEADLINE_S = 300.0


@pytest.fixture
def folder() -> Iterator[Path]:
    path = guest_dir()
    (path / "console").mkdir()
    (path / "console").chmod(0o777)
    yield path
    drop(path)


@pytest.fixture
def host(libvirtd: Libvirtd, folder: Path) -> Iterator[EnclaveHost]:
    del libvirtd
    reset_pool()
    made = EnclaveHost(
        URI, GuestSettings(pool_path=str(folder / "pool"), console_dir=str(folder / "console"))
    )
    yield made
    made.close()
    _destroy_quietly(NAME)
    reset_pool()


def _destroy_quietly(name: str) -> None:
    conn = libvirt.open(URI)
    try:
        try:
            domain = conn.lookupByName(name)
        except libvirt.libvirtError:
            return
        if domain.isActive():
            domain.destroy()
    finally:
        conn.close()


def _sanitizer(
    host: EnclaveHost, folder: Path, built: imagebuild.BuiltImage
) -> tuple[LibvirtSanitizer, str]:
    stored = ImageStore(folder / "images").add(
        built.image,
        kernel=built.kernel,
        initrd=built.initrd,
        cmdline=built.cmdline,
        recipe_digest=built.recipe_digest,
    )
    # The domain type comes with each request (the host's: qemu under TCG here), not from these.
    settings = SanitizerSettings(
        memory_mib=2048,
        vcpus=2,
        cpu_mode="maximum",
        simulate_mib=SIMULATED_MIB,
    )
    sanitizer = LibvirtSanitizer(
        lambda _uri: host,
        image_dir=str(folder / "images"),
        image=stored.checksum,
        settings=settings,
    )
    return sanitizer, stored.checksum


def _request(deadline_s: float, canary_nonce: bytes | None) -> HandoverRequest:
    return HandoverRequest(
        host="qemu-1",
        uri=URI,
        host_uuid=None,
        address=ADDRESS,
        gpu_uuid=None,
        model="H100-SXM5-80GB",
        group_members=(ADDRESS,),
        nonce=secrets.token_bytes(32),
        canary_nonce=canary_nonce,
        deadline_s=deadline_s,
        domain_name=NAME,
        domain_type="qemu",
    )


def _start_leftover(built: imagebuild.BuiltImage, folder: Path) -> None:
    """A running domain with the sanitizer's name, as a killed hand-over would leave it."""
    xml = f"""<domain type='qemu'><name>{NAME}</name><memory unit='MiB'>256</memory>
      <os><type arch='x86_64'>hvm</type><kernel>{folder / "leftover-vmlinuz"}</kernel>
      <cmdline>console=ttyS0</cmdline></os><devices><memballoon model='none'/></devices>
      </domain>"""
    (folder / "leftover-vmlinuz").write_bytes(built.kernel.read_bytes())
    (folder / "leftover-vmlinuz").chmod(0o644)
    conn = libvirt.open(URI)
    try:
        conn.createXML(xml, 0)
    finally:
        conn.close()


class DomainWatcher:
    """Captures the sanitizer domain's live XML while it runs (from another connection)."""

    def __init__(self) -> None:
        self.xml: str | None = None
        self.persistent: bool | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DomainWatcher:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        conn = libvirt.open(URI)
        try:
            while not self._stop.is_set() and self.xml is None:
                try:
                    domain = conn.lookupByName(NAME)
                    xml = domain.XMLDesc(0)
                    if "sovereign.mode=sanitize" in xml:
                        self.persistent = bool(domain.isPersistent())
                        self.xml = xml
                except libvirt.libvirtError:
                    pass
                time.sleep(0.2)
        finally:
            conn.close()


def _qemu_processes_named(name: str) -> list[str]:
    found = subprocess.run(
        ["pgrep", "-af", "qemu-system"], check=False, capture_output=True, text=True
    )
    return [line for line in found.stdout.splitlines() if f"guest={name}," in line]


def _left_behind(folder: Path) -> list[str]:
    found = []
    conn = libvirt.open(URI)
    try:
        if NAME in {d.name() for d in conn.listAllDomains(0)}:
            found.append(f"domain {NAME}")
    finally:
        conn.close()
    found += [f"overlay {p.name}" for p in (folder / "pool").glob("*TRANSIENT*")]
    found += [f"process {line}" for line in _qemu_processes_named(NAME)]
    return found


def test_a_real_sanitizer_domain_scrubs_and_reports_over_its_channel(
    caplog: pytest.LogCaptureFixture,
    host: EnclaveHost,
    folder: Path,
    workload_image: imagebuild.BuiltImage,
    record_property: Callable[[str, object], None],
) -> None:
    sanitizer, _checksum = _sanitizer(host, folder, workload_image)
    _start_leftover(workload_image, folder)
    started = time.monotonic()
    caplog.set_level(logging.INFO, logger="enclaves.sanitizer")
    with DomainWatcher() as watcher:
        evidence: HandoverEvidence = sanitizer.hand_over(
            _request(DEADLINE_S, secrets.token_bytes(32))
        )
    total_s = time.monotonic() - started

    # The evidence: honest about what this machine could do.
    assert evidence.simulated is True
    assert evidence.reset["type"] == "none"
    assert evidence.reset["functions"] == []
    report = evidence.report
    assert report["program"] == "sovereign-scrub/1"
    assert report["simulated"] is True
    assert report["device"] == "cpu"
    assert report["bytes_total"] == SIMULATED_MIB << 20
    assert report["bytes_covered"] == SIMULATED_MIB << 20
    assert report["patterns"] == ["zeros", "nonce"]
    assert report["mismatches"] == 0
    assert report["canary_checked"] is True
    assert report["canary_hits"] == 0
    assert [p["name"] for p in report["passes"]] == [
        "canary-scan",
        "zeros-fill",
        "zeros-verify",
        "nonce-fill",
        "nonce-verify",
    ]
    assert report["gb_per_s"] > 0

    # The domain as it ran: transient, the image's kernel in sanitize mode, no NIC, one
    # transient disk (the image), the agent channel.
    assert watcher.xml is not None, "the sanitizer domain was never seen running"
    assert watcher.persistent is False
    live = ElementTree.fromstring(watcher.xml)  # noqa: S314
    cmdline = live.findtext("os/cmdline") or ""
    assert cmdline == f"{workload_image.cmdline} {SANITIZE_ARGUMENT}"
    assert live.find("devices/interface") is None
    assert live.find("devices/hostdev") is None, "no GPU on this machine: nothing passed through"
    disks = live.findall("devices/disk")
    assert len(disks) == 1
    assert disks[0].find("transient[@shareBacking='yes']") is not None
    assert [t.get("name") for t in live.findall("devices/channel/target")] == [
        "org.sovereign.agent.0"
    ]

    # Nothing is left: the leftover and the sanitizer domain are gone, overlay and process too.
    assert _left_behind(folder) == []

    (record,) = [r for r in caplog.records if r.name == "enclaves.sanitizer"]
    _name, _uri, reset_s, upload_s, boot_s, scrub_s, _total = record.args
    figures = {
        "hand_over_s": total_s,
        "leftover_and_reset_s": float(reset_s),
        "image_upload_s": float(upload_s),
        "boot_to_hello_s": float(boot_s),
        "scrub_call_s": float(scrub_s),
        "scrub_program_s": float(report["seconds"]),
    }
    for name, value in figures.items():
        record_property(name, round(value, 2))
    print(f"\nsanitizer guest figures: {json.dumps(figures)}; report gb_per_s {report['gb_per_s']}")


def test_a_hand_over_out_of_time_fails_and_leaves_nothing(
    host: EnclaveHost, folder: Path, workload_image: imagebuild.BuiltImage
) -> None:
    sanitizer, _checksum = _sanitizer(host, folder, workload_image)
    started = time.monotonic()
    with pytest.raises(GpuHandoverError, match=r"did not answer in time|ran out of time"):
        # Far less than the boot under TCG takes: the agent never answers in time.
        sanitizer.hand_over(_request(8.0, None))
    assert time.monotonic() - started < 60.0
    assert _left_behind(folder) == []


def test_two_sanitizer_domains_share_the_image_at_once(
    libvirtd: Libvirtd, folder: Path, workload_image: imagebuild.BuiltImage
) -> None:
    # Two GPUs of one host handed over at the same time boot the same image: with
    # shareBacking each gets its own overlay and the image is opened read-only by both.
    del libvirtd
    image = folder / "image.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", str(image), "64M"], check=True, timeout=30
    )
    image.chmod(0o644)
    names = [sanitizer_domain_name(a) for a in ("0000:18:00.0", "0000:2a:00.0")]
    conn = libvirt.open(URI)
    started = []
    try:
        for name in names:
            spec = SanitizerSpec(
                name=name,
                functions=(),
                disk=str(image),
                kernel=str(workload_image.kernel),
                initrd=str(workload_image.initrd),
                cmdline=workload_image.cmdline,
                serial_log=str(folder / "console" / f"{name}.log"),
                layout=SanitizerSettings(domain_type="qemu", memory_mib=256, vcpus=1),
            )
            xml = design_sanitizer(spec).to_string()
            started.append(conn.createXML(xml, libvirt.VIR_DOMAIN_START_VALIDATE))
        assert [d.isActive() for d in started] == [1, 1]
        overlays = sorted(p.name for p in folder.glob("image.qcow2.TRANSIENT-*"))
        assert overlays == [f"image.qcow2.TRANSIENT-{n}" for n in sorted(names)]
    finally:
        for domain in started:
            domain.destroy()
        conn.close()
    assert list(folder.glob("*TRANSIENT*")) == [], "each overlay goes with its domain"
