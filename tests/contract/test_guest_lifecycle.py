"""Guests, Volumes, Secrets and Networks against libvirt's real test driver.

Each test opens its own copy of the bundled ``secret-h100x8`` host (``test:///PATH``), whose
state is private to the connection. The test driver runs no QEMU: it checks the calls, the
XML and the state machine, which is what these tests claim. What it lacks, and how the API
says so, is checked too: no secret driver (``Secrets.supported`` is False, the other calls
raise ``UnsupportedError``), no volume wipe (skipped), no ACPI shutdown flag and no NVRAM/TPM
undefine flags (fallbacks). Real boots are in ``test_real_guest.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import threading
import time
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import libvirt
import pytest

from enclaves.designer import design, isolated_network_name
from enclaves.errors import (
    DomainNotFoundError,
    EnclaveError,
    HypervisorUnavailableError,
    UnsupportedError,
)
from enclaves.guest import DomainStatus, Guests
from enclaves.host import LibvirtHost
from enclaves.hosts import bundled_host_path
from enclaves.resources import Networks, Secrets, Volumes
from enclaves.spec import EnclaveSpec, NetworkPolicy
from tests.unit.enclaves.test_designer import (
    civilian_shared_iommu_group,
    classified_two_gpus,
)

pytestmark = pytest.mark.libvirt

FOREIGN_UUID = uuid.UUID("0f0f0f0f-0000-4000-8000-00000000f00d")
#: A domain someone else defined on the host: no Sovereign metadata, another namespace's.
FOREIGN_XML = f"""<domain type='kvm'>
  <name>aaa-not-ours</name>
  <uuid>{FOREIGN_UUID}</uuid>
  <metadata><app xmlns='https://example.invalid/other'><id>{uuid.UUID(int=1)}</id></app></metadata>
  <memory unit='MiB'>512</memory>
  <os><type arch='x86_64'>hvm</type></os>
</domain>
"""
POOL = "sovereign-enclaves"
POOL_PATH = "/var/lib/sovereign/enclaves"
EVENT_TIMEOUT_S = 5.0


@pytest.fixture
def host(tmp_path: Path) -> Iterator[LibvirtHost]:
    """A private copy of the bundled SECRET host, opened through the test driver."""
    copy = tmp_path / "secret-h100x8.xml"
    shutil.copyfile(bundled_host_path("secret-h100x8"), copy)
    connection = LibvirtHost("test://" + urllib.parse.quote(copy.as_posix()))
    yield connection
    connection.close()


@pytest.fixture
def guests(host: LibvirtHost) -> Guests:
    return Guests(host)


def domain_xml(spec: EnclaveSpec) -> str:
    """The designer's XML for ``spec``."""
    return design(spec).to_string()


def without_network(**changes: Any) -> EnclaveSpec:
    """The classified spec with no NIC and no GPU, changed by ``changes``."""
    return dataclasses.replace(
        classified_two_gpus(), network=NetworkPolicy.NONE, network_name=None, gpus=(), **changes
    )


def wait_for(condition: Callable[[], bool], timeout_s: float = EVENT_TIMEOUT_S) -> bool:
    """Poll ``condition`` until it holds or ``timeout_s`` passes; return whether it held."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def raw_domain(host: LibvirtHost, domain_uuid: uuid.UUID) -> Any:
    """The virDomain itself, to check what the API did without going through it."""
    return host.connect().lookupByUUIDString(str(domain_uuid))


# -- Guests -----------------------------------------------------------------------------------


def test_define_start_status_list_stop_undefine(host: LibvirtHost, guests: Guests) -> None:
    spec = classified_two_gpus()

    guests.define(domain_xml(spec))
    defined = guests.status(spec.uuid)
    guests.start(spec.uuid)
    running = guests.status(spec.uuid)
    listed = guests.list()
    guests.stop(spec.uuid)
    stopped = guests.status(spec.uuid)
    guests.undefine(spec.uuid)

    assert defined == DomainStatus(
        name=spec.name,
        uuid=spec.uuid,
        state="shutoff",
        enclave_id=spec.uuid,
        label=spec.label,
    )
    assert running is not None
    assert running.state == "running"
    assert listed == [running]
    assert stopped is not None
    assert stopped.state == "shutoff"
    assert guests.status(spec.uuid) is None
    assert guests.list() == []
    assert host.connect().listAllDomains(0) == []


def test_every_call_is_idempotent(host: LibvirtHost, guests: Guests) -> None:
    spec = classified_two_gpus()
    xml = domain_xml(spec)

    guests.stop(spec.uuid)  # absent
    guests.undefine(spec.uuid)  # absent
    guests.define(xml)
    guests.define(xml)  # same name and uuid: redefined
    guests.stop(spec.uuid)  # shut off
    guests.start(spec.uuid)
    guests.start(spec.uuid)  # already running
    guests.define(xml)  # redefining a running domain updates its next boot only
    assert [status.state for status in guests.list()] == ["running"]
    guests.stop(spec.uuid)
    guests.stop(spec.uuid)
    guests.undefine(spec.uuid)
    guests.undefine(spec.uuid)

    assert guests.list() == []


def test_a_domain_that_is_not_ours_has_no_enclave_id(guests: Guests) -> None:
    ours = classified_two_gpus()
    guests.define(domain_xml(ours))
    guests.define(FOREIGN_XML)

    listed = guests.list()

    assert [status.name for status in listed] == ["aaa-not-ours", ours.name]
    assert listed[0] == DomainStatus(
        name="aaa-not-ours", uuid=FOREIGN_UUID, state="shutoff", enclave_id=None, label=None
    )
    assert listed[1].enclave_id == ours.uuid
    assert guests.status(FOREIGN_UUID) == listed[0]


def test_malformed_sovereign_metadata_is_not_matched_to_an_enclave(guests: Guests) -> None:
    spec = classified_two_gpus()
    xml = domain_xml(spec).replace(f"<id>{spec.uuid}</id>", "<id>not-a-uuid</id>")
    guests.define(xml)

    status = guests.status(spec.uuid)

    assert status is not None
    assert status.enclave_id is None
    assert status.label is None


def test_list_is_sorted_by_name_whatever_the_definition_order(guests: Guests) -> None:
    for name in ("zeta", "alpha", "mu"):
        guests.define(domain_xml(without_network(name=name, uuid=uuid.uuid4())), validate=False)

    assert [status.name for status in guests.list()] == ["alpha", "mu", "zeta"]


def test_stop_with_no_timeout_destroys_at_once(host: LibvirtHost, guests: Guests) -> None:
    spec = classified_two_gpus()
    guests.define(domain_xml(spec))
    guests.start(spec.uuid)

    guests.stop(spec.uuid, timeout_s=0)

    assert raw_domain(host, spec.uuid).isActive() == 0


def test_stop_destroys_a_paused_guest_which_cannot_see_a_power_button(
    host: LibvirtHost, guests: Guests
) -> None:
    spec = classified_two_gpus()
    guests.define(domain_xml(spec))
    guests.start(spec.uuid)
    raw_domain(host, spec.uuid).suspend()
    status = guests.status(spec.uuid)
    assert status is not None
    assert status.state == "paused"

    guests.stop(spec.uuid, timeout_s=30)

    assert raw_domain(host, spec.uuid).isActive() == 0


def test_stop_refuses_a_negative_timeout(guests: Guests) -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        guests.stop(uuid.uuid4(), timeout_s=-1)


def test_undefine_destroys_a_running_domain_instead_of_leaving_it_transient(
    host: LibvirtHost, guests: Guests
) -> None:
    spec = classified_two_gpus()
    guests.define(domain_xml(spec))
    guests.start(spec.uuid)

    guests.undefine(spec.uuid)

    assert guests.status(spec.uuid) is None
    assert host.connect().listAllDomains(0) == []


def test_start_of_an_absent_domain_raises_domain_not_found(guests: Guests) -> None:
    missing = uuid.uuid4()

    with pytest.raises(DomainNotFoundError, match=str(missing)) as excinfo:
        guests.start(missing)

    assert isinstance(excinfo.value.__cause__, libvirt.libvirtError)


def test_schema_invalid_xml_raises_an_enclave_error_not_libvirt_error(guests: Guests) -> None:
    xml = domain_xml(classified_two_gpus()).replace(
        '<memballoon model="none" />', '<memballoon model="bogus" />'
    )

    with pytest.raises(EnclaveError, match="libvirt error code") as excinfo:
        guests.define(xml)

    assert not isinstance(excinfo.value, libvirt.libvirtError)
    assert isinstance(excinfo.value.__cause__, libvirt.libvirtError)
    assert guests.list() == []


def test_a_second_domain_with_the_same_name_is_refused(guests: Guests) -> None:
    guests.define(domain_xml(without_network()))

    with pytest.raises(EnclaveError, match="already exists"):
        guests.define(domain_xml(without_network(uuid=uuid.uuid4())))


def test_an_unreachable_host_raises_unavailable(tmp_path: Path) -> None:
    gone = LibvirtHost("test://" + urllib.parse.quote(f"{tmp_path.as_posix()}/missing.xml"))
    guests = Guests(gone)

    with pytest.raises(HypervisorUnavailableError):
        guests.list()
    with pytest.raises(HypervisorUnavailableError):
        guests.status(uuid.uuid4())


class Recorder:
    """Collects ``(uuid, event)`` pairs from the event loop thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._events: list[tuple[uuid.UUID, str]] = []

    def __call__(self, domain_uuid: uuid.UUID, event: str) -> None:
        with self._lock:
            self._events.append((domain_uuid, event))

    def events(self) -> list[tuple[uuid.UUID, str]]:
        with self._lock:
            return list(self._events)


def test_watch_reports_lifecycle_events_until_unsubscribed(guests: Guests) -> None:
    spec = classified_two_gpus()
    recorder = Recorder()
    unsubscribe = guests.watch(recorder)

    guests.define(domain_xml(spec))
    guests.start(spec.uuid)
    guests.stop(spec.uuid)
    guests.undefine(spec.uuid)
    expected = [(spec.uuid, e) for e in ("defined", "started", "stopped", "undefined")]
    assert wait_for(lambda: [e for e in recorder.events() if e[1] != "shutdown"] == expected)

    unsubscribe()
    unsubscribe()  # twice is harmless
    guests.define(domain_xml(spec))
    time.sleep(0.2)
    assert (spec.uuid, "defined") not in recorder.events()[len(expected) :]


def test_a_failing_watch_callback_is_logged_and_later_events_still_arrive(
    guests: Guests, caplog: pytest.LogCaptureFixture
) -> None:
    spec = civilian_shared_iommu_group()
    recorder = Recorder()

    def explode(domain_uuid: uuid.UUID, event: str) -> None:
        recorder(domain_uuid, event)
        raise RuntimeError("callback bug")

    unsubscribe = guests.watch(explode)
    with caplog.at_level(logging.ERROR, logger="enclaves.guest"):
        guests.define(domain_xml(spec))
        guests.start(spec.uuid)
        assert wait_for(lambda: (spec.uuid, "started") in recorder.events())
    unsubscribe()

    assert "domain event callback" in caplog.text
    assert "callback bug" in caplog.text


# -- Volumes ----------------------------------------------------------------------------------


def test_volumes_create_the_pool_on_first_use_and_are_idempotent(host: LibvirtHost) -> None:
    volumes = Volumes(host, POOL, POOL_PATH)
    secret = uuid.uuid4()

    path = volumes.create("enclave-1", 20, luks_secret_uuid=secret)
    again = volumes.create("enclave-1", 20, luks_secret_uuid=secret)
    plain = volumes.create("scratch", 1, luks_secret_uuid=None)

    assert path == again == f"{POOL_PATH}/enclave-1"
    assert plain == f"{POOL_PATH}/scratch"
    assert volumes.path("enclave-1") == path
    assert volumes.path("nope") is None
    pool = host.connect().storagePoolLookupByName(POOL)
    assert pool.isActive() == 1
    assert pool.autostart() == 1
    described = ElementTree.fromstring(pool.storageVolLookupByName("enclave-1").XMLDesc(0))  # noqa: S314
    assert described.findtext("capacity") == str(20 * 1024**3)
    assert described.find("target/format[@type='qcow2']") is not None
    secret_element = described.find("target/encryption[@format='luks']/secret")
    assert secret_element is not None
    assert secret_element.get("uuid") == str(secret)
    assert secret_element.get("type") == "passphrase"


def test_volume_delete_is_idempotent_and_skips_the_wipe_the_test_driver_lacks(
    host: LibvirtHost,
) -> None:
    volumes = Volumes(host, POOL, POOL_PATH)
    volumes.create("enclave-1", 1, luks_secret_uuid=uuid.uuid4())

    volumes.delete("enclave-1")
    volumes.delete("enclave-1")
    volumes.delete("never-existed")

    assert volumes.path("enclave-1") is None


def test_an_existing_volume_with_other_encryption_is_refused(host: LibvirtHost) -> None:
    volumes = Volumes(host, POOL, POOL_PATH)
    volumes.create("plain", 1, luks_secret_uuid=None)
    volumes.create("luks", 1, luks_secret_uuid=uuid.uuid4())

    with pytest.raises(EnclaveError, match="without encryption"):
        volumes.create("plain", 1, luks_secret_uuid=uuid.uuid4())
    with pytest.raises(EnclaveError, match="with encryption"):
        volumes.create("luks", 1, luks_secret_uuid=None)


def test_a_pool_of_that_name_elsewhere_is_refused(host: LibvirtHost) -> None:
    Volumes(host, POOL, "/srv/elsewhere").create("x", 1, luks_secret_uuid=None)

    with pytest.raises(EnclaveError, match="/srv/elsewhere"):
        Volumes(host, POOL, POOL_PATH).path("x")


def test_an_inactive_pool_is_started_again(host: LibvirtHost) -> None:
    volumes = Volumes(host, POOL, POOL_PATH)
    volumes.create("x", 1, luks_secret_uuid=None)
    host.connect().storagePoolLookupByName(POOL).destroy()

    assert volumes.path("x") == f"{POOL_PATH}/x"
    assert host.connect().storagePoolLookupByName(POOL).isActive() == 1


@pytest.mark.parametrize("name", ["", "a/b", ".", ".."])
def test_volume_names_that_would_leave_the_pool_are_refused(host: LibvirtHost, name: str) -> None:
    volumes = Volumes(host, POOL, POOL_PATH)
    with pytest.raises(ValueError, match="plain file name"):
        volumes.create(name, 1, luks_secret_uuid=None)
    with pytest.raises(ValueError, match="plain file name"):
        volumes.delete(name)


# -- Secrets ----------------------------------------------------------------------------------


def test_the_test_driver_has_no_secrets_and_says_so(host: LibvirtHost) -> None:
    secrets = Secrets(host)
    value = b"correct horse battery staple"
    secret_uuid = uuid.uuid4()

    assert secrets.supported is False
    assert secrets.supported is False  # cached
    with pytest.raises(UnsupportedError) as defined:
        secrets.define(secret_uuid, "volume", "/var/lib/sovereign/x", value)
    with pytest.raises(UnsupportedError):
        secrets.exists(secret_uuid)
    with pytest.raises(UnsupportedError):
        secrets.undefine(secret_uuid)

    assert isinstance(defined.value.__cause__, libvirt.libvirtError)
    assert value.decode() not in str(defined.value)
    assert f"code {libvirt.VIR_ERR_NO_SUPPORT})" in defined.value.message


# -- Networks ---------------------------------------------------------------------------------


def test_isolated_network_is_defined_started_autostarted_and_idempotent(
    host: LibvirtHost,
) -> None:
    networks = Networks(host)
    name = isolated_network_name(uuid.UUID(int=42))

    networks.ensure_isolated(name)
    networks.ensure_isolated(name)

    network = host.connect().networkLookupByName(name)
    described = ElementTree.fromstring(network.XMLDesc(0))  # noqa: S314
    assert described.find("forward") is None
    assert described.find("ip") is None
    assert network.isActive() == 1
    assert network.autostart() == 1
    assert networks.list() == [name]


def test_an_inactive_isolated_network_is_started_again(host: LibvirtHost) -> None:
    networks = Networks(host)
    networks.ensure_isolated("sov-iso-x")
    host.connect().networkLookupByName("sov-iso-x").destroy()

    networks.ensure_isolated("sov-iso-x")

    assert host.connect().networkLookupByName("sov-iso-x").isActive() == 1


def test_a_network_of_that_name_that_is_not_isolated_is_refused(host: LibvirtHost) -> None:
    host.connect().networkDefineXML(
        "<network><name>sov-iso-leaky</name><forward mode='nat'/>"
        "<ip address='192.0.2.1' netmask='255.255.255.0'/></network>"
    )

    with pytest.raises(EnclaveError, match=r"not isolated \(it has <forward>, <ip>\)"):
        Networks(host).ensure_isolated("sov-iso-leaky")


def test_network_remove_is_idempotent(host: LibvirtHost) -> None:
    networks = Networks(host)
    networks.ensure_isolated("sov-iso-a")
    networks.ensure_isolated("sov-iso-b")
    host.connect().networkLookupByName("sov-iso-b").destroy()  # inactive but defined

    networks.remove("sov-iso-a")
    networks.remove("sov-iso-a")
    networks.remove("sov-iso-b")
    networks.remove("never-existed")

    assert networks.list() == []


def test_networks_list_every_network_sorted(host: LibvirtHost) -> None:
    networks = Networks(host)
    for name in ("sov-iso-c", "operator-net", "sov-iso-a"):
        networks.ensure_isolated(name)

    assert networks.list() == ["operator-net", "sov-iso-a", "sov-iso-c"]


# -- all together -----------------------------------------------------------------------------


def test_concurrent_workers_converge_on_one_of_each(host: LibvirtHost) -> None:
    spec = without_network()
    xml = domain_xml(spec)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def worker() -> None:
        # Separate managers, as separate reconciler workers sharing a connection would have.
        try:
            barrier.wait()
            Networks(host).ensure_isolated("sov-iso-shared")
            Volumes(host, POOL, POOL_PATH).create("shared", 1, luks_secret_uuid=None)
            Guests(host).define(xml)
            Guests(host).start(spec.uuid)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    conn = host.connect()
    assert Networks(host).list() == ["sov-iso-shared"]
    assert [v.name() for v in conn.storagePoolLookupByName(POOL).listAllVolumes(0)] == ["shared"]
    assert [(s.name, s.state) for s in Guests(host).list()] == [(spec.name, "running")]


def test_provisioning_and_teardown_leave_nothing_behind(host: LibvirtHost) -> None:
    guests, volumes, networks = Guests(host), Volumes(host, POOL, POOL_PATH), Networks(host)
    spec = classified_two_gpus()
    assert spec.network_name is not None

    for _ in range(2):  # every step twice, as a reconciler retrying after a crash would
        networks.ensure_isolated(spec.network_name)
        path = volumes.create(spec.name, 10, luks_secret_uuid=spec.disk.luks_secret_uuid)
        guests.define(
            domain_xml(dataclasses.replace(spec, disk=dataclasses.replace(spec.disk, path=path)))
        )
        guests.start(spec.uuid)
    for _ in range(2):
        guests.stop(spec.uuid)
        guests.undefine(spec.uuid)
        volumes.delete(spec.name)
        networks.remove(spec.network_name)

    conn = host.connect()
    assert conn.listAllDomains(0) == []
    assert conn.listAllNetworks(0) == []
    assert conn.storagePoolLookupByName(POOL).listAllVolumes(0) == []
