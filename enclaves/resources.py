"""The host-side resources an enclave's domain uses: volumes, libvirt secrets, networks.

Owns three small managers over one :class:`~enclaves.host.LibvirtHost`, each call idempotent
so that a reconciler may repeat any step:

* :class:`Volumes`: qcow2 volumes in one ``dir`` storage pool (created, built, started and
  marked autostart on first use), LUKS-encrypted through a libvirt secret when one is given
  (``<encryption format='luks'><secret type='passphrase'>``, see libvirt's storage
  encryption documentation), wiped before deletion where the driver can; approved image files
  uploaded over a libvirt stream (``virStorageVolUpload``) once, hashed as they are sent and
  recorded with their checksum, and enclave volumes cloned from them
  (``virStorageVolCreateXMLFrom``).
* :class:`Secrets`: ``<secret ephemeral='no' private='yes'>`` objects holding a LUKS
  passphrase (usage ``volume``) or a vTPM state key (usage ``vtpm``). Their values go to
  libvirt and nowhere else: never into a log line, an exception message or a return value.
  ``private='yes'`` stops libvirt from handing them back.
* :class:`Networks`: each enclave's own isolated network
  (:func:`enclaves.designer.isolated_network_xml`: no ``<forward>``, no ``<ip>``).

It must not decide which resources an enclave gets (:mod:`enclaves.designer` and the control
plane do), fetch secret values (the control plane reads them from Vault and passes them in),
or catch ``libvirt.libvirtError`` itself: every call runs under
:func:`enclaves.host._translate`.

What libvirt's test driver (``test:///``) supports: storage pools and volumes (simulated: no
file is written, the pool directory is not even created, and ``virStorageVolWipe`` is missing,
so :meth:`Volumes.delete` skips the wipe) and networks (no bridge is created). It has no secret
driver at all: :attr:`Secrets.supported` is False there and every other :class:`Secrets` call
raises :class:`~enclaves.errors.UnsupportedError`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import uuid
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

from enclaves import config, designer
from enclaves.errors import (
    EnclaveError,
    NetworkNotFoundError,
    SecretNotFoundError,
    StoragePoolNotFoundError,
    UnsupportedError,
    VolumeNotFoundError,
)
from enclaves.host import LibvirtHost, _translate

SecretUsage = Literal["volume", "vtpm"]
VolumeFormat = Literal["qcow2", "raw"]
#: The companion volume recording a verified upload's checksum: ``<volume>.sha256``.
_RECORD_SUFFIX = ".sha256"
_RECORD_MAX = 128
_STREAM_BLOCK = 1 << 20
_SECRET_USAGES: tuple[str, ...] = ("volume", "vtpm")
#: The element naming a secret's usage id inside ``<usage type=...>``, per usage type.
_USAGE_ID_ELEMENT = {"volume": "volume", "vtpm": "name"}
_BYTES_PER_GIB = 1024**3
#: QEMU (crypto/pbkdf.c, ``qcrypto_pbkdf2_count_iters``) times a first PBKDF2 round by the
#: thread's *user* CPU time in whole milliseconds and gives up with this message when that
#: reads 0, which the kernel's tick-based split of user and system time makes happen at random
#: on some hosts (about one ``qemu-img create`` in three on the 2-core test machines). The
#: failure is immediate and leaves nothing behind, so creating again is safe.
_QEMU_PBKDF_TIMING_FLAKE = "Unable to get accurate CPU usage"
_CREATE_ATTEMPTS = 10


def _parse(xml: str) -> ElementTree.Element:
    """Parse XML that libvirt returned.

    :raises EnclaveError: if it is not well-formed (libvirt never should do that).
    """
    try:
        return config.from_string(xml)
    except ValueError as exc:
        raise EnclaveError(f"libvirt returned unreadable XML: {exc}") from exc


def _is_active(resource: Any, where: str) -> bool:
    """Whether a ``virStoragePool`` or ``virNetwork`` is active.

    :raises EnclaveError: if libvirt cannot tell.
    """
    with _translate(f"reading the state of {where}"):
        return bool(resource.isActive())


def _check_name(what: str, name: str) -> None:
    """Refuse a name libvirt would turn into a path outside its directory.

    :raises ValueError: if ``name`` is empty, contains ``/`` or NUL, or is ``.``/``..``.
    """
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise ValueError(f"{what} name must be a plain file name, got {name!r}")


class Volumes:
    """qcow2 volumes, LUKS-encrypted when given a secret, in one ``dir`` storage pool."""

    def __init__(self, host: LibvirtHost, pool: str, pool_path: str) -> None:
        """Manage the volumes of the ``dir`` pool ``pool`` at ``pool_path`` on ``host``.

        Nothing is opened here; the pool is created on first use.

        :raises ValueError: if ``pool`` is empty or ``pool_path`` is not absolute.
        """
        _check_name("pool", pool)
        if not os.path.isabs(pool_path):
            raise ValueError(f"pool_path must be an absolute path, got {pool_path!r}")
        self._host = host
        self._pool_name = pool
        self._pool_path = os.path.normpath(pool_path)
        # One thread defines the pool; others wait and find it.
        self._lock = threading.Lock()
        # One upload at a time: two enclaves of one image must not replace each other's
        # half-sent volume. (Workers in other processes can still race; the record check
        # then finds a mismatch or a missing record and the step is retried.)
        self._upload_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Volumes({self._host.uri!r}, {self._pool_name!r}, {self._pool_path!r})"

    def _pool_xml(self) -> str:
        """``<pool type='dir'>`` with this manager's name and target path."""
        pool = ElementTree.Element("pool", type="dir")
        ElementTree.SubElement(pool, "name").text = self._pool_name
        target = ElementTree.SubElement(pool, "target")
        ElementTree.SubElement(target, "path").text = self._pool_path
        return config.to_string(pool)

    def _pool(self) -> Any:
        """Return the active ``virStoragePool``, defining, building and starting it if needed.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if the pool exists at another path, or libvirt refuses a step.
        """
        conn = self._host.connect()
        where = f"storage pool {self._pool_name} on {self._host.uri}"
        with self._lock:
            pool = self._find_pool(conn, where)
            if pool is None:
                try:
                    with _translate(f"defining {where}"):
                        pool = conn.storagePoolDefineXML(self._pool_xml(), 0)
                except EnclaveError:
                    # "pool already exists": another process defined it meanwhile.
                    pool = self._find_pool(conn, where)
                    if pool is None:
                        raise
            with _translate(f"reading {where}"):
                xml, active, autostart = pool.XMLDesc(0), pool.isActive(), pool.autostart()
            path = _parse(xml).findtext("target/path")
            if path is None or os.path.normpath(path) != self._pool_path:
                raise EnclaveError(
                    f"{where} exists at {path!r}, not at {self._pool_path!r}; "
                    f"refusing to put enclave volumes elsewhere"
                )
            if not active:
                try:
                    with _translate(f"building {where}"):
                        # For a dir pool: mkdir -p, with libvirt's default mode (0711) for a
                        # new directory; an existing one keeps its mode and its volumes.
                        pool.build(0)
                    with _translate(f"starting {where}"):
                        pool.create(0)
                except EnclaveError:
                    if not _is_active(pool, where):  # started concurrently is as good
                        raise
            if not autostart:
                with _translate(f"marking {where} autostart"):
                    pool.setAutostart(1)
            return pool

    def _find_pool(self, conn: Any, where: str) -> Any | None:
        """Return this manager's ``virStoragePool``, or None if it is not defined.

        :raises EnclaveError: if libvirt fails for another reason than a missing pool.
        """
        try:
            with _translate(f"looking up {where}"):
                return conn.storagePoolLookupByName(self._pool_name)
        except StoragePoolNotFoundError:
            return None

    def _find(self, pool: Any, name: str) -> Any | None:
        """Return the ``virStorageVol`` called ``name``, or None.

        :raises EnclaveError: if libvirt fails for another reason than a missing volume.
        """
        try:
            with _translate(f"looking up volume {name} in pool {self._pool_name}"):
                return pool.storageVolLookupByName(name)
        except VolumeNotFoundError:
            return None

    def _volume_xml(
        self,
        name: str,
        capacity_gib: int,
        secret_uuid: uuid.UUID | None,
        *,
        capacity: int | None = None,
    ) -> str:
        """``<volume>`` for a qcow2 file, with LUKS ``<encryption>`` when a secret is given
        (``capacity`` in bytes overrides ``capacity_gib``)."""
        volume = ElementTree.Element("volume")
        ElementTree.SubElement(volume, "name").text = name
        ElementTree.SubElement(volume, "capacity", unit="bytes").text = str(
            capacity if capacity is not None else capacity_gib * _BYTES_PER_GIB
        )
        target = ElementTree.SubElement(volume, "target")
        ElementTree.SubElement(target, "format", type="qcow2")
        # qcow2 version 3; libvirt's default is still the 2011 version 2 format (0.10).
        ElementTree.SubElement(target, "compat").text = "1.1"
        permissions = ElementTree.SubElement(target, "permissions")
        # Only root until libvirt's DAC driver hands the file to the domain's QEMU.
        ElementTree.SubElement(permissions, "mode").text = "0600"
        if secret_uuid is not None:
            encryption = ElementTree.SubElement(target, "encryption", format="luks")
            ElementTree.SubElement(encryption, "secret", type="passphrase", uuid=str(secret_uuid))
        return config.to_string(volume)

    def create(self, name: str, capacity_gib: int, *, luks_secret_uuid: uuid.UUID | None) -> str:
        """Create the qcow2 volume ``name`` (LUKS when given a secret) and return its path.

        An existing volume is kept and its path returned, if its encryption matches the
        request. On a real host the ``volume`` secret must already hold the passphrase: libvirt
        formats the LUKS header with it (``qemu-img create -o encrypt.format=luks``).

        :raises ValueError: if ``name`` is not a plain file name or ``capacity_gib`` is not a
            positive integer.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if an existing volume's encryption differs from the request, or
            libvirt refuses to create it (a missing secret, a full disk).
        """
        _check_name("volume", name)
        if isinstance(capacity_gib, bool) or not isinstance(capacity_gib, int) or capacity_gib < 1:
            raise ValueError(f"capacity_gib must be a positive integer, got {capacity_gib!r}")
        pool = self._pool()
        volume = self._find(pool, name)
        if volume is None:
            volume = self._create(pool, self._volume_xml(name, capacity_gib, luks_secret_uuid))
        with _translate(f"describing volume {name} in pool {self._pool_name}"):
            xml, path = volume.XMLDesc(0), volume.path()
        encrypted = _parse(xml).find("target/encryption") is not None
        if encrypted != (luks_secret_uuid is not None):
            raise EnclaveError(
                f"volume {name} in pool {self._pool_name} already exists "
                f"{'with' if encrypted else 'without'} encryption"
            )
        return str(path)

    def _create(self, pool: Any, xml: str, *, source: Any = None) -> Any:
        """Create the volume described by ``xml`` in ``pool`` (from the volume ``source``,
        when given) and return it.

        :raises EnclaveError: if libvirt refuses, unless the volume appeared concurrently.
        """
        name = _parse(xml).findtext("name", "")
        attempts_left = _CREATE_ATTEMPTS
        while True:
            attempts_left -= 1
            try:
                with _translate(f"creating volume {name} in pool {self._pool_name}"):
                    if source is not None:
                        return pool.createXMLFrom(xml, source, 0)
                    return pool.createXML(xml, 0)
            except EnclaveError as exc:
                # "storage vol already exists": created concurrently, which is as good.
                volume = self._find(pool, name)
                if volume is not None:
                    return volume
                if _QEMU_PBKDF_TIMING_FLAKE not in exc.message or attempts_left == 0:
                    raise

    def upload(
        self, name: str, source: Path, *, sha256: str, fmt: VolumeFormat, capacity: int
    ) -> str:
        """Put the file ``source`` into the pool as the volume ``name``, once, verified.

        The bytes go over a libvirt stream (``virStorageVolUpload``, so remote hosts work
        alike) and are hashed as they are sent; a mismatch with ``sha256`` deletes the volume.
        A verified upload is recorded in a small companion volume ``<name>.sha256`` holding
        the checksum. A later call finds the record and does nothing; a volume without a
        record (an interrupted upload) is replaced; a volume whose record names another
        checksum is refused.

        :raises ValueError: if ``name`` is not a plain file name or ``capacity`` is not positive.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if the pool volume records another checksum, the bytes sent do
            not hash to ``sha256``, or libvirt refuses a step.
        """
        _check_name("volume", name)
        if capacity < 1:
            raise ValueError(f"capacity must be positive, got {capacity!r}")
        with self._upload_lock:
            return self._upload(name, source, sha256, fmt, capacity)

    def _upload(
        self, name: str, source: Path, sha256: str, fmt: VolumeFormat, capacity: int
    ) -> str:
        pool = self._pool()
        record_name = f"{name}{_RECORD_SUFFIX}"
        volume = self._find(pool, name)
        record = self._find(pool, record_name)
        recorded = None if record is None else self._download_text(record, record_name)
        if volume is not None and recorded == sha256:
            with _translate(f"reading the path of volume {name} in pool {self._pool_name}"):
                return str(volume.path())
        if volume is not None and recorded is not None:
            raise EnclaveError(
                f"volume {name} in pool {self._pool_name} records checksum {recorded!r}, "
                f"not {sha256}; refusing to use it"
            )
        # No record: nothing, or an upload that did not finish. Start over.
        for stale in (record_name, name):
            self.delete(stale)
        volume = self._create(pool, self._plain_volume_xml(name, capacity, fmt))
        sent = self._send(volume, name, source)
        if sent != sha256:
            self.delete(name)
            raise EnclaveError(
                f"the bytes uploaded to volume {name} in pool {self._pool_name} do not match "
                f"the image's checksum: expected {sha256}, sent {sent}"
            )
        record = self._create(pool, self._plain_volume_xml(record_name, len(sha256) + 1, "raw"))
        self._send_bytes(record, record_name, f"{sha256}\n".encode())
        with _translate(f"refreshing pool {self._pool_name}"):
            # libvirt probes the uploaded file again: its format and virtual size.
            pool.refresh(0)
        volume = self._find(pool, name)
        if volume is None:
            raise EnclaveError(f"volume {name} vanished from pool {self._pool_name}")
        with _translate(f"describing volume {name} in pool {self._pool_name}"):
            xml, path = volume.XMLDesc(0), volume.path()
        found = _parse(xml).find("target/format")
        if found is None or found.get("type") != fmt:
            self.delete(name)
            self.delete(record_name)
            raise EnclaveError(
                f"volume {name} in pool {self._pool_name} reads as "
                f"{None if found is None else found.get('type')!r} after upload, not {fmt!r}"
            )
        return str(path)

    def clone(
        self,
        name: str,
        source: str,
        capacity_gib: int,
        *,
        luks_secret_uuid: uuid.UUID,
    ) -> str:
        """Create the LUKS-encrypted qcow2 volume ``name`` from the pool volume ``source``.

        ``virStorageVolCreateXMLFrom``: libvirt converts the source (``qemu-img convert``)
        into a new qcow2 file whose LUKS header it formats with the ``volume`` secret, then
        grows it to ``capacity_gib`` if the source is smaller. An existing ``name`` is kept
        if it is encrypted (the clone finished, or this step is repeated).

        :raises ValueError: if a name is not a plain file name or ``capacity_gib`` is not a
            positive integer.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if ``source`` is missing, an existing ``name`` is not
            encrypted, or libvirt refuses.
        """
        _check_name("volume", name)
        _check_name("volume", source)
        if isinstance(capacity_gib, bool) or not isinstance(capacity_gib, int) or capacity_gib < 1:
            raise ValueError(f"capacity_gib must be a positive integer, got {capacity_gib!r}")
        pool = self._pool()
        volume = self._find(pool, name)
        if volume is None:
            base = self._find(pool, source)
            if base is None:
                raise VolumeNotFoundError(f"no volume {source} in pool {self._pool_name}")
            with _translate(f"reading the size of volume {source} in pool {self._pool_name}"):
                base_capacity = int(base.info()[1])
            capacity = max(capacity_gib * _BYTES_PER_GIB, base_capacity)
            xml = self._volume_xml(name, capacity_gib, luks_secret_uuid, capacity=base_capacity)
            volume = self._create(pool, xml, source=base)
            if capacity > base_capacity:
                with _translate(f"growing volume {name} in pool {self._pool_name}"):
                    volume.resize(capacity, 0)
        with _translate(f"describing volume {name} in pool {self._pool_name}"):
            xml, path = volume.XMLDesc(0), volume.path()
        if _parse(xml).find("target/encryption") is None:
            raise EnclaveError(
                f"volume {name} in pool {self._pool_name} already exists without encryption"
            )
        return str(path)

    def _plain_volume_xml(self, name: str, capacity: int, fmt: VolumeFormat) -> str:
        """``<volume>`` of ``capacity`` bytes in ``fmt``, root-only, never encrypted."""
        volume = ElementTree.Element("volume")
        ElementTree.SubElement(volume, "name").text = name
        ElementTree.SubElement(volume, "capacity", unit="bytes").text = str(capacity)
        # Nothing preallocated: the upload writes every byte.
        ElementTree.SubElement(volume, "allocation", unit="bytes").text = "0"
        target = ElementTree.SubElement(volume, "target")
        ElementTree.SubElement(target, "format", type=fmt)
        permissions = ElementTree.SubElement(target, "permissions")
        ElementTree.SubElement(permissions, "mode").text = "0600"
        return config.to_string(volume)

    def _send(self, volume: Any, name: str, source: Path) -> str:
        """Stream the file ``source`` into ``volume``; return the SHA-256 of what was sent."""
        digest = hashlib.sha256()
        size = source.stat().st_size
        with source.open("rb") as handle:

            def chunk(_stream: Any, nbytes: int, _opaque: Any) -> bytes:
                block = handle.read(min(nbytes, _STREAM_BLOCK))
                digest.update(block)
                return block

            self._stream(volume, name, size, lambda stream: stream.sendAll(chunk, None))
        return digest.hexdigest()

    def _send_bytes(self, volume: Any, name: str, data: bytes) -> None:
        """Stream ``data`` into ``volume``."""
        self._stream(volume, name, len(data), lambda stream: stream.send(data))

    def _stream(self, volume: Any, name: str, size: int, send: Any) -> None:
        conn = self._host.connect()
        where = f"uploading to volume {name} in pool {self._pool_name}"
        with _translate(where):
            stream = conn.newStream(0)
        try:
            with _translate(where):
                volume.upload(stream, 0, size, 0)
                send(stream)
                stream.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                stream.abort()
            raise

    def _download_text(self, volume: Any, name: str) -> str:
        """The first bytes of a small record volume, as stripped text ('' if unreadable)."""
        conn = self._host.connect()
        where = f"reading volume {name} in pool {self._pool_name}"
        received = bytearray()

        def sink(_stream: Any, data: bytes, _opaque: Any) -> int:
            received.extend(data[: _RECORD_MAX - len(received)])
            return len(data)

        with _translate(where):
            stream = conn.newStream(0)
        try:
            with _translate(where):
                volume.download(stream, 0, 0, 0)  # 0: to the end
                stream.recvAll(sink, None)
                stream.finish()
        except BaseException:
            with contextlib.suppress(Exception):
                stream.abort()
            raise
        return received.decode("ascii", "replace").strip()

    def delete(self, name: str) -> None:
        """Wipe (where the driver can) and delete the volume ``name``; an absent one is fine.

        The wipe overwrites the file's allocated blocks with zeros before it is unlinked;
        copy-on-write and thinly provisioned storage may keep old blocks, so the real erasure
        of an enclave's data is destroying its LUKS key.

        :raises ValueError: if ``name`` is not a plain file name.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails to wipe or delete it.
        """
        _check_name("volume", name)
        pool = self._pool()
        volume = self._find(pool, name)
        if volume is None:
            return
        try:
            with _translate(f"wiping volume {name} in pool {self._pool_name}"):
                volume.wipe(0)
        except UnsupportedError:
            pass  # the test driver has nothing to wipe
        except VolumeNotFoundError:
            return
        try:
            with _translate(f"deleting volume {name} in pool {self._pool_name}"):
                volume.delete(0)
        except VolumeNotFoundError:
            return

    def path(self, name: str) -> str | None:
        """Return the path of the volume ``name``, or None if there is no such volume.

        :raises ValueError: if ``name`` is not a plain file name.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails to look it up.
        """
        _check_name("volume", name)
        volume = self._find(self._pool(), name)
        if volume is None:
            return None
        with _translate(f"reading the path of volume {name} in pool {self._pool_name}"):
            return str(volume.path())


def _is_utf8(value: bytes) -> bool:
    """Whether ``value`` decodes as UTF-8."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _secret_xml(secret_uuid: uuid.UUID, usage: str, usage_id: str) -> str:
    """``<secret ephemeral='no' private='yes'>`` with its UUID and usage."""
    secret = ElementTree.Element("secret", ephemeral="no", private="yes")
    ElementTree.SubElement(secret, "uuid").text = str(secret_uuid)
    usage_element = ElementTree.SubElement(secret, "usage", type=usage)
    ElementTree.SubElement(usage_element, _USAGE_ID_ELEMENT[usage]).text = usage_id
    return config.to_string(secret)


class Secrets:
    """Persistent, private libvirt secrets: LUKS passphrases and vTPM state keys."""

    def __init__(self, host: LibvirtHost) -> None:
        """Manage the secrets of ``host``; nothing is opened until the first call."""
        self._host = host
        self._supported: bool | None = None

    def __repr__(self) -> str:
        return f"Secrets({self._host.uri!r})"

    @property
    def supported(self) -> bool:
        """Whether the host's driver has a secret store (the test driver has none).

        Found out once, by listing secrets, and cached.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails for another reason.
        """
        if self._supported is None:
            conn = self._host.connect()
            try:
                with _translate(f"listing secrets on {self._host.uri}"):
                    conn.listAllSecrets(0)
            except UnsupportedError:
                self._supported = False
            else:
                self._supported = True
        return self._supported

    def define(
        self, secret_uuid: uuid.UUID, usage: SecretUsage, usage_id: str, value: bytes
    ) -> None:
        """Define the secret ``secret_uuid`` and set its value; repeating it is fine.

        ``usage_id`` is the volume's path for ``volume`` secrets and a unique name for
        ``vtpm`` ones; libvirt refuses two secrets with the same usage. Defining again with
        another value replaces the value.

        :raises ValueError: for an unknown usage, an empty usage id or an empty value.
        :raises UnsupportedError: if the driver has no secret store.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt refuses the secret (another secret has that usage).
        """
        if usage not in _SECRET_USAGES:
            raise ValueError(f"secret usage must be one of {_SECRET_USAGES}, got {usage!r}")
        if not usage_id:
            raise ValueError("a secret needs a usage id")
        # The messages below say nothing about the value itself, on purpose.
        if not isinstance(value, bytes) or not value:
            raise ValueError("a secret value must be non-empty bytes")
        if usage == "volume" and not _is_utf8(value):
            raise ValueError(
                "a LUKS passphrase must be valid UTF-8: QEMU reads volume secrets as text "
                "('Data from secret ... is not valid UTF-8'); encode random key bytes, e.g. "
                "in base64"
            )
        conn = self._host.connect()
        with _translate(f"defining secret {secret_uuid} ({usage}) on {self._host.uri}"):
            secret = conn.secretDefineXML(_secret_xml(secret_uuid, usage, usage_id), 0)
        with _translate(f"setting the value of secret {secret_uuid} on {self._host.uri}"):
            secret.setValue(value, 0)

    def _find(self, secret_uuid: uuid.UUID) -> Any | None:
        """Return the ``virSecret``, or None if there is none.

        :raises UnsupportedError: if the driver has no secret store.
        :raises EnclaveError: if libvirt fails for another reason.
        """
        conn = self._host.connect()
        try:
            with _translate(f"looking up secret {secret_uuid} on {self._host.uri}"):
                return conn.secretLookupByUUIDString(str(secret_uuid))
        except SecretNotFoundError:
            return None

    def undefine(self, secret_uuid: uuid.UUID) -> None:
        """Remove the secret and its value from libvirt; an absent one is fine.

        :raises UnsupportedError: if the driver has no secret store.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt refuses to remove it.
        """
        secret = self._find(secret_uuid)
        if secret is None:
            return
        try:
            with _translate(f"undefining secret {secret_uuid} on {self._host.uri}"):
                secret.undefine()
        except SecretNotFoundError:
            return

    def exists(self, secret_uuid: uuid.UUID) -> bool:
        """Whether the host has the secret ``secret_uuid``.

        :raises UnsupportedError: if the driver has no secret store.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails to look it up.
        """
        return self._find(secret_uuid) is not None


class Networks:
    """Per-enclave isolated libvirt networks: no ``<forward>``, no ``<ip>``."""

    def __init__(self, host: LibvirtHost) -> None:
        """Manage the networks of ``host``; nothing is opened until the first call."""
        self._host = host
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Networks({self._host.uri!r})"

    def _find(self, conn: Any, name: str) -> Any | None:
        """Return the ``virNetwork`` called ``name``, or None.

        :raises EnclaveError: if libvirt fails for another reason than a missing network.
        """
        try:
            with _translate(f"looking up network {name} on {self._host.uri}"):
                return conn.networkLookupByName(name)
        except NetworkNotFoundError:
            return None

    def ensure_isolated(self, name: str) -> None:
        """Define, start and mark autostart the isolated network ``name`` unless it is already.

        :raises ValueError: if ``name`` is empty.
        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if a network of that name exists but is not isolated (it has a
            ``<forward>`` or an ``<ip>``), or libvirt refuses a step.
        """
        if not name:
            raise ValueError("a network needs a name")
        conn = self._host.connect()
        where = f"network {name} on {self._host.uri}"
        with self._lock:
            network = self._find(conn, name)
            if network is None:
                try:
                    with _translate(f"defining {where}"):
                        network = conn.networkDefineXML(designer.isolated_network_xml(name))
                except EnclaveError:
                    # "network already exists": another process defined it meanwhile.
                    network = self._find(conn, name)
                    if network is None:
                        raise
            with _translate(f"reading {where}"):
                xml, active = network.XMLDesc(0), network.isActive()
            described = _parse(xml)
            leaks = [tag for tag in ("forward", "ip") if described.find(tag) is not None]
            if leaks:
                raise EnclaveError(
                    f"{where} exists but is not isolated (it has <{'>, <'.join(leaks)}>); "
                    f"refusing to attach an enclave to it"
                )
            if not active:
                try:
                    with _translate(f"starting {where}"):
                        network.create()
                except EnclaveError:
                    if not _is_active(network, where):  # started concurrently is as good
                        raise
            # Enclave domains need their network active when the host (or libvirtd) restarts.
            with _translate(f"marking {where} autostart"):
                if not network.autostart():
                    network.setAutostart(1)

    def remove(self, name: str) -> None:
        """Stop and undefine the network ``name``; an absent one is fine.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt refuses to stop or undefine it (a domain still uses
            it, for example).
        """
        conn = self._host.connect()
        network = self._find(conn, name)
        if network is None:
            return
        where = f"network {name} on {self._host.uri}"
        try:
            with _translate(f"reading {where}"):
                active, persistent = network.isActive(), network.isPersistent()
            if active:
                with _translate(f"stopping {where}"):
                    network.destroy()
            if persistent:
                with _translate(f"undefining {where}"):
                    network.undefine()
        except NetworkNotFoundError:
            return  # removed concurrently

    def list(self) -> list[str]:
        """Return the names of every network on the host, active or not, sorted.

        :raises HypervisorUnavailableError: if the host cannot be reached.
        :raises EnclaveError: if libvirt fails to list them.
        """
        conn = self._host.connect()
        with _translate(f"listing networks on {self._host.uri}"):
            return sorted(str(network.name()) for network in conn.listAllNetworks(0))
