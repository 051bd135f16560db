"""The image recipe's digest, the build cache lookup and the content-addressed image store.

The real build (mmdebstrap, mkfs.ext4, qemu-img) runs in ``tests/e2e/test_workload_guest.py``;
here the recipe's hashing and the store's checks, with qcow2 headers written by hand.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path

import pytest

from enclaves import imagebuild
from enclaves.imagestore import (
    ImageStore,
    ImageStoreError,
    check_qcow2,
    parse_checksum,
)


def qcow2(
    path: Path, *, virtual_size: int = 1 << 30, backing: bool = False, external: bool = False
) -> Path:
    """A qcow2 version 3 header (QEMU docs/interop/qcow2.txt) and some payload bytes."""
    header = bytearray(104)
    struct.pack_into(">4sIQ", header, 0, b"QFI\xfb", 3, 512 if backing else 0)
    struct.pack_into(">Q", header, 24, virtual_size)
    struct.pack_into(">Q", header, 72, 1 << 2 if external else 0)
    path.write_bytes(bytes(header) + b"payload" * 1000)
    return path


def agent_tree(tmp_path: Path) -> tuple[Path, Path]:
    agent = tmp_path / "agent"
    agent.mkdir()
    (agent / "__init__.py").write_text("")
    (agent / "server.py").write_text("SERVE = 1\n")
    unit = tmp_path / "sovereign-agent.service"
    unit.write_text("[Service]\nExecStart=/bin/true\n")
    return agent, unit


# -- the recipe -------------------------------------------------------------------------------


def test_the_default_recipe_installs_the_agent_package_and_its_unit():
    files = imagebuild.default_recipe().files
    assert "opt/sovereign-agent/sovereign_agent/__init__.py" in files
    assert "opt/sovereign-agent/sovereign_agent/protocol.py" in files
    assert "etc/systemd/system/sovereign-agent.service" in files
    unit = Path(files["etc/systemd/system/sovereign-agent.service"]).read_text()
    assert "-m sovereign_agent --device /dev/virtio-ports/org.sovereign.agent.0" in unit
    assert "--job-user sovereign-job" in unit
    assert "--image-digest-file /etc/sovereign/image-digest" in unit


def test_the_digest_covers_the_agent_bytes_but_the_base_does_not(tmp_path: Path):
    agent, unit = agent_tree(tmp_path)
    recipe = imagebuild.Recipe(files=imagebuild.agent_files(agent, unit))
    digest, base = recipe.digest(), recipe.base_digest()
    assert digest == imagebuild.Recipe(files=imagebuild.agent_files(agent, unit)).digest()
    (agent / "server.py").write_text("SERVE = 2\n")
    changed = imagebuild.Recipe(files=imagebuild.agent_files(agent, unit))
    assert changed.digest() != digest
    assert changed.base_digest() == base, "an agent change must not rebuild Debian and PyTorch"


@pytest.mark.parametrize(
    "change",
    [
        {"packages": ("python3",)},
        {"wheels": ("torch==2.12.0", "numpy==2.4.6")},
        {"suite": "trixie"},
        {"pip_args": ("--index-url", "https://download.pytorch.org/whl/cu128")},
    ],
)
def test_a_package_or_pin_change_changes_both_digests(tmp_path: Path, change: dict[str, object]):
    agent, unit = agent_tree(tmp_path)
    recipe = imagebuild.Recipe(files=imagebuild.agent_files(agent, unit))
    other = dataclasses.replace(recipe, **change)  # type: ignore[arg-type]
    assert other.digest() != recipe.digest()
    assert other.base_digest() != recipe.base_digest()


def test_the_cuda_variant_is_another_recipe_with_the_driver_and_the_cuda_wheels():
    cuda = imagebuild.cuda_recipe("cu128")
    assert "nvidia-driver" in cuda.packages
    assert "non-free" in cuda.components
    assert "https://download.pytorch.org/whl/cu128" in cuda.pip_args
    assert cuda.digest() != imagebuild.default_recipe().digest()


def test_both_images_carry_nvml_and_the_scrub_program():
    # The scrub program reads the GPU's identity and state through nvidia-ml-py (pynvml).
    for recipe in (imagebuild.default_recipe(), imagebuild.cuda_recipe("cu128")):
        assert any(wheel.startswith("nvidia-ml-py==") for wheel in recipe.wheels)
        assert f"{imagebuild.AGENT_TARGET}/scrub.py" in recipe.files


def test_the_cuda_tag_is_checked_before_it_reaches_a_url():
    with pytest.raises(ValueError, match="cu128"):
        imagebuild.cuda_recipe("cu128/../../evil")


def test_agent_files_refuses_an_empty_agent_directory(tmp_path: Path):
    with pytest.raises(FileNotFoundError):
        imagebuild.agent_files(tmp_path, tmp_path / "unit")


def test_a_cache_directory_without_a_complete_build_is_not_a_hit(tmp_path: Path):
    agent, unit = agent_tree(tmp_path)
    recipe = imagebuild.Recipe(files=imagebuild.agent_files(agent, unit))
    cache = tmp_path / "cache"
    directory = cache / recipe.digest()
    directory.mkdir(parents=True)
    assert imagebuild.cached(recipe, cache) is None
    for name in (imagebuild.IMAGE_NAME, imagebuild.KERNEL_NAME, imagebuild.INITRD_NAME):
        (directory / name).write_bytes(b"x")
    assert imagebuild.cached(recipe, cache) is None, "no manifest: an interrupted build"
    (directory / imagebuild.MANIFEST_NAME).write_text(
        json.dumps(
            {
                "recipe_digest": recipe.digest(),
                "name": recipe.name,
                "cmdline": recipe.cmdline,
                "sha256": "a" * 64,
                "kernel_sha256": "b" * 64,
                "initrd_sha256": "c" * 64,
                "size": 1,
            }
        )
    )
    found = imagebuild.cached(recipe, cache)
    assert found is not None
    assert found.recipe_digest == recipe.digest()
    assert found.image == directory / imagebuild.IMAGE_NAME


def test_the_cache_root_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv(imagebuild.CACHE_ENV, str(tmp_path))
    assert imagebuild.cache_root() == tmp_path
    monkeypatch.delenv(imagebuild.CACHE_ENV)
    assert imagebuild.cache_root() == imagebuild.DEFAULT_CACHE


# -- the image store --------------------------------------------------------------------------


def test_an_imported_image_is_found_by_its_checksum_and_verifies(tmp_path: Path):
    disk = qcow2(tmp_path / "disk.qcow2")
    kernel, initrd = tmp_path / "vmlinuz", tmp_path / "initrd"
    kernel.write_bytes(b"kernel")
    initrd.write_bytes(b"initrd")
    store = ImageStore(tmp_path / "store")
    stored = store.add(
        disk, kernel=kernel, initrd=initrd, cmdline="root=/dev/vda", recipe_digest="r" * 64
    )
    digest = parse_checksum(stored.checksum)
    manifest = (tmp_path / "store" / f"{digest}.json").read_bytes()
    assert hashlib.sha256(manifest).hexdigest() == digest, "the checksum is the manifest's hash"
    assert stored.disk.sha256 == hashlib.sha256(disk.read_bytes()).hexdigest()
    assert stored.disk.path == tmp_path / "store" / f"{digest}.qcow2"
    assert stored.kernel is not None
    assert stored.kernel.path.read_bytes() == b"kernel"
    assert stored.cmdline == "root=/dev/vda"
    assert store.find(stored.checksum) == stored
    store.verify(stored)
    assert (
        store.add(
            disk, kernel=kernel, initrd=initrd, cmdline="root=/dev/vda", recipe_digest="r" * 64
        )
        == stored
    ), "importing again is idempotent"


def test_a_tampered_file_or_manifest_is_refused(tmp_path: Path):
    store = ImageStore(tmp_path / "store")
    stored = store.add(qcow2(tmp_path / "disk.qcow2"))
    with stored.disk.path.open("r+b") as handle:
        handle.seek(200)
        handle.write(b"X")
    with pytest.raises(ImageStoreError, match="does not match the image's manifest"):
        store.verify(stored)
    manifest = tmp_path / "store" / f"{stored.digest}.json"
    manifest.write_bytes(manifest.read_bytes().replace(b'"cmdline":""', b'"cmdline":"init=/x"'))
    with pytest.raises(ImageStoreError, match="does not match its checksum"):
        store.find(stored.checksum)


def test_an_unknown_checksum_is_absent_and_a_malformed_one_refused(tmp_path: Path):
    store = ImageStore(tmp_path)
    assert store.find("sha256:" + "0" * 64) is None
    with pytest.raises(ImageStoreError, match="not in the image store"):
        store.get("sha256:" + "0" * 64)
    with pytest.raises(ValueError, match="sha256"):
        store.find("md5:abc")
    with pytest.raises(ValueError, match="sha256"):
        store.find("sha256:../../etc/passwd")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"backing": True}, "backing file"),
        ({"external": True}, "external file"),
    ],
)
def test_a_qcow2_that_reads_another_file_is_refused(
    tmp_path: Path, options: dict[str, bool], message: str
):
    disk = qcow2(tmp_path / "disk.qcow2", **options)
    with pytest.raises(ImageStoreError, match=message):
        ImageStore(tmp_path / "store").add(disk)
    assert not (tmp_path / "store").exists(), "refused before anything is stored"


def test_only_qcow2_is_accepted_and_its_virtual_size_is_read(tmp_path: Path):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(b"\0" * 4096)
    with pytest.raises(ImageStoreError, match="not a qcow2"):
        check_qcow2(raw)
    assert check_qcow2(qcow2(tmp_path / "d.qcow2", virtual_size=3 << 30)) == 3 << 30


def test_kernel_and_initrd_go_together(tmp_path: Path):
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"k")
    with pytest.raises(ValueError, match="both"):
        ImageStore(tmp_path / "s").add(qcow2(tmp_path / "d.qcow2"), kernel=kernel)
