"""The README's first command, for real: ``sovereign dev`` as a subprocess, then an analyst
gets a token with ``sovereign dev token`` and files a request over HTTP."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import requests

from devstack.idp.users import CONSOLE_CLIENT_ID
from devstack.stack import free_port

pytestmark = [pytest.mark.vault, pytest.mark.idp, pytest.mark.libvirt]
SOVEREIGN = str(Path(sys.executable).with_name("sovereign"))


def test_embedded_default_serves_the_whole_flow(tmp_path: Path):
    api, bao, idp = free_port(), free_port_pair(), free_port()
    env = {**os.environ, "SOVEREIGN_INSTANCE_PATH": str(tmp_path), "SOVEREIGN_ENV": "development"}
    log = (tmp_path / "dev.log").open("w")
    proc = subprocess.Popen(
        [SOVEREIGN, "dev", "--port", str(api), "--vault-port", str(bao), "--idp-port", str(idp)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{api}"
    try:
        deadline = time.monotonic() + 60
        ready = None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                ready = requests.get(f"{base}/readyz", timeout=2)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        output = (tmp_path / "dev.log").read_text()
        assert ready is not None, output
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ready"}, "no dependency names without a token"
        # The banner says where the scrape token is; it opens /metrics and the readiness detail.
        token_file = tmp_path / "dev" / "metrics-token"
        assert f"$(cat {token_file})" in output
        scrape = {"Authorization": f"Bearer {token_file.read_text().strip()}"}
        detail = requests.get(f"{base}/readyz", headers=scrape, timeout=10)
        assert set(detail.json()["checks"]) == {
            "database",
            "identity provider",
            "vault",
            "hypervisors",
        }
        assert requests.get(f"{base}/metrics", timeout=10).status_code == 401
        metrics = requests.get(f"{base}/metrics", headers=scrape, timeout=10)
        assert metrics.status_code == 200
        assert 'endpoint="/readyz"' in metrics.text
        assert "analyst-defence" in output
        assert "officer-2" in output
        # The dev IdP knows the console on this port: sign-in comes back to it, and so does
        # sign-out (an unregistered post-logout redirect is refused with 400).
        logout = f"http://127.0.0.1:{idp}/realms/sovereign/protocol/openid-connect/logout"
        signed_out = [(f"{base}/", 200), (f"http://localhost:{api}/", 200)]
        for console, status in [*signed_out, ("http://127.0.0.1:1/", 400)]:
            r = requests.get(
                logout,
                params={"client_id": CONSOLE_CLIENT_ID, "post_logout_redirect_uri": console},
                timeout=10,
            )
            assert r.status_code == status, r.text

        def token(user: str) -> str:
            done = subprocess.run(
                [SOVEREIGN, "dev", "token", user],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            return done.stdout.strip()

        body = {
            "tenant": "defence",
            "label": {"level": "SECRET", "compartments": ["NATO"]},
            "resources": {
                "vcpus": 4,
                "memory_mib": 8192,
                "gpus": 1,
                "gpu_model": "H100-SXM5-80GB",
                "disk_gib": 20,
            },
            "image": "debian-12-cuda",
            "purpose": "e2e",
            "lease_hours": 4,
        }
        created = requests.post(
            f"{base}/api/v1/requests",
            json=body,
            headers={"Authorization": f"Bearer {token('analyst-defence')}"},
            timeout=10,
        )
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        for officer in ("officer-1", "officer-2"):
            r = requests.post(
                f"{base}/api/v1/requests/{rid}/approve",
                headers={"Authorization": f"Bearer {token(officer)}"},
                timeout=10,
            )
            assert r.status_code == 200, r.text
        assert r.json()["state"] == "approved"

        # The in-process reconciler places and starts it on the simulated SECRET host.
        analyst = {"Authorization": f"Bearer {token('analyst-defence')}"}
        enclave = wait_for_state(base, rid, "running", analyst)
        assert enclave["host"] == "secret-h100x8"
        assert len(enclave["gpus"]) == enclave["request"]["resources"]["gpus"]
        run_a_job(base, rid, analyst)
        r = requests.post(
            f"{base}/api/v1/enclaves/{rid}/terminate", headers=analyst, json={}, timeout=10
        )
        assert r.status_code == 200, r.text
        wait_for_state(base, rid, "terminated", analyst)
        auditor = {"Authorization": f"Bearer {token('auditor')}"}
        proofs = certified_free(base, enclave, auditor, tmp_path)

        # The in-process sequencer puts the decisions into the Merkle log within a second.
        deadline = time.monotonic() + 15
        seen: set[str] = set()
        while time.monotonic() < deadline and not {"request:create", "request:approve"} <= seen:
            page = requests.get(
                f"{base}/api/v1/audit/events?target=request/{rid}", headers=auditor, timeout=10
            ).json()
            seen = {e["action"] for e in page["items"]}
            time.sleep(0.2)
        assert {"request:create", "request:approve"} <= seen
        checkpoint = requests.get(f"{base}/api/v1/audit/checkpoint", headers=auditor, timeout=10)
        assert checkpoint.text.startswith("sovereign.local/audit\n")

        wrong = subprocess.run(
            [SOVEREIGN, "dev", "token", "mallory"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert wrong.returncode == 2
        assert "unknown user or wrong password" in wrong.stderr
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == 0
    # The log survives the stop and verifies from the command line.
    verified = subprocess.run(
        [SOVEREIGN, "audit", "verify"], env=env, capture_output=True, text=True, check=False
    )
    assert verified.returncode == 0, verified.stderr
    assert "audit log intact" in verified.stdout
    # Each certificate's inclusion proof verifies offline, as any event's does.
    key = subprocess.run(
        [SOVEREIGN, "audit", "public-key"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    for proof in proofs:
        checked = subprocess.run(
            [SOVEREIGN, "audit", "verify-proof", str(proof), "--key", key],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode == 0, checked.stderr
        assert "gpu:handover" in checked.stdout
    # The stack cleaned up after itself: state and token gone, OpenBao no longer answers.
    assert not (tmp_path / "dev" / "devstack.json").exists()
    assert not (tmp_path / "dev" / "metrics-token").exists()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{bao}/v1/sys/health", timeout=2)


JOB = b"""\
import os, sys, time
print("hello from the enclave", flush=True)
time.sleep(1)
os.makedirs("out", exist_ok=True)
with open("out/answer.txt", "w") as f:
    f.write(open(os.path.join(os.environ["SOVEREIGN_INPUTS"], "numbers.csv")).read().upper())
"""


def run_a_job(base: str, rid: str, analyst: dict[str, str]) -> None:
    """A dataset and a job over HTTP, run by the in-process job runner in the enclave's
    process enclave: the first log line within a second of submission, then the output."""
    dataset = requests.post(
        f"{base}/api/v1/datasets",
        headers=analyst,
        files={
            "tenant": (None, "defence"),
            "name": (None, "numbers.csv"),
            "label": (None, json.dumps({"level": "SECRET", "compartments": ["NATO"]})),
            "file": ("numbers.csv", b"a,b\n1,2\n"),
        },
        timeout=10,
    )
    assert dataset.status_code == 201, dataset.text
    manifest = {"entrypoint": "main.py", "inputs": [dataset.json()["id"]], "outputs": ["out/*"]}
    started = time.monotonic()
    job = requests.post(
        f"{base}/api/v1/enclaves/{rid}/jobs",
        headers=analyst,
        files=[("manifest", (None, json.dumps(manifest))), ("files", ("main.py", JOB))],
        timeout=10,
    )
    assert job.status_code == 201, job.text
    jid = job.json()["id"]
    assert job.json()["simulated"] is True
    # The job runs unbuffered, so print() writes its text and its newline separately: a
    # read between the two sees half a line. The first line is there once its newline is.
    first = b""
    while b"\n" not in first and time.monotonic() - started < 20:
        first = requests.get(f"{base}/api/v1/jobs/{jid}/logs", headers=analyst, timeout=10).content
    latency = time.monotonic() - started
    assert first == b"hello from the enclave\n"
    deadline = time.monotonic() + 30
    while (state := requests.get(f"{base}/api/v1/jobs/{jid}", headers=analyst, timeout=10).json())[
        "state"
    ] in ("queued", "running"):
        assert time.monotonic() < deadline, state
        time.sleep(0.1)
    assert state["state"] == "succeeded", state
    out = requests.get(
        f"{base}/api/v1/jobs/{jid}/outputs/out/answer.txt", headers=analyst, timeout=10
    )
    assert out.content == b"A,B\n1,2\n"
    # Measured from the submission's request to the first log line read over HTTP; it
    # includes starting the enclave's process enclave (its first job).
    assert latency <= 1.0, f"first log line after {latency:.2f} s"


def certified_free(
    base: str, enclave: dict[str, Any], auditor: dict[str, str], folder: Path
) -> list[Path]:
    """Wait until the terminated enclave's GPUs are free again, each with a clean, simulated
    hand-over certificate naming the enclave; return their inclusion proofs saved as files."""
    host, rid = enclave["host"], enclave["request"]["id"]
    proofs = []
    for address in enclave["gpus"]:
        deadline = time.monotonic() + 30
        while True:
            gpus = requests.get(
                f"{base}/api/v1/gpus?host={host}", headers=auditor, timeout=10
            ).json()["items"]
            state = next(g["state"] for g in gpus if g["address"] == address)
            page = requests.get(
                f"{base}/api/v1/gpus/{host}/{address}/certificates", headers=auditor, timeout=10
            ).json()
            latest = page["items"][0]["certificate"] if page["items"] else None
            if state == "free" and latest and latest["previous_enclave"] == rid:
                break
            assert time.monotonic() < deadline, (state, page)
            time.sleep(0.2)
        assert latest["verdict"] == "clean", latest
        assert latest["simulated"] is True
        assert latest["previous_label"] == "SECRET//NATO"
        assert latest["canary_checked"] is True and latest["canary_hits"] == 0
        assert latest["scrub"]["coverage"] >= 0.99 and latest["scrub"]["mismatches"] == 0
        proof = requests.get(
            f"{base}/api/v1/audit/proof/{page['items'][0]['seq']}", headers=auditor, timeout=10
        )
        assert proof.status_code == 200, proof.text
        path = folder / f"gpu-{address.replace(':', '-')}.proof"
        path.write_text(proof.text)
        proofs.append(path)
    return proofs


def wait_for_state(base: str, rid: str, state: str, headers: dict[str, str]) -> dict[str, Any]:
    """Poll the enclave until it reaches ``state`` (15 s at most)."""
    deadline = time.monotonic() + 15
    while True:
        enclave: dict[str, Any] = requests.get(
            f"{base}/api/v1/enclaves/{rid}", headers=headers, timeout=10
        ).json()
        if enclave["state"] == state or time.monotonic() > deadline:
            assert enclave["state"] == state, enclave
            return enclave
        time.sleep(0.2)


def test_a_restarted_embedded_default_keeps_a_verifiable_log(tmp_path: Path):
    """The dev OpenBao is in memory, so each start signs with a new Vault key; the keys file
    beside the witness keeps every key, and the whole log still verifies."""
    env = {**os.environ, "SOVEREIGN_INSTANCE_PATH": str(tmp_path), "SOVEREIGN_ENV": "development"}
    for start in range(2):
        api = free_port()
        logfile = tmp_path / f"dev-{start}.log"
        with logfile.open("w") as log:
            proc = subprocess.Popen(
                [
                    SOVEREIGN,
                    "dev",
                    "--port",
                    str(api),
                    "--vault-port",
                    str(free_port_pair()),
                    "--idp-port",
                    str(free_port()),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 120
            ready = False
            while not ready and time.monotonic() < deadline and proc.poll() is None:
                try:
                    ready = requests.get(f"http://127.0.0.1:{api}/readyz", timeout=2).ok
                except requests.ConnectionError:
                    time.sleep(0.2)
            assert ready, (
                f"the embedded default did not become ready (exit {proc.poll()}):\n"
                + logfile.read_text()[-4000:]
            )
            time.sleep(1.5)  # let the in-process sequencer sign a checkpoint
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    keys = subprocess.run(
        [SOVEREIGN, "audit", "public-key"], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    assert len(keys) == 2
    assert keys[0] != keys[1]
    verified = subprocess.run(
        [SOVEREIGN, "audit", "verify", "--quiet"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert verified.returncode == 0, verified.stderr
    # First start: 4 catalog entries, 2 bundled sites, 3 bundled hosts, 14 GPUs handed over
    # (2 events each: gpu:sanitize, then gpu:handover with the certificate);
    # the second start adds nothing (all already there).
    assert f"audit log intact: {4 + 2 + 3 + 14 * 2} events" in verified.stdout


def free_port_pair() -> int:
    """A port P for OpenBao, which also binds P+1: both free right now."""
    for _ in range(50):
        port = free_port()
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise AssertionError("no two adjacent free ports on 127.0.0.1")


def refused(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    """``sovereign dev ARGV`` expected to refuse at once, before starting anything."""
    env = {**os.environ, "SOVEREIGN_INSTANCE_PATH": str(tmp_path), "SOVEREIGN_ENV": "development"}
    done = subprocess.run(
        [SOVEREIGN, "dev", *argv], env=env, capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    return done


def test_a_busy_port_is_refused_at_once_naming_it(tmp_path: Path):
    """``SOVEREIGN_PORT=8720 make run`` beside a running instance met that instance's IdP on
    a fixed port and failed with a misleading Vault policy error."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        busy = holder.getsockname()[1]
        # The API port's IdP (port + 20) is the one taken.
        done = refused(tmp_path, "--port", str(busy - 20))
        assert (
            f"port {busy}, wanted for the development identity provider, is already in use"
            in done.stderr
        )
        done = refused(tmp_path, "--port", str(busy))
        assert f"port {busy}, wanted for the control plane API, is already in use" in done.stderr
    assert not (tmp_path / "dev" / "openbao").exists(), "nothing was started"


def test_a_second_embedded_default_on_the_same_instance_folder_is_refused(tmp_path: Path):
    (tmp_path / "dev").mkdir(parents=True)
    (tmp_path / "dev" / "devstack.json").write_text(
        json.dumps({"pid": os.getpid(), "api_url": "http://127.0.0.1:8700"})
    )
    done = refused(tmp_path, "--port", str(free_port()))
    assert f"an embedded default already runs from the instance folder {tmp_path}" in done.stderr
    assert "SOVEREIGN_INSTANCE_PATH" in done.stderr
