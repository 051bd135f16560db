"""Enclaves: placement throughput, control-plane overhead per enclave, and approval-to-boot.

What is measured (one run, one JSON line)
    1. ``placements_per_s``: placement decisions on a simulated fleet of 1,000 hosts and 8,000
       GPUs with mixed labels (the fleet and requests of ``bench/placement.py``, which documents
       them), against a raw filtering loop over the same fleet (``placement_ratio``).
       Goal: at least 1,000 decisions/s.
    2. ``overhead_ms``: request-to-running through the control plane on libvirt's test driver
       (a SQLite file, the bundled SECRET host, keys in the in-memory secret store): from the
       final approval's commit to the request being ``running``, i.e. placement with GPU claim,
       five recorded provisioning steps with their audit events and the state change, minus the
       time spent inside the hypervisor (every libvirt call is timed by a wrapper). The raw
       baseline, ``raw_define_start_ms``, is libvirt define+start of the same domain XML on the
       same driver with nothing else. Goal: overhead at most 50 ms per enclave.
    3. ``boot_marker_s`` (unless ``--no-qemu``): on a real libvirtd with QEMU (TCG), from the
       final approval to the guest's boot marker on its serial console, through the reconciler
       with a LUKS volume, libvirt secrets, a vTPM and an isolated network. The anchor is
       OpenStack's 8.6 s median boot; TCG here is a software CPU, so this is an upper bound of
       what KVM does. Needs root and the packages ``make bench-setup`` installs (libvirtd,
       QEMU, swtpm, busybox, cpio); without them this says what is missing in
       ``boot_skipped`` and measures the rest.

Run from the repository root: ``.venv/bin/python bench/enclaves.py [--quick] [--no-qemu]``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import benchkit  # first: it stops bench/audit.py shadowing the audit package
import placement as placement_bench  # bench/placement.py: the simulated fleet

from sovereign import config as settings
from sovereign.adapters.migrations import upgrade
from sovereign.bootstrap import Services, build_hypervisor

GOALS: dict[str, float] = {"placements_per_s": 1000.0, "overhead_ms": 50.0}
log = benchkit.progress("bench/enclaves")
ROOT = Path(__file__).resolve().parent.parent
# The control plane over a fleet and the real-guest harness (libvirtd, the busybox guest) are
# the test suite's own (tests/support): the benchmark measures what the tests exercise.
sys.path.insert(0, str(ROOT))
SECRET_ALL = {"level": "SECRET", "compartments": ["CRYPTO", "EU", "NATO"]}


class TimedHypervisor:
    """Wraps the real hypervisor adapter and adds up the time spent inside it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started

        return timed


# -- 1 ----------------------------------------------------------------------------------------


def measure_placement(decisions: int) -> dict[str, float]:
    rng = random.Random(placement_bench.SEED)
    fleet = placement_bench.build_fleet(1000, rng)
    requests = placement_bench.build_requests(decisions, rng)
    gc.collect()
    warm, placed = placement_bench.measure_warm(fleet, requests)
    gc.collect()
    raw = placement_bench.measure_raw(fleet, requests)
    gpus = sum(len(h.gpus) for h in fleet)
    log(
        f"placement: {warm:,.0f} decisions/s ({placed} placed) vs raw filter {raw:,.0f}/s "
        f"on {len(fleet)} hosts, {gpus} GPUs"
    )
    return {
        "placement_hosts": len(fleet),
        "placement_gpus": gpus,
        "placements_per_s": round(warm, 1),
        "raw_filter_per_s": round(raw, 1),
        "placement_ratio": round(warm / raw, 3),
    }


# -- 2 ----------------------------------------------------------------------------------------


def measure_overhead(enclaves: int) -> dict[str, float]:
    from enclaves.hosts import bundled_host_uri  # noqa: PLC0415
    from tests.support.factories import ANALYST_DEFENCE, ctx  # noqa: PLC0415
    from tests.support.fleet import make_fleet  # noqa: PLC0415

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        config = {
            "ENCLAVE_POOL_PATH": str(folder / "pool"),
            "ENCLAVE_CONSOLE_DIR": str(folder / "console"),
        }
        app = settings.new_app()
        settings.load(app, {"ENV": "testing", **config}, check=False)
        timed = TimedHypervisor(build_hypervisor(app.config))
        url = f"sqlite:///{folder / 'bench.db'}"
        upgrade(url)
        # The bundled SECRET host, registered and its GPUs sanitized; keys in memory.
        fleet = make_fleet(
            url,
            folder=folder,
            hypervisor=timed,
            hosts={"secret-h100x8": (bundled_host_uri("secret-h100x8"), SECRET_ALL, None)},
            **config,
        )
        try:
            reconciler = fleet.reconciler("bench")
            totals, inside = [], []
            for i in range(enclaves):
                rid = fleet.request(gpus=1, vcpus=2, memory_mib=512, disk_gib=1, lease_hours=1)
                timed.seconds = 0.0
                started = time.perf_counter()
                reconciler.run_once()
                elapsed = time.perf_counter() - started
                if fleet.state(rid) != "running":
                    raise RuntimeError(f"enclave {rid} is {fleet.state(rid)}, not running")
                totals.append(elapsed)
                inside.append(timed.seconds)
                # Tear it down again (not timed) so the host never fills up.
                fleet.services.enclaves.terminate(ctx(ANALYST_DEFENCE), rid, "bench")
                fleet.settle("bench")
                if (i + 1) % 10 == 0:
                    log(f"overhead: {i + 1}/{enclaves} enclaves")
            xml = raw_domain_xml(fleet.services, timed.inner, rid)
        finally:
            fleet.services.close()
        raw = raw_define_start(xml, enclaves)
    overhead = [(t - h) * 1000 for t, h in zip(totals, inside, strict=True)]
    figures = {
        "request_to_running_ms": round(statistics.median(totals) * 1000, 2),
        "hypervisor_ms": round(statistics.median(inside) * 1000, 2),
        "overhead_ms": round(statistics.median(overhead), 2),
        "overhead_p95_ms": round(benchkit.percentile(sorted(overhead), 0.95), 2),
        "raw_define_start_ms": round(raw * 1000, 3),
        "enclaves": enclaves,
    }
    log(
        f"overhead: median {figures['overhead_ms']} ms per enclave (p95 "
        f"{figures['overhead_p95_ms']} ms); request-to-running {figures['request_to_running_ms']} "
        f"ms of which libvirt {figures['hypervisor_ms']} ms; raw define+start {raw * 1000:.2f} ms"
    )
    return figures


def raw_domain_xml(services: Services, hypervisor: Any, enclave_id: uuid.UUID) -> str:
    """The designer's XML for the last enclave, as the adapter produced it."""
    from sovereign.services.ports import plan_for  # noqa: PLC0415

    with services.uow(readonly=True) as uow:
        enclave = uow.enclaves.get(enclave_id)
        assert enclave is not None
        plan = plan_for(uow, enclave)
    # The adapter's own host objects: the one entry point of enclaves for this enclave.
    return str(hypervisor._enclave(plan).domain_xml())


def raw_define_start(xml: str, repeat: int) -> float:
    """Median seconds of libvirt define+start of ``xml`` on a fresh test-driver host."""
    import libvirt  # noqa: PLC0415

    from enclaves.hosts import bundled_host_uri  # noqa: PLC0415

    libvirt.registerErrorHandler(lambda *_: None, None)
    conn = libvirt.open(bundled_host_uri("secret-h100x8"))
    times = []
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            domain = conn.defineXMLFlags(xml, libvirt.VIR_DOMAIN_DEFINE_VALIDATE)
            domain.create()
            times.append(time.perf_counter() - started)
            domain.destroy()
            domain.undefine()
    finally:
        conn.close()
    return statistics.median(times)


# -- 3 ----------------------------------------------------------------------------------------


#: What the QEMU boot needs on this machine (Debian paths), and the package providing it.
QEMU_NEEDS = {
    "/usr/sbin/libvirtd": "libvirt-daemon-system",
    "/usr/sbin/virtlogd": "libvirt-daemon-system",
    "/usr/bin/qemu-system-x86_64": "qemu-system-x86",
    "/usr/bin/qemu-img": "qemu-utils",
    "/usr/bin/swtpm": "swtpm",
    "/bin/busybox": "busybox-static",
    "/usr/bin/cpio": "cpio",
}


def qemu_missing() -> str | None:
    """Why the QEMU boot cannot be measured on this machine, or None if it can."""
    if os.geteuid() != 0:
        return "the real libvirtd with QEMU needs root"
    absent = sorted({package for path, package in QEMU_NEEDS.items() if not Path(path).exists()})
    if absent:
        return f"missing packages {', '.join(absent)} (make bench-setup installs them)"
    return None


def measure_boot() -> dict[str, float]:
    from tests.support.real_guests import boot_through_control_plane  # noqa: PLC0415

    times = boot_through_control_plane(log)
    return {name: round(value, 2) for name, value in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, for smoke tests")
    parser.add_argument("--no-qemu", action="store_true", help="skip the real QEMU boot")
    args = parser.parse_args()
    figures: dict[str, Any] = {"benchmark": "enclaves"}
    figures |= measure_placement(400 if args.quick else 4000)
    figures |= measure_overhead(10 if args.quick else 50)
    missing = None if args.no_qemu else qemu_missing()
    if missing is not None:
        log(f"boot_marker_s not measured: {missing}; --no-qemu skips it")
        figures["boot_skipped"] = missing
    elif not args.no_qemu:
        figures |= measure_boot()
    figures["goals"] = GOALS
    figures["goals_met"] = (
        figures["placements_per_s"] >= GOALS["placements_per_s"]
        and figures["overhead_ms"] <= GOALS["overhead_ms"]
    )
    figures["elapsed_s"] = round(time.monotonic() - benchkit.STARTED, 1)
    print(json.dumps(figures), flush=True)
    return 0


if __name__ == "__main__":
    benchkit.run(main, log)
