"""The content-addressed store of approved guest images on the control plane's disk.

Owns :class:`ImageStore`: a directory holding, per image, ``<digest>.qcow2`` (the root disk),
optionally ``<digest>.vmlinuz`` and ``<digest>.initrd`` (for direct kernel boot) and
``<digest>.json``, the image's manifest: the SHA-256 and size of each file, the kernel command
line and the build's recipe digest, as canonical JSON (sorted keys, no spaces). ``<digest>`` is
the SHA-256 of the manifest's bytes, so one checksum (the catalog's ``sha256:<digest>``) covers
every file: a reader hashes the manifest, compares it with the catalog, then checks each file
against the manifest (as an OCI manifest digest covers its layers).

:meth:`ImageStore.add` copies files in while hashing them and refuses a qcow2 that names a
backing file or an external data file (either would make the enclave read a host file the
catalog never approved). :meth:`ImageStore.find` checks the manifest against the checksum;
:meth:`ImageStore.verify` re-hashes the files. It never talks to libvirt and never imports the
control plane; uploading to hosts is :class:`enclaves.resources.Volumes`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclaves.errors import EnclaveError

MANIFEST_FORMAT = "sovereign-image/1"
CHECKSUM_PREFIX = "sha256:"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_QCOW2_MAGIC = b"QFI\xfb"
#: qcow2 header (QEMU docs/interop/qcow2.txt): magic, version, backing_file_offset (u64), ...,
#: incompatible_features (u64) at byte 72 in version 3.
_QCOW2_HEADER = struct.Struct(">4sIQ")
_INCOMPATIBLE_AT = 72
#: Incompatible feature bit 2: "External data file" (the guest's data lives in another file).
_EXTERNAL_DATA_FILE = 1 << 2
_BLOCK = 1 << 20


class ImageStoreError(EnclaveError):
    """An image is missing from the store, malformed, or its files do not match its checksum."""


def parse_checksum(checksum: str) -> str:
    """The hex digest of a catalog checksum ``sha256:<64 hex>``.

    :raises ValueError: if ``checksum`` has another form.
    """
    digest = checksum.removeprefix(CHECKSUM_PREFIX)
    if not checksum.startswith(CHECKSUM_PREFIX) or not _HEX64.fullmatch(digest):
        raise ValueError(f"an image checksum is sha256:<64 lower-case hex>, got {checksum!r}")
    return digest


@dataclass(frozen=True)
class ImageFile:
    """One file of an image: where it is in the store, its SHA-256 and size."""

    path: Path
    sha256: str
    size: int


@dataclass(frozen=True)
class StoredImage:
    """An image in the store, as its manifest describes it."""

    #: The catalog checksum: ``sha256:`` + the SHA-256 of the manifest's bytes.
    checksum: str
    disk: ImageFile
    kernel: ImageFile | None
    initrd: ImageFile | None
    cmdline: str
    #: The recipe digest the agent reports (``/etc/sovereign/image-digest``), if built here.
    recipe_digest: str

    @property
    def digest(self) -> str:
        """The hex digest naming the image's files."""
        return parse_checksum(self.checksum)

    @property
    def format(self) -> str:
        """The disk's format (always qcow2 here)."""
        return "qcow2"


def _sha256_file(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size


def check_qcow2(path: Path) -> int:
    """Return a qcow2 file's virtual size in bytes after checking it stands alone.

    :raises ImageStoreError: if it is not qcow2, names a backing file, or keeps its data in an
        external file.
    """
    with path.open("rb") as handle:
        header = handle.read(_INCOMPATIBLE_AT + 8)
    if len(header) < _INCOMPATIBLE_AT + 8:
        raise ImageStoreError(f"{path} is too short for a qcow2 image")
    magic, version, backing_offset = _QCOW2_HEADER.unpack_from(header)
    if magic != _QCOW2_MAGIC or version not in (2, 3):
        raise ImageStoreError(f"{path} is not a qcow2 (version 2 or 3) image")
    if backing_offset != 0:
        raise ImageStoreError(f"{path} names a backing file; an image must stand alone")
    (virtual_size,) = struct.unpack_from(">Q", header, 24)
    if version == 3:
        (incompatible,) = struct.unpack_from(">Q", header, _INCOMPATIBLE_AT)
        if incompatible & _EXTERNAL_DATA_FILE:
            raise ImageStoreError(f"{path} keeps its data in an external file")
    return int(virtual_size)


class ImageStore:
    """Approved images under one directory, named by their checksum."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"ImageStore({str(self.directory)!r})"

    def _paths(self, digest: str) -> dict[str, Path]:
        return {
            suffix: self.directory / f"{digest}.{suffix}"
            for suffix in ("json", "qcow2", "vmlinuz", "initrd")
        }

    def add(
        self,
        disk: Path,
        *,
        kernel: Path | None = None,
        initrd: Path | None = None,
        cmdline: str = "",
        recipe_digest: str = "",
    ) -> StoredImage:
        """Copy an image into the store (hashing as it copies) and return it; idempotent.

        :raises ValueError: if only one of kernel and initrd is given, or the command line
            has control characters.
        :raises ImageStoreError: if the disk is not a stand-alone qcow2 image.
        :raises OSError: if a file cannot be read or the store written.
        """
        if (kernel is None) != (initrd is None):
            raise ValueError("give both a kernel and an initrd, or neither")
        if any(ord(c) < 0x20 for c in cmdline):
            raise ValueError("the kernel command line must not contain control characters")
        check_qcow2(disk)
        self.directory.mkdir(parents=True, exist_ok=True)
        # 0755: libvirt's QEMU user reads direct-boot kernels from the pool, not from here,
        # but the operator's tools may list the store.
        self.directory.chmod(0o755)
        with tempfile.TemporaryDirectory(prefix=".import-", dir=self.directory) as scratch:
            copies: dict[str, tuple[Path, str, int]] = {}
            for role, source in (("qcow2", disk), ("vmlinuz", kernel), ("initrd", initrd)):
                if source is None:
                    continue
                target = Path(scratch) / role
                copies[role] = (target, *_copy_hashing(source, target))
            manifest: dict[str, object] = {
                "format": MANIFEST_FORMAT,
                "cmdline": cmdline,
                "recipe_digest": recipe_digest,
            }
            for role, key in (("qcow2", "disk"), ("vmlinuz", "kernel"), ("initrd", "initrd")):
                if role in copies:
                    _, sha256, size = copies[role]
                    manifest[key] = {"sha256": sha256, "size": size}
            body = _canonical(manifest)
            digest = hashlib.sha256(body).hexdigest()
            paths = self._paths(digest)
            for role, (copy, _, _) in copies.items():
                copy.chmod(0o644)
                os.replace(copy, paths[role])
            manifest_copy = Path(scratch) / "json"
            manifest_copy.write_bytes(body)
            manifest_copy.chmod(0o644)
            # The manifest last: its presence says every file is in place.
            os.replace(manifest_copy, paths["json"])
        found = self.find(CHECKSUM_PREFIX + digest)
        assert found is not None
        return found

    def find(self, checksum: str) -> StoredImage | None:
        """The image with catalog checksum ``checksum``, or None if the store lacks it.

        Checks the manifest's hash (cheap); :meth:`verify` checks the files.

        :raises ValueError: if ``checksum`` is not ``sha256:<hex>``.
        :raises ImageStoreError: if the manifest does not match the checksum or is malformed.
        """
        digest = parse_checksum(checksum)
        paths = self._paths(digest)
        try:
            body = paths["json"].read_bytes()
        except FileNotFoundError:
            return None
        computed = hashlib.sha256(body).hexdigest()
        if computed != digest:
            raise ImageStoreError(
                f"image manifest {paths['json']} does not match its checksum: "
                f"expected {digest}, computed {computed}"
            )
        try:
            return _parse_manifest(checksum, json.loads(body), paths)
        except (KeyError, TypeError, ValueError) as exc:
            raise ImageStoreError(f"image manifest {paths['json']} is malformed: {exc}") from exc

    def get(self, checksum: str) -> StoredImage:
        """The image with catalog checksum ``checksum``.

        :raises ImageStoreError: if the store lacks it or its manifest does not match.
        """
        found = self.find(checksum)
        if found is None:
            raise ImageStoreError(f"image {checksum} is not in the image store {self.directory}")
        return found

    def verify(self, image: StoredImage) -> None:
        """Re-hash every file of ``image`` against its manifest.

        :raises ImageStoreError: naming the first file whose size or SHA-256 differs.
        """
        for entry in (image.disk, image.kernel, image.initrd):
            if entry is None:
                continue
            try:
                sha256, size = _sha256_file(entry.path)
            except FileNotFoundError as exc:
                raise ImageStoreError(f"{entry.path} is missing from the image store") from exc
            if (sha256, size) != (entry.sha256, entry.size):
                raise ImageStoreError(
                    f"{entry.path} does not match the image's manifest: expected "
                    f"sha256 {entry.sha256} ({entry.size} bytes), computed {sha256} ({size} bytes)"
                )


def _parse_manifest(checksum: str, manifest: Any, paths: dict[str, Path]) -> StoredImage:
    """The image a decoded manifest describes.

    :raises ValueError, KeyError, TypeError: if it is malformed.
    """
    if manifest["format"] != MANIFEST_FORMAT:
        raise ValueError(f"unknown manifest format {manifest['format']!r}")

    def file(key: str, suffix: str) -> ImageFile | None:
        entry = manifest.get(key)
        if entry is None:
            return None
        return ImageFile(paths[suffix], str(entry["sha256"]), int(entry["size"]))

    disk = file("disk", "qcow2")
    if disk is None:
        raise ValueError("the manifest names no disk")
    return StoredImage(
        checksum=checksum,
        disk=disk,
        kernel=file("kernel", "vmlinuz"),
        initrd=file("initrd", "initrd"),
        cmdline=str(manifest["cmdline"]),
        recipe_digest=str(manifest.get("recipe_digest", "")),
    )


def _canonical(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _copy_hashing(source: Path, target: Path) -> tuple[str, int]:
    """Copy ``source`` to ``target``; return the SHA-256 and size of the bytes copied."""
    digest, size = hashlib.sha256(), 0
    with source.open("rb") as reader, target.open("wb") as writer:
        while block := reader.read(_BLOCK):
            digest.update(block)
            writer.write(block)
            size += len(block)
        writer.flush()
        os.fsync(writer.fileno())
    shutil.copystat(source, target)
    return digest.hexdigest(), size
