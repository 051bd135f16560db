"""Domain lifecycle events wake the reconciler: a guest destroyed behind the control plane's
back on libvirt's real test driver is failed and cleaned up at once, not at the next interval.
Also the subscription bookkeeping on the in-memory fleet."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from enclaves.hosts import bundled_host_path
from sovereign import config as settings
from sovereign.adapters.memory_hypervisor import MemoryHost
from sovereign.bootstrap import build_hypervisor
from sovereign.worker import ReconcilerThread
from tests.support.fleet import Fleet, ensure_site, gpus, make_fleet

SECRET_ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}


def test_watch_hosts_subscribes_every_host_once_and_new_ones_later(tmp_path: Path):
    url = f"sqlite:///{tmp_path / 'w.db'}"
    from sovereign.adapters.migrations import upgrade

    upgrade(url)
    fleet = make_fleet(url, folder=tmp_path)
    try:
        woken: list[int] = []
        reconciler = fleet.reconciler()
        reconciler.watch_hosts(lambda: woken.append(1))
        reconciler.watch_hosts(lambda: woken.append(1))  # no second subscription
        hv = fleet.hypervisor
        assert {uri: len(cbs) for uri, cbs in hv.watchers.items()} == {
            "mem://secret-1": 1,
            "mem://civil-1": 1,
        }
        hv.emit("mem://secret-1", uuid.uuid4(), "crashed")
        assert woken == [1]
        hv.add_host("mem://new", MemoryHost(gpus=gpus(2)))
        ensure_site(fleet.services, "x")
        fleet.services.hosts.add(
            fleet.reconciler().ctx,
            name="new",
            uri="mem://new",
            site="x",
            accreditation=fleet.services.scheme.parse(SECRET_ALL),
        )
        reconciler.watch_hosts(lambda: woken.append(2))
        assert len(hv.watchers["mem://new"]) == 1
        reconciler.unwatch()
        assert all(not cbs for cbs in hv.watchers.values())
    finally:
        fleet.services.close()


@pytest.fixture
def libvirt_fleet(tmp_path: Path) -> Iterator[Fleet]:
    from sovereign.adapters.migrations import upgrade
    from sovereign.services.recording import utcnow

    url = f"sqlite:///{tmp_path / 'events.db'}"
    upgrade(url)
    host_file = tmp_path / "secret-h100x8.xml"
    shutil.copy(bundled_host_path("secret-h100x8"), host_file)
    config = {
        "ENCLAVE_POOL_PATH": str(tmp_path / "pool"),
        "ENCLAVE_CONSOLE_DIR": str(tmp_path),
        "HYPERVISOR_TEST_HOSTS_DIR": str(tmp_path),
    }
    app = settings.new_app()
    settings.load(app, {"ENV": "testing", **config}, check=False)
    fleet = make_fleet(
        url,
        folder=tmp_path,
        hypervisor=build_hypervisor(app.config),
        hosts={"secret-h100x8": (f"test://{host_file}", SECRET_ALL, None)},
        clock=utcnow,
        **config,
    )
    yield fleet
    fleet.services.close()


@pytest.mark.libvirt
def test_a_domain_destroyed_behind_our_back_is_handled_at_once(libvirt_fleet: Fleet):
    fleet = libvirt_fleet
    rid = fleet.request(gpus=1)
    fleet.settle()
    assert fleet.state(rid) == "running"
    # A long interval: only an event can make the thread look again within the test.
    thread = ReconcilerThread(fleet.reconciler("watcher"), interval_s=120)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while thread.passes < 1 and time.monotonic() < deadline:
            time.sleep(0.05)  # the first pass subscribes to events and finds nothing to do
        assert thread.passes == 1
        uri = fleet.services.hosts.get(fleet.reconciler().ctx, "secret-h100x8").uri
        conn = fleet.services.hypervisor._host(uri).conn.connect()  # type: ignore[attr-defined]
        conn.lookupByUUID(rid.bytes).destroy()  # as `virsh destroy` would
        while fleet.state(rid) != "terminated" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fleet.state(rid) == "terminated"
        assert thread.passes >= 2, "woken by the event, long before the 120 s interval"
        assert "enclave:fail" in fleet.actions("enclave:")
    finally:
        thread.stop()
