"""Whether this machine has an NVIDIA GPU: the one condition under which a test may skip.

A GPU is an NVIDIA (vendor ``0x10de``) PCI function of the display-controller class
(``0x03xxxx``) in sysfs, whatever drivers are installed: where one is present, the ``gpu`` tests
run, and a missing driver or CUDA build fails them rather than skipping.
"""

from __future__ import annotations

from pathlib import Path

PCI_DEVICES = Path("/sys/bus/pci/devices")
NVIDIA_VENDOR = "0x10de"
DISPLAY_CLASS_PREFIX = "0x03"


def gpu_present(devices: Path = PCI_DEVICES) -> bool:
    """True when an NVIDIA display-class PCI function exists."""
    for device in devices.glob("*"):
        try:
            vendor = (device / "vendor").read_text().strip()
            klass = (device / "class").read_text().strip()
        except OSError:
            continue
        if vendor == NVIDIA_VENDOR and klass.startswith(DISPLAY_CLASS_PREFIX):
            return True
    return False


#: Reason given by the ``gpu`` tests' skip.
NO_GPU = "no NVIDIA GPU on this machine"
