"""The scrub program on a real GPU (no VM): coverage, verification, and the canary's life.

Each scrub and each plant runs in its own process through the command line, as the agent runs
them: a process claims what the GPU's memory holds, and what one process leaves is what the
next one's fresh allocation sees. Run only where an NVIDIA GPU is on the PCI bus; there a
missing driver, CUDA build or NVML fails them.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.gpu import NO_GPU, gpu_present

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_present(), reason=NO_GPU)]

ROOT = Path(__file__).resolve().parents[4]
NONCE = hashlib.sha256(b"gpu scrub nonce").digest()
CANARY = hashlib.sha256(b"gpu canary nonce").digest()


def program(*argv: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "enclaves.agent.scrub", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (done.stdout[-2000:], done.stderr[-3000:])
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    answer = json.loads(lines[0])
    assert isinstance(answer, dict)
    return answer


def scrub_gpu(canary: bytes | None = CANARY) -> dict[str, Any]:
    argv = ["scrub", "--nonce", NONCE.hex(), "--device", "cuda"]
    if canary is not None:
        argv += ["--canary-nonce", canary.hex()]
    return program(*argv)


def test_the_whole_gpu_is_scrubbed_and_verified() -> None:
    report = scrub_gpu(canary=None)
    state = report["device_state"]
    assert state["nvml"] == "ok", state
    assert state["uuid"].startswith("GPU-")
    assert report["device"].startswith("cuda")
    assert report["simulated"] is False
    # bytes_total is NVML's total less the driver's reserved memory; at least 99 % of it was
    # claimed, filled and verified.
    assert report["bytes_total"] == state["memory_total"] - (state["memory_reserved"] or 0)
    assert report["bytes_covered"] / report["bytes_total"] >= 0.99, report
    assert report["mismatches"] == 0
    assert [entry["name"] for entry in report["passes"]] == [
        "zeros-fill",
        "zeros-verify",
        "nonce-fill",
        "nonce-verify",
    ]
    assert all(entry["bytes"] == report["bytes_covered"] for entry in report["passes"])


def test_a_canary_planted_by_one_process_is_not_found_by_the_next_after_the_scrub() -> None:
    planted = program("plant", "--canary-nonce", CANARY.hex(), "--device", "cuda")
    first = scrub_gpu()
    assert planted["device"].startswith("cuda")
    assert planted["planted_bytes"] >= 0.98 * first["bytes_total"]
    # The scrub after the plant: whatever it found of the canary, it wiped and verified.
    assert first["canary_checked"] is True
    assert first["mismatches"] == 0
    assert first["bytes_covered"] / first["bytes_total"] >= 0.99
    # The next process sees none of it.
    after = scrub_gpu()
    assert after["canary_checked"] is True
    assert after["canary_hits"] == 0, after
    assert after["mismatches"] == 0


def test_the_scan_and_the_verification_find_what_is_planted_on_the_gpu() -> None:
    import torch

    from enclaves.agent import scrub

    gpu = torch.device("cuda", 0)
    mib = 1 << 20
    target = torch.zeros(8 * mib, dtype=torch.uint8, device=gpu)
    target.view(torch.int64)[1000:1010] = scrub.canary_word(CANARY)

    def tamper(pattern: str, buffers: list[torch.Tensor]) -> None:
        if pattern == "nonce":
            buffers[0][3 * mib + 5] ^= 0xFF  # one flipped byte
            buffers[0][5 * mib : 5 * mib + 64] = 0  # a stuck region: what the zeros left

    report = scrub.scrub(
        "cuda:0",
        nonce=NONCE,
        canary_nonce=CANARY,
        simulate_bytes=None,
        buffers=[target],
        after_fill=tamper,
    )
    expected = scrub.Pattern(NONCE, gpu).words(5 * mib // 8, 8).view(torch.uint8)
    stuck = 64 - int((expected == 0).sum().item())
    assert report["canary_hits"] == 10
    assert report["mismatches"] == 1 + stuck
    # The pattern is the same function of the position on the GPU as on the host.
    cpu = scrub.Pattern(NONCE, torch.device("cpu")).words(0, 4 * scrub.BLOCK_WORDS + 7)
    assert torch.equal(scrub.Pattern(NONCE, gpu).words(0, cpu.numel()).cpu(), cpu)
    del target
    torch.cuda.empty_cache()
