"""The agent's command line: ``python3 -m enclaves.agent`` (``-m sovereign_agent`` in a guest).

Owns the agent process: its arguments, what ``hello`` reports (the image digest, the GPUs the
guest sees, the jobs' Python), and the connection loop: a virtio-serial port reopened whenever
the host side goes away (``--device``), or a unix socket accepting one connection at a time
(``--listen-unix``, the process enclave). It must import only the standard library and the
agent's own modules (relatively): it is copied into the guest image.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from .server import Agent, JobUser, Stream

#: A unix-socket connection that sends nothing for this long is closed, so a client that
#: forgot its connection does not keep the next one waiting for ever.
IDLE_TIMEOUT_S = 300.0
#: How long to wait before reopening the serial port after the host side went away.
REOPEN_DELAY_S = 0.5
_DIGEST = re.compile(r"[A-Za-z0-9:._-]{1,128}")

log = logging.getLogger("sovereign_agent")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the agent until it is killed."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="sovereign-agent: %(levelname)s %(message)s")
    # Files the agent makes are readable by the job's user whatever umask the agent was started
    # with (a unit's UMask=0077 would hide the job's own directory from it).
    os.umask(0o022)
    job_user = _job_user(args.job_user) if args.job_user else None
    if job_user is not None:
        # The job's user must be able to reach its directory through --root (search, not list).
        os.makedirs(args.root, mode=0o711, exist_ok=True)
        os.chmod(args.root, os.stat(args.root).st_mode & 0o7777 | 0o111)  # noqa: S103 - search only
    agent = Agent(
        args.root,
        python=args.python,
        python_version=_python_version(args.python),
        job_user=job_user,
        image_digest=_image_digest(args.image_digest_file),
        simulated=args.simulated,
        gpus=_gpus(),
    )
    if args.device:
        _serve_device(agent, args.device)
    else:
        _serve_unix(agent, args.listen_unix)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sovereign-agent", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--device", help="virtio-serial port to serve (reopened on disconnect)")
    where.add_argument("--listen-unix", help="unix socket to listen on, one connection at a time")
    parser.add_argument("--root", required=True, help="directory holding the jobs")
    parser.add_argument("--job-user", help="unprivileged user the jobs run as")
    parser.add_argument("--python", default=sys.executable, help="interpreter the jobs run with")
    parser.add_argument("--image-digest-file", help="file holding the guest image's digest")
    parser.add_argument("--simulated", action="store_true", help="report a simulated enclave")
    return parser


def _serve_device(agent: Agent, device: str) -> None:
    while True:
        try:
            fd = os.open(device, os.O_RDWR | os.O_CLOEXEC | os.O_NOCTTY)
        except OSError as exc:
            log.warning("cannot open %s: %s", device, exc.strerror)
            time.sleep(1.0)
            continue
        try:
            agent.serve(Stream(fd, fd))
        finally:
            os.close(fd)
        # The host side closed (virtio-serial reads EOF while nobody is connected).
        time.sleep(REOPEN_DELAY_S)


def _serve_unix(agent: Agent, path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # the socket is the host's way in: owner only
    try:
        listener.bind(path)
    finally:
        os.umask(old_umask)
    listener.listen(8)  # later connections wait their turn
    log.info("listening on %s", path)
    while True:
        connection, _ = listener.accept()
        try:
            fd = connection.fileno()
            agent.serve(Stream(fd, fd, idle_timeout_s=IDLE_TIMEOUT_S))
        finally:
            connection.close()


def _job_user(name: str) -> JobUser:
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise SystemExit(f"sovereign-agent: no such user: {name}") from None
    if entry.pw_uid == 0:
        raise SystemExit("sovereign-agent: jobs may not run as root")
    return JobUser(name=name, uid=entry.pw_uid, gid=entry.pw_gid)


def _python_version(python: str) -> str:
    if python == sys.executable:
        return sys.version.split()[0]
    try:
        result = subprocess.run(  # noqa: S603 - the operator's configured interpreter
            [python, "-c", "import sys; print(sys.version.split()[0])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
            env={},
        )
    except (OSError, subprocess.SubprocessError):
        raise SystemExit(f"sovereign-agent: cannot run {python}") from None
    return result.stdout.strip()[:32]


def _image_digest(path: str | None) -> str:
    if not path:
        return ""
    try:
        with open(path, encoding="ascii") as file:
            digest = file.read(256).strip()
    except (OSError, UnicodeDecodeError):
        log.warning("cannot read the image digest file")
        return ""
    return digest if _DIGEST.fullmatch(digest) else ""


def _gpus() -> list[dict[str, Any]]:
    """The GPUs this machine sees: NVML if importable, else ``nvidia-smi``, else none."""
    try:
        return _nvml_gpus()
    except ImportError:
        pass
    except Exception:  # NVML present but unusable (no driver): fall through to nvidia-smi
        log.warning("NVML failed", exc_info=True)
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        result = subprocess.run(  # noqa: S603 - a fixed query to the driver's own tool
            [smi, "--query-gpu=name,uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        log.warning("nvidia-smi failed")
        return []
    return parse_nvidia_smi(result.stdout)


def _nvml_gpus() -> list[dict[str, Any]]:
    nvml: Any = importlib.import_module("pynvml")
    nvml.nvmlInit()
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle).total
            gpus.append(
                {
                    "name": _text(name),
                    "uuid": _text(uuid),
                    "memory_mib": int(memory) // (1 << 20),
                }
            )
        return gpus
    finally:
        nvml.nvmlShutdown()


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """GPUs from ``nvidia-smi --query-gpu=name,uuid,memory.total --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) != 3 or not parts[2].isdigit():
            continue
        gpus.append({"name": parts[0][:128], "uuid": parts[1][:128], "memory_mib": int(parts[2])})
    return gpus


def _text(value: Any) -> str:
    text = value.decode() if isinstance(value, bytes) else str(value)
    return text[:128]


if __name__ == "__main__":
    sys.exit(main())
