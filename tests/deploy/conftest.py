"""The CI estate: a Debian 12 guest booted once per session, converged twice with site.yml.

The fixture's figures (converge and re-converge seconds, task counts) are written to
``test-artifacts/deploy/summary.json`` with both runs' logs beside it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from devstack.idp import create_idp_app, serve_in_thread
from devstack.stack import free_port
from tests.support.deploy_target import ROOT, Target, boot_target, build_target
from tests.support.estate import ControllerInputs, Recap, controller_inputs, converge

ARTIFACTS = ROOT / "test-artifacts" / "deploy"


@dataclass(frozen=True)
class Estate:
    target: Target
    inputs: ControllerInputs
    secrets_dir: Path
    idp_url: str
    first: Recap
    second: Recap
    workdir: Path

    def run(self, command: str) -> tuple[int, str]:
        """A shell command on the target as root: exit status and output."""
        result = self.target.ssh(command)
        return result.returncode, result.stdout + result.stderr


# Package scope: the guest (QEMU without KVM) keeps a core busy even when idle, so it is shut
# down as soon as the deployment tests are done, not at the end of the whole session.
@pytest.fixture(scope="package")
def estate() -> Iterator[Estate]:
    workdir = Path(tempfile.mkdtemp(prefix="sovereign-estate-"))
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    image = build_target()
    inputs = controller_inputs(workdir)
    secrets_dir = workdir / "secrets"
    # The Keycloak-compatible stand-in on the controller's loopback, forwarded to the guest's
    # loopback over SSH: the same issuer URL on both sides (and a loopback one, the only plain
    # HTTP issuer OAuth allows).
    port = free_port()
    idp_url = f"http://127.0.0.1:{port}/"
    idp = serve_in_thread(
        create_idp_app(environment="testing", issuer_base=idp_url.rstrip("/")), "127.0.0.1", port
    )
    try:
        with boot_target(image, workdir / "target") as target, target.reverse_forward(port):
            runs = []
            for n in (1, 2):
                recap = converge(
                    target,
                    inputs,
                    secrets_dir=secrets_dir,
                    idp_url=idp_url,
                    log=ARTIFACTS / f"converge-{n}.log",
                )
                runs.append(recap)
                if recap.returncode != 0:
                    break
            first, second = runs[0], runs[-1]
            summary = {
                "converge_s": round(first.seconds, 1),
                "reconverge_s": round(second.seconds, 1) if len(runs) == 2 else None,
                "first": first.hosts,
                "second": second.hosts if len(runs) == 2 else None,
                "changed_on_second": second.changed_tasks if len(runs) == 2 else None,
            }
            (ARTIFACTS / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
            yield Estate(target, inputs, secrets_dir, idp_url, first, second, workdir)
            shutil.copyfile(target.serial_log, ARTIFACTS / "serial.log")
    finally:
        idp.stop()
        shutil.rmtree(workdir, ignore_errors=True)
