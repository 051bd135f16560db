"""The sanitizer backends of the port: the simulated hand-over and the routing per host URI.

The simulated hand-over runs the real scrub program (PyTorch on CPU) on a small host buffer;
the libvirt backend is exercised on libvirt itself in ``tests/contract/test_sanitizer_libvirt.py``
and on a real QEMU sanitizer domain in ``tests/e2e/test_sanitizer_guest.py``.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from sovereign.adapters.sanitizer import RoutingSanitizer, SimulatedSanitizer
from sovereign.domain.fleet import sanitizer_domain_name
from sovereign.errors import GpuHandoverError
from sovereign.services.ports import HandoverEvidence, HandoverRequest


def request(uri: str = "test:///default", **changes: Any) -> HandoverRequest:
    fields: dict[str, Any] = {
        "host": "h1",
        "uri": uri,
        "host_uuid": None,
        "address": "0000:18:00.0",
        "gpu_uuid": None,
        "model": "H100-SXM5-80GB",
        "group_members": ("0000:18:00.0",),
        "nonce": secrets.token_bytes(32),
        "canary_nonce": secrets.token_bytes(32),
        "deadline_s": 60.0,
        "domain_name": sanitizer_domain_name("0000:18:00.0"),
    }
    fields.update(changes)
    return HandoverRequest(**fields)


def test_simulated_hand_over_scrubs_the_simulated_memory_and_says_so() -> None:
    evidence = SimulatedSanitizer(simulated_mib=2).hand_over(request())
    assert evidence.simulated is True
    assert evidence.reset == {
        "type": "none",
        "simulated": True,
        "note": "libvirt's test driver has no node device reset",
    }
    report = evidence.report
    assert report["program"] == "sovereign-scrub/1"
    assert report["simulated"] is True
    assert report["bytes_total"] == 2 << 20
    assert report["bytes_covered"] == 2 << 20
    assert report["mismatches"] == 0
    assert report["canary_checked"] is True
    assert report["canary_hits"] == 0
    assert report["patterns"] == ["zeros", "nonce"]


def test_simulated_hand_over_without_a_canary_nonce() -> None:
    evidence = SimulatedSanitizer(simulated_mib=1).hand_over(request(canary_nonce=None))
    assert evidence.report["canary_checked"] is False


def test_simulated_hand_over_past_its_deadline_fails() -> None:
    with pytest.raises(GpuHandoverError, match="no answer within"):
        SimulatedSanitizer(simulated_mib=4).hand_over(request(deadline_s=1e-9))


def test_simulated_hand_over_with_a_malformed_nonce_fails_the_hand_over() -> None:
    with pytest.raises(GpuHandoverError, match="scrub program failed"):
        SimulatedSanitizer(simulated_mib=1).hand_over(request(nonce=b"short"))


@pytest.mark.parametrize("mib", [0, -1, True, 1 << 20])
def test_simulated_size_is_bounded(mib: int) -> None:
    with pytest.raises(ValueError, match="simulated_mib"):
        SimulatedSanitizer(simulated_mib=mib)


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.seen: list[str] = []

    def hand_over(self, request: HandoverRequest) -> HandoverEvidence:
        self.seen.append(request.uri)
        return HandoverEvidence(reset={"type": self.name}, report={}, simulated=False)


def test_routing_by_uri() -> None:
    simulated, real = Recorder("simulated"), Recorder("real")
    routing = RoutingSanitizer(simulated, real)
    assert routing.hand_over(request("test:///default")).reset == {"type": "simulated"}
    assert routing.hand_over(request("qemu+tls://gpu-1.example/system")).reset == {"type": "real"}
    assert simulated.seen == ["test:///default"]
    assert real.seen == ["qemu+tls://gpu-1.example/system"]


def test_routing_without_a_real_backend_fails_real_hosts() -> None:
    simulated = Recorder("simulated")
    routing = RoutingSanitizer(simulated, None)
    with pytest.raises(GpuHandoverError, match="no sanitizer is configured"):
        routing.hand_over(request("qemu:///system"))
    assert simulated.seen == []
