"""Registering hosts over HTTP with the real libvirt adapter: a URI that would run a program or
probe a port is answered 422 with the reason, audited as a denial, and never tried; and one
hypervisor registers once, whatever spelling of its URI is used (issue 10, items 1 and 2)."""

from __future__ import annotations

import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from audit import AuditQuery
from sovereign.cli_hosts import cli_context
from tests.support.apps import make_app
from tests.support.fleet import ensure_site
from tests.support.hostfiles import host_copy, other_machine

pytestmark = [pytest.mark.idp, pytest.mark.libvirt]

Call = Callable[..., Any]
SECRET_ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}


class Listener:
    """A TCP port on loopback that records every connection made to it (and closes it)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    found = Listener()
    yield found
    found.close()


@pytest.fixture
def app(tmp_path: Path, idp: Any) -> Iterator[Flask]:
    # SSH is added as an operator could; it still never carries command= and the like.
    app = make_app(
        tmp_path,
        idp.url,
        HYPERVISOR_TRANSPORTS=["qemu+tls", "qemu+ssh", "test"],
        HYPERVISOR_CONNECT_TIMEOUT_S=5,
    )
    services = app.extensions["sovereign"]
    for site in ("hall-a", "x"):
        ensure_site(services, site)
    services.hosts.add(
        cli_context(),
        name="secret-1",
        uri=f"test://{host_copy(tmp_path, 'secret-h100x8')}",
        site="hall-a",
        accreditation=services.scheme.parse(SECRET_ALL),
    )
    yield app
    services.close()


@pytest.fixture
def call(app: Flask, token: Callable[[str], str]) -> Call:
    client: FlaskClient = app.test_client()

    def do(user: str, method: str, path: str, **kw: Any) -> Any:
        headers = {"Authorization": f"Bearer {token(user)}"}
        return client.open(path, method=method, headers=headers, **kw)

    return do


def denials(app: Flask) -> list[Any]:
    services = app.extensions["sovereign"]
    services.audit.log.sequence()
    with services.uow(readonly=True) as uow:
        stored = uow.audit.query(AuditQuery(limit=10_000))
    return [
        e.event
        for e in sorted(stored, key=lambda e: e.seq)
        if e.event.action == "host:add" and e.event.outcome.value == "deny"
    ]


def host_names(call: Call) -> list[str]:
    return [h["name"] for h in call("operator", "GET", "/api/v1/hosts").get_json()["items"]]


def test_uris_that_run_programs_or_probe_ports_are_refused_untried(
    app: Flask, call: Call, tmp_path: Path, listener: Listener
):
    marker = tmp_path / "the-script-ran"
    script = tmp_path / "evil.sh"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    script.chmod(0o755)
    port = listener.port
    refused = {
        f"qemu+ext:///system?command={script}": "runs a program",
        f"qemu+ssh://user@127.0.0.1:{port}/system?command={script}": "not allowed",
        f"qemu+ssh://root@localhost/system?command={script}": "query parameter 'command'",
        f"qemu+ssh://root@localhost/system?netcat={script}": "query parameter 'netcat'",
        f"qemu+ssh://root@127.0.0.1:{port}/system": f"port {port} is not allowed",
        f"qemu+tcp://127.0.0.1:{port}/system": "neither encrypted",
        f"qemu+tls://127.0.0.1:{port}/system": f"port {port} is not allowed",
        "qemu+unix:///system?socket=/run/libvirt/libvirt-sock": "local socket",
        "test:///default": "absolute path to an .xml host file",
        "test:///etc/libvirt/x.xml": "configured test host directory",
        "QEMU+TLS://[::]/system": "not one a hypervisor can have",
        "not a uri": "printable ASCII",
    }
    for n, (uri, reason) in enumerate(refused.items()):
        body = {"name": f"bad-{n}", "uri": uri, "site": "x"}
        r = call("operator", "POST", "/api/v1/hosts", json=body)
        assert r.status_code == 422, (uri, r.get_data(as_text=True))
        assert r.mimetype == "application/problem+json"
        assert reason in r.get_json()["detail"], (uri, r.get_json())
    assert not marker.exists(), "libvirt ran the URI's command on the control plane"
    assert listener.connections == 0, "a refused URI was connected to"
    events = denials(app)
    assert [e.target for e in events] == [f"host/bad-{n}" for n in range(len(refused))]
    assert all("hypervisor URI refused" in e.reason for e in events)
    assert host_names(call) == ["secret-1"]


def test_an_allowed_but_silent_host_is_unavailable_not_refused(call: Call):
    # TEST-NET-1 on the TLS port: allowed by policy, so it is tried (and fails, bounded).
    body = {"name": "gone", "uri": "qemu+tls://192.0.2.1/system", "site": "x"}
    r = call("operator", "POST", "/api/v1/hosts", json=body)
    assert r.status_code == 503


def test_the_canonical_uri_is_stored(app: Flask, call: Call, tmp_path: Path):
    copy = other_machine(tmp_path, "civilian-h100x4", "civil")
    spelled = "TEST://" + urllib.parse.quote(f"{tmp_path}/./sub/../civil.xml", safe="/")
    (tmp_path / "sub").mkdir()
    r = call("operator", "POST", "/api/v1/hosts", json={"name": "c", "uri": spelled, "site": "x"})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["uri"] == "test://" + urllib.parse.quote(os.path.realpath(copy), safe="/")
    assert r.get_json()["host_uuid"]


def test_one_hypervisor_registers_once_whatever_the_spelling(
    app: Flask, call: Call, tmp_path: Path
):
    """The SECRET host (registered by the fixture) again, under other URIs: the same file
    spelled otherwise, a symbolic link to it, and a copy (another path, the same machine).
    Before the fix each one became a second record at UNCLASSIFIED holding the same GPUs."""
    (tmp_path / "sub").mkdir()
    (tmp_path / "alias.xml").symlink_to(tmp_path / "secret-h100x8.xml")
    host_copy(tmp_path, "secret-h100x8", as_name="same-machine")
    aliases = [
        f"test://{tmp_path}/./secret-h100x8.xml",
        f"test://{tmp_path}//secret-h100x8.xml",
        f"test://{tmp_path}/sub/../secret-h100x8.xml",
        "test://" + urllib.parse.quote(f"{tmp_path}/secret-h100x8.xml", safe=""),
        f"test://{tmp_path}/alias.xml",
        f"test://{tmp_path}/same-machine.xml",
    ]
    before = call("operator", "GET", "/api/v1/gpus").get_json()["items"]
    for n, uri in enumerate(aliases):
        body = {"name": f"alias-{n}", "uri": uri.replace("%2F", "/", 1), "site": "x"}
        r = call("operator", "POST", "/api/v1/hosts", json=body)
        assert r.status_code == 409, (uri, r.get_data(as_text=True))
        assert r.mimetype == "application/problem+json"
    assert host_names(call) == ["secret-1"]
    assert call("operator", "GET", "/api/v1/gpus").get_json()["items"] == before
    events = denials(app)
    assert [e.target for e in events] == [f"host/alias-{n}" for n in range(len(aliases))]
    # The copy is another path: only the hypervisor's identity tells it is the same machine.
    assert "registered already as host secret-1" in events[-1].reason
