"""Unit tests for the bundled host descriptions and the parts of enclaves.host without libvirt.

The files are read here as plain XML, so their contents are checked on every machine; the
contract tests (tests/contract/test_libvirt_host.py) check that libvirt's test driver reads the
same thing.
"""

from __future__ import annotations

import collections
import importlib.util
import pathlib
import sys
from collections.abc import Callable
from xml.etree import ElementTree

import pytest

import enclaves.host
import enclaves.hosts
from enclaves.errors import DomainNotFoundError, EnclaveError, HypervisorUnavailableError
from enclaves.host import _HOSTNAME, _capabilities_uuid, _malformed
from enclaves.hosts import BUNDLED_HOSTS, bundled_host_path, bundled_host_uri

NVIDIA = "0x10de"
H100_SXM = "0x2330"
GIB_IN_KIB = 1024 * 1024


def _root(name: str) -> ElementTree.Element:
    # Our own package data, not input from outside.
    return ElementTree.parse(bundled_host_path(name)).getroot()  # noqa: S314


def _pci_devices(name: str) -> dict[str, ElementTree.Element]:
    """Map device name -> ``<capability type='pci'>`` for every PCI device in a bundled file."""
    devices = {}
    for device in _root(name).findall("device"):
        capability = device.find("capability[@type='pci']")
        if capability is not None:
            devices[device.findtext("name", "")] = capability
    return devices


def _attribute(element: ElementTree.Element, path: str, attribute: str) -> str | None:
    child = element.find(path)
    assert child is not None, f"no <{path}>"
    return child.get(attribute)


def _gpus(name: str) -> dict[str, ElementTree.Element]:
    return {
        device_name: capability
        for device_name, capability in _pci_devices(name).items()
        if _attribute(capability, "vendor", "id") == NVIDIA
        and _attribute(capability, "product", "id") == H100_SXM
    }


def _address(capability: ElementTree.Element) -> tuple[int, int, int, int]:
    domain, bus, slot, function = (
        int(capability.findtext(part, "-1")) for part in ("domain", "bus", "slot", "function")
    )
    return domain, bus, slot, function


def _group_members(capability: ElementTree.Element) -> list[tuple[int, int, int, int]]:
    group = capability.find("iommuGroup")
    assert group is not None
    members = []
    for address in group.findall("address"):
        domain, bus, slot, function = (
            int(address.get(part, "-1"), 16) for part in ("domain", "bus", "slot", "function")
        )
        members.append((domain, bus, slot, function))
    return members


def test_bundled_host_names() -> None:
    assert BUNDLED_HOSTS == ("secret-h100x8", "civilian-h100x4", "civilian-pt-1")


@pytest.mark.parametrize("name", BUNDLED_HOSTS)
def test_bundled_host_path_is_an_absolute_file_in_the_package(name: str) -> None:
    path = bundled_host_path(name)

    assert path.is_absolute()
    assert path.is_file()
    assert path.name == f"{name}.xml"
    assert path.parent == pathlib.Path(enclaves.hosts.__file__).resolve().parent


@pytest.mark.parametrize("name", BUNDLED_HOSTS)
def test_bundled_host_uri_opens_the_file_with_the_test_driver(name: str) -> None:
    uri = bundled_host_uri(name)

    assert uri.startswith("test:///")
    assert uri == "test://" + bundled_host_path(name).as_posix()


def test_bundled_host_uri_percent_encodes_the_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        enclaves.hosts, "bundled_host_path", lambda _name: pathlib.Path("/srv/my hosts/a#1.xml")
    )

    assert bundled_host_uri("secret-h100x8") == "test:///srv/my%20hosts/a%231.xml"


@pytest.mark.parametrize("function", [bundled_host_path, bundled_host_uri])
def test_unknown_bundled_host_is_refused_with_the_known_names(
    function: Callable[[str], object],
) -> None:
    with pytest.raises(ValueError, match="unknown bundled host 'gpu-farm'") as excinfo:
        function("gpu-farm")

    assert "secret-h100x8" in str(excinfo.value)
    assert "civilian-h100x4" in str(excinfo.value)


@pytest.mark.parametrize(
    ("name", "cpus", "memory_kib"),
    [
        ("secret-h100x8", 128, 2048 * GIB_IN_KIB),
        ("civilian-h100x4", 96, 1024 * GIB_IN_KIB),
        ("civilian-pt-1", 64, 512 * GIB_IN_KIB),
    ],
)
def test_host_topology_has_two_numa_nodes(name: str, cpus: int, memory_kib: int) -> None:
    cpu = _root(name).find("cpu")
    assert cpu is not None
    counts = {field: int(cpu.findtext(field, "0")) for field in ("nodes", "sockets", "cores")}
    threads = int(cpu.findtext("threads", "0"))

    assert counts["nodes"] == 2
    # virNodeInfo counts sockets per NUMA node, so this is the host's CPU count.
    assert counts["nodes"] * counts["sockets"] * counts["cores"] * threads == cpus
    assert int(cpu.findtext("active", "0")) == cpus
    assert int(_root(name).findtext("memory", "0")) == memory_kib


@pytest.mark.parametrize("name", BUNDLED_HOSTS)
def test_host_starts_without_domains_networks_or_pools(name: str) -> None:
    root = _root(name)

    assert root.tag == "node"
    assert root.findall("domain") == []
    assert root.findall("network") == []
    assert root.findall("pool") == []


@pytest.mark.parametrize("name", BUNDLED_HOSTS)
def test_pci_devices_hang_off_the_computer_root_device(name: str) -> None:
    root = _root(name)
    names = [device.findtext("name") for device in root.findall("device")]
    parents = {device.findtext("parent") for device in root.findall("device")} - {None}

    assert "computer" in names
    assert parents == {"computer"}


@pytest.mark.parametrize("name", BUNDLED_HOSTS)
def test_device_names_match_their_pci_addresses(name: str) -> None:
    for device_name, capability in _pci_devices(name).items():
        domain, bus, slot, function = _address(capability)

        assert device_name == f"pci_{domain:04x}_{bus:02x}_{slot:02x}_{function:x}"


@pytest.mark.parametrize(
    ("name", "gpus"), [("secret-h100x8", 8), ("civilian-h100x4", 4), ("civilian-pt-1", 2)]
)
def test_gpus_are_split_evenly_over_numa_nodes_0_and_1(name: str, gpus: int) -> None:
    found = _gpus(name)
    per_node = collections.Counter(
        _attribute(capability, "numa", "node") for capability in found.values()
    )

    assert len(found) == gpus
    assert per_node == {"0": gpus // 2, "1": gpus // 2}


def test_every_secret_gpu_is_alone_in_its_iommu_group() -> None:
    gpus = _gpus("secret-h100x8")
    groups = [_attribute(capability, "iommuGroup", "number") for capability in gpus.values()]

    assert len(set(groups)) == len(gpus)
    for capability in gpus.values():
        assert _group_members(capability) == [_address(capability)]
    # Nothing but the eight GPUs: no companion function could share a group.
    assert set(_pci_devices("secret-h100x8")) == set(gpus)


def test_one_civilian_gpu_shares_its_iommu_group_with_another_nvidia_function() -> None:
    devices = _pci_devices("civilian-h100x4")
    gpus = _gpus("civilian-h100x4")
    shared = {name: cap for name, cap in gpus.items() if len(_group_members(cap)) > 1}

    assert list(shared) == ["pci_0000_3b_00_0"]
    gpu = shared["pci_0000_3b_00_0"]
    members = _group_members(gpu)
    assert len(members) == 2
    companion_address = next(member for member in members if member != _address(gpu))
    companions = [cap for cap in devices.values() if _address(cap) == companion_address]
    assert len(companions) == 1
    companion = companions[0]
    assert _attribute(companion, "vendor", "id") == NVIDIA
    assert _attribute(companion, "product", "id") != H100_SXM
    # Both sides of the group must say so, or an inventory reading either device is fooled.
    group = _attribute(gpu, "iommuGroup", "number")
    assert _attribute(companion, "iommuGroup", "number") == group
    assert sorted(_group_members(companion)) == sorted(members)
    for name, capability in gpus.items():
        if name not in shared:
            assert _group_members(capability) == [_address(capability)]


def test_errors_share_a_base_and_carry_their_message() -> None:
    error = DomainNotFoundError("no domain 'x'")

    assert isinstance(error, EnclaveError)
    assert isinstance(HypervisorUnavailableError("down"), EnclaveError)
    assert not isinstance(error, HypervisorUnavailableError)
    assert error.message == "no domain 'x'"
    assert str(error) == "no domain 'x'"


def test_open_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="open_timeout must be positive"):
        enclaves.host.LibvirtHost("test:///default", open_timeout=0)


def test_host_module_imports_and_refuses_to_connect_without_libvirt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # None in sys.modules makes ``import libvirt`` raise ImportError, as if it were missing.
    monkeypatch.setitem(sys.modules, "libvirt", None)
    # A fresh copy of enclaves.host under another name: reloading the real module would swap
    # the classes other tests already imported.
    spec = importlib.util.spec_from_file_location("_host_without_libvirt", enclaves.host.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)
    host = module.LibvirtHost("test:///default")

    assert "libvirt" not in vars(module)
    with pytest.raises(HypervisorUnavailableError, match="libvirt-python is not installed"):
        host.connect()
    with pytest.raises(HypervisorUnavailableError, match="libvirt-python is not installed"):
        host.ping()


@pytest.mark.parametrize(
    ("packed", "version"),
    [(9_000_000, (9, 0, 0)), (10_002_003, (10, 2, 3)), (8_010_999, (8, 10, 999))],
)
def test_libvirt_version_is_unpacked(packed: int, version: tuple[int, int, int]) -> None:
    assert enclaves.host._split_version(packed) == version


@pytest.mark.parametrize(
    ("capabilities", "cells"),
    [
        (
            "<capabilities><host><topology><cells num='2'><cell id='0'/><cell id='1'/>"
            "</cells></topology></host></capabilities>",
            2,
        ),
        ("<capabilities><host><topology><cells num='0'/></topology></host></capabilities>", 0),
        ("<capabilities><host><cpu/></host></capabilities>", 0),
    ],
)
def test_numa_cells_come_from_the_capabilities_topology(capabilities: str, cells: int) -> None:
    assert enclaves.host._numa_cell_count(capabilities) == cells


@pytest.mark.parametrize("name", ["node1", "node1.example.org", "vm", "a_b-c.d"])
def test_a_dns_host_name_is_a_hypervisor_name(name: str):
    assert _HOSTNAME.fullmatch(name)


@pytest.mark.parametrize("name", ["", "a" * 256, "node1\n", "\x1b[2Jnode", "node one", "-node"])
def test_a_host_name_that_is_no_dns_name_is_refused(name: str):
    # Stored and printed by `sovereign hosts add`: no control characters, no over-long text.
    assert not _HOSTNAME.fullmatch(name)


def test_an_identity_answer_that_is_no_xml_makes_the_host_unavailable():
    with (
        pytest.raises(HypervisorUnavailableError, match="malformed XML"),
        _malformed("qemu+tls://h/system"),
    ):
        _capabilities_uuid("<capabilities><host>")
