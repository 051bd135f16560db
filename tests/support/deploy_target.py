"""A real Debian 12 machine for the Ansible CI scenario: systemd as PID 1, reached over SSH.

These machines have no container engine and no systemd of their own, so the deployment target
is a guest under QEMU (TCG: KVM cannot boot guests here) on QEMU's user network, its SSH port
forwarded to the controller's loopback. :func:`build_target` makes (or finds in the cache) its
image from the Debian archive with ``mmdebstrap``: the kernel, systemd, OpenSSH, Python for
Ansible's modules, and every Debian package the converged roles install (the union of their
``<role>_packages`` defaults), so that the converge needs no mirror. The image is cached outside
the clone under its recipe's digest; each boot gets a copy-on-write overlay, so the cached image
is never written. :func:`boot_target` starts one guest and waits for its SSH server.

Host-key checking stays on: the host keys are made at build time and written, per boot, into a
``known_hosts`` file for the forwarded port.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from enclaves import imagebuild

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = ROOT / "ansible"
#: Roles converged on the CI guest (Keycloak's distribution cannot be had here).
CI_ROLES = ("hardening", "postgresql", "openbao", "sovereign", "libvirt_host")
#: What every target needs before Ansible can manage it.
BASE_PACKAGES = (
    "linux-image-amd64",
    "initramfs-tools",
    "udev",
    "kmod",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "python3",
    "python3-apt",
    "sudo",
    "iproute2",
    "ca-certificates",
    # The verification's probes (tests/deploy) run in the guest.
    "curl",
)
#: Bumped when the build steps change what they produce for the same package list.
FORMAT = 1
HOSTNAME = "ci-node.sovereign.test"
#: Free space in the root file system for what the converge writes (venv, databases, logs).
FREE_MIB = 4096
MEMORY_MIB = 4096
#: systemd, PostgreSQL, libvirtd, nginx at boot under TCG on a busy 2-core machine.
SSH_TIMEOUT_S = 420.0
_PACKAGE = re.compile(r"[a-z0-9][a-z0-9+.-]{1,80}")

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    sys.stderr.write(f"[deploy] {message}\n")
    sys.stderr.flush()


def role_packages(roles: Sequence[str] = CI_ROLES) -> list[str]:
    """The Debian packages the roles install: every ``*_packages`` list in their defaults."""
    packages: set[str] = set()
    for role in roles:
        defaults = ANSIBLE_DIR / "roles" / role / "defaults" / "main.yml"
        if not defaults.is_file():
            continue
        values = yaml.safe_load(defaults.read_text(encoding="utf-8")) or {}
        for key, value in values.items():
            if not key.endswith("_packages"):
                continue
            for name in value:
                if not (isinstance(name, str) and _PACKAGE.fullmatch(name)):
                    raise ValueError(f"{defaults}: {key} holds {name!r}, not a Debian package")
                packages.add(name)
    return sorted(packages)


@dataclass(frozen=True)
class TargetImage:
    """A built target: its root file system image, kernel, initramfs and keys."""

    directory: Path

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs.raw"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def ssh_key(self) -> Path:
        """The controller's private key (root's authorized key in the guest)."""
        return self.directory / "id_ed25519"

    @property
    def host_keys(self) -> list[str]:
        """The guest's SSH host public keys (``type base64``)."""
        lines = (self.directory / "host_keys.pub").read_text(encoding="ascii").splitlines()
        return [" ".join(line.split()[:2]) for line in lines if line.strip()]


def recipe_digest(packages: Sequence[str]) -> str:
    """The cache key: the build format (bump :data:`FORMAT` when the steps change) and the
    packages."""
    described = {"format": FORMAT, "packages": sorted(packages)}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def build_target(progress: Progress | None = None) -> TargetImage:
    """The cached target image for the current roles' packages, built on first use."""
    progress = progress or _stderr
    packages = sorted({*BASE_PACKAGES, *role_packages()})
    digest = recipe_digest(packages)
    directory = imagebuild.cache_root() / f"deploy-target-{digest[:16]}"
    target = TargetImage(directory)
    if (directory / "done").is_file():
        progress(f"cached deployment target: {directory}")
        return target
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    rootfs = directory / "tree"
    progress(f"mmdebstrap bookworm with {len(packages)} packages (a few minutes)")
    started = time.monotonic()
    _run(
        [
            "mmdebstrap",
            "--mode=root",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            "--dpkgopt=path-exclude=/usr/share/doc/*",
            "--dpkgopt=path-exclude=/usr/share/man/*",
            "--dpkgopt=path-exclude=/usr/share/locale/*",
            "--dpkgopt=path-include=/usr/share/doc/*/copyright",
            "bookworm",
            str(rootfs),
        ]
    )
    progress(f"mmdebstrap done in {time.monotonic() - started:.0f} s")
    _configure(rootfs, directory)
    _boot_files(rootfs, directory)
    size_mib = _tree_mib(rootfs) + FREE_MIB
    progress(f"mkfs.ext4 -d: {size_mib} MiB root file system (no mount)")
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "ci-root",
            "-d",
            str(rootfs),
            str(target.rootfs),
            f"{size_mib}M",
        ]
    )
    shutil.rmtree(rootfs)
    (directory / "packages.txt").write_text("\n".join(packages) + "\n", encoding="ascii")
    (directory / "done").write_text(digest + "\n", encoding="ascii")
    return target


def _configure(rootfs: Path, directory: Path) -> None:
    """Host name, DHCP on the user network, root's key, host keys, an empty machine-id."""
    (rootfs / "etc/hostname").write_text(HOSTNAME + "\n")
    (rootfs / "etc/hosts").write_text(f"127.0.0.1 localhost\n127.0.1.1 {HOSTNAME} ci-node\n")
    (rootfs / "etc/machine-id").write_text("")
    (rootfs / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro 0 1\n")
    network = rootfs / "etc/systemd/network/10-user.network"
    network.write_text("[Match]\nName=eth0\n\n[Network]\nDHCP=ipv4\n")
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    link = wants / "systemd-networkd.service"
    link.unlink(missing_ok=True)
    link.symlink_to("/lib/systemd/system/systemd-networkd.service")
    # QEMU's user network has no IPv6 router and DNS is not needed: the estate's names are in
    # /etc/hosts (the hardening role), the mirror is never reached.
    key = directory / "id_ed25519"
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "sovereign-ci", "-f", str(key)])
    ssh = rootfs / "root/.ssh"
    ssh.mkdir(mode=0o700, exist_ok=True)
    (ssh / "authorized_keys").write_text(Path(f"{key}.pub").read_text())
    (ssh / "authorized_keys").chmod(0o600)
    for stale in (rootfs / "etc/ssh").glob("ssh_host_*"):
        stale.unlink()
    _run(["ssh-keygen", "-A", "-f", str(rootfs)])
    keys = sorted((rootfs / "etc/ssh").glob("ssh_host_*_key.pub"))
    (directory / "host_keys.pub").write_text("".join(k.read_text() for k in keys))
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        for child in (rootfs / cache).glob("*"):
            if child.is_file():
                child.unlink()


def _boot_files(rootfs: Path, directory: Path) -> None:
    """Copy the kernel and initramfs out for direct kernel boot (they stay in /boot too)."""
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise imagebuild.ImageBuildError(f"expected one kernel and initramfs: {kernels} {initrds}")
    shutil.copyfile(kernels[0], directory / "vmlinuz")
    shutil.copyfile(initrds[0], directory / "initrd.img")


def _tree_mib(path: Path) -> int:
    return int(_run(["du", "-s", "--block-size=1M", str(path)]).split()[0])


def _run(argv: Sequence[str]) -> str:
    """Run a build command (fixed argv, no shell); :raises ImageBuildError: if it fails."""
    result = subprocess.run(
        list(argv), capture_output=True, text=True, check=False, stdin=subprocess.DEVNULL
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise imagebuild.ImageBuildError(f"{argv[0]} exited with {result.returncode}:\n{tail}")
    return result.stdout


@dataclass(frozen=True)
class Target:
    """A booted guest: where its SSH server answers and how to trust it."""

    port: int
    ssh_key: Path
    known_hosts: Path
    serial_log: Path

    def ssh(self, *command: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``command`` in the guest as root (argv joined by the remote shell)."""
        return subprocess.run(
            ["ssh", *self.ssh_options(), "root@127.0.0.1", *command],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    @contextlib.contextmanager
    def reverse_forward(self, port: int) -> Iterator[None]:
        """Make the controller's ``127.0.0.1:port`` answer on the guest's ``127.0.0.1:port``
        (an SSH remote forward) while the context lasts: a loopback service on both sides has
        the same URL, so e.g. an identity provider's issuer is the same for guest and tests."""
        forward = subprocess.Popen(
            [
                "ssh",
                *self.ssh_options(),
                "-N",
                "-o",
                "ExitOnForwardFailure=yes",
                "-R",
                f"127.0.0.1:{port}:127.0.0.1:{port}",
                "root@127.0.0.1",
            ],
            stdin=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30
            while self.ssh(f"exec 3<>/dev/tcp/127.0.0.1/{port}", timeout=30).returncode != 0:
                if forward.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the remote forward of port {port} did not come up")
                time.sleep(0.5)
            yield
        finally:
            forward.terminate()
            forward.wait(timeout=10)

    def ssh_config(self, path: Path, alias: str = "target") -> Path:
        """Write an OpenSSH client configuration naming the guest ``alias`` (for testinfra)."""
        path.write_text(
            f"Host {alias}\n  HostName 127.0.0.1\n  User root\n  Port {self.port}\n"
            f"  IdentityFile {self.ssh_key}\n  IdentitiesOnly yes\n  BatchMode yes\n"
            f"  UserKnownHostsFile {self.known_hosts}\n  StrictHostKeyChecking yes\n"
        )
        return path

    def ssh_options(self) -> list[str]:
        return [
            "-p", str(self.port),
            "-i", str(self.ssh_key),
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "ConnectTimeout=10",
        ]  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def boot_target(
    image: TargetImage, workdir: Path, progress: Progress | None = None
) -> Iterator[Target]:
    """Boot ``image`` under QEMU with its SSH port forwarded; power it off afterwards."""
    progress = progress or _stderr
    workdir.mkdir(parents=True, exist_ok=True)
    overlay = workdir / "overlay.qcow2"
    _run(
        [
            "qemu-img",
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            str(image.rootfs),
            str(overlay),
        ]
    )
    port = _free_port()
    known_hosts = workdir / "known_hosts"
    known_hosts.write_text("".join(f"[127.0.0.1]:{port} {k}\n" for k in image.host_keys))
    key = workdir / "id_ed25519"
    shutil.copyfile(image.ssh_key, key)
    key.chmod(0o600)
    serial = workdir / "serial.log"
    argv = [
        "qemu-system-x86_64",
        "-machine", "q35,accel=tcg",
        "-cpu", "max",
        "-smp", "2",
        "-m", str(MEMORY_MIB),
        "-display", "none",
        "-monitor", "none",
        "-serial", f"file:{serial}",
        "-kernel", str(image.kernel),
        "-initrd", str(image.initrd),
        "-append", "root=/dev/vda rw console=ttyS0 net.ifnames=0 panic=-1",
        "-drive", f"file={overlay},if=virtio,format=qcow2,discard=unmap",
        "-netdev", f"user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:22",
        "-device", "virtio-net-pci,netdev=n0",
        "-device", "virtio-rng-pci",
        "-no-reboot",
    ]  # fmt: skip
    progress(f"booting the deployment target (SSH on 127.0.0.1:{port}, serial log {serial})")
    with (workdir / "qemu.err").open("wb") as errors:
        qemu = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=errors
        )
    target = Target(port=port, ssh_key=key, known_hosts=known_hosts, serial_log=serial)
    try:
        _wait_for_ssh(target, qemu, progress)
        yield target
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired, OSError):
            target.ssh("systemctl", "poweroff", timeout=15)
        try:
            qemu.wait(timeout=60)
        except subprocess.TimeoutExpired:
            qemu.kill()
            qemu.wait()
        overlay.unlink(missing_ok=True)


def _wait_for_ssh(target: Target, qemu: subprocess.Popen[bytes], progress: Progress) -> None:
    started = time.monotonic()
    deadline = started + SSH_TIMEOUT_S
    while time.monotonic() < deadline:
        if qemu.poll() is not None:
            raise RuntimeError(f"QEMU exited with {qemu.returncode}; see {target.serial_log}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            if target.ssh("true", timeout=30).returncode == 0:
                progress(f"target answers SSH after {time.monotonic() - started:.0f} s")
                return
        time.sleep(3)
    qemu.kill()
    tail = target.serial_log.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"no SSH within {SSH_TIMEOUT_S:.0f} s; serial log ends:\n{tail}")
