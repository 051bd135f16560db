"""The dev IdP's brute-force detection over HTTP, as Keycloak's: after ``failure_factor`` wrong
passwords a user waits, every attempt meanwhile (the right password too) gets the wrong-password
answer, and the right password works again once the wait is over."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from keycloak import KeycloakOpenID
from keycloak.exceptions import KeycloakAuthenticationError
from keycloak.pkce_utils import generate_code_challenge, generate_code_verifier

from devstack.idp import (
    CLI_CLIENT_ID,
    DEMO_PASSWORD,
    BruteForceSettings,
    ServerHandle,
    start_dev_idp,
)
from tests.integration.test_devidp import CALLBACK, oauth_error, start_login, submit_login

pytestmark = pytest.mark.idp

#: Three failures lock for one second; no quick-login lock, so the test decides the pace.
SETTINGS = BruteForceSettings(
    failure_factor=3, wait_increment_s=1, max_failure_wait_s=2, quick_login_check_ms=0
)


@pytest.fixture
def idp() -> Iterator[ServerHandle]:
    handle, _app = start_dev_idp(environment="testing", brute_force=SETTINGS)
    yield handle
    handle.stop()


@pytest.fixture
def cli(idp: ServerHandle) -> KeycloakOpenID:
    return KeycloakOpenID(server_url=idp.url, realm_name="sovereign", client_id=CLI_CLIENT_ID)


def refused(cli: KeycloakOpenID, username: str, password: str) -> None:
    with pytest.raises(KeycloakAuthenticationError) as excinfo:
        cli.token(username, password)
    assert excinfo.value.response_code == 401
    assert oauth_error(excinfo.value) == "invalid_grant"
    assert b"Invalid user credentials" in (excinfo.value.response_body or b"")


def test_the_token_endpoint_locks_a_user_out_then_lets_them_back(cli: KeycloakOpenID):
    for _ in range(3):
        refused(cli, "auditor", "wrong")
    # Locked: the right password gets exactly the wrong-password answer.
    refused(cli, "auditor", DEMO_PASSWORD)
    assert cli.token("officer-1", DEMO_PASSWORD)["access_token"]  # others are not affected
    time.sleep(1.2)
    assert cli.token("auditor", DEMO_PASSWORD)["access_token"]


def test_the_wait_grows_with_the_failures(cli: KeycloakOpenID):
    for _ in range(3):
        refused(cli, "auditor", "wrong")
    # Past failure_factor every further failure locks again, for increment * (n // factor):
    # the fourth and fifth for 1 s, the sixth for 2 s (max_failure_wait_s).
    for _ in range(3):
        time.sleep(1.1)
        refused(cli, "auditor", "wrong")
    time.sleep(1.1)
    refused(cli, "auditor", DEMO_PASSWORD)  # still waiting
    time.sleep(1.0)
    assert cli.token("auditor", DEMO_PASSWORD)["access_token"]
    # A right password cleared the count: one more failure does not lock.
    refused(cli, "auditor", "wrong")
    assert cli.token("auditor", DEMO_PASSWORD)["access_token"]


def test_the_login_page_locks_a_user_out_without_saying_so(cli: KeycloakOpenID):
    challenge, method = generate_code_challenge(generate_code_verifier())
    url = cli.auth_url(
        redirect_uri=CALLBACK,
        scope="openid",
        state="s",
        nonce="n",
        code_challenge=challenge,
        code_challenge_method=method,
    )
    with requests.Session() as http:
        form, _page = start_login(http, url)
        for _ in range(3):
            wrong = submit_login(http, url, form, "officer-2", "wrong")
            assert wrong.status_code == 401
            assert "Invalid username or password." in wrong.text
        locked = submit_login(http, url, form, "officer-2", DEMO_PASSWORD)
        assert (locked.status_code, wrong.text) == (401, locked.text)  # indistinguishable
        time.sleep(1.2)
        done = submit_login(http, url, form, "officer-2", DEMO_PASSWORD)
        assert done.status_code == 302
        assert done.headers["Location"].startswith(CALLBACK + "?")


def test_detection_can_be_turned_off():
    handle, _app = start_dev_idp(environment="testing", brute_force=None)
    try:
        cli = KeycloakOpenID(server_url=handle.url, realm_name="sovereign", client_id=CLI_CLIENT_ID)
        for _ in range(40):
            refused(cli, "auditor", "wrong")
        assert cli.token("auditor", DEMO_PASSWORD)["access_token"]
    finally:
        handle.stop()
