"""EnclaveSpec and its parts: structural validation, each refusal with a clear message."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import pytest

from enclaves.inventory import GpuDevice
from enclaves.spec import (
    DirectKernel,
    DiskSpec,
    EnclaveSpec,
    ImageBoot,
    NetworkPolicy,
    PciAddress,
    TpmSpec,
)

ENCLAVE_UUID = uuid.UUID("11111111-2222-4333-8444-555555555555")


def device(address: str, members: tuple[str, ...]) -> GpuDevice:
    """A GPU as the inventory reports it, with the IOMMU group members given."""
    return GpuDevice(
        address=address, model="H100-SXM5-80GB", numa_node=0, iommu_group=24, group_members=members
    )


def gpu(text: str, *others: str) -> GpuDevice:
    return device(text, (text, *others))


def make_spec(**overrides: Any) -> EnclaveSpec:
    fields: dict[str, Any] = {
        "name": "enclave-1",
        "uuid": ENCLAVE_UUID,
        "vcpus": 4,
        "memory_mib": 4096,
        "gpus": (gpu("0000:18:00.0"),),
        "disk": DiskSpec("/var/lib/sovereign/enclave-1.qcow2", luks_secret_uuid=uuid.uuid4()),
        "tpm": TpmSpec(uuid.uuid4()),
        "network": NetworkPolicy.NONE,
        "network_name": None,
        "label": "SECRET//NATO",
        "classified": True,
        "domain_type": "qemu",
        "boot": ImageBoot(),
        "serial_log": "/var/log/sovereign/enclave-1.log",
    }
    fields.update(overrides)
    return EnclaveSpec(**fields)


class TestPciAddress:
    def test_parse_and_str_round_trip(self) -> None:
        address = PciAddress.parse("0000:DB:1f.7")
        assert address == PciAddress(0, 0xDB, 0x1F, 7)
        assert str(address) == "0000:db:1f.7"
        assert PciAddress.parse(str(address)) == address

    @pytest.mark.parametrize(
        "text", ["", "0000:18:00", "18:00.0", "0000:18:00.8", "0000:1g:00.0", " 0000:18:00.0"]
    )
    def test_parse_refuses_malformed(self, text: str) -> None:
        with pytest.raises(ValueError, match="not a PCI address"):
            PciAddress.parse(text)

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            ((0x10000, 0, 0, 0), "domain"),
            ((0, 0x100, 0, 0), "bus"),
            ((0, 0, 0x20, 0), "slot"),
            ((0, 0, 0, 8), "function"),
            ((0, -1, 0, 0), "bus"),
            ((0, True, 0, 0), "bus"),
        ],
    )
    def test_refuses_out_of_range(self, fields: tuple[int, int, int, int], message: str) -> None:
        with pytest.raises(ValueError, match=f"PCI {message} must be an integer"):
            PciAddress(*fields)


class TestGpus:
    """The spec checks the GPUs it is given: addresses, and each one's IOMMU group."""

    def test_gpu_must_be_in_its_group(self) -> None:
        with pytest.raises(ValueError, match="not a member of the IOMMU group"):
            make_spec(gpus=(device("0000:18:00.0", ("0000:2a:00.0",)),))

    def test_group_must_not_be_empty(self) -> None:
        with pytest.raises(ValueError, match="must not be empty"):
            make_spec(gpus=(device("0000:18:00.0", ()),))

    def test_group_members_listed_once(self) -> None:
        with pytest.raises(ValueError, match="listed twice"):
            make_spec(gpus=(device("0000:18:00.0", ("0000:18:00.0", "0000:18:00.0")),))

    @pytest.mark.parametrize(
        ("address", "members"),
        [("18:00.0", ("18:00.0",)), ("0000:18:00.0", ("0000:18:00.0", "0000:18:00.9"))],
    )
    def test_addresses_must_be_pci_addresses(self, address: str, members: tuple[str, ...]) -> None:
        with pytest.raises(ValueError, match="not a PCI address"):
            make_spec(gpus=(device(address, members),))

    def test_addresses_compare_parsed(self) -> None:
        with pytest.raises(ValueError, match="listed twice"):
            make_spec(gpus=(device("0000:3b:00.0", ("0000:3b:00.0", "0000:3B:00.0")),))


class TestParts:
    @pytest.mark.parametrize("path", ["", "disk.qcow2", "/var/../etc/shadow", "/a//b", "/a/"])
    def test_disk_path_must_be_clean_and_absolute(self, path: str) -> None:
        with pytest.raises(ValueError, match="disk path must be a"):
            DiskSpec(path)

    def test_disk_format_is_checked(self) -> None:
        with pytest.raises(ValueError, match="disk format must be one of"):
            DiskSpec("/d.vmdk", format="vmdk")  # type: ignore[arg-type]

    def test_direct_kernel_paths_and_cmdline(self) -> None:
        with pytest.raises(ValueError, match="kernel path"):
            DirectKernel("vmlinuz", "/initrd")
        with pytest.raises(ValueError, match="initrd path"):
            DirectKernel("/vmlinuz", "initrd")
        with pytest.raises(ValueError, match="control characters"):
            DirectKernel("/vmlinuz", "/initrd", "console=ttyS0\ninit=/bin/sh")


class TestEnclaveSpec:
    def test_valid_spec(self) -> None:
        spec = make_spec()
        assert spec.name == "enclave-1"
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.vcpus = 8  # type: ignore[misc]

    @pytest.mark.parametrize("name", ["", "-x", ".hidden", "a b", "a/b", "x" * 64, "é"])
    def test_name_charset(self, name: str) -> None:
        with pytest.raises(ValueError, match="enclave name must be"):
            make_spec(name=name)

    @pytest.mark.parametrize(
        ("field", "value"),
        [("vcpus", 0), ("vcpus", -1), ("vcpus", True), ("memory_mib", 0), ("memory_mib", 1.5)],
    )
    def test_sizes_are_positive_integers(self, field: str, value: object) -> None:
        with pytest.raises(ValueError, match=f"{field} must be a positive integer"):
            make_spec(**{field: value})

    def test_uuid_type(self) -> None:
        with pytest.raises(TypeError, match=r"uuid must be a uuid\.UUID"):
            make_spec(uuid=str(ENCLAVE_UUID))

    @pytest.mark.parametrize("label", ["", "SECRET\nNATO", "x" * 129])
    def test_label(self, label: str) -> None:
        with pytest.raises(ValueError, match="label must be"):
            make_spec(label=label)

    def test_domain_type(self) -> None:
        with pytest.raises(ValueError, match="domain_type must be one of"):
            make_spec(domain_type="xen")

    def test_boot(self) -> None:
        with pytest.raises(TypeError, match="boot must be ImageBoot or DirectKernel"):
            make_spec(boot="hd")

    def test_serial_log_absolute(self) -> None:
        with pytest.raises(ValueError, match="serial log path"):
            make_spec(serial_log="console.log")

    def test_duplicate_gpu(self) -> None:
        with pytest.raises(ValueError, match=r"GPU assigned twice: 0000:18:00\.0"):
            make_spec(gpus=(gpu("0000:18:00.0"), gpu("0000:18:00.0")))

    def test_classified_refuses_civilian_bridge(self) -> None:
        with pytest.raises(ValueError, match="classified enclaves may not use the CIVILIAN"):
            make_spec(network=NetworkPolicy.CIVILIAN_BRIDGE, network_name="civilian")

    def test_civilian_may_use_bridge(self) -> None:
        spec = make_spec(
            classified=False, network=NetworkPolicy.CIVILIAN_BRIDGE, network_name="civilian"
        )
        assert spec.network is NetworkPolicy.CIVILIAN_BRIDGE

    def test_network_none_takes_no_name(self) -> None:
        with pytest.raises(ValueError, match="NONE takes no network_name"):
            make_spec(network_name="net")

    @pytest.mark.parametrize("name", [None, "", "bad name"])
    def test_network_needs_name(self, name: str | None) -> None:
        with pytest.raises(ValueError, match="ISOLATED needs a network_name"):
            make_spec(network=NetworkPolicy.ISOLATED, network_name=name)

    def test_network_policy_type(self) -> None:
        with pytest.raises(TypeError, match="network must be a NetworkPolicy"):
            make_spec(network="none")

    @pytest.mark.parametrize("flag", ["allow_graphics", "allow_usb"])
    def test_classified_refuses_graphics_and_usb(self, flag: str) -> None:
        with pytest.raises(ValueError, match="classified enclaves may not allow graphics or USB"):
            make_spec(**{flag: True})
        assert getattr(make_spec(classified=False, **{flag: True}), flag)
