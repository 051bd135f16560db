"""``sovereign serve`` over real HTTP: gunicorn in front of the app, as production runs it, and
which of them answers an oversized request header (issue 10 item 12)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.stack import free_port
from sovereign.adapters.migrations import upgrade
from sovereign.cli import SERVER_HEADER_FIELD_FACTOR
from sovereign.config import DEFAULTS

pytestmark = pytest.mark.idp


@pytest.fixture
def served(tmp_path: Path, idp: Any) -> Iterator[str]:
    """The control plane under ``sovereign serve`` (gunicorn); its base URL."""
    upgrade(f"sqlite:///{tmp_path / 'sovereign.db'}")
    port = free_port()
    env = {
        **os.environ,
        "SOVEREIGN_INSTANCE_PATH": str(tmp_path),
        "SOVEREIGN_ENV": "testing",
        "SOVEREIGN_IDP_URL": idp.url,
    }
    command = [str(Path(sys.executable).with_name("sovereign")), "serve", "--threads", "2"]
    server = subprocess.Popen(
        [*command, "--bind", f"127.0.0.1:{port}"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, "sovereign serve exited"
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except (requests.ConnectionError, requests.Timeout):
                pass
            assert time.monotonic() < deadline, "sovereign serve did not answer in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_an_oversized_header_gets_the_apps_problem_json(served: str):
    limit = DEFAULTS["MAX_HEADER_BYTES"]
    # The case: a 64 KiB Authorization header, under gunicorn's per-field limit.
    for size in (limit + 1, 64 * 1024):
        r = requests.get(
            f"{served}/api/v1/requests",
            headers={"Authorization": "Bearer " + "a" * size},
            timeout=10,
        )
        assert r.status_code == 431, r.text
        assert r.headers["Content-Type"] == "application/problem+json"
        body = r.json()
        assert body["status"] == 431
        assert f"at most {limit}" in body["detail"]
        assert r.headers["X-Request-ID"]
    ok = requests.get(
        f"{served}/api/v1/requests", headers={"Authorization": "Bearer x"}, timeout=10
    )
    assert ok.status_code == 401
    assert ok.headers["Content-Type"] == "application/problem+json"


def test_beyond_gunicorns_own_limit_gunicorn_answers(served: str):
    # Documented in the README: past SERVER_HEADER_FIELD_FACTOR x MAX_HEADER_BYTES in one
    # field, gunicorn refuses before the app runs, with its own page.
    size = SERVER_HEADER_FIELD_FACTOR * DEFAULTS["MAX_HEADER_BYTES"] + 1
    r = requests.get(f"{served}/healthz", headers={"X-Big": "a" * size}, timeout=10)
    assert r.status_code == 431
    assert r.headers["Content-Type"].startswith("text/html")


def test_the_app_itself_answers_431_under_any_server(tmp_path: Path, idp: Any):
    from tests.support.apps import make_app

    app = make_app(tmp_path, idp.url, MAX_HEADER_BYTES=2048)
    try:
        client = app.test_client()
        r = client.get("/healthz", headers={"X-Padding": "a" * 2048})
        assert r.status_code == 431
        assert r.mimetype == "application/problem+json"
        assert client.get("/healthz", headers={"X-Padding": "a" * 1000}).status_code == 200
        # The console's pages too: nothing runs before the check.
        assert client.get("/", headers={"X-Padding": "a" * 4096}).status_code == 431
    finally:
        app.extensions["sovereign"].close()
