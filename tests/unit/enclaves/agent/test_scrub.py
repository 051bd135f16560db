"""The scrub program on CPU tensors: it finds what was planted, and reports what it covered.

A stuck region (a slice the fills do not reach), a flipped byte, an aliased row and a canary
are injected through the program's test seams (``buffers``, ``after_fill``); every count is
compared with what was injected, computed independently.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch

from enclaves.agent import scrub
from enclaves.agent.scrub import BLOCK_BYTES, BLOCK_WORDS, ScrubError

ROOT = Path(__file__).resolve().parents[4]
NONCE = hashlib.sha256(b"nonce").digest()
CANARY = hashlib.sha256(b"canary").digest()
MIB = 1 << 20
REPORT_KEYS = {
    "program",
    "device",
    "simulated",
    "bytes_total",
    "bytes_covered",
    "patterns",
    "mismatches",
    "canary_checked",
    "canary_hits",
    "passes",
    "gb_per_s",
    "seconds",
    "device_state",
}


def buffer(nbytes: int, fill: int = 0) -> torch.Tensor:
    return torch.full((nbytes,), fill, dtype=torch.uint8)


def run(buffers: list[torch.Tensor], **kwargs: Any) -> dict[str, Any]:
    options: dict[str, Any] = {"canary_nonce": CANARY, "simulate_bytes": None, **kwargs}
    return scrub.scrub("cpu", nonce=NONCE, buffers=buffers, **options)


def test_a_clean_simulated_scrub_reports_everything_covered_and_nothing_found() -> None:
    report = scrub.scrub("cpu", nonce=NONCE, canary_nonce=CANARY, simulate_bytes=3 * MIB)
    assert set(report) == REPORT_KEYS
    assert report["program"] == "sovereign-scrub/1"
    assert report["device"] == "cpu"
    assert report["simulated"] is True
    assert report["bytes_total"] == report["bytes_covered"] == 3 * MIB
    assert report["patterns"] == ["zeros", "nonce"]
    assert report["mismatches"] == 0
    assert report["canary_checked"] is True
    assert report["canary_hits"] == 0
    names = [entry["name"] for entry in report["passes"]]
    assert names == ["canary-scan", "zeros-fill", "zeros-verify", "nonce-fill", "nonce-verify"]
    for entry in report["passes"]:
        assert set(entry) == {"name", "bytes", "seconds", "gb_per_s"}
        assert entry["bytes"] == 3 * MIB
        assert entry["seconds"] > 0
        assert entry["gb_per_s"] > 0
    assert report["gb_per_s"] > 0
    assert report["seconds"] >= sum(entry["seconds"] for entry in report["passes"]) * 0.99
    assert report["device_state"]["nvml"] == "unavailable"
    assert "simulated" in report["device_state"]["reason"]
    json.dumps(report, allow_nan=False)


def test_without_a_canary_nonce_no_scan_is_claimed() -> None:
    planted = buffer(2 * MIB)
    planted.view(torch.int64)[:100] = scrub.canary_word(CANARY)
    report = run([planted], canary_nonce=None)
    assert report["canary_checked"] is False
    assert report["canary_hits"] == 0
    assert "canary-scan" not in [entry["name"] for entry in report["passes"]]


def test_the_buffers_hold_the_nonce_pattern_afterwards() -> None:
    target = buffer(2 * MIB + 4096, 0xEE)
    run([target])
    words = target.view(torch.int64)
    expected = scrub.Pattern(NONCE, torch.device("cpu")).words(0, words.numel())
    assert torch.equal(words, expected)


def test_the_pattern_is_splitmix64_of_the_position_under_the_nonce() -> None:
    pattern = scrub.Pattern(NONCE, torch.device("cpu"))
    base_seed, row_seed = scrub._seeds(NONCE)
    for index in (0, 1, BLOCK_WORDS - 1, BLOCK_WORDS, 5 * BLOCK_WORDS + 77):
        row, column = divmod(index, BLOCK_WORDS)
        reference = scrub.splitmix64_reference(column, base_seed) ^ scrub.splitmix64_reference(
            row, row_seed
        )
        assert pattern.words(index, 1).item() == scrub._signed(reference)


def test_the_pattern_depends_on_the_position_and_the_nonce() -> None:
    cpu = torch.device("cpu")
    pattern = scrub.Pattern(NONCE, cpu)
    rows = pattern.words(0, 4 * BLOCK_WORDS).view(4, BLOCK_WORDS)
    # No two rows alike (an aliased address would go unnoticed otherwise), no repeats in a row.
    assert len({tuple(row[:16].tolist()) for row in rows}) == 4
    assert torch.unique(rows[0]).numel() == BLOCK_WORDS
    other = scrub.Pattern(hashlib.sha256(b"another nonce").digest(), cpu)
    assert not torch.equal(other.words(0, 1024), pattern.words(0, 1024))


def test_an_injected_canary_is_found_wherever_it_lies() -> None:
    first, second = buffer(2 * MIB, 0x11), buffer(MIB + 64, 0x22)
    word = scrub.canary_word(CANARY)
    first.view(torch.int64)[7:12] = word  # inside a row
    first.view(torch.int64)[BLOCK_WORDS - 2 : BLOCK_WORDS + 1] = word  # across a row boundary
    second.view(torch.int64)[-1] = word  # in a partial row at a buffer's end
    report = run([first, second])
    assert report["canary_hits"] == 5 + 3 + 1
    assert report["mismatches"] == 0


def test_another_canary_nonce_finds_nothing() -> None:
    planted = buffer(MIB)
    planted.view(torch.int64)[:] = scrub.canary_word(CANARY)
    report = run([planted], canary_nonce=hashlib.sha256(b"not the tenant's").digest())
    assert report["canary_hits"] == 0


def test_the_canary_word_comes_from_the_nonce() -> None:
    digest = hashlib.sha256(b"sovereign-scrub/1 canary\0" + CANARY).digest()
    assert scrub.canary_word(CANARY) == scrub._signed(int.from_bytes(digest[:8], "little"))
    assert scrub.canary_word(CANARY) != scrub.canary_word(NONCE)


def test_a_stuck_region_is_counted_byte_for_byte_in_both_passes() -> None:
    target = buffer(3 * MIB)
    start, length = BLOCK_BYTES - 1000, 5000  # straddles a row boundary, unaligned

    def stuck(pattern: str, buffers: list[torch.Tensor]) -> None:
        buffers[0][start : start + length] = 0xAA  # what the cells held: no fill reached them

    report = run([target], after_fill=stuck)
    expected = scrub.Pattern(NONCE, torch.device("cpu")).words(0, 3 * BLOCK_WORDS)
    expected_bytes = expected.view(torch.uint8)[start : start + length]
    # Zeros: every stuck byte differs. Pattern: all but the bytes that happen to be 0xAA.
    lucky = int((expected_bytes == 0xAA).sum())
    assert report["mismatches"] == length + (length - lucky)


def test_a_single_flipped_byte_is_one_mismatch() -> None:
    target = buffer(2 * MIB)

    def flip(pattern: str, buffers: list[torch.Tensor]) -> None:
        if pattern == "nonce":
            buffers[0][MIB + 3] ^= 0x01

    assert run([target], after_fill=flip)["mismatches"] == 1


def test_mismatching_bytes_are_counted_not_words() -> None:
    target = buffer(MIB)

    def flip(pattern: str, buffers: list[torch.Tensor]) -> None:
        if pattern == "zeros":
            buffers[0][16:19] = 0xFF  # three bytes of one word
            buffers[0][800] = 0x80  # one byte of another

    assert run([target], after_fill=flip)["mismatches"] == 4


def test_an_aliased_row_is_found() -> None:
    target = buffer(4 * MIB)

    def alias(pattern: str, buffers: list[torch.Tensor]) -> None:
        if pattern == "nonce":
            # Row 2 reads what row 1 holds (an address line stuck): same data, wrong place.
            buffers[0][2 * BLOCK_BYTES : 3 * BLOCK_BYTES] = buffers[0][
                BLOCK_BYTES : 2 * BLOCK_BYTES
            ]

    assert run([target], after_fill=alias)["mismatches"] > BLOCK_BYTES * 0.9


def test_coverage_is_what_was_scrubbed_against_the_device_total() -> None:
    report = run([buffer(MIB)], simulate_bytes=4 * MIB)
    assert report["bytes_total"] == 4 * MIB
    assert report["bytes_covered"] == MIB


def test_plant_canary_reports_what_it_planted() -> None:
    answer = scrub.plant_canary("cpu", canary_nonce=CANARY, simulate_bytes=2 * MIB)
    assert answer == {"planted_bytes": 2 * MIB, "device": "cpu"}


@pytest.mark.parametrize(
    ("device", "kwargs", "message"),
    [
        ("cpu", {"nonce": b"short"}, "nonce must be 32 bytes"),
        ("cpu", {"canary_nonce": b"x" * 33}, "canary_nonce must be 32 bytes"),
        ("cpu", {"simulate_bytes": None}, "needs a simulated size"),
        ("cpu", {"simulate_bytes": 12}, "multiple of 8"),
        ("cpu", {"simulate_bytes": (64 << 30) + 8}, "at most 64 GiB"),
        ("cpu", {"simulate_bytes": True}, "multiple of 8"),
        ("cuda;id", {}, "device must be"),
        ("tpu", {}, "device must be"),
        ("cuda:123", {}, "device must be"),
    ],
)
def test_bad_arguments_are_refused(device: str, kwargs: dict[str, Any], message: str) -> None:
    options: dict[str, Any] = {"nonce": NONCE, "canary_nonce": None, "simulate_bytes": MIB}
    options.update(kwargs)
    with pytest.raises(ScrubError, match=message):
        scrub.scrub(device, **options)


@pytest.mark.parametrize(
    "bad",
    [
        torch.zeros(MIB, dtype=torch.int64),
        torch.zeros(MIB + 3, dtype=torch.uint8),
        torch.zeros((2, MIB), dtype=torch.uint8),
        torch.zeros(MIB + 8, dtype=torch.uint8)[1 : MIB + 1],
    ],
)
def test_bad_buffers_are_refused(bad: torch.Tensor) -> None:
    with pytest.raises(ScrubError):
        run([bad])


class FakeNvmlError(Exception):
    pass


def fake_nvml(**broken: bool) -> types.SimpleNamespace:
    def fails(*args: object, **kwargs: object) -> Any:
        raise FakeNvmlError("Not Supported")

    memory = types.SimpleNamespace(total=80 << 30, reserved=512 << 20)
    cc = types.SimpleNamespace(ccFeature=1, environment=2, devToolsMode=0)
    functions: dict[str, Any] = {
        "NVMLError": FakeNvmlError,
        "nvmlMemory_v2": 2,
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetUUID": lambda h: "GPU-5f1c7c2e-aaaa-bbbb-cccc-000000000001",
        "nvmlDeviceGetSerial": lambda h: "1650123456789",
        "nvmlDeviceGetVbiosVersion": lambda h: "96.00.89.00.01",
        "nvmlSystemGetDriverVersion": lambda: "570.86.15",
        "nvmlDeviceGetPciInfo": lambda h: types.SimpleNamespace(busId=b"00000000:41:00.0"),
        "nvmlDeviceGetMemoryInfo": lambda h, version=None: memory,
        "nvmlDeviceGetEccMode": lambda h: (1, 1),
        "nvmlDeviceGetTotalEccErrors": lambda h, kind, counter: 3 if kind == 0 else 0,
        "nvmlDeviceGetRemappedRows": lambda h: (0, 0, 0, 0),
        "nvmlDeviceGetMigMode": lambda h: (0, 0),
        "nvmlSystemGetConfComputeState": lambda: cc,
        "NVML_MEMORY_ERROR_TYPE_UNCORRECTED": 1,
        "NVML_MEMORY_ERROR_TYPE_CORRECTED": 0,
        "NVML_AGGREGATE_ECC": 1,
        "NVML_VOLATILE_ECC": 0,
    }
    for name in broken:
        functions[name] = fails
    return types.SimpleNamespace(**functions)


def test_the_device_state_reads_nvml_field_by_field() -> None:
    nvml = fake_nvml(nvmlDeviceGetSerial=True, nvmlSystemGetConfComputeState=True)
    state = scrub._read_state(nvml, object())
    assert state["nvml"] == "ok"
    assert state["uuid"] == "GPU-5f1c7c2e-aaaa-bbbb-cccc-000000000001"
    assert state["name"] == "NVIDIA H100 80GB HBM3"
    assert state["vbios"] == "96.00.89.00.01"
    assert state["driver"] == "570.86.15"
    assert state["ecc_mode"] == {"current": 1, "pending": 1}
    assert state["ecc_errors"] == {
        "uncorrected_aggregate": 0,
        "corrected_aggregate": 3,
        "uncorrected_volatile": 0,
    }
    assert state["mig_mode"] == {"current": 0, "pending": 0}
    assert state["memory_total"] == 80 << 30
    assert state["memory_reserved"] == 512 << 20
    # What NVML would not tell is None, with the reason, and the rest is still there.
    assert state["serial"] is None
    assert state["cc_mode"] is None
    assert state["errors"] == {"serial": "Not Supported", "cc_mode": "Not Supported"}
    json.dumps(state, allow_nan=False)


def test_nvml_that_is_missing_or_broken_is_reported_not_raised(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = torch.device("cuda", 0)

    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(scrub, "_nvml", missing)
    assert scrub.device_state(gpu) == {"nvml": "unavailable", "reason": "pynvml is not installed"}

    def broken() -> Any:
        raise FakeNvmlError("Driver Not Loaded")

    monkeypatch.setattr(scrub, "_nvml", broken)
    state = scrub.device_state(gpu)
    assert state["nvml"] == "unavailable"
    assert "Driver Not Loaded" in state["reason"]


def cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "enclaves.agent.scrub", *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_command_line_prints_one_json_report() -> None:
    done = cli(
        "scrub",
        "--nonce",
        NONCE.hex(),
        "--canary-nonce",
        CANARY.hex(),
        "--device",
        "cpu",
        "--simulate-mib",
        "2",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    report = json.loads(lines[0])
    assert set(report) == REPORT_KEYS
    assert report["bytes_covered"] == 2 * MIB
    assert report["canary_checked"] is True


def test_the_command_line_plants() -> None:
    done = cli("plant", "--canary-nonce", CANARY.hex(), "--device", "cpu", "--simulate-mib", "1")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"planted_bytes": MIB, "device": "cpu"}


@pytest.mark.parametrize(
    "argv",
    [
        ["scrub", "--nonce", "ab" * 31, "--device", "cpu", "--simulate-mib", "1"],
        ["scrub", "--nonce", "zz" * 32, "--device", "cpu", "--simulate-mib", "1"],
        ["scrub", "--nonce", "ab" * 32, "--device", "cpu;reboot", "--simulate-mib", "1"],
        ["scrub", "--nonce", "ab" * 32, "--device", "cpu", "--simulate-mib", "0"],
        ["scrub", "--nonce", "ab" * 32, "--device", "cpu", "--simulate-mib", "65537"],
        ["scrub", "--nonce", "ab" * 32, "--device", "cpu", "--simulate-mib", "-1"],
        ["plant", "--device", "cpu", "--simulate-mib", "1"],
        ["wipe", "--nonce", "ab" * 32],
        [],
    ],
)
def test_the_command_line_refuses_bad_input_with_one_json_line(argv: list[str]) -> None:
    done = cli(*argv)
    assert done.returncode == 2
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    answer = json.loads(lines[0])
    assert answer["program"] == "sovereign-scrub/1"
    assert answer["error"].startswith("usage:")


def test_the_command_line_reports_a_cpu_without_a_size_as_an_error() -> None:
    done = cli("scrub", "--nonce", NONCE.hex(), "--device", "cpu")
    assert done.returncode == 1
    assert json.loads(done.stdout) == {
        "program": "sovereign-scrub/1",
        "error": "the cpu device needs a simulated size",
    }


def test_the_gpus_total_leaves_out_what_the_driver_reserves(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gpu = torch.device("cuda", 0)
    monkeypatch.setattr(scrub, "_handle", lambda nvml, device: object())
    monkeypatch.setattr(scrub, "_nvml", fake_nvml)
    assert scrub._nvml_total(gpu) == (80 << 30) - (512 << 20)
    # An older pynvml without the v2 figures: NVML's total.
    old = fake_nvml()
    del old.nvmlMemory_v2
    monkeypatch.setattr(scrub, "_nvml", lambda: old)
    assert scrub._nvml_total(gpu) == 80 << 30

    def missing() -> Any:
        raise ImportError("No module named 'pynvml'")

    monkeypatch.setattr(scrub, "_nvml", missing)
    assert scrub._nvml_total(gpu) is None


def test_the_chunks_cover_every_word_once_in_row_order() -> None:
    buffers = [buffer(5 * MIB + 24), buffer(MIB), buffer(40)]
    layout = scrub._Layout(buffers, 2, 3)
    total_words = sum(b.numel() for b in buffers) // 8
    assert layout.rows == 6 + 1 + 1
    for cut in (layout.fills, layout.chunks, layout.scan_chunks):
        assert sum(chunk.numel() for _, chunk in cut) == total_words
        rows = [first + offset for first, chunk in cut for offset in range(chunk.shape[0])]
        assert rows == list(range(layout.rows))
