"""One machine, one host record (issue 10, item 2), on a real database over the in-memory fleet:
every alias of a registered hypervisor (another spelling, its address, another transport) is
refused, a host that answers as another machine is quarantined before anything is done on it,
and the GPU rows themselves refuse a device held by another record."""

from __future__ import annotations

import dataclasses
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclaves.uri import UriPolicy
from sovereign.adapters.memory_hypervisor import MemoryHost, MemoryHypervisor
from sovereign.errors import ConcurrentUpdateError, ConflictError, HostIdentityError
from sovereign.services.recording import utcnow
from tests.support.factories import OPERATOR, ctx
from tests.support.fleet import (
    SECRET_NATO,
    SYSTEM,
    UNCLASSIFIED,
    Fleet,
    ensure_site,
    gpus,
    make_fleet,
)

SECRET_ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}
HOME = "qemu+tls://node1.example/system"
#: Names and addresses that reach node1 (as DNS would have it).
NODE1 = ["node1.example", "192.0.2.10", "[2001:db8::10]", "node1.example.", "node1"]


@pytest.fixture
def fleet(database_url: str, tmp_path: Path) -> Iterator[Fleet]:
    hypervisor = MemoryHypervisor(UriPolicy(transports=frozenset({"qemu+tls", "qemu+ssh"})))
    made = make_fleet(
        database_url,
        folder=tmp_path,
        hypervisor=hypervisor,
        hosts={
            "node1": (HOME, SECRET_ALL, MemoryHost(gpus=gpus(8), hostname="node1.example")),
            "civil-1": ("mem://civil-1", UNCLASSIFIED, MemoryHost(gpus=gpus(4, 0x3A))),
        },
    )
    # The sites the tests register hosts at (a host names an existing site).
    for site in ("x", "elsewhere", "hall-a"):
        ensure_site(made.services, site)
    yield made
    made.services.close()


def _case(text: str, flips: list[bool]) -> str:
    return "".join(
        c.upper() if flip else c for c, flip in zip(text, flips + [False] * len(text), strict=False)
    )


@st.composite
def aliases(draw: st.DrawFn) -> str:
    """A URI that reaches node1: any host name or address of it, either transport, explicit
    default ports, any case."""
    transport = draw(st.sampled_from(["qemu+tls", "qemu+ssh"]))
    host = draw(st.sampled_from(NODE1))
    user = draw(st.sampled_from(["", "root@", "libvirt@"])) if transport == "qemu+ssh" else ""
    default = "16514" if transport == "qemu+tls" else "22"
    port = draw(st.sampled_from(["", f":{default}"]))
    flips = draw(st.lists(st.booleans(), max_size=30))
    return f"{_case(transport, flips)}://{user}{_case(host, flips[::-1])}{port}/system"


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(alias=aliases(), name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True))
def test_every_alias_of_a_registered_hypervisor_is_refused(fleet: Fleet, alias: str, name: str):
    hypervisor: MemoryHypervisor = fleet.hypervisor
    node1 = hypervisor.hosts[HOME]
    # Whatever name or address the alias uses, it reaches the same machine.
    hypervisor.add_host(hypervisor.check_uri(alias), node1)
    before = fleet.services.hosts.gpus(SYSTEM)
    with pytest.raises(ConflictError):
        fleet.services.hosts.add(
            ctx(OPERATOR),
            name=f"x{name}" if name in ("node1", "civil-1") else name,
            uri=alias,
            site="elsewhere",
            accreditation=fleet.services.scheme.lowest,
        )
    assert [h.name for h in fleet.services.hosts.list(SYSTEM)] == ["civil-1", "node1"]
    assert fleet.services.hosts.gpus(SYSTEM) == before


def test_an_alias_was_the_way_to_share_a_gpu_across_labels(fleet: Fleet):
    """The scenario of the issue: a SECRET//NATO enclave holds GPUs of node1; the same machine
    registered again at UNCLASSIFIED under its address would have handed them to civilians."""
    secret = fleet.request(SECRET_NATO, gpus=8)
    fleet.settle()
    assert fleet.state(secret) == "running"
    fleet.hypervisor.add_host("qemu+tls://192.0.2.10/system", fleet.hypervisor.hosts[HOME])
    with pytest.raises(HostIdentityError, match="registered already as host node1"):
        fleet.services.hosts.add(
            ctx(OPERATOR),
            name="node1-by-address",
            uri="qemu+tls://192.0.2.10/system",
            site="hall-a",
            accreditation=fleet.services.scheme.lowest,
        )
    denied = fleet.events("host:add")[-1]
    assert (denied.outcome.value, denied.target) == ("deny", "host/node1-by-address")
    civil = fleet.request(UNCLASSIFIED, gpus=4, civilian=True)
    fleet.settle()
    with fleet.services.uow(readonly=True) as uow:
        enclave = uow.enclaves.get(civil)
    assert enclave is not None
    assert enclave.host == "civil-1"


def test_a_host_that_answers_as_another_machine_is_quarantined(fleet: Fleet):
    node1 = fleet.hypervisor.hosts[HOME]
    # The name now reaches another machine (DNS changed, a box swapped in the rack).
    fleet.hypervisor.hosts[HOME] = dataclasses.replace(node1, host_uuid=str(uuid.uuid4()))
    report = fleet.reconciler().run_once()
    assert report.drift == ["host node1: hypervisor identity changed"]
    host = {h.name: h for h in fleet.services.hosts.list(SYSTEM)}["node1"]
    assert host.state == "quarantined"
    assert "another machine" in host.reason
    quarantine = fleet.events("host:quarantine")[-1]
    assert quarantine.target == "host/node1"
    assert "another machine" in quarantine.reason
    # Nothing is placed on it, and nothing is done on the machine that answers there.
    request = fleet.request(SECRET_NATO, gpus=2)
    calls = len(fleet.hypervisor.calls)
    fleet.settle()
    assert fleet.state(request) == "approved"
    assert len(fleet.hypervisor.calls) == calls
    # Quarantined once: later passes do not repeat the event.
    fleet.reconciler().run_once()
    assert len(fleet.events("host:quarantine")) == 1


def test_a_changed_hostname_is_a_changed_identity(fleet: Fleet):
    node1 = fleet.hypervisor.hosts[HOME]
    fleet.hypervisor.hosts[HOME] = dataclasses.replace(node1, hostname="intruder.example")
    fleet.reconciler().run_once()
    host = {h.name: h for h in fleet.services.hosts.list(SYSTEM)}["node1"]
    assert host.state == "quarantined"
    assert "intruder.example" in host.reason


def test_rediscovery_of_a_changed_host_quarantines_it(fleet: Fleet):
    node1 = fleet.hypervisor.hosts[HOME]
    fleet.hypervisor.hosts[HOME] = dataclasses.replace(node1, host_uuid=str(uuid.uuid4()))
    with pytest.raises(HostIdentityError):
        fleet.services.hosts.discover(SYSTEM, "node1")
    assert fleet.services.hosts.get(SYSTEM, "node1").state == "quarantined"


def test_hosts_recorded_before_identities_get_theirs_or_quarantine(fleet: Fleet):
    """Hosts registered before migration 0006 have no identity: the reconciler records what
    the hypervisor answers, unless another record is that machine (then it quarantines)."""
    alias = "qemu+tls://192.0.2.10/system"
    fleet.hypervisor.add_host(alias, fleet.hypervisor.hosts[HOME])
    with fleet.services.uow() as uow:
        now = utcnow()
        for name, uri in (("legacy", alias), ("civil-1", None)):
            host = uow.hosts.get(name) if uri is None else None
            if host is None:
                template = uow.hosts.get("civil-1")
                assert template is not None
                host = dataclasses.replace(
                    template, id=uuid.uuid4(), name=name, uri=str(uri), created_at=now
                )
                host.host_uuid = host.hostname = None
                uow.hosts.add(host)
            else:
                host.host_uuid = host.hostname = None
                uow.hosts.update(host)
        uow.commit()
    fleet.reconciler().run_once()
    hosts = {h.name: h for h in fleet.services.hosts.list(SYSTEM)}
    assert hosts["civil-1"].host_uuid == fleet.hypervisor.hosts["mem://civil-1"].host_uuid
    assert hosts["civil-1"].state == "active"
    assert hosts["legacy"].state == "quarantined"
    assert "registered already as host node1" in hosts["legacy"].reason
    assert [e.target for e in fleet.events("host:identify")] == ["host/civil-1"]


def test_gpu_rows_refuse_a_device_another_record_holds(fleet: Fleet):
    """Defence in depth below the service: (host identity, PCI address) and the GPU's own UUID
    are unique in the gpus table."""
    with fleet.services.uow(readonly=True) as uow:
        held = uow.gpus.list("node1")[0]
    with pytest.raises(ConcurrentUpdateError), fleet.services.uow() as uow:
        twin = dataclasses.replace(held, host="civil-1")
        uow.gpus.add(twin)
        uow.commit()
    nvml = "GPU-7f0c1d2e-3b4a-5968-7a8b-9c0d1e2f3a4b"
    with fleet.services.uow() as uow:
        first = dataclasses.replace(held, host="civil-1", address="0000:99:00.0", uuid=nvml)
        first.host_uuid = fleet.hypervisor.hosts["mem://civil-1"].host_uuid
        uow.gpus.add(first)
        uow.commit()
    with pytest.raises(ConcurrentUpdateError), fleet.services.uow() as uow:
        second = dataclasses.replace(first, address="0000:9a:00.0")
        uow.gpus.add(second)
        uow.commit()


def test_a_host_that_reports_no_uuid_is_not_registered(fleet: Fleet):
    fleet.hypervisor.add_host("mem://anonymous", MemoryHost(host_uuid=None))
    with pytest.raises(Exception, match="no host UUID"):
        fleet.services.hosts.add(
            SYSTEM,
            name="anonymous",
            uri="mem://anonymous",
            site="x",
            accreditation=fleet.services.scheme.lowest,
        )


def test_a_stored_uri_the_policy_refuses_is_never_opened(fleet: Fleet):
    """A host recorded with a URI the policy refuses now (an older release accepted it) is
    quarantined by the reconciler; neither watching nor the drift check connects to it."""
    refused = "qemu+ssh://root@old.example/system?command=/tmp/evil"
    fleet.hypervisor.add_host(refused, MemoryHost(gpus=gpus(2, 0x60)))
    with fleet.services.uow() as uow:
        template = uow.hosts.get("civil-1")
        assert template is not None
        uow.hosts.add(
            dataclasses.replace(
                template,
                id=uuid.uuid4(),
                name="old",
                uri=refused,
                host_uuid=str(uuid.uuid4()),
                created_at=utcnow(),
            )
        )
        uow.commit()
    reconciler = fleet.reconciler()
    reconciler.watch_hosts(lambda: None)
    reconciler.run_once()
    host = fleet.services.hosts.get(SYSTEM, "old")
    assert host.state == "quarantined"
    assert "not allowed by the URI policy" in host.reason
    assert refused not in fleet.hypervisor.connected


@st.composite
def file_aliases(draw: st.DrawFn, folder: Path) -> str:
    """Another spelling of ``folder/secret.xml``, or another path to the same machine."""
    target = draw(st.sampled_from(["secret.xml", "link.xml", "copy.xml", "sub/../secret.xml"]))
    noise = draw(st.lists(st.sampled_from(["", "/.", "/", "/sub/.."]), max_size=3))
    path = f"{folder}{''.join(noise)}/{target}"
    encoded = draw(st.booleans())
    quoted = urllib.parse.quote(path, safe="/" if not encoded else "")
    scheme = draw(st.sampled_from(["test", "TEST", "Test"]))
    return f"{scheme}://{quoted.replace('%2F', '/', 1)}"


@pytest.mark.libvirt
def test_every_alias_of_a_test_driver_host_is_refused(database_url: str, tmp_path: Path):
    """The same property on libvirt's test driver: spellings of the registered file, a
    symbolic link to it and a copy of it (another path, the same machine) are all refused."""
    from sovereign import config as sovereign_config
    from sovereign.bootstrap import build_hypervisor
    from tests.support.hostfiles import host_copy

    folder = tmp_path / "hosts"
    (folder / "sub").mkdir(parents=True)
    host_copy(folder, "secret-h100x8", as_name="secret")
    host_copy(folder, "secret-h100x8", as_name="copy")
    (folder / "link.xml").symlink_to(folder / "secret.xml")
    config = {
        "ENCLAVE_POOL_PATH": str(tmp_path / "pool"),
        "ENCLAVE_CONSOLE_DIR": str(tmp_path),
        "HYPERVISOR_TEST_HOSTS_DIR": str(folder),
    }
    app = sovereign_config.new_app()
    sovereign_config.load(app, {"ENV": "testing", **config}, check=False)
    fleet = make_fleet(
        database_url,
        folder=tmp_path,
        hypervisor=build_hypervisor(app.config),
        hosts={"secret-1": (f"test://{folder}/secret.xml", SECRET_ALL, None)},
        clock=utcnow,
        **config,
    )
    ensure_site(fleet.services, "x")
    try:
        before = fleet.services.hosts.gpus(SYSTEM)

        @settings(max_examples=40, deadline=None)
        @given(alias=file_aliases(folder))
        def refused(alias: str) -> None:
            with pytest.raises(ConflictError):
                fleet.services.hosts.add(
                    ctx(OPERATOR),
                    name="alias",
                    uri=alias,
                    site="x",
                    accreditation=fleet.services.scheme.lowest,
                )

        refused()
        assert [h.name for h in fleet.services.hosts.list(SYSTEM)] == ["secret-1"]
        assert fleet.services.hosts.gpus(SYSTEM) == before
    finally:
        fleet.services.close()
