"""An in-memory :class:`~sovereign.services.ports.Sanitizer` for fast tests of GPU hand-overs.

Owns :class:`MemorySanitizer`: it answers every hand-over with a well-formed
``sovereign-scrub/1`` report of a pretend device memory (``simulated: true``, device
``memory``, canary checked when the request carries a canary nonce), records each request
(tests read the nonce and canary nonce the reconciler passed), and offers switches to make a
hand-over fail as a real one can: report fields replaced (``tamper``: mismatches, canary hits,
short coverage, garbage), an exception raised once (``failures``: the port's
:class:`~sovereign.errors.GpuHandoverError`, a host that cannot be reached, or a worker killed
mid-hand-over), and a hook run during each hand-over (``during``: a test moves its clock past
the deadline). It scrubs nothing: not for production, nor the embedded default (the real
backends are in :mod:`sovereign.adapters.sanitizer`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from sovereign.services.ports import HandoverEvidence, HandoverRequest

#: The pretend device memory of every GPU, in bytes.
MEMORY_DEVICE_BYTES = 1 << 20


class MemorySanitizer:
    """Pretend hand-overs with scripted outcomes (see the module docstring)."""

    def __init__(self, device_bytes: int = MEMORY_DEVICE_BYTES) -> None:
        self.device_bytes = device_bytes
        #: Every request, in order.
        self.requests: list[HandoverRequest] = []
        #: PCI address -> report fields replaced in that GPU's answers (until removed).
        self.tamper: dict[str, dict[str, Any]] = {}
        #: PCI address -> an exception its next hand-over raises (once).
        self.failures: dict[str, BaseException] = {}
        #: Called with each request before it is answered.
        self.during: Callable[[HandoverRequest], None] | None = None
        self._lock = threading.Lock()

    def hand_over(self, request: HandoverRequest) -> HandoverEvidence:
        """The pretend hand-over of one GPU."""
        with self._lock:
            self.requests.append(request)
            failure = self.failures.pop(request.address, None)
            tamper = dict(self.tamper.get(request.address, {}))
        if self.during is not None:
            self.during(request)
        if failure is not None:
            raise failure
        size = self.device_bytes
        seconds = 0.001
        report: dict[str, Any] = {
            "program": "sovereign-scrub/1",
            "device": "memory",
            "simulated": True,
            "bytes_total": size,
            "bytes_covered": size,
            "patterns": ["zeros", "nonce"],
            "mismatches": 0,
            "canary_checked": request.canary_nonce is not None,
            "canary_hits": 0,
            "passes": [
                {
                    "name": name,
                    "bytes": size,
                    "seconds": seconds,
                    "gb_per_s": 2 * size / 1e9 / seconds,
                }
                for name in ("canary-scan", "zeros", "nonce")
            ],
            "gb_per_s": 2 * size / 1e9 / seconds,
            "seconds": 3 * seconds,
            "device_state": {"nvml": "unavailable", "reason": "in-memory test sanitizer"},
        }
        report.update(tamper)
        reset = {"type": "none", "simulated": True, "note": "in-memory test sanitizer"}
        return HandoverEvidence(reset=reset, report=report, simulated=True)
