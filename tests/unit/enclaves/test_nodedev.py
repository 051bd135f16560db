"""The node-device reset's sequence and record, against a scripted libvirt connection.

The real calls are exercised by ``tests/contract/test_sanitizer_libvirt.py`` (the test driver
refuses them; a real libvirtd is only asked about a function that does not exist: no test
resets a PCI device of the machine it runs on).
"""

from __future__ import annotations

from typing import Any

import libvirt
import pytest

from enclaves.errors import EnclaveError, NodeDeviceNotFoundError, UnsupportedError
from enclaves.host import LibvirtHost
from enclaves.nodedev import RESET_TYPE, VFIO_DRIVER, node_device_name, reset_functions
from enclaves.spec import PciAddress


def error(code: int, text: str) -> libvirt.libvirtError:
    exc = libvirt.libvirtError(text)
    exc.err = (code, 0, text, 0, "", "", "", 0, 0)
    return exc


class FakeDevice:
    def __init__(self, calls: list[str], name: str, driver: str | None, fail: str = "") -> None:
        self.calls, self.name, self.driver, self.fail = calls, name, driver, fail

    def XMLDesc(self, _flags: int) -> str:  # noqa: N802 - libvirt's name
        driver = "" if self.driver is None else f"<driver><name>{self.driver}</name></driver>"
        return f"<device><name>{self.name}</name>{driver}<capability type='pci'/></device>"

    def detachFlags(self, driver: str, flags: int) -> None:  # noqa: N802 - libvirt's name
        assert (driver, flags) == ("vfio", 0)
        self.calls.append(f"detach {self.name}")
        if self.fail == "detach":
            raise error(libvirt.VIR_ERR_OPERATION_INVALID, "device in use")
        self.driver = VFIO_DRIVER

    def reset(self) -> None:
        self.calls.append(f"reset {self.name}")
        if self.fail == "reset":
            raise error(libvirt.VIR_ERR_NO_SUPPORT, "this function is not supported")


class FakeConn:
    def __init__(self, devices: dict[str, FakeDevice]) -> None:
        self.devices = devices

    def nodeDeviceLookupByName(self, name: str) -> FakeDevice:  # noqa: N802 - libvirt's name
        if name not in self.devices:
            raise error(libvirt.VIR_ERR_NO_NODE_DEVICE, f"no node device {name}")
        return self.devices[name]


class FakeHost:
    uri = "qemu+tls://gpu-1.example/system"

    def __init__(self, conn: FakeConn) -> None:
        self.conn = conn

    def connect(self) -> FakeConn:
        return self.conn


GPU = PciAddress.parse("0000:3b:00.0")
AUDIO = PciAddress.parse("0000:3b:00.1")


def host_with(calls: list[str], **drivers: str | None) -> Any:
    devices = {
        name: FakeDevice(calls, name, driver, fail=str(drivers.get(f"{name}_fail") or ""))
        for name, driver in drivers.items()
        if not name.endswith("_fail")
    }
    return FakeHost(FakeConn(devices))


def test_node_device_names() -> None:
    assert node_device_name(GPU) == "pci_0000_3b_00_0"
    assert node_device_name(PciAddress.parse("00ab:ff:1f.7")) == "pci_00ab_ff_1f_7"


def test_detaches_from_the_host_driver_then_resets_each_function_in_order() -> None:
    calls: list[str] = []
    host = host_with(calls, pci_0000_3b_00_0="nvidia", pci_0000_3b_00_1="snd_hda_intel")
    record = reset_functions(host, [GPU, AUDIO]).as_dict()
    assert calls == [
        "detach pci_0000_3b_00_0",
        "reset pci_0000_3b_00_0",
        "detach pci_0000_3b_00_1",
        "reset pci_0000_3b_00_1",
    ]
    assert record["type"] == RESET_TYPE
    assert record["functions"] == [
        {
            "address": "0000:3b:00.0",
            "driver_before": "nvidia",
            "detached": True,
            "driver_after": VFIO_DRIVER,
        },
        {
            "address": "0000:3b:00.1",
            "driver_before": "snd_hda_intel",
            "detached": True,
            "driver_after": VFIO_DRIVER,
        },
    ]
    assert isinstance(record["duration_ms"], float)
    assert record["duration_ms"] >= 0
    assert "VFIO" in record["note"], "the record says who really resets a vfio-pci function"


def test_a_function_already_on_vfio_is_not_detached_again() -> None:
    calls: list[str] = []
    host = host_with(calls, pci_0000_3b_00_0=VFIO_DRIVER)
    record = reset_functions(host, [GPU]).as_dict()
    assert calls == ["reset pci_0000_3b_00_0"]
    assert record["functions"][0]["detached"] is False


def test_a_function_on_no_driver_is_detached_and_reset() -> None:
    calls: list[str] = []
    host = host_with(calls, pci_0000_3b_00_0=None)
    record = reset_functions(host, [GPU]).as_dict()
    assert calls == ["detach pci_0000_3b_00_0", "reset pci_0000_3b_00_0"]
    assert record["functions"][0]["driver_before"] is None


def test_missing_function_is_not_found() -> None:
    with pytest.raises(NodeDeviceNotFoundError, match=r"0000:3b:00\.1"):
        reset_functions(host_with([], pci_0000_3b_00_0="nvidia"), [GPU, AUDIO])


def test_unsupported_reset_says_so() -> None:
    host = host_with([], pci_0000_3b_00_0=VFIO_DRIVER, pci_0000_3b_00_0_fail="reset")
    with pytest.raises(UnsupportedError, match="cannot reset PCI functions through libvirt"):
        reset_functions(host, [GPU])


def test_refused_detach_stops_before_any_reset() -> None:
    calls: list[str] = []
    host = host_with(calls, pci_0000_3b_00_0="nvidia", pci_0000_3b_00_0_fail="detach")
    with pytest.raises(EnclaveError, match=r"detaching PCI function 0000:3b:00\.0"):
        reset_functions(host, [GPU])
    assert calls == ["detach pci_0000_3b_00_0"]


@pytest.mark.parametrize("functions", [[], [GPU, GPU]])
def test_refuses_no_or_repeated_functions(functions: list[PciAddress]) -> None:
    with pytest.raises(ValueError, match="PCI function"):
        reset_functions(LibvirtHost("test:///default"), functions)
