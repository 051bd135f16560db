"""The console in-process: the dev IdP over real HTTP (its login page driven with requests, as
a browser would), a real SQLite database, and the Flask test client with its cookie jar."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from devstack.idp import DEMO_PASSWORD, DEMO_USERS, DemoUser, start_dev_idp
from tests.support.apps import AheadClock, make_app
from tests.support.users import LOW_CLEARANCE_USERS

#: The test client's origin; the IdP must know the console's callback there.
ORIGIN = "http://localhost"
CALLBACK = f"{ORIGIN}/auth/callback"
#: Where the app fixture keeps its services' clock (:func:`clock_of`).
CLOCK = "tests.clock"
#: Extra demo users: an officer who is also an analyst (separation of duties), an auditor
#: cleared only for UNCLASSIFIED (label filtering), and an officer cleared only for RESTRICTED
#: (what the kill switch tells someone below what exists).
EXTRA_USERS = (
    DemoUser(
        username="analyst-officer",
        password=DEMO_PASSWORD,
        name="Analyst Officer",
        roles=("analyst", "security-officer"),
        groups=("/tenants/defence",),
        clearance="SECRET",
        compartments=("NATO",),
    ),
    *LOW_CLEARANCE_USERS,
)

SECRET_FORM: dict[str, Any] = {
    "tenant": "defence",
    "level": "SECRET",
    "compartments": ["NATO"],
    "image": "debian-12-cuda",
    "vcpus": "16",
    "memory_gib": "64",
    "gpus": "2",
    "gpu_model": "H100-SXM5-80GB",
    "disk_gib": "200",
    "lease_hours": "24",
    "purpose": "fine-tune a translation model",
}
CIVIL_FORM: dict[str, Any] = {
    **SECRET_FORM,
    "tenant": "research",
    "level": "UNCLASSIFIED",
    "compartments": [],
    "image": "ubuntu-24.04-research",
    "purpose": "protein folding",
}


@pytest.fixture(scope="session")
def console_idp() -> Iterator[Any]:
    """A dev IdP that knows the test client's callback and the extra users."""
    handle, _app = start_dev_idp(
        environment="testing",
        users=(*DEMO_USERS, *EXTRA_USERS),
        extra_redirect_uris=[CALLBACK],
        extra_post_logout_redirect_uris=[f"{ORIGIN}/"],
    )
    yield handle
    handle.stop()


@pytest.fixture
def app(tmp_path: Path, console_idp: Any) -> Iterator[Flask]:
    clock = AheadClock()
    app = make_app(tmp_path, console_idp.url, clock=clock)
    app.extensions[CLOCK] = clock
    yield app
    app.extensions["sovereign"].close()


class _LoginForm(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action: str | None = None
        self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.action = a.get("action")
        if tag == "input" and a.get("type") == "hidden" and a.get("name"):
            self.hidden[str(a["name"])] = a.get("value") or ""


def at_idp(auth_url: str, username: str, password: str = DEMO_PASSWORD) -> str:
    """Do the browser's part at the IdP: open its login page, submit the form; return where
    the IdP redirects back to (the console's callback with code and state)."""
    with requests.Session() as http:
        page = http.get(auth_url, timeout=10)
        assert page.status_code == 200, page.text
        form = _LoginForm()
        form.feed(page.text)
        assert form.action is not None
        done = http.post(
            urljoin(auth_url, form.action),
            data={**form.hidden, "username": username, "password": password},
            allow_redirects=False,
            timeout=10,
        )
    assert done.status_code == 302, done.text
    location = done.headers["Location"]
    assert location.startswith(CALLBACK + "?"), location
    return location


def sign_in(
    client: FlaskClient, username: str, *, next_url: str = "/", step_up: bool = False
) -> TestResponse:
    """Sign ``username`` in through the real IdP; returns the callback's response."""
    query = {"next": next_url, **({"step_up": "1"} if step_up else {})}
    started = client.get("/auth/login", query_string=query)
    assert started.status_code == 302, started.get_data(as_text=True)
    return client.get(at_idp(started.headers["Location"], username))


@dataclass
class Users:
    """A signed-in test client per user, all on one app."""

    app: Flask
    clients: dict[str, FlaskClient]

    def __call__(self, username: str) -> FlaskClient:
        if username not in self.clients:
            client = self.app.test_client()
            response = sign_in(client, username)
            assert response.status_code == 302, response.get_data(as_text=True)
            self.clients[username] = client
        return self.clients[username]


@contextmanager
def bundled_app(tmp_path: Path, idp_url: str) -> Iterator[Flask]:
    """The console app with the embedded default's sites and simulated hosts registered (a
    test module's ``app`` fixture uses it where its pages need hosts)."""
    from devstack.cli import _register_bundled_hosts

    app = make_app(
        tmp_path,
        idp_url,
        ENCLAVE_POOL_PATH=str(tmp_path / "pool"),
        ENCLAVE_CONSOLE_DIR=str(tmp_path / "consoles"),
    )
    _register_bundled_hosts(app.extensions["sovereign"])
    try:
        yield app
    finally:
        app.extensions["sovereign"].close()


@pytest.fixture
def users(app: Flask) -> Users:
    """``users("officer-1")``: a test client signed in as that demo user."""
    return Users(app, {})


def csrf(client: FlaskClient, path: str = "/") -> str:
    """The session's CSRF token, read from a page's form as a browser would."""
    html = client.get(path).get_data(as_text=True)
    marker = 'name="csrf_token" value="'
    start = html.index(marker) + len(marker)
    return html[start : html.index('"', start)]


def post(client: FlaskClient, path: str, data: dict[str, Any] | None = None) -> TestResponse:
    """A form post with the session's CSRF token."""
    return client.post(path, data={**(data or {}), "csrf_token": csrf(client)})


def text(response: TestResponse) -> str:
    """A response's body as text."""
    return response.get_data(as_text=True)


def banners(html: str) -> list[str]:
    """The classification banners of a page, top and bottom."""
    marker = 'role="note" aria-label="Classification of this page: '
    found = []
    at = html.find(marker)
    while at >= 0:
        start = at + len(marker)
        found.append(html[start : html.index('"', start)])
        at = html.find(marker, start)
    return found


def clock_of(app: Flask) -> AheadClock:
    """The services' clock of the app fixture; move it ahead to age every sign-in."""
    clock: AheadClock = app.extensions[CLOCK]
    return clock


def session_of(app: Flask, client: FlaskClient) -> Any:
    """The server-side session behind the client's cookie."""
    console = app.extensions["sovereign.console"]
    cookie = client.get_cookie(console.cookie_name)
    assert cookie is not None
    return console.store.get(cookie.value)


def sequence(app: Flask) -> None:
    """What the worker does every 0.5 s: put queued events into the Merkle log and sign."""
    app.extensions["sovereign"].audit.log.sequence()


def request_id_from(response: TestResponse) -> str:
    """The request id in a redirect to its page."""
    path = urlsplit(response.headers["Location"]).path
    assert path.startswith("/requests/"), path
    return path.rsplit("/", 1)[1]


def query_of(url: str) -> dict[str, list[str]]:
    """The query parameters of ``url``."""
    return parse_qs(urlsplit(url).query)
