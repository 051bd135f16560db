"""GPU scrub bandwidth: each pass of the scrub program against a raw fill and a raw read.

What is measured
    On each device (``cpu`` always: a host buffer of ``--mib`` MiB standing in for a GPU's
    memory; ``cuda`` too where torch sees a GPU: all the device memory the scrub program can
    claim, or ``--gpu-mib``), on the same buffers and in the same run:

    1. the raw baselines: ``fill_`` of every buffer with a constant word (``raw_fill_gb_per_s``)
       and a ``sum`` reduction over every buffer (``raw_read_gb_per_s``);
    2. the scrub program (``enclaves.agent.scrub.scrub`` on those buffers, with a canary): the
       bandwidth of each pass (canary scan, zero fill, zero verify, nonce fill, nonce verify).

    ``scrub_ratio`` = the slower fill pass / the raw fill (goal >= 0.8); ``verify_ratio`` = the
    slower verify pass / the raw read; ``scan_ratio`` = the canary scan / the raw read: each
    the median, over 3 x ``--rounds`` rounds, of the pass timed right after its baseline (a
    shared machine's load then weighs on both alike). ``scrub_total_s`` = the scrub's passes
    over the whole buffer (scan, fill and verify twice), and the bandwidths, are the best of
    ``--rounds`` whole scrubs. The buffers are touched once before (so the host's page faults
    are not timed). The scrub must report no mismatch and no canary hit
    (nothing planted the canary): otherwise the exit status is non-zero.

Output
    Progress on stderr; the last line on stdout is one JSON object: the figures of the GPU
    where there is one, else of the cpu (``device``), and every device's under ``devices``.
    ``goals``: ``scrub_ratio`` >= 0.8; on a GPU the whole scrub and verify under 0.5 s per
    80 GB (``scrub_s_per_80gb``).

Run from the repository root: ``.venv/bin/python bench/gpu_scrub.py [--mib N] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import benchkit  # first: it stops bench/audit.py shadowing the audit package
import torch

from enclaves.agent import scrub

GOALS: dict[str, float] = {"scrub_ratio": 0.8, "scrub_s_per_80gb": 0.5}
NONCE = bytes(range(32))
CANARY = bytes(range(32, 64))
log = benchkit.progress("gpu_scrub")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, work: Any) -> float:
    _sync(device)
    started = time.perf_counter()
    work()
    _sync(device)
    return time.perf_counter() - started


def measure(device: torch.device, buffers: list[torch.Tensor], rounds: int) -> dict[str, Any]:
    """The raw baselines and the scrub's passes on ``buffers``, best of ``rounds``."""
    nbytes = sum(buffer.numel() for buffer in buffers)
    words = [buffer.view(torch.int64) for buffer in buffers]
    for chunk in words:  # page faults and first touches, untimed
        chunk.fill_(0)
    best: dict[str, float] = {}
    total_s = float("inf")
    report: dict[str, Any] = {}

    def keep(name: str, seconds: float) -> None:
        best[name] = max(best.get(name, 0.0), nbytes / seconds / 1e9)

    def raw_fill() -> None:
        for chunk in words:
            chunk.fill_(0x5A5A5A5A5A5A5A5A)

    def raw_read() -> None:
        torch.stack([chunk.sum() for chunk in words]).sum().item()

    for number in range(rounds):
        keep("raw_fill", _timed(device, raw_fill))
        keep("raw_read", _timed(device, raw_read))
        report = scrub.scrub(
            str(device) if device.type == "cuda" else "cpu",
            nonce=NONCE,
            canary_nonce=CANARY,
            simulate_bytes=nbytes if device.type == "cpu" else None,
            buffers=buffers,
        )
        for entry in report["passes"]:
            keep(entry["name"], entry["seconds"])
        total_s = min(total_s, sum(entry["seconds"] for entry in report["passes"]))
        log(
            f"{device} round {number + 1}: raw fill {best['raw_fill']:.1f} GB/s, "
            + ", ".join(f"{e['name']} {e['gb_per_s']:.1f}" for e in report["passes"])
        )
    ratios = paired(device, buffers, raw_fill, raw_read, 3 * rounds)
    return {
        "device": str(device),
        "name": _name(device),
        "bytes": nbytes,
        "bytes_total": report["bytes_total"],
        "raw_fill_gb_per_s": round(best["raw_fill"], 2),
        "raw_read_gb_per_s": round(best["raw_read"], 2),
        "passes_gb_per_s": {
            name: round(value, 2) for name, value in best.items() if not name.startswith("raw")
        },
        "scrub_ratio": min(ratios["zeros-fill"], ratios["nonce-fill"]),
        "zeros_fill_ratio": ratios["zeros-fill"],
        "nonce_fill_ratio": ratios["nonce-fill"],
        "verify_ratio": min(ratios["zeros-verify"], ratios["nonce-verify"]),
        "zeros_verify_ratio": ratios["zeros-verify"],
        "nonce_verify_ratio": ratios["nonce-verify"],
        "scan_ratio": ratios["canary-scan"],
        "scrub_total_s": round(total_s, 4),
        "scrub_s_per_80gb": round(total_s * 80e9 / nbytes, 4),
        "mismatches": report["mismatches"],
        "canary_hits": report["canary_hits"],
    }


def paired(
    device: torch.device, buffers: list[torch.Tensor], raw_fill: Any, raw_read: Any, pairs: int
) -> dict[str, float]:
    """Median over ``pairs`` rounds of each pass's time against its raw baseline's, timed back
    to back (so both see the same load on a shared machine): the ratios of bandwidths."""
    rows = scrub.VERIFY_ROWS[device.type]
    layout = scrub._Layout(buffers, rows, rows * scrub.SCAN_FACTOR[device.type])
    pattern = scrub.Pattern(NONCE, device)
    pattern.prepare(layout.rows)
    word = scrub.canary_word(CANARY)
    passes = {
        "zeros-fill": (raw_fill, lambda: scrub._fill_zeros(layout)),
        "zeros-verify": (raw_read, lambda: scrub._verify_zeros(layout)),
        "nonce-fill": (raw_fill, lambda: scrub._fill_pattern(layout, pattern)),
        "nonce-verify": (raw_read, lambda: scrub._verify_pattern(layout, pattern)),
        "canary-scan": (raw_read, lambda: scrub._scan_canary(layout, word)),
    }
    ratios: dict[str, list[float]] = {name: [] for name in passes}
    for _ in range(pairs):
        for name, (raw, ours) in passes.items():
            raw_s = _timed(device, raw)
            if name == "zeros-verify":
                scrub._fill_zeros(layout)  # what the verify reads is what its fill wrote
            elif name == "nonce-verify":
                scrub._fill_pattern(layout, pattern)
            ours_s = _timed(device, ours)
            ratios[name].append(raw_s / ours_s)
    return {name: round(statistics.median(values), 3) for name, values in ratios.items()}


def _name(device: torch.device) -> str:
    if device.type == "cuda":
        return str(torch.cuda.get_device_name(device))
    return f"host memory ({os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads)"


def parse_args() -> argparse.Namespace:
    """Command line options."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="the cpu's buffer in MiB (1024)")
    parser.add_argument("--gpu-mib", type=int, help="cap on the GPU's claim in MiB (all of it)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each kind (5)")
    parser.add_argument("--no-gpu", action="store_true", help="measure the cpu only")
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    args = parser.parse_args()
    if args.quick:
        args.mib, args.rounds = 64, 1
        args.gpu_mib = args.gpu_mib or 1024
    if not 1 <= args.mib <= scrub.MAX_SIMULATE_MIB or args.rounds < 1:
        parser.error(f"--mib must be from 1 to {scrub.MAX_SIMULATE_MIB}, --rounds at least 1")
    return args


def main() -> int:
    """Measure every device there is, print the figures."""
    args = parse_args()
    devices: dict[str, dict[str, Any]] = {}
    cpu = torch.device("cpu")
    log(f"cpu: {args.mib} MiB host buffer")
    devices["cpu"] = measure(cpu, [torch.empty(args.mib << 20, dtype=torch.uint8)], args.rounds)
    if torch.cuda.is_available() and not args.no_gpu:
        gpu = scrub.resolve_device("cuda", None)
        limit = args.gpu_mib << 20 if args.gpu_mib else None
        buffers = scrub._allocate(gpu, limit)
        claimed = sum(buffer.numel() for buffer in buffers)
        log(f"{gpu}: {torch.cuda.get_device_name(gpu)}, claimed {claimed / 2**30:.2f} GiB")
        devices[str(gpu)] = measure(gpu, buffers, args.rounds)
        del buffers
    else:
        log("no GPU visible to torch: cpu figures only")
    main_device = next(name for name in reversed(devices))
    figures: dict[str, Any] = {"bench": "gpu_scrub", **devices[main_device], "devices": devices}
    figures["goals"] = GOALS
    met = {"scrub_ratio": figures["scrub_ratio"] >= GOALS["scrub_ratio"]}
    if figures["device"].startswith("cuda"):
        met["scrub_s_per_80gb"] = figures["scrub_s_per_80gb"] <= GOALS["scrub_s_per_80gb"]
    figures["goals_met"] = met
    print(json.dumps(figures), flush=True)
    clean = all(d["mismatches"] == 0 and d["canary_hits"] == 0 for d in devices.values())
    return 0 if clean else 1


if __name__ == "__main__":
    benchkit.run(main, log)
