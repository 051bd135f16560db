"""Placement decisions per second on a simulated fleet, against a raw filtering loop.

What is measured
    A fleet of ``--hosts`` hosts (default 1,000) with 8 simulated H100 GPUs each (8,000 GPUs),
    4 per NUMA node, one host in ten with two GPUs sharing an IOMMU group, is built from a fixed
    seed: accreditations drawn from CONFIDENTIAL, SECRET, SECRET//NATO and the top label; 4 % of
    hosts draining and 2 % quarantined; 40 % already carrying enclaves of a label from a small
    lattice (classified or civilian), with some of their GPUs allocated; and GPUs dirty,
    sanitizing or quarantined here and there. Requests (label, classified flag, 1, 2, 4 or
    8 GPUs, vCPUs, memory) are drawn from the same seed before timing.

    1. ``placements_per_s``: ``place(request, fleet)`` per request, each successful placement
       applied to the fleet (``apply``, outside the timing) so the fleet fills up; the fleet is
       reset to its initial state every ``RESET_EVERY`` decisions. Host-derived GPU pools are
       cached per (immutable) host state, as in a worker holding a snapshot.
    2. ``cold_placements_per_s``: the same decisions on fresh copies of the initial fleet (no
       cached pools: what a worker pays right after loading the fleet from the database).
    3. ``raw_filter_per_s``: the baseline, a bare loop over the same fleet that only counts each
       active host's free GPUs and takes the first host with enough (no labels, no groups, no
       NUMA, no reasons). ``placement_ratio`` = placements_per_s / raw_filter_per_s.

    Every decision is checked outside the timing: a placed host is active, its accreditation
    dominates the label, it carries no other label, and the GPUs were free. A failed check makes
    the exit status non-zero.

Output
    Progress on stderr; the last line on stdout is one JSON object. ``goals``: at least 1,000
    placement decisions per second (warm; the cold figure is reported, not judged).

Run from the repository root: ``.venv/bin/python bench/placement.py [--decisions N] [--quick]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import time
from collections.abc import Sequence
from dataclasses import replace

import benchkit  # first: it stops bench/audit.py shadowing the audit package

from sovereign.domain.fleet import Gpu
from sovereign.domain.labels import Label, LabelScheme
from sovereign.domain.placement import (
    GpuStatus,
    HostState,
    HostStatus,
    Placement,
    PlacementRequest,
    apply,
    place,
)

GOALS: dict[str, float] = {"placements_per_s": 1000.0}
MODEL = "H100-SXM5-80GB"
SEED = 20260505
RESET_EVERY = 400
GPUS_PER_HOST = 8

log = benchkit.progress("bench/placement")
SCHEME = LabelScheme()


class CheckFailedError(Exception):
    """A decision broke an isolation rule (the figures are not to be trusted)."""


def lattice() -> list[Label]:
    """The labels requests and carried enclaves are drawn from."""
    return [
        SCHEME.label("UNCLASSIFIED"),
        SCHEME.label("RESTRICTED"),
        SCHEME.label("CONFIDENTIAL"),
        SCHEME.label("SECRET"),
        SCHEME.label("SECRET", ["NATO"]),
        SCHEME.label("SECRET", ["EU"]),
    ]


def build_fleet(hosts: int, rng: random.Random) -> list[HostState]:
    """A simulated fleet of ``hosts`` hosts with 8 GPUs each, mixed labels and states."""
    accreditations = [
        SCHEME.label("CONFIDENTIAL"),
        SCHEME.label("SECRET"),
        SCHEME.label("SECRET", ["NATO"]),
        SCHEME.highest,
    ]
    labels = lattice()
    fleet = []
    for index in range(hosts):
        host = f"hv{index:04d}"
        accreditation = rng.choice(accreditations)
        gpus = []
        for slot in range(GPUS_PER_HOST):
            address = f"{index // 256:04x}:{index % 256:02x}:{slot:02x}.0"
            roll = rng.random()
            state: GpuStatus = "free"
            if roll < 0.03:
                state = "dirty"
            elif roll < 0.05:
                state = "sanitizing"
            elif roll < 0.06:
                state = "quarantined"
            gpus.append(Gpu(host, address, MODEL, slot // 4, index * 16 + slot, (address,), state))
        if index % 10 == 0:
            shared = (gpus[2].address, gpus[3].address)
            gpus[2] = replace(gpus[2], iommu_group=index * 16 + 2, group_members=shared)
            gpus[3] = replace(gpus[3], iommu_group=index * 16 + 2, group_members=shared)
        carried: frozenset[str] = frozenset()
        classified: bool | None = None
        vcpus, memory = 128, 2 << 20
        if rng.random() < 0.4:
            label = rng.choice([x for x in labels if accreditation.dominates(x)])
            carried = frozenset({str(label)})
            classified = label.rank > 0 or rng.random() < 0.3
            for slot in rng.sample(range(GPUS_PER_HOST), rng.choice([1, 2, 4])):
                if gpus[slot].state == "free":
                    gpus[slot] = replace(gpus[slot], state="allocated")
            vcpus, memory = 64, 1 << 20
        roll = rng.random()
        status: HostStatus = (
            "draining" if roll < 0.04 else "quarantined" if roll < 0.06 else "active"
        )
        fleet.append(
            HostState(
                name=host,
                accreditation=accreditation,
                state=status,
                labels_present=carried,
                classified_present=classified,
                free_vcpus=vcpus,
                free_memory_mib=memory,
                gpus=tuple(gpus),
            )
        )
    return fleet


def build_requests(count: int, rng: random.Random) -> list[PlacementRequest]:
    """``count`` requests with labels from the lattice and 1, 2, 4 or 8 GPUs."""
    labels = lattice()
    requests = []
    for _ in range(count):
        label = rng.choice(labels)
        gpus = rng.choice([1, 1, 2, 2, 4, 8])
        requests.append(
            PlacementRequest(
                label=label,
                classified=label.rank > 0 or rng.random() < 0.2,
                gpus=gpus,
                gpu_model=MODEL,
                vcpus=8 * gpus,
                memory_mib=65536 * gpus,
            )
        )
    return requests


def check(placement: Placement, request: PlacementRequest, fleet: Sequence[HostState]) -> None:
    """Check one decision against isolation rules 1 and 2.

    :raises CheckFailedError: if the decision breaks one.
    """
    if len(placement.reasons) != len(fleet) - (1 if placement.ok else 0):
        raise CheckFailedError("a rejected host has no reason")
    if not placement.ok:
        return
    host = next(h for h in fleet if h.name == placement.host)
    free = {g.address for g in host.gpus if g.state == "free"}
    if (
        host.state != "active"
        or not host.accreditation.dominates(request.label)
        or not host.labels_present <= {str(request.label)}
        or host.classified_present not in (None, request.classified)
        or not set(placement.gpus) <= free
        or len(placement.gpus) != request.gpus
    ):
        raise CheckFailedError(f"placement on {host.name} breaks an isolation rule")


def raw_filter(request: PlacementRequest, fleet: Sequence[HostState]) -> str | None:
    """The baseline: of the active hosts with enough free GPUs, the one with fewest; no rules."""
    best: tuple[int, str] | None = None
    for host in fleet:
        if host.state != "active":
            continue
        free = 0
        for gpu in host.gpus:
            if gpu.state == "free":
                free += 1
        if free >= request.gpus and (best is None or (free, host.name) < best):
            best = (free, host.name)
    return None if best is None else best[1]


def measure_warm(initial: list[HostState], requests: list[PlacementRequest]) -> tuple[float, int]:
    """Decisions/s of place() with apply between decisions; returns (rate, successes)."""
    fleet = list(initial)
    elapsed = 0.0
    placed = 0
    for index, request in enumerate(requests):
        if index % RESET_EVERY == 0:
            fleet = list(initial)
        started = time.perf_counter()
        placement = place(request, fleet)
        elapsed += time.perf_counter() - started
        check(placement, request, fleet)
        if placement.ok:
            placed += 1
            fleet = apply(placement, request, fleet)
    return len(requests) / elapsed, placed


def measure_cold(initial: list[HostState], requests: list[PlacementRequest]) -> float:
    """Decisions/s of place() on fresh host states (no cached GPU pools)."""
    elapsed = 0.0
    for request in requests:
        fresh = [replace(host) for host in initial]
        started = time.perf_counter()
        placement = place(request, fresh)
        elapsed += time.perf_counter() - started
        check(placement, request, fresh)
    return len(requests) / elapsed


def measure_raw(initial: list[HostState], requests: list[PlacementRequest]) -> float:
    """Decisions/s of the raw filtering loop."""
    started = time.perf_counter()
    for request in requests:
        raw_filter(request, initial)
    return len(requests) / (time.perf_counter() - started)


def main() -> int:
    """Build the fleet, time the three loops, print one JSON line."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--decisions", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="fewer decisions, for smoke tests")
    args = parser.parse_args()
    decisions = 400 if args.quick else args.decisions
    rng = random.Random(SEED)
    fleet = build_fleet(args.hosts, rng)
    requests = build_requests(decisions, rng)
    gpus = sum(len(h.gpus) for h in fleet)
    log(f"fleet: {len(fleet)} hosts, {gpus} GPUs; {decisions} requests")
    gc.collect()
    try:
        warm, placed = measure_warm(fleet, requests)
        log(f"place (warm): {warm:,.0f} decisions/s, {placed} placed")
        cold_requests = requests[: max(50, decisions // 10)]
        gc.collect()
        cold = measure_cold(fleet, cold_requests)
        log(f"place (cold): {cold:,.0f} decisions/s over {len(cold_requests)} decisions")
    except CheckFailedError as exc:
        log(f"CHECK FAILED: {exc}")
        return 1
    gc.collect()
    raw = measure_raw(fleet, requests)
    log(f"raw filter: {raw:,.0f} decisions/s")
    figures = {
        "benchmark": "placement",
        "hosts": len(fleet),
        "gpus": gpus,
        "decisions": decisions,
        "placed": placed,
        "placements_per_s": round(warm, 1),
        "cold_placements_per_s": round(cold, 1),
        "raw_filter_per_s": round(raw, 1),
        "placement_ratio": round(warm / raw, 3),
        "cold_ratio": round(cold / raw, 3),
        "goals": GOALS,
        "goals_met": warm >= GOALS["placements_per_s"],
        "elapsed_s": round(time.monotonic() - benchkit.STARTED, 1),
    }
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    benchkit.run(main, log)
