"""The reproducible recipe of the default enclave guest image, and its cached build.

Owns :class:`Recipe` (what goes into the image: Debian suite and packages, Python wheels, the
agent's sources, its systemd unit, the kernel command line) and :func:`build` (turns a recipe
into a qcow2 root filesystem plus the kernel and initramfs that boot it directly). A recipe's
:meth:`Recipe.digest` is the SHA-256 of everything that goes into it; it names the build's cache
directory and is written into the image as ``/etc/sovereign/image-digest``, which the agent
reports in its ``hello`` (an image cannot carry its own file checksum; the catalog records
that).

The steps, each printed through ``progress`` as it starts:

1. a wheelhouse: ``pip download`` of :attr:`Recipe.wheels` with the running interpreter's pip
   (the guest's Python is Debian 12's 3.11; so must the builder's be);
2. the base root filesystem: ``mmdebstrap --variant=minbase`` of Debian 12 with the machine's
   own apt sources, :attr:`Recipe.packages` (a kernel, its initramfs through initramfs-tools and
   udev, Python, systemd), no documentation, man pages or locales, then the wheels installed
   offline (``pip install --no-index --target /usr/local/lib/python3.11/dist-packages``) and
   the unprivileged job user. Cached on its own (``base-<hash>/``) so that an agent change does
   not rebuild Debian and PyTorch;
3. the image: a copy of the base with the agent package (``/opt/sovereign-agent/
   sovereign_agent/``), its enabled unit and the digest file; the kernel and initramfs are moved
   out of ``/boot`` (the guest boots them directly: ``root=/dev/vda rw console=ttyS0``); an ext4
   file system filled with ``mkfs.ext4 -d`` (no mount, no loop device), converted to a
   compressed qcow2.

The image has no network configuration and no SSH server: the agent's virtio-serial port is the
only way in. Production uses the same recipe with :func:`cuda_recipe`: the CUDA build of PyTorch
from PyTorch's wheel index and Debian's NVIDIA driver packages (contrib, non-free and
non-free-firmware components). That variant is documented and hashed like the default one but not
built by the test suite (it needs the wheel index and several GiB).

Builds need root (mmdebstrap's root mode, ``chroot`` for ``useradd``), ``mmdebstrap``,
``mkfs.ext4`` and ``qemu-img``. It must not import the control plane, talk to libvirt, or write
anywhere but its cache directory and a scratch directory inside it.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

#: Where builds are cached unless ``SOVEREIGN_IMAGE_CACHE`` says otherwise.
DEFAULT_CACHE = Path("/var/cache/sovereign-images")
CACHE_ENV = "SOVEREIGN_IMAGE_CACHE"
#: Bumped whenever the build steps below change what they produce for the same recipe:
#: BASE_FORMAT for the cached base root file system (step 2), BUILD_FORMAT for the rest.
BASE_FORMAT = 2
BUILD_FORMAT = 4
_HERE = Path(__file__).resolve().parent
AGENT_DIR = _HERE / "agent"
UNIT_FILE = _HERE / "image" / "sovereign-agent.service"
#: Where the guest finds its Python packages (Debian's path for locally installed ones).
SITE_PACKAGES = "usr/local/lib/python3.11/dist-packages"
#: The agent package inside the guest (on the unit's PYTHONPATH).
AGENT_TARGET = "opt/sovereign-agent/sovereign_agent"
DIGEST_FILE = "etc/sovereign/image-digest"
JOB_USER = "sovereign-job"
#: dpkg drops these paths on unpacking: documentation and translations have no use in an enclave.
_PATH_EXCLUDES = (
    "/usr/share/doc/*",
    "/usr/share/man/*",
    "/usr/share/info/*",
    "/usr/share/locale/*",
    "/usr/share/lintian/*",
    "/usr/share/linda/*",
)
#: Copyright files are kept (licences travel with the binaries).
_PATH_INCLUDES = ("/usr/share/doc/*/copyright",)
#: Free space left in the root file system beyond its content, for jobs and logs.
FREE_MIB = 1024
IMAGE_NAME = "image.qcow2"
KERNEL_NAME = "vmlinuz"
INITRD_NAME = "initrd.img"
MANIFEST_NAME = "manifest.json"

#: Units masked in the image (linked to /dev/null): login prompts (nobody logs in to an
#: enclave), and housekeeping an enclave has no use for that costs boot time (e2scrub_reap
#: alone takes ~20 s under TCG) or would try the network (apt's timers).
_MASKED_UNITS = (
    "getty.target",
    "getty@.service",
    "serial-getty@.service",
    "console-getty.service",
    "e2scrub_reap.service",
    "e2scrub_all.timer",
    "fstrim.timer",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
)
#: Kernel modules the guest never loads: KVM inside an enclave (QEMU's maximum CPU model offers
#: SVM/VMX) and the PC speaker.
_BLACKLISTED_MODULES = ("kvm", "kvm_amd", "kvm_intel", "pcspkr")

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    sys.stderr.write(f"[image] {message}\n")
    sys.stderr.flush()


@dataclass(frozen=True)
class Recipe:
    """Everything that decides what the guest image contains."""

    #: A name for people (the catalog's default image name).
    name: str = "sovereign-debian12-torch-cpu"
    suite: str = "bookworm"
    variant: str = "minbase"
    components: tuple[str, ...] = ("main",)
    #: Debian packages beyond minbase: the kernel (with kmod, initramfs-tools and udev so that
    #: its initramfs finds /dev/vda), systemd as PID 1 and Python.
    packages: tuple[str, ...] = (
        "linux-image-amd64",
        "initramfs-tools",
        "udev",
        "kmod",
        "systemd-sysv",
        "python3",
    )
    #: pip requirements, pinned: the CPU build of PyTorch (found on this machine's disk), numpy
    #: and nvidia-ml-py (pynvml: the scrub program's NVML read of the GPU's identity and state).
    wheels: tuple[str, ...] = ("torch==2.13.0", "numpy==2.4.6", "nvidia-ml-py==13.615.71")
    #: Extra ``pip download`` arguments (the CUDA variant names PyTorch's wheel index here).
    pip_args: tuple[str, ...] = ()
    cmdline: str = "root=/dev/vda rw console=ttyS0"
    #: Files whose bytes are part of the recipe: the agent's sources and the unit, by guest path.
    files: dict[str, str] = field(default_factory=dict)

    def digest(self) -> str:
        """The SHA-256 (hex) of the recipe: its fields and the bytes of every file it installs."""
        return _sha256_json({"format": BUILD_FORMAT, **self._described()})

    def base_digest(self) -> str:
        """The SHA-256 (hex) of what the cached base root filesystem depends on."""
        base = {k: v for k, v in self._described().items() if k in _BASE_FIELDS}
        return _sha256_json({"format": BASE_FORMAT, "base": base})

    def _described(self) -> dict[str, object]:
        described = asdict(self)
        described["files"] = {
            target: hashlib.sha256(Path(source).read_bytes()).hexdigest()
            for target, source in sorted(self.files.items())
        }
        return described


_BASE_FIELDS = ("suite", "variant", "components", "packages", "wheels", "pip_args")


def _sha256_json(value: object) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def agent_files(agent_dir: Path = AGENT_DIR, unit: Path = UNIT_FILE) -> dict[str, str]:
    """The files the recipe installs: ``enclaves/agent/*.py`` as the guest's ``sovereign_agent``
    package and the systemd unit, as ``{guest path: source path}``.

    :raises FileNotFoundError: if there is no agent source or no unit file.
    """
    sources = sorted(agent_dir.glob("*.py"))
    if not sources:
        raise FileNotFoundError(f"no agent sources (*.py) in {agent_dir}")
    if not unit.is_file():
        raise FileNotFoundError(f"no systemd unit at {unit}")
    files = {f"{AGENT_TARGET}/{source.name}": str(source) for source in sources}
    files[f"etc/systemd/system/{unit.name}"] = str(unit)
    return files


def default_recipe() -> Recipe:
    """The default image: Debian 12, PyTorch CPU, numpy, the agent."""
    return Recipe(files=agent_files())


def cuda_recipe(cuda: str = "cu128") -> Recipe:
    """The production variant: the CUDA build of PyTorch and Debian's NVIDIA driver.

    PyTorch's CUDA wheels come from its own index (``https://download.pytorch.org/whl/CUDA``)
    and carry the CUDA runtime libraries; the kernel driver is Debian's ``nvidia-driver`` (from
    ``non-free``, built for the image's kernel by DKMS through ``nvidia-kernel-dkms`` and the
    kernel headers) and ``firmware-misc-nonfree``. Not built by the test suite.

    :raises ValueError: if ``cuda`` is not a PyTorch CUDA tag such as ``cu128``.
    """
    if not re.fullmatch(r"cu[0-9]{2,4}", cuda):
        raise ValueError(f"a CUDA variant is a PyTorch wheel tag like cu128, got {cuda!r}")
    base = default_recipe()
    return Recipe(
        name=f"sovereign-debian12-torch-{cuda}",
        components=("main", "contrib", "non-free", "non-free-firmware"),
        packages=(
            *base.packages,
            "linux-headers-amd64",
            "nvidia-driver",
            "nvidia-kernel-dkms",
            "firmware-misc-nonfree",
        ),
        wheels=base.wheels,
        # nvidia-ml-py is not on PyTorch's index: PyPI is the extra one (every wheel is pinned).
        pip_args=(
            "--index-url",
            f"https://download.pytorch.org/whl/{cuda}",
            "--extra-index-url",
            "https://pypi.org/simple",
        ),
        files=base.files,
    )


@dataclass(frozen=True)
class BuiltImage:
    """A built (or cached) image: its files, the recipe digest and their SHA-256 checksums."""

    directory: Path
    recipe_digest: str
    name: str
    cmdline: str
    sha256: str
    kernel_sha256: str
    initrd_sha256: str
    size: int
    #: Seconds the build took (0 when it came from the cache).
    build_s: float = 0.0

    @property
    def image(self) -> Path:
        return self.directory / IMAGE_NAME

    @property
    def kernel(self) -> Path:
        return self.directory / KERNEL_NAME

    @property
    def initrd(self) -> Path:
        return self.directory / INITRD_NAME


def cache_root() -> Path:
    """The cache directory: ``$SOVEREIGN_IMAGE_CACHE`` or :data:`DEFAULT_CACHE`."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE)


def file_sha256(path: Path) -> str:
    """The SHA-256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def cached(recipe: Recipe, root: Path | None = None) -> BuiltImage | None:
    """The cached build of ``recipe``, or None if there is none (or it is incomplete)."""
    directory = (root or cache_root()) / recipe.digest()
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return None
    if not all((directory / n).is_file() for n in (IMAGE_NAME, KERNEL_NAME, INITRD_NAME)):
        return None
    return BuiltImage(
        directory=directory,
        recipe_digest=str(manifest["recipe_digest"]),
        name=str(manifest["name"]),
        cmdline=str(manifest["cmdline"]),
        sha256=str(manifest["sha256"]),
        kernel_sha256=str(manifest["kernel_sha256"]),
        initrd_sha256=str(manifest["initrd_sha256"]),
        size=int(manifest["size"]),
    )


def build(
    recipe: Recipe | None = None, *, root: Path | None = None, progress: Progress = _stderr
) -> BuiltImage:
    """Return the cached image of ``recipe`` (the default one), building it first if needed.

    :raises ImageBuildError: if a tool is missing or a step fails (its output is quoted).
    """
    recipe = recipe or default_recipe()
    root = root or cache_root()
    found = cached(recipe, root)
    if found is not None:
        progress(f"cached: {found.directory}")
        return found
    for tool in ("mmdebstrap", "mkfs.ext4", "qemu-img", "chroot"):
        if shutil.which(tool) is None:
            raise ImageBuildError(
                f"{tool} is missing: apt-get install mmdebstrap e2fsprogs qemu-utils"
            )
    if os.geteuid() != 0:
        raise ImageBuildError("building the guest image needs root (mmdebstrap root mode)")
    root.mkdir(parents=True, exist_ok=True)
    # One build at a time per cache (two test sessions, or CI jobs sharing a runner): the
    # second waits, then finds the first one's result.
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        found = cached(recipe, root)
        if found is not None:
            progress(f"cached (built meanwhile): {found.directory}")
            return found
        return _build(recipe, root, progress)


def _build(recipe: Recipe, root: Path, progress: Progress) -> BuiltImage:
    """Build ``recipe`` into ``root`` (the caller holds the cache's lock)."""
    started = time.monotonic()
    base = _base(recipe, root, progress)
    digest = recipe.digest()
    directory = root / digest
    with tempfile.TemporaryDirectory(prefix="build-", dir=root) as scratch_name:
        scratch = Path(scratch_name)
        rootfs = scratch / "rootfs"
        progress("copying the base root file system")
        _run(["cp", "-a", "--reflink=auto", str(base), str(rootfs)])
        out = scratch / "out"
        out.mkdir()
        _finish_rootfs(recipe, rootfs, out, digest, progress)
        _make_image(rootfs, out, digest, progress)
        progress("hashing the image, kernel and initramfs")
        manifest = {
            "recipe_digest": digest,
            "name": recipe.name,
            "cmdline": recipe.cmdline,
            "sha256": file_sha256(out / IMAGE_NAME),
            "kernel_sha256": file_sha256(out / KERNEL_NAME),
            "initrd_sha256": file_sha256(out / INITRD_NAME),
            "size": (out / IMAGE_NAME).stat().st_size,
            "recipe": recipe._described(),
        }
        (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        out.chmod(0o755)
        out.rename(directory)
    built = cached(recipe, root)
    if built is None:
        raise ImageBuildError(f"the build left no complete image in {directory}")
    elapsed = time.monotonic() - started
    progress(f"built {directory} in {elapsed:.0f} s ({built.size / 2**20:.0f} MiB qcow2)")
    return BuiltImage(**{**built.__dict__, "build_s": elapsed})


class ImageBuildError(RuntimeError):
    """A step of the image build failed."""


def _run(argv: Sequence[str], *, env: dict[str, str] | None = None) -> str:
    """Run a build command; return its stdout.

    :raises ImageBuildError: quoting the end of its output if it fails.
    """
    # The argv is built here from the recipe and fixed tool names; no shell.
    result = subprocess.run(  # noqa: S603
        list(argv),
        capture_output=True,
        text=True,
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-4000:]
        raise ImageBuildError(f"{argv[0]} exited with {result.returncode}:\n{tail}")
    return result.stdout


def _base(recipe: Recipe, root: Path, progress: Progress) -> Path:
    """The cached base root filesystem of ``recipe`` (Debian + wheels + job user)."""
    base_dir = root / f"base-{recipe.base_digest()}"
    rootfs = base_dir / "rootfs"
    if (base_dir / "done").is_file():
        progress(f"cached base root file system: {base_dir}")
        return rootfs
    shutil.rmtree(base_dir, ignore_errors=True)
    base_dir.mkdir(parents=True)
    wheelhouse = base_dir / "wheelhouse"
    progress(f"downloading wheels {' '.join(recipe.wheels)} into {wheelhouse}")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-cache-dir",
            "--only-binary=:all:",
            *recipe.pip_args,
            "-d",
            str(wheelhouse),
            *recipe.wheels,
        ]
    )
    progress(
        f"mmdebstrap --variant={recipe.variant} {recipe.suite} with {', '.join(recipe.packages)}"
    )
    started = time.monotonic()
    argv = [
        "mmdebstrap",
        "--mode=root",
        f"--variant={recipe.variant}",
        f"--components={','.join(recipe.components)}",
        f"--include={','.join(recipe.packages)}",
        # No documentation: dpkg skips these paths as it unpacks.
        *(f"--dpkgopt=path-exclude={p}" for p in _PATH_EXCLUDES),
        *(f"--dpkgopt=path-include={p}" for p in _PATH_INCLUDES),
        recipe.suite,
        str(rootfs),
    ]
    _run(argv)
    progress(f"mmdebstrap done in {time.monotonic() - started:.0f} s")
    progress("installing the wheels offline into the root file system")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-cache-dir",
            "--no-index",
            "--find-links",
            str(wheelhouse),
            "--target",
            str(rootfs / SITE_PACKAGES),
            *(w.split("==")[0] for w in recipe.wheels),
        ],
        # The machine's pip configuration (find-links, constraints) stays out of an offline
        # install into another root.
        env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
    )
    # --target installs console scripts beside the packages, where nothing runs them.
    shutil.rmtree(rootfs / SITE_PACKAGES / "bin", ignore_errors=True)
    progress(f"adding the unprivileged job user {JOB_USER}")
    _run(
        [
            "chroot",
            str(rootfs),
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            JOB_USER,
        ]
    )
    for cache in ("var/cache/apt", "var/lib/apt/lists"):
        for child in (rootfs / cache).glob("*"):
            if child.is_file():
                child.unlink()
    shutil.rmtree(wheelhouse)
    (base_dir / "done").write_text(recipe.base_digest() + "\n")
    return rootfs


def _finish_rootfs(
    recipe: Recipe, rootfs: Path, out: Path, digest: str, progress: Progress
) -> None:
    """Install the agent, its unit and the digest; move the kernel and initramfs to ``out``."""
    progress("installing the agent, its systemd unit and the image digest")
    for target, source in sorted(recipe.files.items()):
        path = rootfs / target
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)
        path.chmod(0o644)
    for directory in (rootfs / AGENT_TARGET).parents:
        if directory == rootfs:
            break
        directory.chmod(0o755)
    wants = rootfs / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    for target in recipe.files:
        if target.endswith(".service"):
            link = wants / Path(target).name
            link.unlink(missing_ok=True)
            link.symlink_to(f"/{target}")
    # The serial console only carries boot messages to the host's log file.
    for unit in _MASKED_UNITS:
        mask = rootfs / "etc/systemd/system" / unit
        mask.unlink(missing_ok=True)
        mask.symlink_to("/dev/null")
    (rootfs / "etc/modprobe.d/sovereign.conf").write_text(
        "".join(f"blacklist {m}\ninstall {m} /bin/false\n" for m in _BLACKLISTED_MODULES)
    )
    (rootfs / DIGEST_FILE).parent.mkdir(parents=True, exist_ok=True)
    (rootfs / DIGEST_FILE).write_text(digest + "\n")
    (rootfs / "etc/hostname").write_text("enclave\n")
    # An empty machine-id: systemd makes one at first boot (each enclave its own).
    (rootfs / "etc/machine-id").write_text("")
    # x-systemd.growfs: the enclave's volume is larger than the image; systemd-growfs grows
    # the root file system to it at boot (online, ext4).
    (rootfs / "etc/fstab").write_text("/dev/vda / ext4 rw,errors=remount-ro,x-systemd.growfs 0 0\n")
    progress("moving the kernel and initramfs out of /boot (direct kernel boot)")
    kernels = sorted((rootfs / "boot").glob("vmlinuz-*"))
    initrds = sorted((rootfs / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise ImageBuildError(
            f"expected one kernel and one initramfs in /boot, found {kernels} and {initrds}"
        )
    shutil.move(kernels[0], out / KERNEL_NAME)
    shutil.move(initrds[0], out / INITRD_NAME)
    for stale in (rootfs / "boot").iterdir():
        if stale.is_file() or stale.is_symlink():
            stale.unlink()
    for name in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        (rootfs / name).unlink(missing_ok=True)
    (out / KERNEL_NAME).chmod(0o644)
    (out / INITRD_NAME).chmod(0o644)


def _tree_size(path: Path) -> int:
    """Bytes the tree at ``path`` uses (``du``'s apparent size)."""
    return int(_run(["du", "-s", "--block-size=1", str(path)]).split()[0])


def _make_image(rootfs: Path, out: Path, digest: str, progress: Progress) -> None:
    """``mkfs.ext4 -d`` the root file system into a raw image, then a compressed qcow2."""
    size_mib = _tree_size(rootfs) * 12 // 10 // 2**20 + FREE_MIB
    raw = out.parent / "rootfs.ext4"
    progress(f"mkfs.ext4 -d: {size_mib} MiB ext4 file system (no mount)")
    # A fixed UUID and hash seed from the recipe, and a fixed time: the same tree gives the
    # same file system.
    fs_uuid = f"{digest[:8]}-{digest[8:12]}-4{digest[13:16]}-8{digest[17:20]}-{digest[20:32]}"
    _run(
        [
            "mkfs.ext4",
            "-q",
            "-F",
            "-L",
            "sovereign",
            "-U",
            fs_uuid,
            "-E",
            f"hash_seed={fs_uuid}",
            "-d",
            str(rootfs),
            str(raw),
            f"{size_mib}M",
        ],
        env={**os.environ, "E2FSPROGS_FAKE_TIME": "1700000000"},
    )
    progress("qemu-img convert to qcow2 (zstd-compressed clusters)")
    _run(
        [
            "qemu-img",
            "convert",
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-c",
            "-o",
            "compression_type=zstd",
            str(raw),
            str(out / IMAGE_NAME),
        ]
    )
    raw.unlink()
    (out / IMAGE_NAME).chmod(0o644)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m enclaves.imagebuild``: build the default image and print its manifest."""
    del argv
    built = build()
    sys.stdout.write(json.dumps({"directory": str(built.directory), "sha256": built.sha256}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
