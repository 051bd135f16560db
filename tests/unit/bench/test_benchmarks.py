"""The documented benchmark commands work with what ``make bench-setup`` installs: no pytest
(the benchmarks reuse tests/support), psycopg only for the PostgreSQL figures, ``--quick`` on
every one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
BENCHMARKS = ("api", "audit", "enclaves", "gpu_scrub", "keys", "listing", "placement", "workloads")
#: The modules the benchmarks are split into, beside them in bench/.
HELPERS = ("apibench_seed", "auditbench_append", "auditbench_events", "auditbench_verify")

#: Runs in a fresh interpreter with pytest and psycopg made unimportable.
PROBE = """
import contextlib, io, json, runpy, sys
sys.modules["pytest"] = None
sys.modules["psycopg"] = None
sys.path.insert(0, "bench")
import benchkit  # first, as in every benchmark: bench/audit.py shadows the audit package
import importlib
for helper in %r:
    importlib.import_module(helper)
import tests.support.fleet, tests.support.real_guests, tests.support.guest_image
import tests.support.libvirtd, tests.support.postgres, tests.support.apps
import tests.support.workload_image
helps = {}
for name in %r:
    sys.argv = [f"bench/{name}.py", "--help"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        runpy.run_path(f"bench/{name}.py", run_name="__main__")
    helps[name] = out.getvalue()
audit = runpy.run_path("bench/audit.py", run_name="bench_audit")
package = hasattr(sys.modules["audit"], "__path__") and hasattr(sys.modules["enclaves"], "__path__")
print(json.dumps({"helps": helps, "pg": audit["postgres_missing"](), "packages": package}))
"""


def test_benchmarks_import_without_pytest_or_psycopg_and_all_take_quick():
    done = subprocess.run(
        [sys.executable, "-c", PROBE % (HELPERS, BENCHMARKS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    result = json.loads(done.stdout.splitlines()[-1])
    for name, text in result["helps"].items():
        assert "--quick" in text, name
    assert result["packages"], "a benchmark shadowed the audit or enclaves package"
    assert result["pg"] == "psycopg is not installed (the 'bench' extra: make bench-setup)"


def test_every_module_in_bench_is_a_benchmark_a_helper_or_benchkit():
    found = {path.stem for path in (ROOT / "bench").glob("*.py")}
    assert found == {*BENCHMARKS, *HELPERS, "benchkit"}
