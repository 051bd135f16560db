"""Approved images into a real host's pool and enclave disks cloned from them (``qemu``).

Against the session's real libvirtd: :meth:`Volumes.upload` streams a file into the pool once,
hashing what it sends, and records the checksum beside it; a repeated upload finds the record,
an interrupted one (no record) is replaced, a volume recording another checksum is refused, and
bytes that do not hash to the catalog's checksum never stay. :meth:`Volumes.clone` makes a LUKS
qcow2 volume of the enclave's size from the uploaded image, readable only with the secret.
Small qcow2 images made with ``qemu-img``; every volume, secret and pool is removed at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets as random
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from enclaves.errors import EnclaveError
from enclaves.host import LibvirtHost
from enclaves.resources import Secrets, Volumes
from tests.support.libvirtd import Libvirtd

pytestmark = pytest.mark.qemu
POOL = "sovereign-test-images"


@pytest.fixture
def pool_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="sovereign-images-"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def host(libvirtd: Libvirtd) -> Iterator[LibvirtHost]:
    # Before too: a run killed mid-test leaves its pool, at a directory since gone.
    _drop_pool(libvirtd.uri)
    conn = LibvirtHost(libvirtd.uri)
    yield conn
    _drop_pool(libvirtd.uri)
    conn.close()


def _drop_pool(uri: str) -> None:
    """Remove this module's storage pool from the daemon, if it is there."""
    raw = libvirt.open(uri)
    try:
        for pool in raw.listAllStoragePools(0):
            if pool.name() == POOL:
                if pool.isActive():
                    pool.destroy()
                with contextlib.suppress(libvirt.libvirtError):  # transient: gone once destroyed
                    pool.undefine()
    finally:
        raw.close()


def _image(path: Path, size: str = "64M", text: bytes = b"approved image") -> tuple[Path, str]:
    raw = path.with_suffix(".raw")
    raw.write_bytes(text + b"\0" * 4096)
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(path)], check=True
    )
    subprocess.run(["qemu-img", "resize", "-q", str(path), size], check=True)
    raw.unlink()
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def _size(path: Path) -> int:
    return path.stat().st_size


def test_upload_once_verified_then_refuse_another_checksum(host: LibvirtHost, pool_dir: Path):
    volumes = Volumes(host, POOL, str(pool_dir / "pool"))
    source, sha256 = _image(pool_dir / "image.qcow2")
    capacity = 64 << 20
    name = f"sovereign-image-{sha256}.qcow2"
    path = volumes.upload(name, source, sha256=sha256, fmt="qcow2", capacity=capacity)
    assert Path(path).read_bytes() == source.read_bytes()
    assert (pool_dir / "pool" / f"{name}.sha256").read_text() == f"{sha256}\n"
    mtime = Path(path).stat().st_mtime_ns
    assert volumes.upload(name, source, sha256=sha256, fmt="qcow2", capacity=capacity) == path
    assert Path(path).stat().st_mtime_ns == mtime, "a verified upload is not repeated"

    with pytest.raises(EnclaveError, match="records checksum"):
        volumes.upload(name, source, sha256="0" * 64, fmt="qcow2", capacity=capacity)

    # An interrupted upload: the volume without its record is replaced.
    volumes.delete(f"{name}.sha256")
    Path(path).write_bytes(b"half an image")
    assert volumes.upload(name, source, sha256=sha256, fmt="qcow2", capacity=capacity) == path
    assert Path(path).read_bytes() == source.read_bytes()
    volumes.delete(name)
    volumes.delete(f"{name}.sha256")


def test_bytes_that_do_not_match_the_checksum_never_stay(host: LibvirtHost, pool_dir: Path):
    volumes = Volumes(host, POOL, str(pool_dir / "pool"))
    source, _ = _image(pool_dir / "image.qcow2")
    with pytest.raises(EnclaveError, match="do not match the image's checksum"):
        volumes.upload("img.qcow2", source, sha256="f" * 64, fmt="qcow2", capacity=64 << 20)
    assert volumes.path("img.qcow2") is None
    assert volumes.path("img.qcow2.sha256") is None


def test_clone_makes_a_luks_volume_of_the_enclave_size(host: LibvirtHost, pool_dir: Path):
    volumes = Volumes(host, POOL, str(pool_dir / "pool"))
    secrets = Secrets(host)
    source, sha256 = _image(pool_dir / "image.qcow2", text=b"SOVEREIGN-IMAGE-CONTENT")
    base = "base.qcow2"
    volumes.upload(base, source, sha256=sha256, fmt="qcow2", capacity=64 << 20)
    secret = uuid.uuid4()
    target = pool_dir / "pool" / "enclave-disk"
    passphrase = random.token_urlsafe(32).encode()
    secrets.define(secret, "volume", str(target), passphrase)
    try:
        path = volumes.clone("enclave-disk", base, 1, luks_secret_uuid=secret)
        assert path == str(target)
        data = target.read_bytes()
        assert b"LUKS\xba\xbe" in data
        assert b"SOVEREIGN-IMAGE-CONTENT" not in data, "the clone is encrypted on the host"
        info = subprocess.run(
            ["qemu-img", "info", "--output=json", str(target)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert '"virtual-size": 1073741824' in info, info
        assert volumes.clone("enclave-disk", base, 1, luks_secret_uuid=secret) == path
        # Decrypted with the secret, the clone holds the image's bytes.
        plain = pool_dir / "plain.raw"
        subprocess.run(
            [
                "qemu-img",
                "convert",
                "--object",
                f"secret,id=s0,data={passphrase.decode()}",
                "--image-opts",
                f"driver=qcow2,encrypt.key-secret=s0,file.filename={target}",
                "-O",
                "raw",
                str(plain),
            ],
            check=True,
        )
        assert plain.read_bytes().startswith(b"SOVEREIGN-IMAGE-CONTENT")
    finally:
        volumes.delete("enclave-disk")
        volumes.delete(base)
        volumes.delete(f"{base}.sha256")
        secrets.undefine(secret)
