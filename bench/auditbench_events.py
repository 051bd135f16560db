"""bench/audit.py's events: a deterministic stream of realistic control-plane decisions.

Also what every part of that benchmark shares: the log's origin, progress lines and rates.
"""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import benchkit  # first: it stops bench/audit.py shadowing the audit package

from audit.event import AuditEvent, Outcome

ORIGIN = "sovereign.bench/audit"

log = benchkit.progress("bench/audit")


def rate(count: int, seconds: float) -> float:
    """Events per second, rounded for the report."""
    return round(count / max(seconds, 1e-9), 1)


# -- realistic events -------------------------------------------------------------------------

USERS = [
    "analyst-defence",
    "analyst-health",
    "analyst-finance",
    "officer-defence",
    "officer-health",
    "auditor-central",
    "ops-oncall",
    "researcher-ml",
]
TENANTS = ["defence", "health", "finance", "research"]
IMAGES = ["debian-12-cuda", "ubuntu-24.04-rocm", "rhel-9-base", "debian-12-jupyter"]
HOSTS = ["gpu-node-01", "gpu-node-02", "gpu-node-03", "cpu-node-07"]
LABELS: list[dict[str, Any] | None] = [
    None,
    {"level": "UNCLASSIFIED", "compartments": []},
    {"level": "CONFIDENTIAL", "compartments": ["HEALTH"]},
    {"level": "SECRET", "compartments": ["NATO"]},
    {"level": "SECRET", "compartments": ["EU", "NATO"]},
    {"level": "TOP_SECRET", "compartments": ["FVEY", "NATO"]},
]
PURPOSES = [
    "fine-tune a translation model on partner documents",
    "batch inference over scanned field reports",
    "train an anomaly detector on network flow records",
    "evaluate a speech-to-text model on intercepted audio",
]
BASE_TIME = datetime(2026, 1, 1, tzinfo=UTC)


class EventSource:
    """A deterministic stream of plausible control-plane decisions (about 450-550 bytes each)."""

    def __init__(self, seed: int) -> None:
        """Start the stream; the same seed gives the same events."""
        self._rng = random.Random(seed)
        self._requests = [self._uuid() for _ in range(64)]
        self._count = 0

    def _uuid(self) -> uuid.UUID:
        """A random version-4 UUID from the stream's generator."""
        return uuid.UUID(int=self._rng.getrandbits(128), version=4)

    def fields(self) -> dict[str, Any]:
        """The keyword arguments of the next :class:`AuditEvent`."""
        rng = self._rng
        i = self._count
        self._count += 1
        user = rng.choice(USERS)
        tenant = rng.choice(TENANTS)
        label = rng.choice(LABELS)
        roll = rng.random()
        outcome = Outcome.ALLOW
        if roll < 0.2:
            request = self._uuid()
            self._requests[i % len(self._requests)] = request
            action, target, reason = "request:create", f"request:{request}", "request submitted"
            details: dict[str, Any] = {
                "tenant": tenant,
                "image": rng.choice(IMAGES),
                "resources": {"vcpus": 8, "memory_mib": 32768, "gpus": rng.randint(0, 4)},
                "lease_hours": rng.choice([4, 8, 24, 72]),
                "purpose": rng.choice(PURPOSES),
            }
        elif roll < 0.5:
            action = "request:approve" if rng.random() < 0.85 else "request:deny"
            outcome = Outcome.ALLOW if action == "request:approve" else Outcome.DENY
            target = f"request:{rng.choice(self._requests)}"
            reason = "clearance dominates the label; purpose reviewed by the security officer"
            details = {"tenant": tenant, "approvals_received": rng.randint(1, 2), "needed": 2}
        elif roll < 0.75:
            action = rng.choice(["enclave:start", "enclave:stop"])
            target = f"enclave:{rng.choice(self._requests)}"
            reason = "lease active; attestation report verified against the golden measurement"
            details = {"host": rng.choice(HOSTS), "domain": f"enc-{rng.getrandbits(32):08x}"}
        elif roll < 0.9:
            action, target = "key:release", f"vault:transit/keys/{tenant}-disk"
            reason = "enclave attested; key released to the measured launch"
            details = {"key_version": rng.randint(1, 9), "host": rng.choice(HOSTS)}
        else:
            action, target = "auth:login", f"user:{user}"
            outcome = Outcome.ALLOW if rng.random() < 0.95 else Outcome.DENY
            reason = "password and second factor accepted" if outcome is Outcome.ALLOW else ""
            details = {"method": "oidc", "client": "sovereign-ui", "mfa": True}
        return {
            "actor": f"user:{user}",
            "action": action,
            "target": target,
            "outcome": outcome,
            "reason": reason,
            "label": label,
            "request_id": str(self._uuid()),
            "source": f"10.{rng.randint(0, 3)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            "details": details,
            "time": BASE_TIME + timedelta(microseconds=1500 * i),
            "id": self._uuid(),
        }

    def events(self, count: int) -> list[AuditEvent]:
        """The next ``count`` events."""
        return [AuditEvent(**self.fields()) for _ in range(count)]


def wire(f: dict[str, Any]) -> dict[str, Any]:
    """What ``AuditEvent(**f).to_dict()`` returns, without building the event (bulk loading)."""
    return {
        "id": str(f["id"]),
        "time": f["time"].isoformat().replace("+00:00", "Z"),
        "actor": f["actor"],
        "action": f["action"],
        "target": f["target"],
        "outcome": f["outcome"].value,
        "reason": f["reason"],
        "label": f["label"],
        "request_id": f["request_id"],
        "source": f["source"],
        "details": f["details"],
    }
