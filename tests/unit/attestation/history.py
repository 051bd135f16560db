"""A small, consistent audit history for the attestation claims, built event by event.

Each test starts from :func:`good_history` (every claim holds) and injects one violation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from audit import AuditEvent, Outcome, StoredEvent
from audit.merkle import leaf_hash
from sovereign.domain.labels import LabelScheme
from sovereign.services.attestation.claims import AttestParams

SCHEME = LabelScheme()
PARAMS = AttestParams(scheme=SCHEME, two_person_level="CONFIDENTIAL")
START = datetime(2026, 12, 1, tzinfo=UTC)
SECRET = {"level": "SECRET", "compartments": []}
UNCLASSIFIED = {"level": "UNCLASSIFIED", "compartments": []}
A = "11111111-1111-1111-1111-111111111111"
B = "22222222-2222-2222-2222-222222222222"
C = "33333333-3333-3333-3333-333333333333"


@dataclass
class History:
    """Events in order; ``add`` returns the new event's sequence number."""

    events: list[StoredEvent] = field(default_factory=list)

    def add(
        self,
        action: str,
        target: str,
        details: dict[str, Any] | None = None,
        *,
        actor: str = "system:worker",
        label: dict[str, Any] | None = None,
        outcome: Outcome = Outcome.ALLOW,
    ) -> int:
        seq = len(self.events)
        subject = actor.removeprefix("user:")
        event = AuditEvent(
            actor=actor,
            action=action,
            target=target,
            outcome=outcome,
            label=label,
            details={"subject": subject, **(details or {})},
            time=START + timedelta(minutes=seq),
        )
        self.events.append(StoredEvent(seq, event, leaf_hash(event.canonical_bytes())))
        return seq

    def seq_of(self, action: str, target: str) -> int:
        """The first event with ``action`` on ``target``."""
        return next(
            s.seq for s in self.events if (s.event.action, s.event.target) == (action, target)
        )

    def request(self, rid: str, tenant: str, label: dict[str, Any], approvers: list[str]) -> None:
        self.add(
            "request:create",
            f"request/{rid}",
            {"tenant": tenant},
            actor="user:analyst",
            label=label,
        )
        for n, who in enumerate(approvers, 1):
            self.add(
                "request:approve",
                f"request/{rid}",
                {"to": "approved" if n == len(approvers) else "pending", "clearance": SECRET},
                actor=f"user:{who}",
                label=label,
            )

    def place(
        self,
        rid: str,
        host: str,
        gpus: list[str],
        label: dict[str, Any],
        *,
        tenant: str,
        country: str,
        classified: bool,
    ) -> int:
        return self.add(
            "enclave:place",
            f"enclave/{rid}",
            {
                "host": host,
                "gpus": gpus,
                "label": label,
                "classified": classified,
                "tenant": tenant,
                "country": country,
            },
            label=label,
        )

    def end(self, rid: str, host: str, gpus: list[str], *, clean: bool = True) -> None:
        self.add(
            "key:destroy",
            f"key/transit/enclave-{rid}",
            {"request": rid, "vault": {"deleted": True}},
            actor="system:reconciler",
        )
        self.add("enclave:terminated", f"enclave/{rid}", {"host": host, "gpus_dirty": gpus})
        for gpu in gpus:
            self.add(
                "gpu:handover",
                f"gpu/{host}/{gpu}",
                {"certificate": {"verdict": "clean" if clean else "failed", "simulated": True}},
            )


def good_history() -> History:
    """Two tenants, two hosts in two countries, a SECRET enclave then an UNCLASSIFIED one on
    the same GPU (handed over in between), and a confirmed kill switch."""
    h = History()
    h.add("tenant:create", "tenant/defence", {"kind": "classified", "residency": ["ES"]})
    h.add("tenant:create", "tenant/research", {"kind": "civilian", "residency": ["ES", "PT"]})
    h.add("host:add", "host/mad-1", {"country": "ES"}, actor="user:operator")
    h.add("host:add", "host/lis-1", {"country": "PT"}, actor="user:operator")
    h.request(A, "defence", SECRET, ["officer1", "officer2"])
    h.add("key:create", f"key/transit/enclave-{A}", {"request": A, "country": "ES"}, label=SECRET)
    h.place(A, "mad-1", ["0000:18:00.0"], SECRET, tenant="defence", country="ES", classified=True)
    h.end(A, "mad-1", ["0000:18:00.0"])
    h.request(B, "research", UNCLASSIFIED, ["officer1"])
    h.add("key:create", f"key/transit/enclave-{B}", {"request": B, "country": "ES"})
    h.place(
        B,
        "mad-1",
        ["0000:18:00.0"],
        UNCLASSIFIED,
        tenant="research",
        country="ES",
        classified=False,
    )
    h.add(
        "action:propose",
        "action/k1",
        {"kind": "enclave:kill", "clearance": SECRET},
        actor="user:officer1",
        label=UNCLASSIFIED,
    )
    h.add(
        "action:confirm",
        "action/k1",
        {"kind": "enclave:kill", "clearance": SECRET},
        actor="user:officer2",
        label=UNCLASSIFIED,
    )
    return h
