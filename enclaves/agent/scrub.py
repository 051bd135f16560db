"""The GPU scrub program: scan, wipe and verify a device's memory, on the device, and say so.

Owns the scrub of one torch device (a CUDA GPU, or on ``cpu`` a host buffer standing in for a
GPU's memory) and its report, the contract the control plane validates (``sovereign-scrub/1``):

1. allocate as much of the device's memory as it can (1 GiB pieces, then halves down to 2 MiB,
   keeping a bounded working reserve for the verification's temporaries) and record
   ``bytes_covered`` against ``bytes_total``: on a GPU NVML's total less what NVML reports as
   reserved for the driver and firmware (``nvmlDeviceGetMemoryInfo_v2``; no program, and so no
   tenant, can allocate it), NVML's total where that figure is missing; both raw figures are in
   ``device_state`` (``memory_total``, ``memory_reserved``);
2. canary scan: count the 8-byte words of the fresh allocation, before any write, equal to the
   canary word (the first 8 bytes of SHA-256 of a domain tag and the canary nonce), wherever
   they lie; :func:`plant_canary` writes that word over all it can allocate;
3. fill with zeros, verify on the device; 4. fill with a pattern derived from the nonce that
   depends on the position (a 1 MiB base block of splitmix64 words XOR a per-row key, written
   in one pass), verify on the device. Verification counts mismatching words in row chunks and
   looks at the bytes of a chunk only where words differ, so ``mismatches`` counts bytes
   exactly. Nothing of the device's memory is copied to the host (only the counts are).

Each pass is timed (GB/s). The device's identity and state (UUID, serial, VBIOS, driver, ECC
mode and counters, MIG and confidential-computing modes) come from NVML when ``pynvml`` is
importable and works; otherwise the report says NVML is unavailable and why. The command line
(``python -m sovereign_agent.scrub scrub|plant ...`` in a guest) prints exactly one JSON line.

It is copied into the guest with the agent's modules but it is no part of the agent: it imports
the standard library, torch and (optionally) pynvml, never the rest of ``enclaves`` or the
control plane, and the agent never imports it (it runs it as a subprocess).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

import torch

PROGRAM: Final = "sovereign-scrub/1"
#: Nonces (the pattern's and the canary's) are exactly this many bytes.
NONCE_BYTES: Final = 32
WORD: Final = 8
#: The pattern's base block: fits in a cache, broadcast over the rows of the buffers.
BLOCK_BYTES: Final = 1 << 20
BLOCK_WORDS: Final = BLOCK_BYTES // WORD
#: Allocation on a GPU: pieces of this size, halved on failure down to MIN_PIECE.
MAX_PIECE: Final = 1 << 30
MIN_PIECE: Final = 2 << 20
#: Held while the device is being claimed, then freed for the verification's temporaries.
RESERVE_BYTES: Final = 64 << 20
#: Rows (of BLOCK_BYTES) verified at a time: on a GPU few enough that the temporaries stay in
#: its L2 cache; on the host enough that each operation outweighs starting its threads.
VERIFY_ROWS: Final = {"cuda": 32, "cpu": 16}
#: The canary scan's chunks are this many verify chunks (its temporary is 1/8 of its chunk).
SCAN_FACTOR: Final = {"cuda": 8, "cpu": 1}
#: Largest simulated device (and largest cap on a GPU's allocation), in MiB.
MAX_SIMULATE_MIB: Final = 64 << 10
PATTERNS: Final = ("zeros", "nonce")
_DEVICE = re.compile(r"auto|cpu|cuda(:[0-9]{1,2})?")
_HEX_NONCE = re.compile(r"[0-9a-fA-F]{64}")
_PATTERN_TAG: Final = b"sovereign-scrub/1 pattern\0"
_CANARY_TAG: Final = b"sovereign-scrub/1 canary\0"
_MASK64: Final = (1 << 64) - 1

#: A test seam: called with the pass's pattern name and the buffers after each fill.
AfterFill = Callable[[str, list[torch.Tensor]], None]


class ScrubError(Exception):
    """The scrub cannot run as asked (bad input, no such device); the message is safe to show."""


# Words ---------------------------------------------------------------------------------------


def _signed(value: int) -> int:
    """``value`` (mod 2**64) as the int64 with the same bits."""
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


def canary_word(canary_nonce: bytes) -> int:
    """The 64-bit canary word (as a signed int64) of ``canary_nonce``; never zero."""
    _check_nonce(canary_nonce, "canary_nonce")
    word = int.from_bytes(hashlib.sha256(_CANARY_TAG + canary_nonce).digest()[:8], "little")
    return _signed(word or 1)


def _seeds(nonce: bytes) -> tuple[int, int]:
    digest = hashlib.sha256(_PATTERN_TAG + nonce).digest()
    return _signed(int.from_bytes(digest[:8], "little")), _signed(
        int.from_bytes(digest[8:16], "little")
    )


_GOLDEN: Final = _signed(0x9E3779B97F4A7C15)
_MIX1: Final = _signed(0xBF58476D1CE4E5B9)
_MIX2: Final = _signed(0x94D049BB133111EB)


def _shr(value: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 words (torch's ``>>`` is arithmetic)."""
    return (value >> bits) & ((1 << (64 - bits)) - 1)


def splitmix64(index: torch.Tensor, seed: int) -> torch.Tensor:
    """splitmix64 of the int64 words ``index`` under ``seed`` (wrapping int64 arithmetic)."""
    z = (index + 1) * _GOLDEN + seed
    z = (z ^ _shr(z, 30)) * _MIX1
    z = (z ^ _shr(z, 27)) * _MIX2
    return z ^ _shr(z, 31)


def splitmix64_reference(index: int, seed: int) -> int:
    """The same function in plain integers, for checking the tensor one."""
    z = ((index + 1) * 0x9E3779B97F4A7C15 + seed) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


class Pattern:
    """The nonce's position-dependent pattern: word ``c`` of row ``r`` is ``base[c] ^ key[r]``.

    Rows are :data:`BLOCK_WORDS` words, numbered across all buffers in order; the base block
    is made once on the device, the row keys as they are needed.
    """

    def __init__(self, nonce: bytes, device: torch.device) -> None:
        _check_nonce(nonce, "nonce")
        self._base_seed, self._row_seed = _seeds(nonce)
        self.device = device
        self.base = splitmix64(
            torch.arange(BLOCK_WORDS, dtype=torch.int64, device=device), self._base_seed
        )
        self._table: torch.Tensor | None = None

    def prepare(self, rows: int) -> None:
        """Compute the keys of rows ``0 .. rows - 1`` at once (a few kernels, not a few a chunk)."""
        self._table = self.keys(0, rows)

    def keys(self, first_row: int, rows: int) -> torch.Tensor:
        """The keys of rows ``first_row .. first_row + rows - 1``, shape ``(rows, 1)``."""
        table = self._table
        if table is not None and first_row + rows <= table.shape[0]:
            return table[first_row : first_row + rows]
        index = torch.arange(first_row, first_row + rows, dtype=torch.int64, device=self.device)
        return splitmix64(index, self._row_seed).view(rows, 1)

    def words(self, first_word: int, count: int) -> torch.Tensor:
        """The pattern's words ``first_word .. first_word + count - 1`` (for tests)."""
        index = torch.arange(first_word, first_word + count, dtype=torch.int64, device=self.device)
        rows, columns = index // BLOCK_WORDS, index % BLOCK_WORDS
        return self.base[columns] ^ splitmix64(rows, self._row_seed)


# Buffers -------------------------------------------------------------------------------------


class _Layout:
    """The buffers as int64 words, cut into row chunks numbered across all buffers."""

    def __init__(self, buffers: list[torch.Tensor], verify_rows: int, scan_rows: int) -> None:
        self.buffers = buffers
        self.words = [buffer.view(torch.int64) for buffer in buffers]
        #: Fill targets, one a buffer's full rows and one its partial last row, as
        #: (first global row, words viewed as (rows, columns)); the zero verify reads these.
        self.fills: list[tuple[int, torch.Tensor]] = []
        row = 0
        for words in self.words:
            full = words.numel() // BLOCK_WORDS
            tail = words.numel() - full * BLOCK_WORDS
            if full:
                self.fills.append((row, words[: full * BLOCK_WORDS].view(full, BLOCK_WORDS)))
            if tail:
                self.fills.append((row + full, words[full * BLOCK_WORDS :].view(1, tail)))
            row += full + (1 if tail else 0)
        self.rows = row
        #: The pattern verify's chunks (its temporaries are one chunk), the same form.
        self.chunks = _cut(self.fills, verify_rows)
        #: The canary scan's chunks (its temporary is a bool a word).
        self.scan_chunks = _cut(self.fills, scan_rows)

    def counts(self, count: int) -> torch.Tensor:
        """``count`` counters on the device: the passes keep nothing else per chunk."""
        device = self.buffers[0].device if self.buffers else torch.device("cpu")
        return torch.zeros(count, dtype=torch.int64, device=device)

    @property
    def nbytes(self) -> int:
        return sum(buffer.numel() for buffer in self.buffers)


def _cut(grids: list[tuple[int, torch.Tensor]], rows: int) -> list[tuple[int, torch.Tensor]]:
    return [
        (first + start, grid[start : start + rows])
        for first, grid in grids
        for start in range(0, grid.shape[0], rows)
    ]


def _check_buffers(buffers: list[torch.Tensor], device: torch.device) -> None:
    for buffer in buffers:
        if buffer.dtype != torch.uint8 or buffer.dim() != 1 or not buffer.is_contiguous():
            raise ScrubError("buffers must be contiguous one-dimensional uint8 tensors")
        if buffer.numel() == 0 or buffer.numel() % WORD or buffer.storage_offset() % WORD:
            raise ScrubError("buffers must hold whole, aligned 8-byte words")
        if buffer.device.type != device.type:
            raise ScrubError("buffers must be on the scrubbed device")


def _allocate(device: torch.device, limit: int | None) -> list[torch.Tensor]:
    """Claim as much of ``device``'s memory as possible (at most ``limit`` bytes)."""
    if device.type == "cpu":
        assert limit is not None
        return [torch.empty(limit, dtype=torch.uint8, device=device)]
    reserve = torch.empty(RESERVE_BYTES, dtype=torch.uint8, device=device)
    pieces: list[torch.Tensor] = []
    piece = MAX_PIECE
    remaining = limit
    while piece >= MIN_PIECE and (remaining is None or remaining >= MIN_PIECE):
        size = piece if remaining is None else min(piece, remaining - remaining % MIN_PIECE)
        try:
            pieces.append(torch.empty(size, dtype=torch.uint8, device=device))
        except torch.OutOfMemoryError:
            piece //= 2
            continue
        if remaining is not None:
            remaining -= size
    del reserve
    return pieces


def _warm_up(device: torch.device, pattern: Pattern | None, canary: int | None) -> None:
    """Run every kernel the passes use once, so none has to be loaded once memory is full."""
    words = torch.zeros(BLOCK_WORDS, dtype=torch.int64, device=device)
    if pattern is not None:
        layout = _Layout([words.view(torch.uint8)], 1, 1)
        _fill_pattern(layout, pattern)
        _verify_pattern(layout, pattern)
    words.zero_()
    torch.count_nonzero(words)
    torch.count_nonzero(words.view(torch.uint8))
    torch.count_nonzero(torch.eq(words, canary if canary is not None else 1))
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    counts[0].copy_(torch.count_nonzero(words))
    counts.tolist()
    _sync(device)


# Passes --------------------------------------------------------------------------------------


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class _Timer:
    """Times the passes (each between two device synchronisations)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.passes: list[dict[str, Any]] = []

    def run(self, name: str, nbytes: int, work: Callable[[], int | None]) -> int:
        _sync(self.device)
        started = time.perf_counter()
        result = work()
        _sync(self.device)
        seconds = time.perf_counter() - started
        self.passes.append(
            {
                "name": name,
                "bytes": nbytes,
                "seconds": round(seconds, 6),
                "gb_per_s": round(nbytes / seconds / 1e9, 3) if seconds > 0 else 0.0,
            }
        )
        return result or 0


def _scan_canary(layout: _Layout, word: int) -> int:
    """How many words of the buffers equal ``word``."""
    counts = layout.counts(len(layout.scan_chunks))
    flags: torch.Tensor | None = None
    for index, (_, chunk) in enumerate(layout.scan_chunks):
        if flags is None or flags.numel() < chunk.numel():
            flags = torch.empty(chunk.numel(), dtype=torch.bool, device=chunk.device)
        hits = flags[: chunk.numel()].view(chunk.shape)
        torch.eq(chunk, word, out=hits)
        counts[index].copy_(torch.count_nonzero(hits))
    return sum(_values(counts))


def _fill_zeros(layout: _Layout) -> None:
    for words in layout.words:
        words.zero_()


def _fill_pattern(layout: _Layout, pattern: Pattern) -> None:
    for row, grid in layout.fills:
        torch.bitwise_xor(pattern.base[: grid.shape[1]], pattern.keys(row, grid.shape[0]), out=grid)


def _verify_zeros(layout: _Layout) -> int:
    """Bytes of the buffers that are not zero: words counted, then bytes where words differ.

    No temporary: one reduction a buffer.
    """
    counts = layout.counts(len(layout.fills))
    for index, (_, grid) in enumerate(layout.fills):
        counts[index].copy_(torch.count_nonzero(grid))
    per_grid = _values(counts)
    mismatches = 0
    for (_, chunk), count in zip(layout.fills, per_grid, strict=True):
        if count:
            mismatches += int(torch.count_nonzero(chunk.reshape(-1).view(torch.uint8)).item())
    return mismatches


def _verify_pattern(layout: _Layout, pattern: Pattern) -> int:
    """Bytes of the buffers that differ from the pattern, counted like :func:`_verify_zeros`."""
    diff: torch.Tensor | None = None
    counts = layout.counts(len(layout.chunks))
    for index, (row, chunk) in enumerate(layout.chunks):
        if diff is None or diff.numel() < chunk.numel():
            diff = torch.empty(chunk.numel(), dtype=torch.int64, device=chunk.device)
        delta = _diff(diff, row, chunk, pattern)
        counts[index].copy_(torch.count_nonzero(delta))
    per_chunk = _values(counts)
    mismatches = 0
    for (row, chunk), count in zip(layout.chunks, per_chunk, strict=True):
        if count:
            assert diff is not None
            delta = _diff(diff, row, chunk, pattern)
            mismatches += int(torch.count_nonzero(delta.reshape(-1).view(torch.uint8)).item())
    return mismatches


def _diff(space: torch.Tensor, row: int, chunk: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """``chunk XOR pattern`` in ``space`` (zero where the chunk holds the pattern)."""
    delta = space[: chunk.numel()].view(chunk.shape)
    torch.bitwise_xor(chunk, pattern.base[: chunk.shape[1]], out=delta)
    delta ^= pattern.keys(row, chunk.shape[0])
    return delta


def _values(counts: torch.Tensor) -> list[int]:
    """The per-chunk counts as integers, read back from the device at once."""
    return [int(value) for value in counts.tolist()]


# The program ---------------------------------------------------------------------------------


def scrub(
    device: str,
    *,
    nonce: bytes,
    canary_nonce: bytes | None,
    simulate_bytes: int | None,
    buffers: list[torch.Tensor] | None = None,
    after_fill: AfterFill | None = None,
) -> dict[str, Any]:
    """Scrub ``device`` and return the report (see the module's docstring).

    ``simulate_bytes``: on ``cpu`` the size of the simulated device memory (required there);
    on a GPU a cap on what is claimed (benchmarks). ``buffers`` (instead of claiming memory)
    and ``after_fill`` are test seams: they let a test plant a canary, a stuck region or a
    flipped byte.

    :raises ScrubError: if an argument is malformed or the device cannot be used.
    """
    _check_nonce(nonce, "nonce")
    if canary_nonce is not None:
        _check_nonce(canary_nonce, "canary_nonce")
    target = resolve_device(device, simulate_bytes, given_buffers=buffers is not None)
    started = time.perf_counter()
    pattern = Pattern(nonce, target)
    canary = canary_word(canary_nonce) if canary_nonce is not None else None
    _warm_up(target, pattern, canary)
    if buffers is None:
        buffers = _allocate(target, simulate_bytes)
    else:
        _check_buffers(buffers, target)
    rows = VERIFY_ROWS[target.type]
    layout = _Layout(buffers, rows, rows * SCAN_FACTOR[target.type])
    pattern.prepare(layout.rows)
    covered = layout.nbytes
    timer = _Timer(target)
    hits = 0
    if canary is not None:
        hits = timer.run("canary-scan", covered, lambda: _scan_canary(layout, canary))
    timer.run("zeros-fill", covered, lambda: _fill_zeros(layout))
    if after_fill is not None:
        after_fill("zeros", buffers)
    mismatches = timer.run("zeros-verify", covered, lambda: _verify_zeros(layout))
    timer.run("nonce-fill", covered, lambda: _fill_pattern(layout, pattern))
    if after_fill is not None:
        after_fill("nonce", buffers)
    mismatches += timer.run("nonce-verify", covered, lambda: _verify_pattern(layout, pattern))
    seconds = time.perf_counter() - started
    pass_bytes = sum(entry["bytes"] for entry in timer.passes)
    pass_seconds = sum(entry["seconds"] for entry in timer.passes)
    total = _bytes_total(target, simulate_bytes, covered)
    return {
        "program": PROGRAM,
        "device": str(target),
        "simulated": target.type == "cpu",
        "bytes_total": total,
        "bytes_covered": covered,
        "patterns": list(PATTERNS),
        "mismatches": mismatches,
        "canary_checked": canary is not None,
        "canary_hits": hits,
        "passes": timer.passes,
        "gb_per_s": round(pass_bytes / pass_seconds / 1e9, 3) if pass_seconds > 0 else 0.0,
        "seconds": round(seconds, 6),
        "device_state": device_state(target),
    }


def plant_canary(
    device: str, *, canary_nonce: bytes, simulate_bytes: int | None = None
) -> dict[str, Any]:
    """Write the canary word over all the memory of ``device`` this process can claim (every
    GPU for ``cuda`` with no index: the agent plants on all of the enclave's GPUs).

    Run at the end of a job, in a fresh process: what it claims is the memory the job freed.

    :raises ScrubError: if an argument is malformed or the device cannot be used.
    """
    word = canary_word(canary_nonce)
    target = resolve_device(device, simulate_bytes)
    # ``cuda`` with no index: every GPU the job had, one after the other.
    targets = (
        [torch.device("cuda", index) for index in range(torch.cuda.device_count())]
        if device == "cuda"
        else [target]
    )
    planted = 0
    for one in targets:
        _warm_up(one, None, word)
        buffers = _allocate(one, simulate_bytes)
        for buffer in buffers:
            buffer.view(torch.int64).fill_(word)
        _sync(one)
        planted += sum(buffer.numel() for buffer in buffers)
        del buffers
    name = str(targets[0]) if len(targets) == 1 else f"cuda:0-{len(targets) - 1}"
    return {"planted_bytes": planted, "device": name}


def resolve_device(
    device: str, simulate_bytes: int | None, *, given_buffers: bool = False
) -> torch.device:
    """The torch device ``device`` names (``auto``: the first GPU, else the simulated one).

    :raises ScrubError: if the name is not allowed, the GPU is missing, or ``cpu`` has no
        simulated size.
    """
    if not isinstance(device, str) or not _DEVICE.fullmatch(device):
        raise ScrubError("device must be auto, cpu or cuda[:N]")
    if simulate_bytes is not None and (
        isinstance(simulate_bytes, bool)
        or not isinstance(simulate_bytes, int)
        or not WORD <= simulate_bytes <= MAX_SIMULATE_MIB << 20
        or simulate_bytes % WORD
    ):
        raise ScrubError("simulate_bytes must be a positive multiple of 8, at most 64 GiB")
    if device == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif simulate_bytes is not None:
            device = "cpu"
        else:
            raise ScrubError("no GPU visible, and no simulated device memory asked for")
    if device == "cpu":
        if simulate_bytes is None and not given_buffers:
            raise ScrubError("the cpu device needs a simulated size")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ScrubError("no GPU visible to torch")
    target = torch.device(device)
    index = torch.cuda.current_device() if target.index is None else target.index
    if index >= torch.cuda.device_count():
        raise ScrubError("no such GPU")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _bytes_total(device: torch.device, simulate_bytes: int | None, covered: int) -> int:
    if device.type == "cpu":
        return simulate_bytes if simulate_bytes is not None else covered
    total = _nvml_total(device)
    if total is None:
        total = int(torch.cuda.mem_get_info(device)[1])
    return total


def _check_nonce(value: object, name: str) -> None:
    if not isinstance(value, bytes) or len(value) != NONCE_BYTES:
        raise ScrubError(f"{name} must be {NONCE_BYTES} bytes")


# NVML ----------------------------------------------------------------------------------------


def _nvml() -> Any:
    """The ``pynvml`` module, initialised. :raises Exception: whatever makes it unusable."""
    nvml = importlib.import_module("pynvml")
    nvml.nvmlInit()
    return nvml


def _handle(nvml: Any, device: torch.device) -> Any:
    """The NVML handle of torch's ``device`` (by UUID: CUDA and NVML may order GPUs apart)."""
    uuid = getattr(torch.cuda.get_device_properties(device), "uuid", None)
    if uuid is not None:
        try:
            return nvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except nvml.NVMLError:
            pass
    return nvml.nvmlDeviceGetHandleByIndex(device.index or 0)


def _nvml_total(device: torch.device) -> int | None:
    """NVML's total less its reserved memory (v2), else its total; ``None`` without NVML."""
    try:
        nvml = _nvml()
    except Exception:  # noqa: BLE001 - no NVML: the caller falls back to CUDA's figure
        return None
    try:
        handle = _handle(nvml, device)
        total = int(nvml.nvmlDeviceGetMemoryInfo(handle).total)
        try:
            reserved = _reserved(nvml, handle)
        except Exception:  # noqa: BLE001 - an older driver or pynvml: no v2 figures
            return total
        return total - reserved if 0 <= reserved < total else total
    except Exception:  # noqa: BLE001 - likewise
        return None
    finally:
        _shutdown(nvml)


def _shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):  # nothing to do about a failing shutdown
        nvml.nvmlShutdown()


def _text(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return "".join(c if c.isprintable() else "?" for c in text)[:128]


def device_state(device: torch.device) -> dict[str, Any]:
    """The device's identity and state from NVML, or why NVML is unavailable. Never raises."""
    if device.type != "cuda":
        return {"nvml": "unavailable", "reason": "no GPU: simulated device memory on the host"}
    try:
        nvml = _nvml()
    except ImportError:
        return {"nvml": "unavailable", "reason": "pynvml is not installed"}
    except Exception as exc:  # noqa: BLE001 - NVMLError and the like: the driver is unusable
        return {"nvml": "unavailable", "reason": _text(f"nvmlInit failed: {exc}")}
    try:
        return _read_state(nvml, _handle(nvml, device))
    except Exception as exc:  # noqa: BLE001 - a handle NVML will not give
        return {"nvml": "unavailable", "reason": _text(f"no NVML handle: {exc}")}
    finally:
        _shutdown(nvml)


def _read_state(nvml: Any, handle: Any) -> dict[str, Any]:
    state: dict[str, Any] = {"nvml": "ok"}
    errors: dict[str, str] = {}

    def field(name: str, read: Callable[[], Any]) -> None:
        try:
            state[name] = read()
        except Exception as exc:  # noqa: BLE001 - NVMLError_NotSupported and older pynvml
            state[name] = None
            errors[name] = _text(exc)[:80]

    uncorrected = getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
    corrected = getattr(nvml, "NVML_MEMORY_ERROR_TYPE_CORRECTED", 0)
    aggregate = getattr(nvml, "NVML_AGGREGATE_ECC", 1)
    volatile = getattr(nvml, "NVML_VOLATILE_ECC", 0)
    field("name", lambda: _text(nvml.nvmlDeviceGetName(handle)))
    field("uuid", lambda: _text(nvml.nvmlDeviceGetUUID(handle)))
    field("serial", lambda: _text(nvml.nvmlDeviceGetSerial(handle)))
    field("vbios", lambda: _text(nvml.nvmlDeviceGetVbiosVersion(handle)))
    field("driver", lambda: _text(nvml.nvmlSystemGetDriverVersion()))
    field("pci_bus_id", lambda: _text(nvml.nvmlDeviceGetPciInfo(handle).busId))
    field("memory_total", lambda: int(nvml.nvmlDeviceGetMemoryInfo(handle).total))
    field("memory_reserved", lambda: _reserved(nvml, handle))
    field("ecc_mode", lambda: _pair(nvml.nvmlDeviceGetEccMode(handle)))
    field(
        "ecc_errors",
        lambda: {
            "uncorrected_aggregate": int(
                nvml.nvmlDeviceGetTotalEccErrors(handle, uncorrected, aggregate)
            ),
            "corrected_aggregate": int(
                nvml.nvmlDeviceGetTotalEccErrors(handle, corrected, aggregate)
            ),
            "uncorrected_volatile": int(
                nvml.nvmlDeviceGetTotalEccErrors(handle, uncorrected, volatile)
            ),
        },
    )
    field("remapped_rows", lambda: _remapped(nvml.nvmlDeviceGetRemappedRows(handle)))
    field("mig_mode", lambda: _pair(nvml.nvmlDeviceGetMigMode(handle)))
    field("cc_mode", lambda: _cc_mode(nvml))
    if errors:
        state["errors"] = errors
    return state


def _pair(value: Any) -> dict[str, int]:
    current, pending = value
    return {"current": int(current), "pending": int(pending)}


def _reserved(nvml: Any, handle: Any) -> int:
    info = nvml.nvmlDeviceGetMemoryInfo(handle, version=nvml.nvmlMemory_v2)
    return int(info.reserved)


def _remapped(value: Any) -> dict[str, int]:
    corrected, uncorrected, pending, failure = value
    return {
        "corrected": int(corrected),
        "uncorrected": int(uncorrected),
        "pending": int(pending),
        "failure": int(failure),
    }


def _cc_mode(nvml: Any) -> dict[str, int]:
    state = nvml.nvmlSystemGetConfComputeState()
    return {
        "feature": int(state.ccFeature),
        "environment": int(state.environment),
        "dev_tools": int(state.devToolsMode),
    }


# Command line --------------------------------------------------------------------------------


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(message)


def _hex_nonce(text: str) -> bytes:
    if not _HEX_NONCE.fullmatch(text):
        raise argparse.ArgumentTypeError("a nonce is 64 hex digits (32 bytes)")
    return bytes.fromhex(text)


def _device(text: str) -> str:
    if not _DEVICE.fullmatch(text):
        raise argparse.ArgumentTypeError("device must be auto, cpu or cuda[:N]")
    return text


def _mib(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text) or not 1 <= int(text) <= MAX_SIMULATE_MIB:
        raise argparse.ArgumentTypeError(f"simulate-mib must be from 1 to {MAX_SIMULATE_MIB}")
    return int(text)


def _parser() -> _Parser:
    parser = _Parser(prog="sovereign-scrub", description="Scrub a GPU's memory and verify it.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in ("scrub", "plant"):
        command = commands.add_parser(name)
        if name == "scrub":
            command.add_argument("--nonce", type=_hex_nonce, required=True)
        command.add_argument("--canary-nonce", type=_hex_nonce, required=name == "plant")
        command.add_argument("--device", type=_device, default="auto")
        command.add_argument("--simulate-mib", type=_mib)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; print one JSON line (the report, or ``{"error": ...}``)."""
    try:
        args = _parser().parse_args(argv)
    except _UsageError as exc:
        return _emit({"program": PROGRAM, "error": _text(f"usage: {exc}")}, 2)
    simulate = args.simulate_mib << 20 if args.simulate_mib is not None else None
    try:
        if args.command == "scrub":
            report = scrub(
                args.device,
                nonce=args.nonce,
                canary_nonce=args.canary_nonce,
                simulate_bytes=simulate,
            )
        else:
            report = plant_canary(
                args.device, canary_nonce=args.canary_nonce, simulate_bytes=simulate
            )
    except ScrubError as exc:
        return _emit({"program": PROGRAM, "error": _text(exc)}, 1)
    except (RuntimeError, torch.OutOfMemoryError) as exc:
        return _emit({"program": PROGRAM, "error": _text(f"device failure: {exc}")[:200]}, 1)
    return _emit(report, 0)


def _emit(value: dict[str, Any], status: int) -> int:
    sys.stdout.write(json.dumps(value, separators=(",", ":"), sort_keys=True) + "\n")
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    sys.exit(main())
