"""Cost of per-enclave keys in Vault, and throughput of envelope encryption, against raw ceilings.

What is measured
    Against an OpenBao dev server started here (in memory, ``-dev``), laid out by
    ``bootstrap_dev_vault`` and used through ``VaultSecretStore(addr, token=root)``, the control
    plane's own adapter with its one keep-alive HTTP session:

    1. ``setup``: per enclave, exactly what ``KeyService.provisioned`` asks of the store:
       ``create_key("sovereign-defence", enclave_key_name(id))``, then ``data_key(ref, b"luks")``
       and ``data_key(ref, b"vtpm")``; ``teardown``: ``destroy_key(ref)`` (crypto-erase), after
       every enclave has been set up. Each enclave is timed on its own (mean, nearest-rank p50
       and p99, milliseconds) and its HTTP round trips are read from the store's
       ``round_trips`` counter (``setup_round_trips``, ``teardown_round_trips``: the most any
       enclave needed; every enclave needing the same number is checked). A few enclaves set up
       and torn down before timing warm the connection and the server. Baselines, in the same
       run and on the same server: ``raw_encrypt_ms``, the mean of single
       ``client.secrets.transit.encrypt_data`` calls of 32 bytes made with a bare
       ``hvac.Client`` (its own keep-alive session); ``raw_setup_ms`` / ``raw_teardown_ms``, the
       same Vault calls as setup and teardown made with that bare client (no checks, no error
       translation). ``setup_overhead_ratio`` = setup_ms / (setup_round_trips x raw_encrypt_ms)
       says how far one enclave's setup is from as many of the cheapest transit calls (key
       generation and storage on the server are part of the difference);
       ``setup_adapter_ratio`` = setup_ms / raw_setup_ms isolates what the adapter adds.
       Unless ``--no-audit-run``, step 1's timings are repeated on a second dev server with the
       file audit device on (``audited_*``), as ``sovereign dev`` runs it; the headline figures
       come from the server without an audit device.
    2. ``envelope``: ``seal_many(store, key, enclave, SECRET//NATO, items)`` over a batch of 64
       items of 1 MiB and one of 1024 items of 64 KiB (random bytes made before timing), the
       one ``data_key`` round trip per batch included; ``open``: ``open_many`` of the sealed
       batch (one ``unwrap`` round trip per batch, included). The raw ceiling is AES-256-GCM
       from ``cryptography`` over the same bytes with the same associated data: one
       ``AESGCM(key)`` per batch, then ``encrypt(os.urandom(12), item, aad)`` per item (and
       ``decrypt`` to open), with a local random key and no Vault. Each batch is run
       ``--reps`` times, envelope and raw alternating, and the median repetition counts;
       ``gc.collect()`` runs before each timed call. Rates are in MB/s of plaintext
       (10**6 bytes). ``envelope_mb_per_s`` / ``raw_aesgcm_mb_per_s`` (and the ``open_*``
       pair) are over both batches together (total bytes / total median time);
       ``envelope_ratio`` and ``open_ratio`` are their quotients, per batch in ``*_1mib`` and
       ``*_64kib``. ``open_sealed_64kib_mb_per_s`` is ``open_sealed`` item by item over 256
       items of the small batch: one unwrap round trip per item, the price of not batching.
       Every opened item is compared with its plaintext (outside the timing).

    A destroyed key is checked to be gone (``data_key`` answers NotFoundError), and every
    sealed item to open to its plaintext; a failed check makes the exit status non-zero.

Output
    Progress on stderr; the last line on stdout is one JSON object (latencies in
    milliseconds, rates in MB/s, round trips per enclave). ``goals`` are the targets:
    at most 4 round trips to set up an enclave's keys, envelope throughput at least 0.8 of raw
    AES-GCM; ``goals_met`` judges ``setup_round_trips`` and the lowest envelope ratio of both
    batches. Every process (the OpenBao servers) and temporary directory started here is removed
    on the way out, on failure too.

Run from the repository root: ``.venv/bin/python bench/keys.py [--enclaves N] [--quick]``.
"""

from __future__ import annotations

import argparse
import base64
import gc
import json
import os
import signal
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import benchkit  # first: it stops bench/audit.py shadowing the audit package
import hvac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from devstack.stack import OpenBaoDevServer
from devstack.vault import bootstrap_dev_vault
from sovereign.adapters.vault import DATA_KEY_BITS, TRANSIT_KEY_TYPE, VaultSecretStore
from sovereign.domain.keys import KeyRef, enclave_key_name
from sovereign.domain.labels import LabelScheme
from sovereign.envelope import (
    NONCE_SIZE,
    associated_data,
    open_many,
    open_sealed,
    seal_many,
)
from sovereign.errors import NotFoundError
from sovereign.services.keys import LUKS_CONTEXT, VTPM_CONTEXT

#: The transit mount of the ``defence`` tenant (``key_mount`` of a classified tenant).
MOUNT = "sovereign-defence"
GOALS: dict[str, float] = {"setup_round_trips": 4, "envelope_ratio": 0.8}
#: Enclaves set up and torn down before timing (connection, server code paths).
WARMUP_ENCLAVES = 5
#: Warm-up calls of the raw transit baseline before timing.
WARMUP_CALLS = 20
MIB = 1 << 20
KIB = 1 << 10
MB = 1_000_000
#: Items of the small batch opened one by one with ``open_sealed`` (one unwrap each).
OPEN_SEALED_ITEMS = 256

T = TypeVar("T")

_STARTED = benchkit.STARTED


log = benchkit.progress("bench/keys")


percentile = benchkit.percentile


def ms(seconds: float) -> float:
    """Seconds as milliseconds, rounded for the report."""
    return round(seconds * 1000.0, 3)


class CheckFailedError(Exception):
    """A correctness check of the benchmark failed (the figures are not to be trusted)."""


@dataclass(frozen=True)
class Settings:
    """How much to measure."""

    enclaves: int
    raw_calls: int
    large_items: int
    small_items: int
    reps: int
    audit_run: bool


@dataclass(frozen=True)
class Latencies:
    """Per-call latencies (seconds) and round trips of one timed operation."""

    seconds: list[float]
    round_trips: list[int]

    def figures(self, prefix: str) -> dict[str, Any]:
        """Mean, p50 and p99 in ms, and the most round trips any call needed."""
        ordered = sorted(self.seconds)
        out: dict[str, Any] = {
            f"{prefix}_ms": ms(statistics.fmean(ordered)),
            f"{prefix}_p50_ms": ms(percentile(ordered, 0.50)),
            f"{prefix}_p99_ms": ms(percentile(ordered, 0.99)),
        }
        if self.round_trips:
            out[f"{prefix}_round_trips"] = max(self.round_trips)
        return out


# -- 1. per-enclave keys ----------------------------------------------------------------------


def setup_enclave(store: VaultSecretStore) -> KeyRef:
    """What ``KeyService.provisioned`` asks of the store: the key and the two data keys."""
    ref = store.create_key(MOUNT, enclave_key_name(uuid.uuid4()))
    store.data_key(ref, LUKS_CONTEXT)
    store.data_key(ref, VTPM_CONTEXT)
    return ref


def timed_calls(
    count: int, call: Callable[[int], object], counter: Callable[[], int] | None = None
) -> Latencies:
    """Call ``call(i)`` for i in range(count), timing each and counting its round trips."""
    seconds: list[float] = []
    trips: list[int] = []
    gc.collect()
    for i in range(count):
        before = counter() if counter is not None else 0
        began = time.perf_counter()
        call(i)
        seconds.append(time.perf_counter() - began)
        if counter is not None:
            trips.append(counter() - before)
    return Latencies(seconds, trips)


def check_uniform(name: str, latencies: Latencies) -> None:
    """Log the round trips per call; warn when calls did not all need the same number."""
    low, high = min(latencies.round_trips), max(latencies.round_trips)
    if low != high:
        log(f"{name}: round trips per enclave vary from {low} to {high}; reporting {high}")


def raw_client(bao: OpenBaoDevServer) -> hvac.Client:
    """A bare hvac client with the root token (hvac keeps one keep-alive session)."""
    return hvac.Client(url=bao.addr, token=bao.token, timeout=5)


def raw_setup(client: hvac.Client) -> str:
    """The same Vault calls as :func:`setup_enclave`, with hvac and nothing else."""
    name = enclave_key_name(uuid.uuid4())
    client.secrets.transit.create_key(
        name,
        key_type=TRANSIT_KEY_TYPE,
        exportable=False,
        allow_plaintext_backup=False,
        mount_point=MOUNT,
    )
    for _ in range(2):
        client.secrets.transit.generate_data_key(
            name, key_type="plaintext", bits=DATA_KEY_BITS, mount_point=MOUNT
        )
    return name


def raw_teardown(client: hvac.Client, name: str) -> None:
    """The same Vault calls as ``destroy_key``, with hvac and nothing else."""
    client.secrets.transit.update_key_configuration(name, deletion_allowed=True, mount_point=MOUNT)
    client.secrets.transit.delete_key(name, mount_point=MOUNT)


def measure_keys(bao: OpenBaoDevServer, settings: Settings, tag: str) -> dict[str, Any]:
    """Setup and teardown per enclave through the store, and the raw hvac baselines."""
    store = VaultSecretStore(bao.addr, token=bao.token)
    client = raw_client(bao)
    try:
        for _ in range(WARMUP_ENCLAVES):
            store.destroy_key(setup_enclave(store))
            raw_teardown(client, raw_setup(client))

        refs: list[KeyRef] = []
        setup = timed_calls(
            settings.enclaves,
            lambda _i: refs.append(setup_enclave(store)),
            lambda: store.round_trips,
        )
        teardown = timed_calls(
            settings.enclaves, lambda i: store.destroy_key(refs[i]), lambda: store.round_trips
        )
        check_uniform(f"{tag} setup", setup)
        check_uniform(f"{tag} teardown", teardown)
        try:
            store.data_key(refs[0], LUKS_CONTEXT)
        except NotFoundError:
            pass
        else:
            raise CheckFailedError(f"{tag}: a destroyed key still makes data keys")

        names: list[str] = []
        raw_set = timed_calls(settings.enclaves, lambda _i: names.append(raw_setup(client)))
        raw_down = timed_calls(settings.enclaves, lambda i: raw_teardown(client, names[i]))

        # The cheapest transit call: encrypt 32 bytes under an existing key.
        baseline = setup_enclave(store)
        plaintext = base64.b64encode(os.urandom(32)).decode("ascii")

        def encrypt(_i: int) -> None:
            client.secrets.transit.encrypt_data(
                baseline.name, plaintext=plaintext, mount_point=MOUNT
            )

        for i in range(WARMUP_CALLS):
            encrypt(i)
        raw_encrypt = timed_calls(settings.raw_calls, encrypt)
        store.destroy_key(baseline)
    finally:
        client.adapter.close()
        store.close()

    figures = setup.figures("setup") | teardown.figures("teardown")
    figures |= raw_set.figures("raw_setup") | raw_down.figures("raw_teardown")
    figures |= raw_encrypt.figures("raw_encrypt")
    trips = figures["setup_round_trips"]
    figures["setup_overhead_ratio"] = round(
        figures["setup_ms"] / (trips * figures["raw_encrypt_ms"]), 3
    )
    figures["teardown_overhead_ratio"] = round(
        figures["teardown_ms"] / (figures["teardown_round_trips"] * figures["raw_encrypt_ms"]), 3
    )
    figures["setup_adapter_ratio"] = round(figures["setup_ms"] / figures["raw_setup_ms"], 3)
    figures["teardown_adapter_ratio"] = round(
        figures["teardown_ms"] / figures["raw_teardown_ms"], 3
    )
    log(
        f"{tag}: setup {figures['setup_ms']:.2f} ms (p50 {figures['setup_p50_ms']:.2f}, "
        f"p99 {figures['setup_p99_ms']:.2f}) in {trips} round trips; teardown "
        f"{figures['teardown_ms']:.2f} ms in {figures['teardown_round_trips']}; raw hvac setup "
        f"{figures['raw_setup_ms']:.2f} ms, teardown {figures['raw_teardown_ms']:.2f} ms; "
        f"one transit encrypt {figures['raw_encrypt_ms']:.3f} ms"
    )
    return figures


# -- 2. envelope encryption -------------------------------------------------------------------


def time_once(run: Callable[..., T], *args: Any) -> tuple[float, T]:
    """Seconds one call of ``run(*args)`` takes, after a full collection (no GC debt carried
    in), and what it returned."""
    gc.collect()
    began = time.perf_counter()
    result = run(*args)
    return time.perf_counter() - began, result


def raw_seal(key: bytes, aad: bytes, items: Sequence[bytes]) -> list[tuple[bytes, bytes]]:
    """The ceiling: one AES-GCM context, a random nonce and one ``encrypt`` per item."""
    aead = AESGCM(key)
    out = []
    for item in items:
        nonce = os.urandom(NONCE_SIZE)
        out.append((nonce, aead.encrypt(nonce, item, aad)))
    return out


def raw_open(key: bytes, aad: bytes, sealed: Sequence[tuple[bytes, bytes]]) -> list[bytes]:
    """The ceiling of opening: one AES-GCM context, one ``decrypt`` per item."""
    aead = AESGCM(key)
    return [aead.decrypt(nonce, ciphertext, aad) for nonce, ciphertext in sealed]


@dataclass
class BatchTimes:
    """Median seconds of each operation over one batch, and its plaintext size."""

    nbytes: int
    seal: float
    raw_seal: float
    open: float
    raw_open: float


def measure_batch(
    store: VaultSecretStore, key: KeyRef, items: list[bytes], reps: int, name: str
) -> BatchTimes:
    """Seal and open one batch ``reps`` times, envelope and raw alternating; medians."""
    enclave = uuid.uuid4()
    label = LabelScheme().label("SECRET", ["NATO"])
    aad = associated_data(enclave, label)
    raw_key = AESGCM.generate_key(bit_length=256)
    times: dict[str, list[float]] = {"seal": [], "raw_seal": [], "open": [], "raw_open": []}
    for _ in range(reps):
        seconds, sealed = time_once(seal_many, store, key, enclave, label, items)
        times["seal"].append(seconds)
        seconds, raw_sealed = time_once(raw_seal, raw_key, aad, items)
        times["raw_seal"].append(seconds)
        seconds, opened = time_once(open_many, store, sealed, enclave, label)
        times["open"].append(seconds)
        if opened != items:
            raise CheckFailedError(f"{name}: open_many did not give back the plaintext")
        del opened
        seconds, opened = time_once(raw_open, raw_key, aad, raw_sealed)
        times["raw_open"].append(seconds)
        if opened != items:
            raise CheckFailedError(f"{name}: raw AES-GCM did not give back the plaintext")
        # Drop this repetition's batches, so that at most one of each kind is ever alive.
        del opened, sealed, raw_sealed
    batch = BatchTimes(
        nbytes=sum(len(i) for i in items),
        **{k: statistics.median(v) for k, v in times.items()},
    )
    log(
        f"{name}: seal_many {batch.nbytes / batch.seal / MB:8.1f} MB/s vs raw "
        f"{batch.nbytes / batch.raw_seal / MB:8.1f}; open_many "
        f"{batch.nbytes / batch.open / MB:8.1f} MB/s vs raw "
        f"{batch.nbytes / batch.raw_open / MB:8.1f} (medians of {reps})"
    )
    return batch


def measure_open_sealed(store: VaultSecretStore, key: KeyRef, items: list[bytes]) -> float:
    """MB/s of ``open_sealed`` item by item (one unwrap round trip per item)."""
    enclave = uuid.uuid4()
    label = LabelScheme().label("SECRET", ["NATO"])
    sealed = seal_many(store, key, enclave, label, items)
    seconds, opened = time_once(lambda: [open_sealed(store, s, enclave, label) for s in sealed])
    if opened != items:
        raise CheckFailedError("open_sealed did not give back the plaintext")
    rate = sum(len(i) for i in items) / seconds / MB
    log(f"open_sealed one by one, {len(items)} x 64 KiB: {rate:.1f} MB/s")
    return rate


def ratio(a: float, b: float) -> float:
    """``a / b`` rounded for the report."""
    return round(a / max(b, 1e-12), 3)


def measure_envelope(bao: OpenBaoDevServer, settings: Settings) -> dict[str, Any]:
    """Throughput of sealing and opening both batches, against raw AES-GCM."""
    store = VaultSecretStore(bao.addr, token=bao.token)
    try:
        key = store.create_key(MOUNT, enclave_key_name(uuid.uuid4()))
        large = [os.urandom(MIB) for _ in range(settings.large_items)]
        small = [os.urandom(64 * KIB) for _ in range(settings.small_items)]
        # Warm up code paths and the connection once (not timed).
        measure_batch(store, key, large[:2], 1, "warm-up, not counted")
        batches = {
            "1mib": measure_batch(store, key, large, settings.reps, f"{len(large)} x 1 MiB"),
            "64kib": measure_batch(store, key, small, settings.reps, f"{len(small)} x 64 KiB"),
        }
        open_sealed_rate = measure_open_sealed(store, key, small[:OPEN_SEALED_ITEMS])
        store.destroy_key(key)
    finally:
        store.close()

    total = sum(b.nbytes for b in batches.values())
    figures: dict[str, Any] = {
        "envelope_mb_per_s": round(total / sum(b.seal for b in batches.values()) / MB, 1),
        "raw_aesgcm_mb_per_s": round(total / sum(b.raw_seal for b in batches.values()) / MB, 1),
        "open_mb_per_s": round(total / sum(b.open for b in batches.values()) / MB, 1),
        "raw_open_mb_per_s": round(total / sum(b.raw_open for b in batches.values()) / MB, 1),
    }
    figures["envelope_ratio"] = ratio(figures["envelope_mb_per_s"], figures["raw_aesgcm_mb_per_s"])
    figures["open_ratio"] = ratio(figures["open_mb_per_s"], figures["raw_open_mb_per_s"])
    for size, b in batches.items():
        figures[f"envelope_{size}_mb_per_s"] = round(b.nbytes / b.seal / MB, 1)
        figures[f"raw_aesgcm_{size}_mb_per_s"] = round(b.nbytes / b.raw_seal / MB, 1)
        figures[f"envelope_ratio_{size}"] = ratio(b.raw_seal, b.seal)
        figures[f"open_{size}_mb_per_s"] = round(b.nbytes / b.open / MB, 1)
        figures[f"raw_open_{size}_mb_per_s"] = round(b.nbytes / b.raw_open / MB, 1)
        figures[f"open_ratio_{size}"] = ratio(b.raw_open, b.open)
    figures["open_sealed_64kib_mb_per_s"] = round(open_sealed_rate, 1)
    figures["envelope_items_1mib"] = settings.large_items
    figures["envelope_items_64kib"] = settings.small_items
    figures["envelope_reps"] = settings.reps
    return figures


# -- running ----------------------------------------------------------------------------------


def start_bao(stack: ExitStack, workdir: Path, *, audit: bool) -> OpenBaoDevServer:
    """Start an OpenBao dev server (stopped by ``stack``) and lay it out for development."""
    bao = stack.enter_context(OpenBaoDevServer(workdir, audit=audit))
    bootstrap_dev_vault(bao.addr, bao.token)
    log(f"OpenBao dev server on {bao.addr} ({'file audit device' if audit else 'no audit device'})")
    return bao


def run(settings: Settings, stack: ExitStack) -> dict[str, Any]:
    """Both parts on a server without audit device, then part 1 again with one."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-keys-")))
    figures: dict[str, Any] = {"bench": "keys", "enclaves": settings.enclaves}
    with ExitStack() as server:
        bao = start_bao(server, tmp / "bao", audit=False)
        figures |= measure_keys(bao, settings, "no audit")
        figures |= measure_envelope(bao, settings)
    if settings.audit_run:
        with ExitStack() as server:
            bao = start_bao(server, tmp / "bao-audit", audit=True)
            audited = measure_keys(bao, settings, "file audit")
        for name in (
            "setup_ms",
            "setup_p99_ms",
            "teardown_ms",
            "teardown_p99_ms",
            "raw_encrypt_ms",
            "setup_overhead_ratio",
        ):
            figures[f"audited_{name}"] = audited[name]
    figures["raw_encrypt_calls"] = settings.raw_calls
    figures["cpu_count"] = os.cpu_count()
    return figures


def on_sigterm(_signum: int, _frame: FrameType | None) -> None:
    """Turn SIGTERM into SystemExit so that every cleanup runs."""
    raise SystemExit(143)


def parse_args() -> Settings:
    """Command line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--enclaves", type=int, default=200, help="enclaves set up and torn down")
    parser.add_argument("--raw-calls", type=int, default=500, help="timed raw encrypt calls")
    parser.add_argument("--large", type=int, default=64, help="items of 1 MiB in a batch")
    parser.add_argument("--small", type=int, default=1024, help="items of 64 KiB in a batch")
    parser.add_argument("--reps", type=int, default=7, help="repetitions of each batch")
    parser.add_argument(
        "--no-audit-run", action="store_true", help="skip part 1 with the file audit device"
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run with small sizes")
    args = parser.parse_args()
    if args.quick:
        return Settings(20, 50, 8, 128, 2, not args.no_audit_run)
    return Settings(
        args.enclaves, args.raw_calls, args.large, args.small, args.reps, not args.no_audit_run
    )


def main() -> int:
    """Measure, print the figures as one JSON line, clean up."""
    settings = parse_args()
    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with ExitStack() as stack:
            figures = run(settings, stack)
    except CheckFailedError as e:
        log(f"FAILED: {e}")
        return 1
    ratios = [figures["envelope_ratio_1mib"], figures["envelope_ratio_64kib"]]
    figures["goals"] = GOALS
    figures["goals_met"] = {
        "setup_round_trips": figures["setup_round_trips"] <= GOALS["setup_round_trips"],
        "envelope_ratio": min(ratios) >= GOALS["envelope_ratio"],
    }
    figures["duration_s"] = round(time.monotonic() - _STARTED, 1)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    benchkit.run(main, log)
