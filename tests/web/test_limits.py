"""Rate limits in the console: sign-in start and callback per address, forms per signed-in
user; a breach is a 429 page with Retry-After."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from tests.integration.test_limits import assert_retry_after
from tests.web.conftest import CIVIL_FORM, Users, make_app, post, text

pytestmark = pytest.mark.idp


@pytest.fixture
def app(tmp_path: Path, console_idp: Any) -> Iterator[Flask]:
    app = make_app(
        tmp_path, console_idp.url, RATELIMIT_WRITES="3/minute", RATELIMIT_ANONYMOUS="4/minute"
    )
    yield app
    app.extensions["sovereign"].close()


def test_console_forms_are_limited_per_user(app: Flask, users: Users):
    analyst = users("analyst-research")  # two anonymous hits: sign-in start and callback
    started = time.time()
    for _ in range(3):
        assert post(analyst, "/requests", CIVIL_FORM).status_code == 303
    page = post(analyst, "/requests", CIVIL_FORM)
    assert page.status_code == 429
    assert_retry_after(page, started)
    assert "Too many requests" in text(page)
    assert page.mimetype == "text/html"
    assert analyst.get("/requests").status_code == 200  # reading goes on


def test_sign_in_is_limited_per_address(app: Flask):
    client = app.test_client()
    for _ in range(4):
        assert client.get("/auth/login").status_code == 302
    page = client.get("/auth/login")
    assert page.status_code == 429
    assert "Retry-After" in page.headers
    other = app.test_client()
    assert other.get("/auth/login", environ_base={"REMOTE_ADDR": "198.51.100.7"}).status_code == 302
