"""Throughput and latency of the request API, against a bare Flask app as the ceiling.

What is measured
    Four endpoints, each served by gunicorn with two sync workers on 127.0.0.1:

    * ``list``: ``GET /api/v1/requests?limit=50`` of the real control plane, whose SQLite
      database holds 10,000 seeded requests, so each call reads and serialises 50 (from the
      read model: rows straight to JSON, no domain objects or pydantic models per item);
    * ``create``: ``POST /api/v1/requests`` (one SECRET/NATO request per call, committed with its
      audit event);
    * ``raw_get`` and ``raw_post``: a bare Flask app written by this script (no auth, no
      database) answering a GET, and a POST of the same JSON body, with a JSON object about the
      size of one request.

    Both control plane calls carry a real RS256 bearer token for ``analyst-defence`` issued by
    the in-process development identity provider, so token verification is part of the cost.
    ``list_ratio`` and ``create_ratio`` compare each call's throughput with the bare one;
    ``goals`` holds the targets (issue 16: ``list_ratio`` >= 0.4, ``create_ratio`` >= 0.3, with
    SQLite's FULL sync kept) and ``goals_met`` says which this run met.

How
    A pool of client processes (default 2, with 2 threads each) runs a closed loop: send a
    request, read the whole answer, check it, repeat. Four calls in flight keep both workers
    busy with one call queued behind each, so latencies are mostly service time. The client
    speaks HTTP/1.1 over plain sockets with pre-built request bytes, which costs far less CPU
    than ``requests`` on a machine it shares with the servers; gunicorn's sync workers close
    the connection after every answer anyway (no keep-alive), so each call is one connection,
    the same for every endpoint. Each endpoint is warmed up, then driven for a fixed duration;
    only calls that finish inside the window count. A call is an error unless it answers the
    expected status (list: 200 with exactly 50 items; create: 201) with JSON. The CPU used by
    the server's processes and the client's is reported too (``*_cpu_cores``): a server well
    below the machine's cores means it waited (a lock, the disk) or something else ran.

Output
    Progress on stderr; the last line on stdout is one JSON object (rates in requests per
    second, latencies in milliseconds). The exit status is non-zero if more than 1% of the
    calls to any endpoint failed. Every process and temporary directory started here is
    removed on the way out, on failure too.

The caller and the seeded database are in ``apibench_seed.py``.

Run from the repository root: ``.venv/bin/python bench/api.py [--duration S] [--warmup S]
[--quick]``.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path
from types import FrameType
from typing import Any

import benchkit  # first: it stops bench/audit.py shadowing the audit package
from apibench_seed import IMAGE, LABEL, TENANT, USER, prepare_database, token_subject

from devstack.idp import DEMO_PASSWORD, password_token, start_dev_idp

HOST = "127.0.0.1"
WORKERS = 2
PAGE = 50
#: More than this share of failed calls on any endpoint fails the benchmark.
MAX_ERROR_RATE = 0.01
#: The throughput the control plane should reach, as a share of the bare app's.
GOALS = {"list_ratio": 0.4, "create_ratio": 0.3}
STARTUP_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
#: A call that takes longer than this fails (and bounds how long a stretch can overrun).
CALL_TIMEOUT_S = 10.0
#: Calls that fail are counted; this many of their answers are kept to show.
ERROR_SAMPLES = 3

BODY: dict[str, Any] = {
    "tenant": TENANT,
    "label": LABEL,
    "resources": {"vcpus": 4, "memory_mib": 8192, "gpus": 0, "disk_gib": 10},
    "image": IMAGE,
    "purpose": "benchmark: fine-tune a translation model",
    "lease_hours": 8,
}

#: The bare baseline: Flask and nothing else, answering about one request's worth of JSON.
BARE_APP = textwrap.dedent(
    '''
    """Bare Flask app for bench/api.py: no auth, no database."""

    import uuid

    from flask import Flask, jsonify, request

    app = Flask(__name__)
    ITEM = {
        "id": str(uuid.UUID(int=1)),
        "tenant": "defence",
        "requester": str(uuid.UUID(int=2)),
        "requester_name": "analyst-defence",
        "label": {"level": "SECRET", "compartments": ["NATO"]},
        "resources": {"vcpus": 4, "memory_mib": 8192, "gpus": 0, "disk_gib": 10},
        "gpu_model": None,
        "image": "debian-12-cuda",
        "purpose": "benchmark: fine-tune a translation model",
        "lease_hours": 8,
        "state": "pending",
        "reason": "",
        "approvals": [],
        "approvals_needed": 2,
        "approvals_received": 0,
        "created_at": "2025-01-01T00:00:00Z",
        "updated_at": "2025-01-01T00:00:00Z",
    }


    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")


    @app.get("/raw")
    def raw_get():
        return jsonify(ITEM)


    @app.post("/raw")
    def raw_post():
        body = request.get_json()
        return jsonify({**ITEM, "purpose": body["purpose"]}), 201
    '''
)

_STARTED = benchkit.STARTED


log = benchkit.progress("bench/api")


# -- the client (runs in the pool's processes) --------------------------------------------------


@dataclass(frozen=True)
class Load:
    """One stretch of load: which bytes to send where, what to expect back, and when."""

    port: int
    request: bytes
    status: int
    items: int | None
    start_at: float
    end_at: float
    threads: int


@dataclass
class Tally:
    """What one client process saw: latencies of good calls, failed calls, a few failures."""

    latencies_ms: list[float] = field(default_factory=list)
    errors: int = 0
    samples: list[str] = field(default_factory=list)
    #: CPU seconds the client process spent (to show it is not the bottleneck).
    cpu_s: float = 0.0

    def merge(self, other: Tally) -> None:
        """Add another tally's counts to this one."""
        self.latencies_ms += other.latencies_ms
        self.errors += other.errors
        self.cpu_s += other.cpu_s
        self.samples += other.samples[: max(0, ERROR_SAMPLES - len(self.samples))]


def exchange(port: int, request: bytes) -> tuple[int, bytes]:
    """Send ``request`` on a new connection and read the answer until the server closes."""
    with socket.create_connection((HOST, port), timeout=CALL_TIMEOUT_S) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def check(load: Load, status: int, body: bytes) -> str | None:
    """Why this answer is wrong, or None if it is what ``load`` expects."""
    if status != load.status:
        return f"HTTP {status}: {body[:300].decode(errors='replace')}"
    data = json.loads(body)
    if load.items is not None and len(data.get("items", ())) != load.items:
        return f"expected {load.items} items, got {len(data.get('items', ()))}"
    return None


def drive(load: Load, tally: Tally, lock: threading.Lock) -> None:
    """One client thread: call in a closed loop inside the window, recording into ``tally``."""
    while (now := time.monotonic()) < load.start_at:
        time.sleep(min(0.01, load.start_at - now))
    mine = Tally()
    while (began := time.monotonic()) < load.end_at:
        try:
            status, body = exchange(load.port, load.request)
            problem = check(load, status, body)
        except (OSError, ValueError, IndexError) as e:
            problem = f"{type(e).__name__}: {e}"
        done = time.monotonic()
        if done > load.end_at:
            break
        if problem is None:
            mine.latencies_ms.append((done - began) * 1000.0)
        else:
            mine.errors += 1
            if len(mine.samples) < ERROR_SAMPLES:
                mine.samples.append(problem)
    with lock:
        tally.merge(mine)


def run_client(load: Load) -> Tally:
    """One client process: ``load.threads`` threads driving the same load."""
    cpu = time.process_time()
    tally = Tally()
    lock = threading.Lock()
    threads = [
        threading.Thread(target=drive, args=(load, tally, lock), daemon=True)
        for _ in range(load.threads)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tally.cpu_s = time.process_time() - cpu
    return tally


# -- measuring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """How hard and how long to drive each endpoint."""

    duration_s: float
    warmup_s: float
    processes: int
    threads: int


@dataclass(frozen=True)
class Result:
    """An endpoint's figures over the measured window."""

    per_s: float
    p50_ms: float
    p99_ms: float
    calls: int
    errors: int
    #: CPU cores kept busy on average by the server's processes and by the client's.
    server_cores: float
    client_cores: float

    @property
    def error_rate(self) -> float:
        """Failed calls as a share of all calls in the window."""
        return self.errors / max(1, self.calls + self.errors)


percentile = benchkit.percentile


def http_request(
    method: str, path: str, port: int, *, token: str | None = None, body: Any = None
) -> bytes:
    """The bytes of one HTTP/1.1 request that asks the server to close afterwards."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close"]
    lines.append("Accept: application/json")
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    payload = b""
    if body is not None:
        payload = json.dumps(body).encode()
        lines += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by the live processes of process group ``pgid`` (Linux)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # the process has gone
        if int(fields[2]) == pgid:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def measure(
    pool: Pool,
    settings: Settings,
    name: str,
    server: Server,
    request: bytes,
    *,
    status: int,
    items: int | None = None,
) -> Result:
    """Warm ``name`` up, then drive it for the set duration with every client process."""

    def stretch(seconds: float) -> Tally:
        start = time.monotonic() + 0.2
        load = Load(server.port, request, status, items, start, start + seconds, settings.threads)
        total = Tally()
        for tally in pool.map(run_client, [load] * settings.processes):
            total.merge(tally)
        return total

    stretch(settings.warmup_s)
    server_cpu = group_cpu_s(server.pid)
    tally = stretch(settings.duration_s)
    server_cpu = group_cpu_s(server.pid) - server_cpu
    ordered = sorted(tally.latencies_ms)
    result = Result(
        per_s=len(ordered) / settings.duration_s,
        p50_ms=percentile(ordered, 0.50),
        p99_ms=percentile(ordered, 0.99),
        calls=len(ordered),
        errors=tally.errors,
        server_cores=server_cpu / settings.duration_s,
        client_cores=tally.cpu_s / settings.duration_s,
    )
    log(
        f"{name:<8} {result.per_s:8.1f}/s  p50 {result.p50_ms:7.2f} ms  "
        f"p99 {result.p99_ms:7.2f} ms  ({result.calls} ok, {result.errors} failed; "
        f"CPU cores busy: server {result.server_cores:.2f}, client {result.client_cores:.2f})"
    )
    for sample in tally.samples:
        log(f"{name:<8} failure: {sample}")
    return result


# -- the system under test ----------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A gunicorn master serving on ``port``; ``pid`` is also its process group."""

    name: str
    port: int
    pid: int


def free_port() -> int:
    """A TCP port on the loopback address that is free right now."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def stop(proc: subprocess.Popen[bytes], name: str) -> None:
    """Stop a gunicorn master and its workers (its own process group); kill if it lingers."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            log(f"{name}: did not stop in {STOP_TIMEOUT_S:.0f} s, killing it")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    log(f"{name}: stopped")


def gunicorn(
    stack: ExitStack, name: str, target: str, env: dict[str, str], workdir: Path
) -> Server:
    """Start ``target`` under gunicorn with the set number of workers; wait until it answers."""
    port = free_port()
    script = Path(sys.executable).parent / "gunicorn"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "gunicorn"]
    command += ["-w", str(WORKERS), "-b", f"{HOST}:{port}", "--graceful-timeout", "5"]
    command += ["--chdir", str(workdir), "--pythonpath", str(workdir), target]
    log_path = workdir / f"{name}.log"
    output = stack.enter_context(log_path.open("wb"))
    proc = subprocess.Popen(
        command, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
    )
    stack.callback(stop, proc, name)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    probe = http_request("GET", "/healthz", port)
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            if exchange(port, probe)[0] == 200:
                log(f"{name}: gunicorn with {WORKERS} workers on {HOST}:{port}")
                return Server(name, port, proc.pid)
        except OSError:
            pass
        time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-3000:]
    raise RuntimeError(f"{name} did not become healthy on port {port}; its log ends:\n{tail}")


def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so that every cleanup runs."""
    raise SystemExit(143)


def parse_args() -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint")
    parser.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds")
    parser.add_argument("--seed", type=int, default=10_000, help="requests seeded")
    parser.add_argument("--processes", type=int, default=2, help="client processes")
    parser.add_argument("--threads", type=int, default=2, help="threads per client process")
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.warmup, args.seed = 1.0, 0.3, 200
    return args


def main() -> int:
    """Set everything up, measure the four endpoints, print the figures, clean up."""
    args = parse_args()
    settings = Settings(args.duration, args.warmup, args.processes, args.threads)
    signal.signal(signal.SIGTERM, on_sigterm)
    # Also when started in the background, where a shell may have set SIGINT to be ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    # Only what this script sets may configure the control plane (here and in gunicorn).
    for key in [k for k in os.environ if k.startswith("SOVEREIGN_")]:
        del os.environ[key]
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-api-")))
        os.environ["SOVEREIGN_INSTANCE_PATH"] = str(workdir)
        pool = stack.enter_context(multiprocessing.get_context("spawn").Pool(settings.processes))
        stack.callback(pool.join)
        stack.callback(pool.terminate)

        idp, _ = start_dev_idp(environment="testing", host=HOST, port=free_port())
        stack.callback(idp.stop)
        log(f"dev IdP on {idp.url}")
        subject = token_subject(password_token(idp.url, USER, DEMO_PASSWORD))

        url = f"sqlite:///{workdir / 'sovereign.db'}"
        prepare_database(url, idp.url, subject, args.seed)
        log(f"database migrated, demo catalog bootstrapped, {args.seed} requests seeded")

        env = {
            **os.environ,
            "SOVEREIGN_ENV": "testing",
            "SOVEREIGN_DATABASE_URL": url,
            "SOVEREIGN_IDP_URL": idp.url,
            "SOVEREIGN_IDP_DEV": "true",
            # One analyst writes far faster than the per-principal limit allows; the limiter
            # stays on (its cost is measured) with a limit the load never reaches.
            "SOVEREIGN_RATELIMIT_WRITES": "10000000/minute",
        }
        api = gunicorn(stack, "control-plane", "sovereign.wsgi:app", env, workdir)
        (workdir / "bench_bare.py").write_text(BARE_APP)
        bare = gunicorn(stack, "bare-flask", "bench_bare:app", env, workdir)

        def token() -> str:
            """A fresh access token (they live 300 s), fetched just before each endpoint."""
            return password_token(idp.url, USER, DEMO_PASSWORD)

        results = {
            "list": measure(
                pool,
                settings,
                "list",
                api,
                http_request("GET", f"/api/v1/requests?limit={PAGE}", api.port, token=token()),
                status=200,
                items=PAGE,
            ),
            "create": measure(
                pool,
                settings,
                "create",
                api,
                http_request("POST", "/api/v1/requests", api.port, token=token(), body=BODY),
                status=201,
            ),
            "raw_get": measure(
                pool, settings, "raw_get", bare, http_request("GET", "/raw", bare.port), status=200
            ),
            "raw_post": measure(
                pool,
                settings,
                "raw_post",
                bare,
                http_request("POST", "/raw", bare.port, body=BODY),
                status=201,
            ),
        }

    figures: dict[str, Any] = {
        "bench": "api",
        "workers": WORKERS,
        "requests_seeded": args.seed,
        "duration_s": settings.duration_s,
        "client_processes": settings.processes,
        "client_connections": settings.processes * settings.threads,
        "cpu_count": os.cpu_count(),
    }
    for name, r in results.items():
        figures[f"{name}_per_s"] = round(r.per_s, 1)
        figures[f"{name}_p50_ms"] = round(r.p50_ms, 2)
        figures[f"{name}_p99_ms"] = round(r.p99_ms, 2)
        figures[f"{name}_errors"] = r.errors
        figures[f"{name}_server_cpu_cores"] = round(r.server_cores, 2)
        figures[f"{name}_client_cpu_cores"] = round(r.client_cores, 2)
    list_ratio = results["list"].per_s / max(results["raw_get"].per_s, 1e-9)
    create_ratio = results["create"].per_s / max(results["raw_post"].per_s, 1e-9)
    figures["list_ratio"] = round(list_ratio, 3)
    figures["create_ratio"] = round(create_ratio, 3)
    figures["goals"] = GOALS
    figures["goals_met"] = {name: figures[name] >= goal for name, goal in GOALS.items()}
    print(json.dumps(figures), flush=True)

    failing = [n for n, r in results.items() if r.error_rate > MAX_ERROR_RATE]
    if failing:
        log(f"FAILED: more than {MAX_ERROR_RATE:.0%} errors on {', '.join(failing)}")
        return 1
    return 0


if __name__ == "__main__":
    benchkit.run(main, log)
