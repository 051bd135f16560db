"""The designer's domain XML against libvirt itself: schema-valid, definable, startable.

Runs on libvirt's test driver over the bundled ``secret-h100x8`` host (the ``libvirt`` marker;
without libvirt-python the import fails the run loudly). ``VIR_DOMAIN_DEFINE_VALIDATE`` checks
each document against libvirt's RNG schema for domains before libvirt's own parser reads it.

What the test driver does not check, and these tests therefore do not claim: that a hostdev's
PCI address exists or is free (it accepts any address), that the LUKS and vTPM secrets exist
(it has no secret driver), and that the seclabel's security driver runs anything. The project
enforces GPU existence and exclusivity itself; real QEMU boots are integration tests.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any
from xml.etree import ElementTree

import libvirt
import pytest

from enclaves.designer import design, isolated_network_name, isolated_network_xml
from enclaves.host import LibvirtHost
from enclaves.hosts import bundled_host_uri
from enclaves.spec import EnclaveSpec, NetworkPolicy, PciAddress
from tests.unit.enclaves.test_designer import CASES, civilian_bridge, classified_two_gpus

pytestmark = pytest.mark.libvirt

#: An operator-defined civilian network for CIVILIAN_BRIDGE specs: a host bridge, here simulated.
CIVILIAN_NETWORK = (
    "<network><name>civilian-net</name><forward mode='bridge'/><bridge name='br-civ'/></network>"
)


@pytest.fixture
def conn() -> Iterator[Any]:
    """A private test-driver connection to the bundled SECRET host."""
    connection = LibvirtHost(bundled_host_uri("secret-h100x8")).connect()
    yield connection
    connection.close()


def ensure_network(conn: Any, spec: EnclaveSpec) -> None:
    """Define and start the network a spec's NIC joins, as provisioning would."""
    if spec.network is NetworkPolicy.ISOLATED:
        assert spec.network_name is not None
        network = conn.networkDefineXML(isolated_network_xml(spec.network_name))
    elif spec.network is NetworkPolicy.CIVILIAN_BRIDGE:
        network = conn.networkDefineXML(CIVILIAN_NETWORK)
    else:
        return
    network.create()


def define_start_destroy(conn: Any, spec: EnclaveSpec, **design_args: str) -> str:
    """Validate, define, start, destroy and undefine the designed domain; return its XML."""
    ensure_network(conn, spec)
    xml = design(spec, **design_args).to_string()
    domain = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    try:
        domain.create()
        assert domain.isActive() == 1
        live = domain.XMLDesc(0)
        domain.destroy()
        assert domain.isActive() == 0
    finally:
        domain.undefine()
    return str(live)


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_case_validates_defines_and_starts(conn: Any, case: str) -> None:
    spec = CASES[case]()
    live = ElementTree.fromstring(define_start_destroy(conn, spec))  # noqa: S314
    # libvirt kept every isolation element it was given.
    addresses = [
        tuple(int(a.get(k, ""), 16) for k in ("domain", "bus", "slot", "function"))
        for a in live.findall("devices/hostdev/source/address")
    ]
    assert addresses == [
        (m.domain, m.bus, m.slot, m.function)
        for m in (PciAddress.parse(member) for g in spec.gpus for member in g.group_members)
    ]
    assert [b.get("model") for b in live.findall("devices/memballoon")] == ["none"]
    assert [c.get("model") for c in live.findall("devices/controller[@type='usb']")] == ["none"]
    assert live.find("devices/disk/encryption[@format='luks']/secret") is not None
    assert live.find("devices/tpm/backend[@type='emulator']") is not None
    assert live.find("devices/graphics") is None
    assert live.find("devices/video") is None
    assert live.find("seclabel[@type='dynamic']") is not None
    assert live.findtext("on_crash") == "destroy"
    enclave = live.find("metadata/{https://sovereign.invalid/xmlns/libvirt/enclave/1.0}enclave")
    assert enclave is not None


def test_kvm_q35_validates_and_starts(conn: Any) -> None:
    spec = dataclasses.replace(classified_two_gpus(), domain_type="kvm")
    live = ElementTree.fromstring(define_start_destroy(conn, spec, machine="q35"))  # noqa: S314
    assert live.get("type") == "kvm"


def test_selinux_seclabel_validates(conn: Any) -> None:
    # The test driver runs no security driver: this proves the document is schema-valid and
    # definable with an SELinux label, not that SELinux confines anything here.
    xml = design(classified_two_gpus(), security_model="selinux").to_string()
    ensure_network(conn, classified_two_gpus())
    domain = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
    domain.undefine()


def test_civilian_graphics_and_usb_validate_and_start(conn: Any) -> None:
    spec = dataclasses.replace(civilian_bridge(), allow_graphics=True, allow_usb=True)
    live = ElementTree.fromstring(define_start_destroy(conn, spec))  # noqa: S314
    assert live.find("devices/graphics[@type='vnc']") is not None


def test_isolated_network_defines_without_forward_or_ip(conn: Any) -> None:
    name = isolated_network_name(uuid.UUID(int=7))
    network = conn.networkDefineXML(isolated_network_xml(name))
    network.create()
    described = ElementTree.fromstring(network.XMLDesc(0))  # noqa: S314
    assert described.find("forward") is None
    assert described.find("ip") is None
    network.destroy()
    network.undefine()


def test_validation_is_real(conn: Any) -> None:
    # Guards the tests above: the flag does reject a schema-invalid document.
    xml = (
        design(classified_two_gpus())
        .to_string()
        .replace('<memballoon model="none" />', '<memballoon model="bogus" />')
    )
    with pytest.raises(libvirt.libvirtError):
        conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
