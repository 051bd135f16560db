"""A real enclave under a real libvirtd: QEMU (TCG), LUKS disk, encrypted vTPM, isolated NIC.

The ``qemu`` marker: needs root, the session's ``libvirtd`` fixture (started here without
systemd when none answers ``qemu:///system``) and the cached ``guest_image`` (Debian kernel +
busybox initramfs, see ``tests/support/guest_image.py``). Neither is ever skipped.

The designer writes the domain XML from an :class:`~enclaves.spec.EnclaveSpec` exactly as the
control plane would, with ``domain_type='qemu'`` because KVM cannot boot guests on these
machines (shared ENVIRONMENT.md). Every resource goes through :mod:`enclaves.resources` and
:mod:`enclaves.guest`; raw libvirt calls only look at the result. Each test tears down with the
same idempotent calls in a ``finally``, so a failure never leaves a QEMU process running.

Guest files (volume, console log) live in a temporary directory of mode 0711: QEMU runs as
``libvirt-qemu`` and must traverse it; libvirt's DAC driver hands it the files themselves.
"""

from __future__ import annotations

import base64
import dataclasses
import os
import secrets as random
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import libvirt
import pytest

from enclaves.designer import design, isolated_network_name
from enclaves.errors import EnclaveError
from enclaves.guest import Guests
from enclaves.host import LibvirtHost
from enclaves.resources import Networks, Secrets, Volumes
from enclaves.spec import DirectKernel, DiskSpec, EnclaveSpec, NetworkPolicy, TpmSpec
from tests.support.guest_image import DISK_PREFIX, MARKER_PREFIX, GuestImage, wait_for_line
from tests.support.libvirtd import Libvirtd

pytestmark = pytest.mark.qemu

#: A TCG boot to the marker takes ~5-12 s; generous for a loaded 2-core CI machine.
BOOT_TIMEOUT_S = 90.0
#: Where libvirt keeps each domain's swtpm state (removed with VIR_DOMAIN_UNDEFINE_TPM).
SWTPM_STATE = Path("/var/lib/libvirt/swtpm")
#: libvirt's per-domain logs, which it keeps after undefine (the QEMU one, the swtpm one).
DOMAIN_LOGS = ("/var/log/libvirt/qemu/{name}.log", "/var/log/swtpm/libvirt/qemu/{name}-swtpm.log")


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A temporary directory QEMU (running as libvirt-qemu) can traverse."""
    path = Path(tempfile.mkdtemp(prefix="sovereign-qemu-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def system(libvirtd: Libvirtd) -> Iterator[LibvirtHost]:
    """A connection to the real libvirtd."""
    host = LibvirtHost(libvirtd.uri, open_timeout=30)
    yield host
    host.close()


@pytest.fixture
def volumes(system: LibvirtHost, workdir: Path) -> Iterator[Volumes]:
    """Volumes in a pool of this test's own, removed afterwards with its directory."""
    name = f"sovereign-test-{uuid.uuid4().hex[:8]}"
    yield Volumes(system, name, str(workdir / "pool"))
    # Pools are long-lived per host, so the API has no call to remove one; tests do.
    conn = system.connect()
    try:
        pool = conn.storagePoolLookupByName(name)
    except libvirt.libvirtError:
        return
    if pool.isActive():
        pool.destroy()
    pool.undefine()


@dataclasses.dataclass
class Enclave:
    """One test enclave's identity and the names of everything made for it."""

    uuid: uuid.UUID
    name: str
    disk_secret: uuid.UUID
    tpm_secret: uuid.UUID
    network: str
    marker: str

    @classmethod
    def new(cls) -> Enclave:
        enclave_uuid = uuid.uuid4()
        return cls(
            uuid=enclave_uuid,
            name=f"sov-test-{enclave_uuid.hex[:8]}",
            disk_secret=uuid.uuid4(),
            tpm_secret=uuid.uuid4(),
            network=isolated_network_name(enclave_uuid),
            marker=random.token_hex(8),
        )

    def spec(self, image: GuestImage, disk: str, console: Path, **changes: object) -> EnclaveSpec:
        """The classified enclave spec the control plane would hand the designer."""
        spec = EnclaveSpec(
            name=self.name,
            uuid=self.uuid,
            vcpus=1,
            memory_mib=256,
            gpus=(),  # no passthrough on these machines (no IOMMU)
            disk=DiskSpec(disk, luks_secret_uuid=self.disk_secret),
            tpm=TpmSpec(secret_uuid=self.tpm_secret),
            network=NetworkPolicy.ISOLATED,
            network_name=self.network,
            label="SECRET",
            classified=True,
            domain_type="qemu",
            boot=DirectKernel(str(image.kernel), str(image.initrd), image.cmdline(self.marker)),
            serial_log=str(console),
        )
        return dataclasses.replace(spec, **changes)


def luks_passphrase() -> bytes:
    """32 random bytes as base64 text: QEMU reads LUKS passphrases as UTF-8."""
    return base64.b64encode(os.urandom(32))


def teardown(
    enclave: Enclave, guests: Guests, volumes: Volumes, secrets: Secrets, networks: Networks
) -> None:
    """Remove everything made for ``enclave``; every call is a no-op if already done."""
    guests.stop(enclave.uuid, timeout_s=0)
    guests.undefine(enclave.uuid)
    volumes.delete(enclave.name)
    secrets.undefine(enclave.disk_secret)
    secrets.undefine(enclave.tpm_secret)
    networks.remove(enclave.network)
    # Test hygiene only: on a real host these logs stay for the operator (and logrotate).
    for pattern in DOMAIN_LOGS:
        Path(pattern.format(name=enclave.name)).unlink(missing_ok=True)


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def file_contains(path: Path, needle: bytes) -> bool:
    """Whether ``needle`` occurs anywhere in the file, read in overlapping chunks."""
    overlap = len(needle) - 1
    previous = b""
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            if needle in previous + chunk:
                return True
            previous = chunk[-overlap:] if overlap else b""
    return False


def decrypted_first_sector(volume: Path, passphrase: bytes, scratch: Path) -> bytes:
    """The volume's first guest sector, decrypted by qemu-img with ``passphrase``."""
    secret_file = scratch / "passphrase"
    secret_file.write_bytes(passphrase)
    secret_file.chmod(0o600)
    out = scratch / "sector0.raw"
    subprocess.run(
        [
            "qemu-img",
            "dd",
            "--object",
            f"secret,id=sec0,file={secret_file}",
            "--image-opts",
            "-O",
            "raw",
            "bs=512",
            "count=1",
            f"if=driver=qcow2,file.filename={volume},encrypt.key-secret=sec0",
            f"of={out}",
        ],
        check=True,
        capture_output=True,
    )
    secret_file.unlink()
    return out.read_bytes()


class Recorder:
    """Collects ``(uuid, event)`` pairs delivered by the event loop thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[uuid.UUID, str]] = []

    def __call__(self, domain_uuid: uuid.UUID, event: str) -> None:
        with self._lock:
            self._events.append((domain_uuid, event))

    def names(self, domain_uuid: uuid.UUID) -> list[str]:
        with self._lock:
            return [event for seen, event in self._events if seen == domain_uuid]


def test_encrypted_enclave_boots_writes_its_disk_and_leaves_nothing_behind(
    system: LibvirtHost, volumes: Volumes, workdir: Path, guest_image: GuestImage
) -> None:
    guests, secrets, networks = Guests(system), Secrets(system), Networks(system)
    enclave = Enclave.new()
    passphrase, vtpm_key = luks_passphrase(), os.urandom(32)
    expected_path = str(workdir / "pool" / enclave.name)
    console = workdir / f"{enclave.name}.log"
    recorder = Recorder()
    unsubscribe = guests.watch(recorder)
    timings: dict[str, float] = {}
    try:
        assert secrets.supported
        for _ in range(2):  # each provisioning call twice: a retrying reconciler
            secrets.define(enclave.disk_secret, "volume", expected_path, passphrase)
            secrets.define(enclave.tpm_secret, "vtpm", f"sovereign-vtpm-{enclave.uuid}", vtpm_key)
            started = time.monotonic()
            path = volumes.create(enclave.name, 1, luks_secret_uuid=enclave.disk_secret)
            timings.setdefault("volume_create_s", time.monotonic() - started)
            networks.ensure_isolated(enclave.network)
        assert path == expected_path
        xml = design(enclave.spec(guest_image, path, console)).to_string()

        started = time.monotonic()
        guests.define(xml)
        timings["define_s"] = time.monotonic() - started
        started = time.monotonic()
        guests.start(enclave.uuid)
        guests.start(enclave.uuid)
        timings["start_s"] = time.monotonic() - started
        started = time.monotonic()
        line = wait_for_line(console, MARKER_PREFIX, BOOT_TIMEOUT_S)
        timings["boot_to_marker_s"] = time.monotonic() - started

        assert line == guest_image.marker_line(enclave.marker, disk="ok", tpm="yes")
        status = guests.status(enclave.uuid)
        assert status is not None
        assert (status.state, status.enclave_id, status.label) == (
            "running",
            enclave.uuid,
            "SECRET",
        )
        assert status in guests.list()
        assert (SWTPM_STATE / str(enclave.uuid)).is_dir()
        assert enclave.network in networks.list()

        started = time.monotonic()
        guests.stop(enclave.uuid, timeout_s=30)
        timings["stop_s"] = time.monotonic() - started
        guests.stop(enclave.uuid)
        stopped = guests.status(enclave.uuid)
        assert stopped is not None
        assert stopped.state == "shutoff"

        # At rest the guest's sector is ciphertext; with the passphrase it reads back.
        assert not file_contains(Path(path), enclave.marker.encode())
        assert not file_contains(Path(path), DISK_PREFIX.encode())
        plain = decrypted_first_sector(Path(path), passphrase, workdir)
        assert plain.startswith(f"{DISK_PREFIX} {enclave.marker}\n".encode())

        started = time.monotonic()
        guests.undefine(enclave.uuid)
        timings["undefine_s"] = time.monotonic() - started
        assert not (SWTPM_STATE / str(enclave.uuid)).exists()
        assert wait_for(lambda: {"started", "stopped"} <= set(recorder.names(enclave.uuid)))
    finally:
        unsubscribe()
        for _ in range(2):  # the whole teardown twice: every step is idempotent
            teardown(enclave, guests, volumes, secrets, networks)
        print(f"\nreal guest timings: {timings}")

    assert guests.status(enclave.uuid) is None
    assert volumes.path(enclave.name) is None
    assert not Path(expected_path).exists()
    assert not secrets.exists(enclave.disk_secret)
    assert not secrets.exists(enclave.tpm_secret)
    assert enclave.network not in networks.list()
    assert not (SWTPM_STATE / str(enclave.uuid)).exists()
    conn = system.connect()
    assert str(enclave.uuid) not in {domain.UUIDString() for domain in conn.listAllDomains(0)}
    assert str(enclave.disk_secret) not in {s.UUIDString() for s in conn.listAllSecrets(0)}


def test_a_wrong_luks_passphrase_fails_the_start_with_an_enclave_error(
    system: LibvirtHost, volumes: Volumes, workdir: Path, guest_image: GuestImage
) -> None:
    guests, secrets, networks = Guests(system), Secrets(system), Networks(system)
    enclave = Enclave.new()
    right, wrong = luks_passphrase(), luks_passphrase()
    usage_id = str(workdir / "pool" / enclave.name)
    try:
        secrets.define(enclave.disk_secret, "volume", usage_id, right)
        secrets.define(enclave.tpm_secret, "vtpm", f"sovereign-vtpm-{enclave.uuid}", os.urandom(32))
        path = volumes.create(enclave.name, 1, luks_secret_uuid=enclave.disk_secret)
        # Defining the same secret again replaces its value: now it no longer unlocks the disk.
        secrets.define(enclave.disk_secret, "volume", usage_id, wrong)
        spec = enclave.spec(
            guest_image,
            path,
            workdir / "console.log",
            network=NetworkPolicy.NONE,
            network_name=None,
        )
        guests.define(design(spec).to_string())

        with pytest.raises(EnclaveError) as excinfo:
            guests.start(enclave.uuid)

        assert not isinstance(excinfo.value, libvirt.libvirtError)
        assert isinstance(excinfo.value.__cause__, libvirt.libvirtError)
        assert "Invalid password" in excinfo.value.message
        for value in (right, wrong):
            assert value.decode() not in str(excinfo.value)
        status = guests.status(enclave.uuid)
        assert status is not None
        assert status.state == "shutoff"
    finally:
        teardown(enclave, guests, volumes, secrets, networks)


def test_secrets_are_private_and_their_values_stay_out_of_errors(system: LibvirtHost) -> None:
    secrets = Secrets(system)
    first, second = uuid.uuid4(), uuid.uuid4()
    value = luks_passphrase()
    usage_id = f"/var/lib/sovereign/test-{first}"
    try:
        secrets.define(first, "volume", usage_id, value)
        secrets.define(first, "volume", usage_id, value)
        assert secrets.exists(first)
        # private='yes': libvirt never hands the value back, not even to root.
        with pytest.raises(libvirt.libvirtError, match="private"):
            system.connect().secretLookupByUUIDString(str(first)).value(0)
        # Another secret for the same volume is refused; the message names no value.
        with pytest.raises(EnclaveError) as excinfo:
            secrets.define(second, "volume", usage_id, value)
        assert value.decode() not in str(excinfo.value)
        assert not secrets.exists(second)
        # QEMU refuses a LUKS passphrase that is not UTF-8 ("not valid UTF-8" from
        # qemu-img); Secrets refuses it before libvirt stores it.
        with pytest.raises(ValueError, match="UTF-8") as refused:
            secrets.define(second, "volume", f"{usage_id}-2", b"\xff" * 32)
        assert "\\xff" not in str(refused.value)
    finally:
        secrets.undefine(first)
        secrets.undefine(second)
    assert not secrets.exists(first)


def test_the_real_daemon_reports_a_stable_host_identity(libvirtd: Libvirtd) -> None:
    """libvirtd's capabilities carry ``<host><uuid>`` (host_uuid in libvirtd.conf, else the
    SMBIOS): the identity hosts are registered and re-checked by (issue 10, item 2)."""
    host = LibvirtHost("qemu:///system", open_timeout=30)
    first = host.identity()
    assert first.host_uuid
    assert first.hostname
    host.connect().close()
    assert host.identity() == first
    host.close()
