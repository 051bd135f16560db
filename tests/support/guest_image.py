"""A tiny real guest for QEMU tests: Debian's kernel and a busybox initramfs.

Built from Debian packages only (shared ENVIRONMENT.md): the kernel package that
``linux-image-amd64`` depends on is fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x`` for its ``vmlinuz`` and the few modules the guest needs; the initramfs holds
``busybox`` from ``busybox-static``, those modules and :data:`INIT`, packed by GNU ``cpio``.
Everything is cached outside the repository, under :data:`CACHE_ROOT` (override with
``SOVEREIGN_TEST_GUEST_CACHE``), in a directory named after the kernel package version and a
hash of what goes into the initramfs, so later runs reuse it and a change rebuilds it.

The guest's ``/init`` reads ``sovereign.marker=TOKEN`` from the kernel command line, writes
``SOVEREIGN-DISK TOKEN`` to the first sector of ``/dev/vda``, reads it back past the page
cache, and prints ``SOVEREIGN-MARKER TOKEN disk=ok|fail tpm=yes|no`` on the serial console.
It then waits; an ACPI power-button press (``virsh shutdown``) powers it off.

Raises on anything missing (a package, a download): a ``qemu`` test that cannot get its guest
fails loudly. Only the test suite uses this; nothing of it is committed or shipped.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CACHE_ROOT = Path(os.environ.get("SOVEREIGN_TEST_GUEST_CACHE", "/var/cache/sovereign-test-guest"))
#: The Debian meta package whose dependency names the current kernel image package.
KERNEL_META_PACKAGE = "linux-image-amd64"
BUSYBOX = Path("/bin/busybox")
#: Kernel modules the guest loads, in this order (dependencies first). The TPM drivers
#: (tpm, tpm_crb) are built into Debian's kernel; :func:`build_guest_image` checks that every
#: module here is either in the package or built in.
MODULES: tuple[str, ...] = (
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    "virtio_blk",
    # The ACPI power button and its input events: how the guest hears a libvirt shutdown.
    "button",
    "evdev",
)
#: Built into the kernel, not modules: checked in modules.builtin.
BUILTIN: tuple[str, ...] = ("tpm", "tpm_crb")
#: What the guest prints once it has checked its disk and TPM.
MARKER_PREFIX = "SOVEREIGN-MARKER"
#: What the guest writes to the start of its disk, followed by a space and the token.
DISK_PREFIX = "SOVEREIGN-DISK"

INIT = r"""#!/bin/busybox sh
# Sovereign's QEMU test guest: prove the disk works and say whether a TPM is present.
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sysfs /sys
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin

for module in $(cat /lib/modules/order); do
    insmod "/lib/modules/$module.ko" || echo "SOVEREIGN-MODULE-FAILED $module"
done

marker=
for arg in $(cat /proc/cmdline); do
    case "$arg" in
        sovereign.marker=*) marker="${arg#sovereign.marker=}" ;;
    esac
done

# The ACPI power button: any event on its input device powers the guest off.
for name in /sys/class/input/event*/device/name; do
    if [ "$(cat "$name" 2>/dev/null)" = "Power Button" ]; then
        event="${name#/sys/class/input/}"
        event="${event%%/*}"
        (head -c 1 "/dev/input/$event" >/dev/null && echo "SOVEREIGN-POWEROFF" && poweroff -f) &
    fi
done

i=0
while [ ! -b /dev/vda ] && [ "$i" -lt 100 ]; do
    sleep 0.1
    i=$((i + 1))
done
disk=fail
if [ -b /dev/vda ] && [ -n "$marker" ]; then
    printf '%s %s\n' "SOVEREIGN-DISK" "$marker" >/tmp/marker
    size=$(wc -c </tmp/marker)
    dd if=/tmp/marker of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null
    blockdev --flushbufs /dev/vda
    echo 3 >/proc/sys/vm/drop_caches
    dd if=/dev/vda of=/tmp/readback bs=512 count=1 2>/dev/null
    if head -c "$size" /tmp/readback | cmp -s - /tmp/marker; then
        disk=ok
    fi
fi
tpm=no
if [ -e /dev/tpm0 ] || [ -e /sys/class/tpm/tpm0 ]; then
    tpm=yes
fi
echo "SOVEREIGN-MARKER $marker disk=$disk tpm=$tpm"
while true; do
    sleep 3600
done
"""


@dataclass(frozen=True)
class GuestImage:
    """A kernel and initramfs for direct kernel boot, readable by QEMU's user."""

    kernel: Path
    initrd: Path
    #: The kernel package it came from, e.g. ``linux-image-6.1.0-57-amd64 6.1.192-3``.
    package: str

    @staticmethod
    def cmdline(marker: str) -> str:
        """The kernel command line that makes the guest write and report ``marker``."""
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", marker):
            raise ValueError(f"marker must be 1-64 letters, digits, '-' or '_', got {marker!r}")
        return f"console=ttyS0 panic=-1 sovereign.marker={marker}"

    @staticmethod
    def marker_line(marker: str, *, disk: str = "ok", tpm: str = "yes") -> str:
        """The console line a healthy guest prints for ``marker``."""
        return f"{MARKER_PREFIX} {marker} disk={disk} tpm={tpm}"


def _run(argv: list[str], cwd: Path | None = None) -> str:
    """Run a command and return its stdout.

    :raises RuntimeError: with its stderr if it fails.
    """
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
    return result.stdout


def kernel_package() -> tuple[str, str]:
    """The kernel image package ``linux-image-amd64`` depends on, and its candidate version.

    Runs ``apt-get update`` first if apt does not know the meta package (no package lists).

    :raises RuntimeError: if apt knows neither, even after an update.
    """
    depends = subprocess.run(
        ["apt-cache", "depends", KERNEL_META_PACKAGE], capture_output=True, text=True, check=False
    )
    if depends.returncode != 0:
        # A fresh machine may have no package lists yet.
        _run(["apt-get", "update", "-qq"])
        depends = subprocess.run(
            ["apt-cache", "depends", KERNEL_META_PACKAGE],
            capture_output=True,
            text=True,
            check=False,
        )
    match = re.search(r"Depends: (linux-image-[0-9][^\s]*-amd64)\s", depends.stdout)
    if match is None:
        raise RuntimeError(
            f"apt-cache depends {KERNEL_META_PACKAGE} names no kernel image (apt-get update?)"
        )
    package = match[1]
    policy = _run(["apt-cache", "policy", package])
    candidate = re.search(r"Candidate: (\S+)", policy)
    if candidate is None or candidate[1] == "(none)":
        raise RuntimeError(f"apt has no candidate version of {package} (apt-get update?)")
    return package, candidate[1]


def _modinfo_depends(module: Path) -> list[str]:
    """The ``depends=`` entry of a kernel module's ``.modinfo`` section."""
    match = re.search(rb"\x00depends=([^\x00]*)\x00", module.read_bytes())
    if match is None:
        return []
    return [name for name in match[1].decode().split(",") if name]


def _kernel_files(package: str, version: str, workdir: Path) -> tuple[Path, dict[str, Path]]:
    """Download and unpack the kernel package: its vmlinuz and the :data:`MODULES` files.

    :raises RuntimeError: if a module is neither in the package nor built in, or needs a
        module that is not loaded before it.
    """
    _run(["apt-get", "download", f"{package}={version}"], cwd=workdir)
    debs = sorted(workdir.glob("*.deb"))
    if len(debs) != 1:
        raise RuntimeError(f"apt-get download {package} left {debs} in {workdir}")
    tree = workdir / "tree"
    _run(["dpkg-deb", "-x", str(debs[0]), str(tree)])
    kernels = sorted(tree.glob("boot/vmlinuz-*"))
    releases = sorted(tree.glob("lib/modules/*"))
    if len(kernels) != 1 or len(releases) != 1:
        raise RuntimeError(f"{package}: expected one vmlinuz and one module tree")
    modules_dir = releases[0]
    builtin = {
        Path(line).name.removesuffix(".ko")
        for line in (modules_dir / "modules.builtin").read_text().splitlines()
    }
    missing_builtin = sorted(set(BUILTIN) - builtin)
    if missing_builtin:
        raise RuntimeError(f"{package}: {missing_builtin} are not built in; add them to MODULES")
    found: dict[str, Path] = {}
    for path in modules_dir.rglob("*.ko"):
        name = path.name.removesuffix(".ko")
        if name in MODULES:
            found[name] = path
    for position, name in enumerate(MODULES):
        if name not in found:
            raise RuntimeError(f"{package}: module {name}.ko not found (compressed modules?)")
        needed = set(_modinfo_depends(found[name])) - set(MODULES[:position]) - builtin
        if needed:
            raise RuntimeError(f"{package}: {name} needs {sorted(needed)} loaded before it")
    return kernels[0], found


def _initramfs(modules: dict[str, Path], target: Path, workdir: Path) -> None:
    """Pack busybox, the modules and :data:`INIT` into a gzipped newc cpio at ``target``."""
    root = workdir / "initramfs"
    for directory in ("bin", "lib/modules", "proc", "sys", "dev", "tmp"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for name in MODULES:
        shutil.copyfile(modules[name], root / "lib" / "modules" / f"{name}.ko")
    (root / "lib" / "modules" / "order").write_text("\n".join(MODULES) + "\n")
    init = root / "init"
    init.write_text(INIT)
    init.chmod(0o755)
    names = sorted(str(path.relative_to(root)) for path in root.rglob("*"))
    archive = _run_bytes(
        ["cpio", "--create", "--format=newc", "--null", "--reproducible", "--owner=0:0", "--quiet"],
        cwd=root,
        stdin="\0".join(names).encode() + b"\0",
    )
    target.write_bytes(gzip.compress(archive, mtime=0))


def _run_bytes(argv: list[str], cwd: Path, stdin: bytes) -> bytes:
    """Run a command with ``stdin`` and return its binary stdout.

    :raises RuntimeError: with its stderr if it fails.
    """
    result = subprocess.run(argv, cwd=cwd, input=stdin, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed ({result.returncode}): {result.stderr!r}")
    return result.stdout


def _recipe_hash() -> str:
    """Hash of everything that goes into the initramfs besides the kernel's modules."""
    digest = hashlib.sha256()
    digest.update(INIT.encode())
    digest.update("\n".join(MODULES).encode())
    digest.update(hashlib.sha256(BUSYBOX.read_bytes()).digest())
    return digest.hexdigest()[:12]


def build_guest_image(cache_root: Path = CACHE_ROOT) -> GuestImage:
    """Return the cached guest, building it first if this kernel and recipe have none.

    :raises RuntimeError: if busybox, cpio, apt or the kernel package is unavailable.
    """
    for tool in ("apt-get", "apt-cache", "dpkg-deb", "cpio"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is missing (apt-get install busybox-static cpio)")
    if not BUSYBOX.is_file():
        raise RuntimeError(f"{BUSYBOX} is missing: apt-get install busybox-static")
    package, version = kernel_package()
    key = f"{package.removeprefix('linux-image-')}_{version}_{_recipe_hash()}"
    directory = cache_root / key
    image = GuestImage(
        kernel=directory / "vmlinuz",
        initrd=directory / "initrd.img",
        package=f"{package} {version}",
    )
    if image.kernel.is_file() and image.initrd.is_file():
        return image
    cache_root.mkdir(parents=True, exist_ok=True)
    # QEMU runs as an unprivileged user and must reach the kernel and initramfs.
    cache_root.chmod(0o755)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache_root) as scratch:
        work = Path(scratch)
        kernel, modules = _kernel_files(package, version, work)
        staging = work / "staging"
        staging.mkdir()
        shutil.copyfile(kernel, staging / "vmlinuz")
        _initramfs(modules, staging / "initrd.img", work)
        for path in (staging / "vmlinuz", staging / "initrd.img"):
            path.chmod(0o644)
        staging.chmod(0o755)
        try:
            # Atomic: a concurrent build of the same key either wins or finds this one.
            staging.rename(directory)
        except OSError:
            if not (image.kernel.is_file() and image.initrd.is_file()):
                raise
    return image


def wait_for_line(path: Path, prefix: str, timeout_s: float) -> str:
    """Return the first line of ``path`` starting with ``prefix``, polling up to ``timeout_s``.

    :raises AssertionError: with the console's tail if no such line appears in time.
    """
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.exists():
            for line in path.read_text(errors="replace").splitlines():
                if line.startswith(prefix):
                    return line.strip()
        time.sleep(0.1)
    tail = path.read_text(errors="replace")[-2000:] if path.exists() else "(no console log)"
    raise AssertionError(f"no {prefix!r} line on the console within {timeout_s:g} s:\n{tail}")
