"""What the benchmarks share: progress lines, percentiles and the entry point.

Importing it also makes ``import audit`` and ``import enclaves`` mean the packages: Python puts
a script's folder first on ``sys.path``, and ``bench/audit.py`` and ``bench/enclaves.py`` share
their names with the packages the benchmarks measure. It imports the packages with this folder
off the path, then puts the folder back at the end, where worker processes that re-import a
benchmark still find this module.
So every benchmark imports this module before anything from the project.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
import audit  # noqa: E402, F401 - now cached in sys.modules as the package, not bench/audit.py
import enclaves  # noqa: E402, F401 - likewise, not bench/enclaves.py

sys.path.append(str(_HERE))

#: When the benchmark process started (for the elapsed time in progress lines and reports).
STARTED = time.monotonic()


@contextmanager
def project_path_only() -> Iterator[None]:
    """Leave this folder off ``sys.path`` for the duration (the benchmarks are imported by then).

    For code that spawns worker processes without the benchmark as their main module
    (``audit.verify``): they start with this process's ``sys.path``, and with this folder on it
    ``import audit`` there finds ``bench/audit.py`` (an editable install's finder comes after
    ``sys.path``).
    """
    saved = list(sys.path)
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
    try:
        yield
    finally:
        sys.path[:] = saved


def progress(name: str) -> Callable[[str], None]:
    """A function printing ``[name  elapsed] message`` lines to stderr."""

    def log(message: str) -> None:
        print(f"[{name} {time.monotonic() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)

    return log


def percentile(ordered: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of already sorted values (0 when there are none)."""
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, max(0, round(share * len(ordered)) - 1))]


def run(main: Callable[[], int], log: Callable[[str], None]) -> None:
    """Run ``main`` as the process; Ctrl-C exits 130 after ``main``'s own cleanup ran."""
    try:
        status = main()
    except KeyboardInterrupt:
        log("interrupted; everything started here has been stopped")
        status = 130
    raise SystemExit(status)
