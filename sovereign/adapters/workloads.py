"""Enclaves' agents: the :class:`~sovereign.services.ports.Workloads` port.

Owns :class:`AgentWorkloads`, which opens a session with an enclave's workload agent: on a
simulated host (libvirt's test driver, whose domains run nothing) through the enclave's
:class:`~enclaves.sandbox.ProcessEnclave`, started on first use, found again by its pid file
after a control-plane restart, and stopped by :meth:`AgentWorkloads.release`; on a real host
through the domain's virtio-serial channel (:class:`~enclaves.channel.ChannelTransport`) on a
libvirt connection that, like :mod:`sovereign.adapters.hypervisor`'s, is opened only for a URI
the configured :class:`~enclaves.uri.UriPolicy` allows and must answer with the host identity the
fleet recorded. It translates :mod:`enclaves.agent.client`'s results into
:mod:`sovereign.domain.jobs` values and :mod:`enclaves.errors` into :mod:`sovereign.errors`, once,
here: an agent that cannot be reached or does not answer in time is
:class:`~sovereign.errors.DependencyUnavailableError` (the runner retries later); one that breaks
the protocol or refuses is :class:`~sovereign.errors.WorkloadError` (the job fails).

It holds one session per enclave at a time (the agent serves one connection at a time), and
must not decide what a job does, seal or store anything, or build a sandbox or domain itself.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from enclaves import agent as agent_package
from enclaves.agent.client import AgentClient
from enclaves.agent.client import AgentJobStatus as ClientJobStatus
from enclaves.agent.transport import Transport
from enclaves.channel import ChannelTransport
from enclaves.errors import (
    AgentProtocolError,
    AgentRefusedError,
    EnclaveError,
    HostIdentityChangedError,
)
from enclaves.host import HostIdentity as LibvirtIdentity
from enclaves.host import LibvirtHost
from enclaves.sandbox import ProcessEnclave, SandboxLimits, SandboxPython, default_run_dir
from enclaves.uri import UriPolicy, UriRefusedError, check_uri
from sovereign.domain.fleet import Enclave, Host
from sovereign.domain.jobs import AgentGpu, AgentHello, AgentJobStatus, OutputFile
from sovereign.errors import (
    ConflictError,
    DependencyUnavailableError,
    HostIdentityError,
    InvalidInputError,
    WorkloadError,
)
from sovereign.services.ports import AGENT_DEPENDENCY, AgentSession

__all__ = ["AgentWorkloads", "ClientSession"]

T = TypeVar("T")
#: The ``dependency`` named by an unavailable agent (shown in problem details).
DEPENDENCY = AGENT_DEPENDENCY
#: The least time planting the canary may take (the agent starts the scrub program, which
#: imports PyTorch and writes all of the GPU's free memory).
CANARY_TIMEOUT_S = 120.0


@contextlib.contextmanager
def _translated(enclave_id: uuid.UUID, action: str) -> Iterator[None]:
    """Turn :mod:`enclaves` errors into the control plane's (the one place).

    :raises WorkloadError: the agent broke the protocol or refused (its message is safe to
        show: the client strips control characters and caps its length).
    :raises HostIdentityError: the host's URI now reaches another machine.
    :raises DependencyUnavailableError: for everything else: unreachable, timed out, no domain,
        no sandbox.
    :raises InvalidInputError: for an argument the client refuses before sending it.
    """
    try:
        yield
    except (AgentProtocolError, AgentRefusedError) as e:
        raise WorkloadError(reason=f"enclave {enclave_id}: {action}: {e.message}") from e
    except HostIdentityChangedError as e:
        raise HostIdentityError(reason=e.message) from e
    except EnclaveError as e:
        # AgentUnavailableError, AgentTimeoutError, SandboxError and libvirt's refusals (the
        # domain is not running yet, its channel is held by another session): retry later.
        raise DependencyUnavailableError(
            f"the agent of enclave {enclave_id} is unavailable ({action}: {e.message})",
            dependency=DEPENDENCY,
        ) from e
    except ValueError as e:
        raise InvalidInputError(reason=f"{action}: {e}") from e


class ClientSession:
    """An :class:`~sovereign.services.ports.AgentSession` over an :class:`AgentClient`."""

    def __init__(
        self, enclave_id: uuid.UUID, client: AgentClient, *, canary_timeout_s: float = 120.0
    ) -> None:
        self._enclave_id = enclave_id
        self._client = client
        self._canary_timeout_s = canary_timeout_s

    def _call(self, action: str, call: Callable[[], T]) -> T:
        with _translated(self._enclave_id, action):
            return call()

    def hello(self) -> AgentHello:
        """What the agent says about itself."""
        found = self._call("hello", self._client.hello)
        return AgentHello(
            protocol=found.protocol,
            agent_version=found.agent_version,
            image_digest=found.image_digest,
            simulated=found.simulated,
            gpus=tuple(AgentGpu(g.name, g.uuid, g.memory_mib) for g in found.gpus),
            python=found.python,
        )

    def put(
        self,
        job: str,
        area: str,
        path: str,
        data: bytes,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> str:
        """Send a file into the job's area; its SHA-256 as the agent verified it."""
        return self._call(
            f"put {area} file", lambda: self._client.put(job, area, path, data, progress=progress)
        )

    def run(
        self, job: str, *, entrypoint: str, args: Sequence[str], max_runtime_s: int
    ) -> AgentJobStatus:
        """Start the job (idempotent)."""
        return _status(
            self._call(
                "run",
                lambda: self._client.run(
                    job, entrypoint=entrypoint, args=args, max_runtime_s=max_runtime_s
                ),
            )
        )

    def status(self, job: str) -> AgentJobStatus:
        """The job's state as the agent reports it."""
        return _status(self._call("status", lambda: self._client.status(job)))

    def logs(self, job: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Log bytes from ``offset``."""
        return self._call("logs", lambda: self._client.logs(job, offset, limit))

    def cancel(self, job: str) -> AgentJobStatus:
        """Kill the job; its status after."""
        return _status(self._call("cancel", lambda: self._client.cancel(job)))

    def outputs(self, job: str, patterns: Sequence[str]) -> list[OutputFile]:
        """The job's output files matching ``patterns``."""
        found = self._call("outputs", lambda: self._client.outputs(job, patterns))
        return [OutputFile(f.name, f.size, f.sha256) for f in found]

    def get(self, job: str, name: str, *, size: int, sha256: str, max_bytes: int) -> bytes:
        """One output file, verified."""
        return self._call(
            "get output",
            lambda: self._client.get(job, name, size=size, sha256=sha256, max_bytes=max_bytes),
        )

    def discard(self, job: str) -> None:
        """Remove the job's directory in the enclave."""
        self._call("discard", lambda: self._client.discard(job))

    def plant_canary(self, canary_nonce: bytes) -> dict[str, Any]:
        """Plant the enclave's canary over the GPU memory the finished job freed (the nonce
        goes to the agent only; the client checks the answer's shape and bounds)."""
        return self._call(
            "canary",
            lambda: self._client.plant_canary(canary_nonce, timeout_s=self._canary_timeout_s),
        )


def _status(found: ClientJobStatus) -> AgentJobStatus:
    """The client's job status as the domain's value."""
    return AgentJobStatus(found.state, found.exit_code, found.runtime_s, found.log_size)


def _scheme(uri: str) -> str:
    return uri.partition("://")[0].lower()


class AgentWorkloads:
    """Agents of process enclaves (simulated hosts) and of VMs (libvirt channels)."""

    def __init__(
        self,
        *,
        run_dir: Path | None = None,
        python: SandboxPython | None = None,
        agent_package_dir: Path | None = None,
        uris: UriPolicy | None = None,
        timeout_s: float = 30.0,
        connect_timeout_s: float = 10.0,
        address_space_mib: int | None = None,
    ) -> None:
        """``run_dir`` holds process enclaves' state (default: :func:`default_run_dir`);
        ``uris`` says which libvirt URIs may be opened (default: ``qemu+tls://`` only)."""
        self._run_dir = run_dir if run_dir is not None else default_run_dir()
        self._python = python
        self._agent_dir = (
            agent_package_dir
            if agent_package_dir is not None
            else Path(agent_package.__file__).resolve().parent
        )
        self._uris = uris if uris is not None else UriPolicy()
        self._timeout_s = timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._address_space_mib = address_space_mib
        self._lock = threading.Lock()
        self._sandboxes: dict[uuid.UUID, ProcessEnclave] = {}
        self._busy: dict[uuid.UUID, threading.Lock] = {}
        self._hosts: dict[str, LibvirtHost] = {}

    def simulated(self, host: Host) -> bool:
        """Whether ``host`` is libvirt's test driver, whose enclaves are process enclaves."""
        return _scheme(host.uri) == "test"

    @contextlib.contextmanager
    def session(self, enclave: Enclave, host: Host) -> Iterator[AgentSession]:
        """An open session with the enclave's agent, closed when the block ends.

        Sessions with one enclave take turns (its agent serves one connection at a time).

        :raises DependencyUnavailableError: the agent cannot be reached (retry later).
        :raises WorkloadError: the agent misbehaves.
        :raises HostIdentityError: the host's URI reaches another machine now.
        :raises ConflictError: the host's URI is not allowed by the URI policy.
        """
        with self._lock:
            busy = self._busy.setdefault(enclave.id, threading.Lock())
        with busy:
            transport = self._open(enclave, host)
            client = AgentClient(transport, timeout_s=self._timeout_s)
            try:
                yield ClientSession(
                    enclave.id, client, canary_timeout_s=max(self._timeout_s, CANARY_TIMEOUT_S)
                )
            finally:
                client.close()

    def release(self, enclave_id: uuid.UUID) -> None:
        """Stop the enclave's process enclave, if it has one (also one a previous control
        plane started); a no-op otherwise."""
        with self._lock:
            sandbox = self._sandboxes.pop(enclave_id, None)
            self._busy.pop(enclave_id, None)
        if sandbox is None:
            # Stopping needs only the state directory (a sandbox a previous control plane
            # started, or none): no interpreter is looked for.
            stopping = SandboxPython(executable="/usr/bin/python3")
            sandbox = ProcessEnclave(enclave_id, self._run_dir, stopping, self._agent_dir)
        with _translated(enclave_id, "stop the process enclave"):
            sandbox.stop()

    def close(self) -> None:
        """Close libvirt connections; process enclaves keep running (their jobs too)."""
        with self._lock:
            hosts, self._hosts = list(self._hosts.values()), {}
        for libvirt_host in hosts:
            libvirt_host.close()

    # --- transports ----------------------------------------------------------------------

    def _open(self, enclave: Enclave, host: Host) -> Transport:
        """A transport to the enclave's agent.

        :raises DependencyUnavailableError: if it cannot be opened.
        """
        if self.simulated(host):
            sandbox = self._sandbox(enclave)
            with _translated(enclave.id, "start the process enclave"):
                sandbox.start()
            with _translated(enclave.id, "connect"):
                return sandbox.connect(self._connect_timeout_s)
        libvirt_host = self._libvirt_host(host)
        with _translated(enclave.id, "open the agent channel"):
            # The domain's UUID is the enclave's id (enclaves.designer names it so).
            return ChannelTransport.open(libvirt_host, enclave.id)

    def _sandbox(self, enclave: Enclave) -> ProcessEnclave:
        with self._lock:
            sandbox = self._sandboxes.get(enclave.id)
            if sandbox is None:
                limits = SandboxLimits(
                    vcpus=max(1, min(enclave.vcpus, len(os.sched_getaffinity(0)))),
                    # The tmpfs holds the job's plaintext and is memory: the enclave's size.
                    tmpfs_mib=max(64, enclave.memory_mib),
                    file_size_mib=max(64, enclave.memory_mib),
                    address_space_mib=self._address_space_mib,
                )
                sandbox = self._sandboxes[enclave.id] = self._sandbox_for(enclave.id, limits)
            return sandbox

    def _sandbox_for(self, enclave_id: uuid.UUID, limits: SandboxLimits) -> ProcessEnclave:
        with _translated(enclave_id, "find the sandbox's interpreter"):
            python = self._python if self._python is not None else SandboxPython.current()
        return ProcessEnclave(enclave_id, self._run_dir, python, self._agent_dir, limits)

    def _libvirt_host(self, host: Host) -> LibvirtHost:
        """The cached connection to ``host``, pinned to its recorded identity.

        :raises ConflictError: if the URI policy refuses the host's URI.
        """
        try:
            canonical = check_uri(host.uri, self._uris)
        except UriRefusedError as e:
            raise ConflictError(
                reason=f"hypervisor URI {host.uri} is not allowed by the URI policy ({e})"
            ) from e
        with self._lock:
            libvirt_host = self._hosts.get(canonical)
            if libvirt_host is None:
                libvirt_host = LibvirtHost(canonical, open_timeout=self._connect_timeout_s)
                recorded = host.identity()
                if recorded is not None:
                    # A channel must reach the enclave on the machine the fleet recorded.
                    libvirt_host.pin(LibvirtIdentity(recorded.host_uuid, recorded.hostname))
                self._hosts[canonical] = libvirt_host
            return libvirt_host
