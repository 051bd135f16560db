"""The agent's own log (bounded whatever the guest does) and its sandbox-only options."""

from __future__ import annotations

import io
import logging
import os
import socket
import subprocess

import pytest

from enclaves.agent import __main__ as cli
from enclaves.agent import server


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def bounded(clock: Clock, **limits: int) -> tuple[logging.Logger, io.StringIO]:
    stream = io.StringIO()
    handler = cli.BoundedLogHandler(stream, clock=clock, **limits)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.Logger("bounded-test")
    logger.addHandler(handler)
    return logger, stream


def test_lines_are_rate_limited_and_the_dropped_ones_counted() -> None:
    clock = Clock()
    logger, stream = bounded(clock, burst=100, per_minute=60)
    for number in range(1000):
        logger.warning("refused %d", number)
    lines = stream.getvalue().splitlines()
    assert lines == [f"refused {number}" for number in range(100)]
    clock.now += 30  # 30 more lines' worth at 60 a minute
    for number in range(1000, 1100):
        logger.warning("refused %d", number)
    lines = stream.getvalue().splitlines()[100:]
    assert len(lines) == 30
    assert lines[0] == "refused 1000 [900 lines dropped before this one]"
    assert lines[-1] == "refused 1029"


def test_a_line_is_one_line_and_cut() -> None:
    logger, stream = bounded(Clock())
    logger.warning("first\nsecond\x1b[2J" + "x" * 10_000)
    (line,) = stream.getvalue().splitlines()
    assert line.startswith("first\\nsecond\\x1b[2J")
    assert len(line) == cli.LOG_LINE_CHARS


def test_the_total_is_capped() -> None:
    clock = Clock()
    logger, stream = bounded(clock, burst=10_000, total_bytes=1000)
    for _ in range(5):
        for _ in range(1000):
            logger.warning("y" * 99)
        clock.now += 3600
    text = stream.getvalue()
    assert len(text) <= 1000
    assert text.splitlines()[-1] == "sovereign-agent: log limit reached, no more lines"
    assert text.count("y" * 99) == 9


def test_outside_peers_only_needs_a_unix_socket() -> None:
    with pytest.raises(SystemExit, match="needs --listen-unix"):
        cli.main(["--root", "/r", "--device", "/dev/x", "--outside-peers-only"])


def test_own_pid_namespace_is_refused_where_others_run() -> None:
    """Here (the test's namespace holds pytest's parent and others) the sweep would kill them."""
    with pytest.raises(SystemExit, match="other processes"):
        cli._check_own_pid_namespace()


def test_a_peer_in_our_namespace_has_a_pid() -> None:
    """What the agent refuses: SO_PEERCRED names the peer's pid when our namespace sees it."""
    left, right = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with left, right:
        assert cli.peer_pid(left) == os.getpid()


@pytest.mark.parametrize(
    ("argv", "sweeps"),
    [
        (["--listen-unix", "/s", "--own-pid-namespace"], "namespace"),
        (["--device", "/dev/x", "--job-user", "nobody"], "user"),
        # An agent run by hand or by tests on a host, whose job user may be shared (nobody):
        # nothing beyond each job's process group.
        (["--listen-unix", "/s", "--job-user", "nobody"], None),
        (["--device", "/dev/x"], None),
    ],
)
def test_what_is_swept_when_no_job_runs(argv: list[str], sweeps: str | None) -> None:
    args = cli._parser().parse_args(["--root", "/r", *argv])
    job_user = cli.JobUser("nobody", 65534, 65534) if args.job_user else None
    sweep = cli._sweep(args, job_user)
    if sweeps is None:
        assert sweep is None
    elif sweeps == "namespace":
        assert sweep is server.namespace_strays
    else:
        assert sweep is not None


def test_user_strays_lists_the_users_other_processes() -> None:
    child = subprocess.Popen(["/usr/bin/sleep", "30"])
    try:
        strays = server.user_strays(os.getuid())
        assert child.pid in strays
        assert os.getpid() not in strays
        assert os.getppid() not in strays  # an ancestor
        assert child.pid not in server.user_strays(os.getuid() + 12345)
    finally:
        child.kill()
        child.wait()
