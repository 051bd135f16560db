"""The console in a real browser: headless Chromium (Debian's, driven by Playwright) against a
served app, the dev IdP over HTTP and a real SQLite database, with JavaScript switched off to
prove every step works without it.

The served app runs like ``sovereign dev``: the audit sequencer and the reconciler in-process,
over the bundled simulated hosts on libvirt's test driver. An analyst signs in at the IdP's
login page and requests a SECRET enclave; officer-1 sees where it would be placed, approves and
sees "1 of 2 approvals: officer-1"; the analyst cannot approve their own request; officer-2
approves and the analyst's "My enclaves" shows it running; the analyst submits a job through
the enclave page's upload form, watches its page until it succeeded and downloads its output;
officer-1 looks at the hosts and
GPUs and pulls the kill switch for SECRET//NATO, which waits for officer-2's confirmation under
two-person actions, and the enclave is torn down; the auditor finds it all in the event browser
and "verify now" says the log is intact. Each page is saved as a screenshot under
``test-artifacts/console/`` (``SOVEREIGN_TEST_ARTIFACTS`` moves it; CI keeps that folder), and
with ``SOVEREIGN_UPDATE_README_SCREENSHOTS=1`` the main ones are copied to docs/console/ for the
README. Missing Chromium fails the test: it never skips.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack.cli import _start_background
from devstack.idp import DEMO_PASSWORD, start_dev_idp
from devstack.idp.server import serve_in_thread
from devstack.stack import free_port
from tests.support.apps import make_app

pytestmark = [pytest.mark.browser, pytest.mark.idp, pytest.mark.libvirt]

CHROMIUM = Path("/usr/bin/chromium")
#: ENVIRONMENT.md: Debian's Chromium, headless, no sandbox (root), nothing phoning home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "console"
ARTIFACTS = Path(os.environ.get("SOVEREIGN_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "console"
UPDATE_README = os.environ.get("SOVEREIGN_UPDATE_README_SCREENSHOTS") == "1"
#: Screenshots that illustrate the README's tour.
FOR_README = {
    "01-sign-in",
    "03-request-form",
    "05-officer-queue",
    "06-one-of-two",
    "08-approved",
    "09-audit-events",
    "10-audit-verified",
    "12-my-enclaves-running",
    "13-enclave-detail",
    "14-hosts-and-gpus",
    "15-host-detail",
    "16-kill-switch",
    "17-kill-switch-proposed",
    "18-two-person-actions",
}
TIMEOUT_MS = 15_000
#: The job the analyst submits through the form: it logs and leaves one output.
JOB_MAIN = b"""import json, sys
print("epochs", sys.argv[2] + ",", "accuracy 0.93")
json.dump({"accuracy": 0.93}, open("metrics.json", "w"))
"""
#: How long the reconciler may take to bring an approved enclave up (or down).
RECONCILE_S = 15


@dataclass
class Stack:
    """The served console and what the test needs to reach it."""

    base: str
    app: Any
    shots: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("console")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    idp, _idp_app = start_dev_idp(
        environment="testing",
        extra_redirect_uris=[f"{base}/auth/callback"],
        extra_post_logout_redirect_uris=[f"{base}/"],
    )
    app = make_app(
        tmp,
        idp.url,
        AUDIT_SEQUENCER_INTERVAL_S=0.2,
        RECONCILER_INTERVAL_S=0.2,
    )
    background = ExitStack()
    # As `sovereign dev` does: the bundled simulated hosts, the sequencer and the reconciler.
    _start_background(background, app)
    _handed_over(app)
    server = serve_in_thread(app, port=port)
    shots = ARTIFACTS
    shots.mkdir(parents=True, exist_ok=True)
    try:
        yield Stack(base=base, app=app, shots=shots)
    finally:
        server.stop()
        background.close()
        idp.stop()
        app.extensions["sovereign"].close()


def _handed_over(app: Any) -> None:
    """Wait until the reconciler handed every new GPU over (each one is scrubbed by the scrub
    program on simulated device memory before it is free, which takes a moment)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with app.extensions["sovereign"].uow(readonly=True) as uow:
            states = {gpu.state for gpu in uow.gpus.list()}
        if states and not states & {"dirty", "sanitizing"}:
            return
        time.sleep(0.2)
    raise AssertionError(f"the GPUs were not handed over in time: {sorted(states)}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium (make test does); "
            "browser tests never skip and never download a browser"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


class User:
    """One person's browser: its own cookies, JavaScript off."""

    def __init__(self, browser: Any, stack: Stack, name: str) -> None:
        self.stack = stack
        self.name = name
        self.context = browser.new_context(
            java_script_enabled=False, viewport={"width": 1280, "height": 860}
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()

    def goto(self, path: str) -> Any:
        return self.page.goto(self.stack.base + path)

    def shot(self, name: str) -> None:
        path = self.stack.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        if UPDATE_README and name in FOR_README:
            DOCS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, DOCS / f"{name}.png")

    def sign_in_at_idp(self, shot: str | None = None) -> None:
        """On the IdP's login page: type the credentials and submit (keyboard only)."""
        page = self.page
        page.wait_for_selector("#username")
        assert page.title() == "Sign in to sovereign"
        if shot:
            self.shot(shot)
        page.focus("#username")
        page.keyboard.type(self.name)
        page.keyboard.press("Tab")
        page.keyboard.type(DEMO_PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(re.compile(re.escape(self.stack.base) + ".*"))

    def wait_for_state(self, path: str, wanted: str) -> None:
        """Reload ``path`` until its first state badge says ``wanted`` (the reconciler runs
        in the background)."""
        for _ in range(RECONCILE_S * 5):
            self.goto(path)
            if self.page.locator(".state").first.inner_text() == wanted:
                return
            self.page.wait_for_timeout(200)
        raise AssertionError(f"{path} never showed {wanted!r}")

    def banners(self) -> list[str]:
        return [
            self.page.inner_text(".banner >> nth=0"),
            self.page.inner_text(".banner >> nth=-1"),
        ]

    def close(self) -> None:
        self.context.close()


def tmp_download(download: Any) -> bytes:
    """The bytes of a finished download."""
    path = download.path()
    assert path is not None, download.failure()
    return Path(path).read_bytes()


def unlabelled_fields(page: Any) -> list[str]:
    """Ids of visible form fields without a label (JavaScript off: read the HTML)."""
    html = page.content()
    ids = re.findall(r'<(?:input|select|textarea)[^>]*\bid="([^"]+)"', html)
    hidden = set(re.findall(r'<input[^>]*type="hidden"[^>]*\bid="([^"]+)"', html))
    labelled = set(re.findall(r'<label for="([^"]+)"', html))
    return [i for i in ids if i not in labelled and i not in hidden]


def test_request_two_officer_approval_and_audit_in_the_browser(browser: Any, stack: Stack):
    # -- the analyst signs in at the IdP and requests a SECRET enclave -----------------------
    analyst = User(browser, stack, "analyst-defence")
    analyst.goto("/")
    assert analyst.banners() == ["UNCLASSIFIED", "UNCLASSIFIED"]
    # Keyboard first: the first Tab reaches the skip link, which leads to the content.
    analyst.page.keyboard.press("Tab")
    assert analyst.page.evaluate("document.activeElement.className") == "skip-link"
    analyst.page.click("#sign-in")
    analyst.sign_in_at_idp(shot="01-sign-in")
    assert "Signed in as analyst-defence." in analyst.page.inner_text("main")
    analyst.shot("02-analyst-overview")

    analyst.page.click("nav >> text=Request an enclave")
    page = analyst.page
    assert page.inner_text("h1") == "Request an enclave"
    assert unlabelled_fields(page) == []
    assert page.locator("#tenant option").all_inner_texts() == ["defence (up to SECRET//NATO)"]
    assert "8 GPUs, 256 vCPUs, 2048 GiB memory, 16384 GiB disk" in page.inner_text("table")
    page.select_option("#level", "SECRET")
    page.check("#compartment-NATO")
    page.select_option("#image", "debian-12-cuda")
    page.fill("#gpus", "2")
    page.fill("#vcpus", "16")
    page.fill("#memory_gib", "64")
    # The libvirt test driver's storage pools hold 100 GiB.
    page.fill("#disk_gib", "50")
    page.fill("#lease_hours", "24")
    page.fill("#purpose", "Fine-tune a translation model on NATO-releasable corpora")
    analyst.shot("03-request-form")
    page.click("button:has-text('File the request')")
    page.wait_for_url(re.compile(r".*/requests/[0-9a-f-]{36}$"))
    request_path = page.url[len(stack.base) :]
    request_id = request_path.rsplit("/", 1)[1]
    assert page.inner_text("#approval-status") == "0 of 2 approvals"
    assert analyst.banners() == ["SECRET//NATO", "SECRET//NATO"]
    analyst.shot("04-request-filed")

    # -- the analyst cannot approve their own request ----------------------------------------
    assert page.locator("#approve").count() == 0
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    forged = analyst.context.request.post(
        f"{stack.base}{request_path}/approve", form={"csrf_token": token, "reason": "mine"}
    )
    assert forged.status == 403
    assert "only security officers may approve or reject" in forged.text()

    # -- officer-1 approves: one of two ------------------------------------------------------
    officer1 = User(browser, stack, "officer-1")
    officer1.goto("/queue")  # not signed in: the console sends the browser to the IdP
    officer1.sign_in_at_idp()
    page = officer1.page
    assert page.url == f"{stack.base}/queue"
    assert "awaiting your decision" in page.inner_text("table")
    assert officer1.banners() == ["SECRET//NATO", "SECRET//NATO"]
    officer1.shot("05-officer-queue")
    page.click(f"a[href='{request_path}']")
    # The placement preview: where the request would go, and why the other hosts would not
    # (the Portuguese one is outside the tenant's residency before its accreditation counts).
    assert page.inner_text("#placement-choice").startswith("Would go to secret-h100x8, GPUs 0000:")
    assert page.inner_text("#placement-reasons") == (
        "civilian-h100x4 — accreditation UNCLASSIFIED does not dominate SECRET//NATO\n"
        "civilian-pt-1 — country PT not allowed for tenant defence"
    )
    page.fill("#approve-reason", "Justified by the mission brief; NATO releasable data only.")
    page.click("#approve")
    # The page being left has an #approval-status too: wait for the new one's text.
    page.wait_for_selector("#approval-status:has-text('1 of 2 approvals: officer-1')")
    assert page.inner_text("#approval-status") == "1 of 2 approvals: officer-1"
    assert "1 of 2 approvals: officer-1" in page.inner_text(".message")
    assert page.locator("#approve").count() == 0
    officer1.shot("06-one-of-two")

    # -- officer-2 approves: the request is approved -----------------------------------------
    officer2 = User(browser, stack, "officer-2")
    officer2.goto(request_path)
    officer2.sign_in_at_idp()
    page = officer2.page
    officer2.shot("07-officer-2-decides")
    page.click("#approve")
    page.wait_for_selector("#approval-status:has-text('2 of 2 approvals')")
    assert page.inner_text("#approval-status") == "2 of 2 approvals: officer-1, officer-2"
    assert page.inner_text(".state") == "approved"
    officer2.shot("08-approved")

    # -- the reconciler brings it up: the analyst sees it running ----------------------------
    analyst.page.click("nav >> text=My enclaves")
    analyst.wait_for_state("/enclaves", "running")
    page = analyst.page
    row = page.inner_text("table.enclaves tbody tr")
    assert "secret-h100x8" in row and "es-mad-1" in row
    assert re.search(r"2 GPUs: 0000:[0-9a-f]{2}:00\.0, 0000:[0-9a-f]{2}:00\.0", row)
    assert analyst.banners() == ["SECRET//NATO", "SECRET//NATO"]
    analyst.shot("12-my-enclaves-running")
    page.click(f"a[href='/enclaves/{request_id}']")
    assert page.inner_text("#enclave-host") == "secret-h100x8 (site es-mad-1)"
    assert page.locator("#console-log").count() == 1
    assert page.locator("#terminate").count() == 1
    assert unlabelled_fields(page) == []
    analyst.shot("13-enclave-detail")

    # -- the analyst submits a job through the form, follows it and downloads its output ------
    assert page.inner_text("#jobs") == "No jobs in this enclave yet."
    page.set_input_files(
        "#job-files",
        files=[{"name": "main.py", "mimeType": "text/x-python", "buffer": JOB_MAIN}],
    )
    page.fill("#job-entrypoint", "main.py")
    page.fill("#job-args", "--epochs\n2")
    page.fill("#job-outputs", "metrics.json")
    page.fill("#job-max_runtime_s", "60")
    analyst.shot("13a-job-form")
    page.click("#submit-job")
    page.wait_for_url(re.compile(r".*/jobs/[0-9a-f-]{36}$"))
    job_path = page.url[len(stack.base) :]
    assert analyst.banners() == ["SECRET//NATO", "SECRET//NATO"]
    analyst.wait_for_state(job_path, "succeeded")
    assert "epochs 2, accuracy 0.93" in page.inner_text("#job-log")
    assert page.inner_text("#job-exit-code") == "0"
    analyst.shot("13b-job-succeeded")
    with page.expect_download() as download:
        page.click("#job-outputs a:has-text('metrics.json')")
    saved = tmp_download(download.value)
    assert saved == b'{"accuracy": 0.93}'
    page.goto(f"{stack.base}/enclaves/{request_id}")

    # -- officer-1: hosts and GPUs, then the kill switch, which takes two officers ------------
    page = officer1.page
    page.click("nav >> text=Hosts and GPUs")
    assert page.inner_text("h1") == "Hosts and GPUs"
    hosts = page.inner_text("table.hosts")
    assert "civilian-h100x4" in hosts and "secret-h100x8" in hosts
    assert "6 free, 2 allocated" in hosts
    assert officer1.banners() == ["SECRET//NATO", "SECRET//NATO"]
    officer1.shot("14-hosts-and-gpus")
    page.click("a[href='/hosts/secret-h100x8']")
    assert unlabelled_fields(page) == []
    # Each GPU's latest hand-over certificate: clean, simulated, with a link to its proof.
    assert page.locator("td.certificate .state-certificate-clean").count() == 8
    assert page.locator("td.certificate .badge-simulated").count() == 8
    assert page.locator("td.certificate a[download]").count() == 8
    officer1.shot("15-host-detail")

    page.click("nav >> text=Kill switch")
    assert unlabelled_fields(page) == []
    page.select_option("#level", "SECRET")
    page.check("#compartment-NATO")
    page.fill("#reason", "Suspected exfiltration through the translation corpus")
    page.check("#confirm")
    officer1.shot("16-kill-switch")
    page.click("#pull-kill-switch")
    page.wait_for_selector("#kill-result")
    assert page.inner_text("#kill-status") == "1 of 2 officers: officer-1"
    assert "A second officer must confirm this." in page.inner_text("#kill-result")
    officer1.shot("17-kill-switch-proposed")
    page.click("a:has-text('Two-person actions') >> nth=-1")
    assert "You proposed this" in page.inner_text("table.actions")
    assert page.locator("table.actions button").count() == 0

    page = officer2.page
    page.click("nav >> text=Two-person actions")
    assert "1 of 2 officers: officer-1" in page.inner_text("table.actions")
    assert officer2.banners() == ["SECRET//NATO", "SECRET//NATO"]
    officer2.shot("18-two-person-actions")
    page.click("table.actions button:has-text('Confirm')")
    page.wait_for_selector(".message-success:has-text('2 of 2 officers')")
    assert "2 of 2 officers: officer-1, officer-2" in page.inner_text(".message-success")
    analyst.wait_for_state(f"/enclaves/{request_id}", "terminated")
    analyst.shot("19-enclave-terminated")

    # -- the auditor finds it all and verifies the log ---------------------------------------
    auditor = User(browser, stack, "auditor")
    auditor.goto(f"/audit?target=request/{request_id}")
    auditor.sign_in_at_idp()
    page = auditor.page
    wanted = {"request:create", "request:approve"}
    for _ in range(50):  # the sequencer runs every 0.2 s
        actions = page.locator("table.events td code:not(.hash)").all_inner_texts()
        if wanted <= set(actions) and actions.count("request:approve") == 3:
            break
        page.wait_for_timeout(200)
        page.reload()
    rows = page.locator("table.events tbody tr")
    assert rows.count() == 4  # create, the analyst's refused approval, two approvals
    text = page.inner_text("table.events")
    assert "user:analyst-defence" in text and "user:officer-1" in text
    assert "user:officer-2" in text and "deny" in text
    for row in range(rows.count()):
        seq = rows.nth(row).locator("th").inner_text()
        assert seq.isdigit()
        assert re.fullmatch(r"[0-9a-f]{64}", rows.nth(row).locator("code.hash").inner_text())
    assert auditor.banners()[0] == "SECRET//NATO"
    auditor.shot("09-audit-events")
    page.click("#verify-now")
    page.wait_for_selector("#verify-result")
    result = page.inner_text("#verify-result")
    assert result.startswith("Audit log intact")
    auditor.shot("10-audit-verified")

    # -- signing out ends the IdP session too ------------------------------------------------
    analyst.page.click("button:has-text('Sign out')")
    analyst.page.wait_for_url(f"{stack.base}/?state=signed-out")
    assert "You are signed out" in analyst.page.inner_text("main")
    analyst.shot("11-signed-out")
    analyst.goto("/requests")
    analyst.page.wait_for_selector("#username")  # back at the IdP: the session is gone

    for user in (analyst, officer1, officer2, auditor):
        user.close()
