"""The designer's isolation decisions, against golden domain XML both ways.

Golden files live in ``golden/<case>.xml``: ``design(spec).to_string()`` must equal them, and
parsing them back through :class:`enclaves.config.DomainConfig` must give the same text. A
change to the designed XML therefore shows up as a reviewed diff of a golden file.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar
from xml.etree import ElementTree

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclaves import config
from enclaves.designer import (
    AGENT_CHANNEL,
    IsolationError,
    design,
    isolated_network_name,
    isolated_network_xml,
)
from enclaves.inventory import GpuDevice
from enclaves.spec import (
    BootSpec,
    DirectKernel,
    DiskSpec,
    EnclaveSpec,
    ImageBoot,
    NetworkPolicy,
    PciAddress,
    TpmSpec,
)

GOLDEN = Path(__file__).parent / "golden"

CLASSIFIED_UUID = uuid.UUID("5ec7e700-0000-4000-8000-000000000001")
CIVILIAN_UUID = uuid.UUID("c1f11a00-0000-4000-8000-000000000002")
AUDIO_UUID = uuid.UUID("c1f11a00-0000-4000-8000-000000000003")
DISK_SECRET = uuid.UUID("d15c0000-0000-4000-8000-00000000000a")
TPM_SECRET = uuid.UUID("7b300000-0000-4000-8000-00000000000b")
#: Where the bundled civilian host's GPU shares IOMMU group 38 with an audio function.
SHARED_GROUP_GPU = "0000:3b:00.0"
SHARED_GROUP_AUDIO = "0000:3b:00.1"


def pci(text: str) -> PciAddress:
    return PciAddress.parse(text)


def gpu(text: str, *others: str) -> GpuDevice:
    """The GPU at ``text`` as the inventory reports it, its IOMMU group holding ``others`` too."""
    return GpuDevice(
        address=text,
        model="H100-SXM5-80GB",
        numa_node=0,
        iommu_group=pci(text).bus,
        group_members=(text, *others),
    )


def classified_two_gpus() -> EnclaveSpec:
    """SECRET enclave, 2 GPUs on NUMA 0, isolated network, direct kernel boot, TCG."""
    return EnclaveSpec(
        name="secret-analysis-1",
        uuid=CLASSIFIED_UUID,
        vcpus=8,
        memory_mib=16384,
        gpus=(gpu("0000:18:00.0"), gpu("0000:2a:00.0")),
        disk=DiskSpec("/var/lib/sovereign/secret-analysis-1.qcow2", luks_secret_uuid=DISK_SECRET),
        tpm=TpmSpec(secret_uuid=TPM_SECRET),
        network=NetworkPolicy.ISOLATED,
        network_name=isolated_network_name(CLASSIFIED_UUID),
        label="SECRET//NATO",
        classified=True,
        domain_type="qemu",
        boot=DirectKernel(
            kernel="/var/lib/sovereign/guest/vmlinuz",
            initrd="/var/lib/sovereign/guest/initrd.img",
            cmdline="console=ttyS0 panic=-1",
        ),
        serial_log="/var/log/sovereign/secret-analysis-1.log",
    )


def civilian_bridge() -> EnclaveSpec:
    """Civilian enclave on the operator's network, booting its own image, KVM."""
    return EnclaveSpec(
        name="uni-research-7",
        uuid=CIVILIAN_UUID,
        vcpus=16,
        memory_mib=65536,
        gpus=(gpu("0000:19:00.0"),),
        disk=DiskSpec("/var/lib/sovereign/uni-research-7.qcow2", luks_secret_uuid=DISK_SECRET),
        tpm=TpmSpec(secret_uuid=None),
        network=NetworkPolicy.CIVILIAN_BRIDGE,
        network_name="civilian-net",
        label="UNCLASSIFIED",
        classified=False,
        domain_type="kvm",
        boot=ImageBoot(),
        serial_log="/var/log/sovereign/uni-research-7.log",
    )


def civilian_shared_iommu_group() -> EnclaveSpec:
    """Civilian GPU whose IOMMU group also holds an audio function: both are passed through."""
    return EnclaveSpec(
        name="sme-vision-3",
        uuid=AUDIO_UUID,
        vcpus=4,
        memory_mib=8192,
        gpus=(gpu(SHARED_GROUP_GPU, SHARED_GROUP_AUDIO),),
        disk=DiskSpec(
            "/var/lib/sovereign/sme-vision-3.img", format="raw", luks_secret_uuid=DISK_SECRET
        ),
        tpm=TpmSpec(secret_uuid=TPM_SECRET),
        network=NetworkPolicy.NONE,
        network_name=None,
        label="UNCLASSIFIED",
        classified=False,
        domain_type="qemu",
        boot=ImageBoot(),
        serial_log="/var/log/sovereign/sme-vision-3.log",
    )


#: Golden cases: file stem -> spec. The contract test defines each of them on libvirt.
CASES: dict[str, Callable[[], EnclaveSpec]] = {
    "classified_two_gpus_isolated_direct_kernel": classified_two_gpus,
    "civilian_bridge_image_boot": civilian_bridge,
    "civilian_gpu_with_shared_iommu_group": civilian_shared_iommu_group,
}


def golden(case: str) -> str:
    return (GOLDEN / f"{case}.xml").read_text(encoding="utf-8")


D = TypeVar("D", bound=config.DeviceConfig)


def devices(domain: config.DomainConfig, kind: type[D]) -> list[D]:
    return [device for device in domain.devices if isinstance(device, kind)]


# --- golden XML, both ways -------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(CASES))
def test_design_matches_golden(case: str) -> None:
    assert design(CASES[case]()).to_string() == golden(case)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_round_trips(case: str) -> None:
    text = golden(case)
    parsed = config.DomainConfig.from_string(text)
    assert parsed.to_string() == text
    assert parsed == design(CASES[case]())


def test_shared_iommu_group_gives_one_hostdev_per_function() -> None:
    domain = design(civilian_shared_iommu_group())
    hostdevs = devices(domain, config.HostdevPciConfig)
    assert [h.address for h in hostdevs] == [pci(SHARED_GROUP_GPU), pci(SHARED_GROUP_AUDIO)]
    assert all(h.managed and h.driver == "vfio" for h in hostdevs)


def test_machine_type_and_security_model_are_parameters() -> None:
    domain = design(classified_two_gpus(), security_model="selinux", machine="q35")
    assert domain.os.machine == "q35"
    assert domain.seclabels == (config.SeclabelConfig("dynamic", "selinux", relabel=True),)


def test_civilian_may_be_given_graphics_and_usb() -> None:
    spec = dataclasses.replace(civilian_bridge(), allow_graphics=True, allow_usb=True)
    domain = design(spec)
    assert devices(domain, config.GraphicsVncConfig) == [config.GraphicsVncConfig("127.0.0.1")]
    assert devices(domain, config.VideoConfig) == [config.VideoConfig("virtio")]
    assert config.ControllerConfig("usb", "qemu-xhci") in domain.devices
    assert config.DomainConfig.from_string(domain.to_string()) == domain


def test_isolated_network_has_no_forward_and_no_ip() -> None:
    network = ElementTree.fromstring(isolated_network_xml("sov-iso-abc"))  # noqa: S314
    assert network.tag == "network"
    assert network.findtext("name") == "sov-iso-abc"
    assert network.find("forward") is None
    assert network.find("ip") is None
    assert isolated_network_name(CLASSIFIED_UUID) == "sov-iso-5ec7e7000000"


# --- refusals --------------------------------------------------------------------------------


def tampered(spec: EnclaveSpec, **fields: object) -> EnclaveSpec:
    """A spec changed behind its validation, to show the designer checks again by itself."""
    for name, value in fields.items():
        object.__setattr__(spec, name, value)
    return spec


def test_refuses_disk_without_luks_secret() -> None:
    spec = dataclasses.replace(
        classified_two_gpus(), disk=DiskSpec("/var/lib/sovereign/plain.qcow2")
    )
    with pytest.raises(IsolationError, match=r"plain\.qcow2 has no LUKS secret"):
        design(spec)


def test_refuses_classified_vtpm_without_encryption() -> None:
    spec = dataclasses.replace(classified_two_gpus(), tpm=TpmSpec(secret_uuid=None))
    with pytest.raises(IsolationError, match="vTPM state must be encrypted"):
        design(spec)


def test_civilian_vtpm_without_secret_is_present_but_unencrypted() -> None:
    tpms = devices(design(civilian_bridge()), config.TpmConfig)
    assert tpms == [config.TpmConfig("tpm-crb", "2.0", encryption_secret=None)]


def test_refuses_function_in_two_gpu_groups() -> None:
    spec = dataclasses.replace(
        civilian_shared_iommu_group(),
        gpus=(gpu("0000:3b:00.0", "0000:3b:00.1"), gpu("0000:3b:00.1", "0000:3b:00.0")),
    )
    with pytest.raises(IsolationError, match=r"0000:3b:00\.1 is in the IOMMU group of both"):
        design(spec)


def test_refuses_gpu_outside_its_group_even_past_spec_validation() -> None:
    device = gpu("0000:18:00.0")
    spec = dataclasses.replace(classified_two_gpus(), gpus=(device,))
    object.__setattr__(device, "group_members", ("0000:2a:00.0",))
    with pytest.raises(IsolationError, match="is not in the IOMMU group given for it"):
        design(spec)


def test_refuses_isolated_network_of_another_enclave() -> None:
    spec = dataclasses.replace(classified_two_gpus(), network_name="sov-iso-shared")
    with pytest.raises(IsolationError, match="isolated network is per enclave"):
        design(spec)


def test_refuses_classified_on_civilian_network_even_past_spec_validation() -> None:
    spec = tampered(
        classified_two_gpus(), network=NetworkPolicy.CIVILIAN_BRIDGE, network_name="civilian"
    )
    with pytest.raises(IsolationError, match="never the civilian network 'civilian'"):
        design(spec)


def test_refuses_classified_graphics_even_past_spec_validation() -> None:
    spec = tampered(classified_two_gpus(), allow_graphics=True)
    with pytest.raises(IsolationError, match="no graphics console and no USB bus"):
        design(spec)


def test_refuses_unknown_security_model() -> None:
    with pytest.raises(IsolationError, match="security model must be one of"):
        design(classified_two_gpus(), security_model="none")


# --- config parsing is strict ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("needle", "replacement", "message"),
    [
        ('<memballoon model="none" />', '<filesystem type="mount" />', "unsupported device"),
        ('<memballoon model="none" />', '<channel type="pty" />', "<channel type='unix'>"),
        ('<source mode="bind" />', '<source mode="connect" />', "source mode='bind'"),
        ('<source mode="bind" />', '<source mode="bind" path="/x" />', "source mode='bind'"),
        ('<target type="virtio" name', '<target type="guestfwd" name', "type='virtio'"),
        ('<memballoon model="none" />', '<graphics type="spice" />', "graphics type='vnc'"),
        ("<devices>", "<devices><emulator>/usr/bin/qemu</emulator>", "unsupported device"),
        ("<features>", "<features><hyperv />", "unsupported child <hyperv>"),
        ('<encryption format="luks">', '<encryption format="qcow">', "format='luks'"),
        ("</domain>", '<clock offset="utc" /></domain>', "unsupported child <clock>"),
        ("</domain>", "", "not well-formed XML"),
    ],
)
def test_parse_refuses_what_it_does_not_model(needle: str, replacement: str, message: str) -> None:
    text = golden("classified_two_gpus_isolated_direct_kernel")
    assert needle in text
    with pytest.raises(ValueError, match=message):
        config.DomainConfig.from_string(text.replace(needle, replacement))


def test_parse_reads_memory_in_kib() -> None:
    element = ElementTree.fromstring("<memory unit='KiB'>1048576</memory>")  # noqa: S314
    assert config.MemoryConfig.parse(element) == config.MemoryConfig(mib=1024)
    with pytest.raises(ValueError, match="unsupported <memory>"):
        config.MemoryConfig.parse(ElementTree.fromstring("<memory unit='GiB'>1</memory>"))  # noqa: S314


# --- properties ------------------------------------------------------------------------------

#: Simulated IOMMU groups of one to three functions on distinct buses.
_GROUPS = st.lists(
    st.tuples(st.integers(0x01, 0xFE), st.integers(1, 3)),
    max_size=4,
    unique_by=lambda group: group[0],
)


@st.composite
def specs(draw: st.DrawFn) -> EnclaveSpec:
    enclave_uuid = draw(st.uuids())
    classified = draw(st.booleans())
    policies = [NetworkPolicy.NONE, NetworkPolicy.ISOLATED]
    if not classified:
        policies.append(NetworkPolicy.CIVILIAN_BRIDGE)
    network = draw(st.sampled_from(policies))
    network_name = {
        NetworkPolicy.NONE: None,
        NetworkPolicy.ISOLATED: isolated_network_name(enclave_uuid),
        NetworkPolicy.CIVILIAN_BRIDGE: "civilian-net",
    }[network]
    gpus = tuple(
        gpu(*(str(PciAddress(0, bus, 0, function)) for function in range(functions)))
        for bus, functions in draw(_GROUPS)
    )
    boots: list[BootSpec] = [ImageBoot(), DirectKernel("/k", "/i", "console=ttyS0")]
    boot = draw(st.sampled_from(boots))
    return EnclaveSpec(
        name=draw(st.from_regex(r"[a-z0-9][a-z0-9._-]{0,20}", fullmatch=True)),
        uuid=enclave_uuid,
        vcpus=draw(st.integers(1, 256)),
        memory_mib=draw(st.integers(1, 2**21)),
        gpus=gpus,
        disk=DiskSpec("/var/lib/sovereign/d.qcow2", luks_secret_uuid=draw(st.uuids())),
        tpm=TpmSpec(secret_uuid=draw(st.uuids() if classified else st.none() | st.uuids())),
        network=network,
        network_name=network_name,
        label=draw(st.sampled_from(["UNCLASSIFIED", "SECRET//NATO", "CONFIDENCIAL"])),
        classified=classified,
        domain_type=draw(st.sampled_from(["kvm", "qemu"])),
        boot=boot,
        serial_log="/var/log/sovereign/s.log",
    )


@settings(max_examples=200, deadline=None)
@given(spec=specs(), security_model=st.sampled_from(["dac", "selinux"]))
def test_no_designed_domain_leaks(spec: EnclaveSpec, security_model: str) -> None:
    text = design(spec, security_model=security_model).to_string()
    root = ElementTree.fromstring(text)  # noqa: S314
    for forbidden in ("graphics", "video", "filesystem", "redirdev", "smartcard"):
        assert root.find(f"devices/{forbidden}") is None, forbidden
    # One channel only: Sovereign's agent (never the QEMU guest agent or a spice channel).
    channels = root.findall("devices/channel")
    assert [(c.get("type"), c.find("target").get("name")) for c in channels] == [  # type: ignore[union-attr]
        ("unix", AGENT_CHANNEL)
    ]
    assert [c.get("model") for c in root.findall("devices/controller[@type='usb']")] == ["none"]
    nics = root.findall("devices/interface")
    assert len(nics) == (0 if spec.network is NetworkPolicy.NONE else 1)
    assert [b.get("model") for b in root.findall("devices/memballoon")] == ["none"]
    seclabels = root.findall("seclabel")
    assert [(s.get("type"), s.get("model")) for s in seclabels] == [("dynamic", security_model)]
    assert root.findtext("on_crash") == "destroy"
    assert [p.get("enabled") for p in root.findall("pm/suspend-to-disk")] == ["no"]
    assert all(d.find("encryption[@format='luks']") is not None for d in root.iter("disk"))
    assert len(root.findall("devices/tpm")) == 1
    passed = [
        PciAddress(*(int(a.get(k, ""), 16) for k in ("domain", "bus", "slot", "function")))
        for a in root.findall("devices/hostdev/source/address")
    ]
    expected = [pci(member) for g in spec.gpus for member in g.group_members]
    assert passed == expected
    assert len(set(passed)) == len(passed)
    assert config.DomainConfig.from_string(text).to_string() == text
