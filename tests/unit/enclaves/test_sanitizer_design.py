"""The sanitizer domain's design, against golden domain XML both ways, and its rules.

Golden files ``golden/sanitizer_<case>.xml``: ``design_sanitizer(spec).to_string()`` must equal
them and parsing them back must give the same text, so a change to the sanitizer domain shows
up as a reviewed diff.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import pytest

from enclaves import config
from enclaves.designer import AGENT_CHANNEL
from enclaves.imagestore import ImageFile, StoredImage
from enclaves.sanitizer import (
    SANITIZE_ARGUMENT,
    SanitizerSettings,
    SanitizerSpec,
    design_sanitizer,
    destroy_leftover,
    hand_over,
    sanitizer_uuid,
)
from enclaves.spec import PciAddress

GOLDEN = Path(__file__).parent / "golden"
IMAGE = "/var/lib/sovereign/pool/sovereign-image-" + "ab" * 32
CMDLINE = "root=/dev/vda rw console=ttyS0"


def gpu_with_audio_function() -> SanitizerSpec:
    """A GPU whose IOMMU group also holds an audio function, KVM on q35, transient disk."""
    return SanitizerSpec(
        name="sov-sanitize-0000-3b-00-0",
        functions=(PciAddress.parse("0000:3b:00.0"), PciAddress.parse("0000:3b:00.1")),
        disk=f"{IMAGE}.qcow2",
        kernel=f"{IMAGE}.vmlinuz",
        initrd=f"{IMAGE}.initrd",
        cmdline=CMDLINE,
        serial_log="/var/log/sovereign/sov-sanitize-0000-3b-00-0.log",
        layout=SanitizerSettings(
            domain_type="kvm",
            memory_mib=8192,
            vcpus=4,
            machine="q35",
            cpu_mode="host-passthrough",
            security_model="selinux",
        ),
    )


def tcg_without_gpu_readonly() -> SanitizerSpec:
    """No GPU (simulated device memory, as the QEMU tests run it), TCG, read-only disk."""
    return SanitizerSpec(
        name="sov-sanitize-0000-18-00-0",
        functions=(),
        disk=f"{IMAGE}.qcow2",
        kernel=f"{IMAGE}.vmlinuz",
        initrd=f"{IMAGE}.initrd",
        cmdline=CMDLINE,
        serial_log="/var/log/sovereign/sov-sanitize-0000-18-00-0.log",
        layout=SanitizerSettings(
            domain_type="qemu", memory_mib=2048, vcpus=2, cpu_mode="maximum", disk_mode="readonly"
        ),
    )


CASES: dict[str, Callable[[], SanitizerSpec]] = {
    "sanitizer_gpu_with_audio_function": gpu_with_audio_function,
    "sanitizer_tcg_without_gpu_readonly": tcg_without_gpu_readonly,
}


def golden(case: str) -> str:
    return (GOLDEN / f"{case}.xml").read_text(encoding="utf-8")


@pytest.mark.parametrize("case", sorted(CASES))
def test_design_matches_golden(case: str) -> None:
    assert design_sanitizer(CASES[case]()).to_string() == golden(case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_round_trips(case: str) -> None:
    text = golden(case)
    assert config.DomainConfig.from_string(text).to_string() == text


def test_only_the_gpu_group_the_image_and_the_channel() -> None:
    root = ElementTree.fromstring(design_sanitizer(gpu_with_audio_function()).to_string())  # noqa: S314
    devices = root.find("devices")
    assert devices is not None
    assert sorted({d.tag for d in devices}) == [
        "channel",
        "console",
        "controller",
        "disk",
        "hostdev",
        "memballoon",
        "serial",
    ]
    assert root.find("devices/interface") is None, "no NIC"
    assert root.find("devices/tpm") is None
    assert root.find("devices/graphics") is None
    assert root.find("metadata") is None, "a sanitizer domain is not an enclave"
    disks = root.findall("devices/disk")
    assert len(disks) == 1, "one disk: the sanitizer image, never a tenant's"
    assert disks[0].find("transient[@shareBacking='yes']") is not None
    assert disks[0].find("encryption") is None
    source = disks[0].find("source")
    assert source is not None
    assert source.get("file") == f"{IMAGE}.qcow2"
    addresses = [
        tuple(int(a.get(k, ""), 16) for k in ("domain", "bus", "slot", "function"))
        for a in root.findall("devices/hostdev[@managed='yes']/source/address")
    ]
    assert addresses == [(0, 0x3B, 0, 0), (0, 0x3B, 0, 1)]
    channels = [t.get("name") for t in root.findall("devices/channel/target")]
    assert channels == [AGENT_CHANNEL]
    assert root.findtext("os/cmdline") == f"{CMDLINE} {SANITIZE_ARGUMENT}"
    assert [root.findtext(a) for a in ("on_poweroff", "on_reboot", "on_crash")] == [
        "destroy",
        "destroy",
        "destroy",
    ]
    assert root.find("devices/memballoon[@model='none']") is not None
    assert root.find("devices/controller[@type='usb'][@model='none']") is not None


def test_readonly_disk_is_not_transient() -> None:
    root = ElementTree.fromstring(design_sanitizer(tcg_without_gpu_readonly()).to_string())  # noqa: S314
    disk = root.find("devices/disk")
    assert disk is not None
    assert disk.find("readonly") is not None
    assert disk.find("transient") is None
    assert root.find("devices/hostdev") is None


def test_uuid_is_stable_per_name() -> None:
    spec = gpu_with_audio_function()
    assert design_sanitizer(spec).uuid == sanitizer_uuid(spec.name)
    other = "sov-sanitize-0000-3b-00-1"
    assert sanitizer_uuid(spec.name) != sanitizer_uuid(other)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "sov-0123456789abcdef"}, "sov-sanitize-"),
        ({"name": "sov-sanitize-../x"}, "sov-sanitize-"),
        (
            {"functions": (PciAddress.parse("0000:3b:00.0"), PciAddress.parse("0000:3b:00.0"))},
            "twice",
        ),
        ({"disk": "relative/image.qcow2"}, "absolute"),
        ({"kernel": "/var/lib/../../etc/passwd"}, "absolute"),
        ({"cmdline": CMDLINE + " sovereign.mode=job"}, "command line"),
        ({"cmdline": CMDLINE + " <evil/>"}, "command line"),
    ],
)
def test_spec_refuses(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(gpu_with_audio_function(), **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"domain_type": "xen"}, "domain type"),
        ({"memory_mib": 16}, "memory_mib"),
        ({"cpu_mode": "host-model"}, "cpu mode"),
        ({"security_model": "none"}, "security model"),
        ({"disk_mode": "writable"}, "disk mode"),
    ],
)
def test_layout_refuses(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(gpu_with_audio_function().layout, **change)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("needle", "replacement", "message"),
    [
        ('<transient shareBacking="yes" />', "<transient />", "shareBacking"),
        ('<transient shareBacking="yes" />', '<transient shareBacking="no" />', "shareBacking"),
        ('<transient shareBacking="yes" />', "<shareable />", "unsupported child"),
    ],
)
def test_disk_parse_refuses_what_it_does_not_model(
    needle: str, replacement: str, message: str
) -> None:
    text = golden("sanitizer_gpu_with_audio_function").replace(needle, replacement)
    with pytest.raises(ValueError, match=message):
        config.DomainConfig.from_string(text)


class NoHost:
    """Any use of the host fails the test: these refusals come before the host is touched."""

    def __getattr__(self, name: str) -> object:
        raise AssertionError(f"the host was touched ({name})")


def stored_image(tmp_path: Path, *, boot_files: bool = True) -> StoredImage:
    entry = ImageFile(path=tmp_path / "x", sha256="0" * 64, size=1)
    return StoredImage(
        checksum="sha256:" + "ab" * 32,
        disk=entry,
        kernel=entry if boot_files else None,
        initrd=entry if boot_files else None,
        cmdline=CMDLINE,
        recipe_digest="",
    )


@pytest.mark.parametrize(
    ("functions", "settings", "timeout_s", "boot_files", "message"),
    [
        ((), SanitizerSettings(), 60.0, True, "simulated memory only"),
        ((PciAddress.parse("0000:3b:00.0"),), SanitizerSettings(), 0.0, True, "timeout_s"),
        ((PciAddress.parse("0000:3b:00.0"),), SanitizerSettings(), 60.0, False, "kernel"),
    ],
)
def test_hand_over_refuses_before_touching_the_host(
    tmp_path: Path,
    functions: tuple[PciAddress, ...],
    settings: SanitizerSettings,
    timeout_s: float,
    boot_files: bool,
    message: str,
) -> None:
    with pytest.raises(ValueError, match=message):
        hand_over(
            NoHost(),  # type: ignore[arg-type]
            name="sov-sanitize-0000-3b-00-0",
            functions=functions,
            image=stored_image(tmp_path, boot_files=boot_files),
            nonce=b"\0" * 32,
            canary_nonce=None,
            settings=settings,
            timeout_s=timeout_s,
        )


def test_an_enclave_domain_is_never_taken_for_a_leftover_sanitizer() -> None:
    with pytest.raises(ValueError, match="sov-sanitize-"):
        destroy_leftover(NoHost(), "sov-0123456789abcdef")  # type: ignore[arg-type]
