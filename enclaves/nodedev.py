"""Resetting a GPU's PCI functions on its host through libvirt's node-device API.

Owns :func:`reset_functions`: for every function of a GPU's IOMMU group, in order, look up
its node device (``pci_DDDD_BB_SS_F``), read which host driver holds it, detach it from that
driver onto ``vfio-pci`` where it is not there already (``virNodeDeviceDetachFlags`` with
``vfio``: the host driver lets go of the device before anything resets it under that driver's
feet), then ``virNodeDeviceReset``; and :class:`ResetRecord`, what was done, as evidence.

What libvirt does with the reset call depends on the driver the function is bound to: for a
function on ``vfio-pci`` (every function once detached here) libvirt leaves the reset to VFIO,
which performs it (function-level reset, else a bus or slot reset) when the sanitizer domain
opens the device and again when it releases it; for a function on no driver libvirt resets it
itself. The record says which driver each function was on before and after, and never claims
more than that.

It must not decide when a GPU is reset (the control plane's hand-over does), touch a domain,
or catch ``libvirt.libvirtError`` itself (:func:`enclaves.host._translate` does). libvirt's
test driver has no node-device detach or reset: there :func:`reset_functions` raises
:class:`~enclaves.errors.UnsupportedError` saying so.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from enclaves.config import from_string
from enclaves.errors import UnsupportedError
from enclaves.host import LibvirtHost, _translate
from enclaves.spec import PciAddress

#: The reset type recorded in a hand-over's evidence.
RESET_TYPE = "libvirt-node-device-reset"
#: The host driver VFIO passthrough needs (``virNodeDeviceDetachFlags``' driver name ``vfio``).
VFIO_DRIVER = "vfio-pci"
#: What the record says about a function left on vfio-pci (libvirt's reset is then VFIO's).
VFIO_NOTE = (
    "libvirt leaves the reset of a function bound to vfio-pci to VFIO, which resets it "
    "(function-level, else bus or slot reset) when the sanitizer domain opens the device"
)


def node_device_name(address: PciAddress) -> str:
    """libvirt's node device name of a PCI function: ``pci_DDDD_BB_SS_F``."""
    return f"pci_{address.domain:04x}_{address.bus:02x}_{address.slot:02x}_{address.function:x}"


@dataclass(frozen=True, slots=True)
class FunctionReset:
    """What was done to one PCI function."""

    address: str
    #: The host driver that held the function before (``None``: no driver bound).
    driver_before: str | None
    #: Whether it was detached from ``driver_before`` onto vfio-pci here.
    detached: bool
    #: The driver holding it after the reset call.
    driver_after: str | None

    def as_dict(self) -> dict[str, Any]:
        """The JSON form used in evidence."""
        return {
            "address": self.address,
            "driver_before": self.driver_before,
            "detached": self.detached,
            "driver_after": self.driver_after,
        }


@dataclass(frozen=True, slots=True)
class ResetRecord:
    """The evidence of one GPU's reset: every function of its IOMMU group, and the time."""

    functions: tuple[FunctionReset, ...]
    duration_ms: float

    def as_dict(self) -> dict[str, Any]:
        """``{"type": "libvirt-node-device-reset", "functions": [...], "duration_ms": ...}``."""
        record: dict[str, Any] = {
            "type": RESET_TYPE,
            "functions": [f.as_dict() for f in self.functions],
            "duration_ms": round(self.duration_ms, 3),
        }
        if any(f.driver_after == VFIO_DRIVER for f in self.functions):
            record["note"] = VFIO_NOTE
        return record


def _driver(device_xml: str) -> str | None:
    """The ``<driver><name>`` of a node device's XML (None when no driver is bound)."""
    name = from_string(device_xml).findtext("driver/name")
    return None if name is None or not name.strip() else name.strip()


def reset_functions(host: LibvirtHost, functions: Sequence[PciAddress]) -> ResetRecord:
    """Detach (where needed) and reset each PCI function of ``functions``, in order.

    :raises ValueError: if ``functions`` is empty or names a function twice.
    :raises NodeDeviceNotFoundError: if the host has no such PCI function.
    :raises UnsupportedError: if the driver has no node-device detach or reset (libvirt's test
        driver).
    :raises HypervisorUnavailableError: if the host cannot be reached.
    :raises EnclaveError: if libvirt refuses (a function in use by a running domain, no reset
        method for the device).
    """
    if not functions:
        raise ValueError("a GPU reset needs at least one PCI function")
    if len(set(functions)) != len(functions):
        raise ValueError("a PCI function is named twice")
    conn = host.connect()
    started = time.monotonic()
    done = []
    try:
        for address in functions:
            done.append(_reset_one(conn, host.uri, address))
    except UnsupportedError as e:
        raise UnsupportedError(
            f"cannot reset PCI functions through libvirt on this driver (libvirt's test driver "
            f"has no node device detach or reset): {e.message}"
        ) from e
    return ResetRecord(tuple(done), (time.monotonic() - started) * 1000.0)


def _reset_one(conn: Any, uri: str, address: PciAddress) -> FunctionReset:
    """Detach one function onto vfio-pci if it is elsewhere, then reset it."""
    name = node_device_name(address)
    where = f"PCI function {address} ({name}) on {uri}"
    with _translate(f"looking up {where}"):
        device = conn.nodeDeviceLookupByName(name)
    with _translate(f"reading {where}"):
        before = _driver(str(device.XMLDesc(0)))
    detached = before != VFIO_DRIVER
    if detached:
        with _translate(f"detaching {where} from its host driver onto vfio-pci"):
            device.detachFlags("vfio", 0)
    with _translate(f"resetting {where}"):
        device.reset()
    with _translate(f"reading {where} after its reset"):
        after = _driver(str(device.XMLDesc(0)))
    return FunctionReset(str(address), before, detached, after)
