"""The six claims an attestation makes, evaluated over the audit log's own events.

Owns the rules: each claim is a pure function of an ordered sequence of
:class:`audit.store.StoredEvent` (oldest first, every event before the end of the period) and
:class:`AttestParams`, returning a :class:`ClaimResult` whose violations name the sequence
numbers they rest on, so anyone can prove those events with ``audit prove``. State (which host
is in which country, which enclave holds which GPU) is rebuilt from every event given; only
the subjects that fall inside the period (``since`` onwards) are checked.

A claim never holds by default: an event that lacks a detail the claim needs (a log written
before the detail was recorded) makes it "violated", with a message naming the detail. Reads
nothing, writes nothing; :mod:`.service` feeds it events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from audit import Outcome, StoredEvent
from audit.verify import VerifyReport
from sovereign.domain.labels import Label, LabelScheme
from sovereign.errors import LabelError

Verdict = Literal["holds", "violated"]


@dataclass(frozen=True)
class AttestParams:
    """The policy the claims are held to and the period they cover (``until`` exclusive)."""

    scheme: LabelScheme
    two_person_level: str
    since: datetime | None = None
    until: datetime | None = None

    def in_period(self, stored: StoredEvent) -> bool:
        """Whether ``stored`` falls in the period (its subject is checked)."""
        t = stored.event.time
        return (self.since is None or t >= self.since) and (self.until is None or t < self.until)


@dataclass(frozen=True)
class Violation:
    """One breach of a claim: the events it rests on and what is wrong."""

    seqs: list[int]
    message: str


@dataclass
class ClaimResult:
    """A claim's verdict with what was checked and the evidence."""

    id: str
    letter: str
    title: str
    checked: int = 0
    evidence: list[int] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        """ "violated" as soon as one violation was found."""
        return "violated" if self.violations else "holds"

    def violate(self, seqs: Sequence[int], message: str) -> None:
        """Record a violation resting on ``seqs``."""
        self.violations.append(Violation(sorted(set(seqs)), message))

    def missing(self, stored: StoredEvent, detail: str) -> None:
        """Record that ``stored`` lacks ``detail`` (an older log): never a silent pass."""
        self.violate(
            [stored.seq],
            f"event {stored.seq} ({stored.event.action}) lacks the detail {detail!r} "
            "this claim needs (recorded before it was added?)",
        )

    def to_dict(self) -> dict[str, Any]:
        """The claim as the report's JSON."""
        return {
            "id": self.id,
            "letter": self.letter,
            "title": self.title,
            "verdict": self.verdict,
            "checked": self.checked,
            "evidence": sorted(set(self.evidence)),
            "violations": [{"seqs": v.seqs, "message": v.message} for v in self.violations],
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class LogStatus:
    """What verifying the whole log found (claim f's input): intact or the problem, and the
    sizes of the signed checkpoints (database and witness) it was held to."""

    intact: bool
    problem: str = ""
    size: int = 0
    root_hash: str = ""
    checkpoints: int = 0
    witnessed: int = 0
    signed_sizes: tuple[int, ...] = ()

    @classmethod
    def intact_as(cls, report: VerifyReport, signed_sizes: Iterable[int]) -> LogStatus:
        """The status of a log :func:`audit.verify.verify_log` found intact."""
        return cls(
            intact=True,
            size=report.size,
            root_hash=report.root_hash.hex(),
            checkpoints=report.checkpoints,
            witnessed=report.witnessed,
            signed_sizes=tuple(sorted(set(signed_sizes))),
        )


# -- helpers ---------------------------------------------------------------------------------


def _allowed(stored: StoredEvent, action: str) -> bool:
    return stored.event.action == action and stored.event.outcome is Outcome.ALLOW


def _id(target: str, prefix: str) -> str | None:
    """``enclave/ID`` -> ``ID`` for ``prefix`` "enclave/"."""
    return target[len(prefix) :] if target.startswith(prefix) else None


def _who(stored: StoredEvent) -> str:
    """The acting person: the token subject the recorder stores, else the actor name."""
    subject = stored.event.details.get("subject")
    return subject if isinstance(subject, str) and subject else stored.event.actor


def _label(scheme: LabelScheme, raw: Any) -> Label | None:
    try:
        return scheme.parse(raw) if raw is not None else None
    except LabelError:
        return None


# -- (a) co-residency ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Resident:
    seq: int
    enclave: str
    label: Label
    classified: bool


def co_residency(events: Sequence[StoredEvent], params: AttestParams) -> ClaimResult:
    """(a) No host carried two enclaves with incomparable labels, or a classified and a
    civilian one, at the same time (from ``enclave:place`` to ``enclave:terminated``)."""
    result = ClaimResult("co-residency", "a", "No co-residency")
    running: dict[str, dict[str, _Resident]] = {}
    where: dict[str, str] = {}
    for s in events:
        e = s.event
        if _allowed(s, "enclave:place"):
            enclave = _id(e.target, "enclave/") or e.target
            host = e.details.get("host")
            if not isinstance(host, str):
                result.missing(s, "host")
                continue
            where[enclave] = host
            label = _label(params.scheme, e.details.get("label"))
            classified = e.details.get("classified")
            if label is None:
                result.missing(s, "label")
                continue
            if not isinstance(classified, bool):
                result.missing(s, "classified")
                continue
            mine = _Resident(s.seq, enclave, label, classified)
            here = running.setdefault(host, {})
            if params.in_period(s):
                result.checked += 1
                result.evidence.append(s.seq)
                for other in here.values():
                    if other.enclave == enclave:
                        continue
                    problem = _clash(other, mine)
                    if problem:
                        result.violate(
                            [other.seq, s.seq],
                            f"host {host} carried enclave {other.enclave} ({other.label}"
                            f"{', classified' if other.classified else ', civilian'}) and "
                            f"enclave {enclave} ({label}"
                            f"{', classified' if classified else ', civilian'}) at once: "
                            f"{problem}",
                        )
            here[enclave] = mine
        elif _allowed(s, "enclave:terminated"):
            enclave = _id(e.target, "enclave/") or e.target
            host = e.details.get("host")
            host = host if isinstance(host, str) else where.get(enclave, "")
            running.get(host, {}).pop(enclave, None)
            if params.in_period(s):
                result.evidence.append(s.seq)
    return result


def _clash(a: _Resident, b: _Resident) -> str:
    if a.classified != b.classified:
        return "classified and civilian"
    if not (a.label.dominates(b.label) or b.label.dominates(a.label)):
        return "incomparable labels"
    return ""


# -- (b) GPU hand-over -----------------------------------------------------------------------


@dataclass
class _GpuUse:
    enclave: str
    placed: int
    terminated: int | None = None
    handover: int | None = None


class _Gpus:
    """Which enclave each GPU last went to, and what happened to it since."""

    def __init__(self, result: ClaimResult, params: AttestParams) -> None:
        self.result, self.params = result, params
        self.use: dict[tuple[str, str], _GpuUse] = {}
        self.by_enclave: dict[str, list[tuple[str, str]]] = {}
        self.simulated = 0

    def place(self, s: StoredEvent) -> None:
        e, result = s.event, self.result
        enclave = _id(e.target, "enclave/") or e.target
        host, gpus = e.details.get("host"), e.details.get("gpus")
        if not isinstance(host, str) or not isinstance(gpus, list):
            result.missing(s, "host" if not isinstance(host, str) else "gpus")
            return
        for address in gpus:
            key = (host, str(address))
            before = self.use.get(key)
            if before is not None and self.params.in_period(s):
                self._check(s, enclave, f"{host}/{address}", before)
            self.use[key] = _GpuUse(enclave, s.seq)
            self.by_enclave.setdefault(enclave, []).append(key)

    def _check(self, s: StoredEvent, enclave: str, gpu: str, before: _GpuUse) -> None:
        result = self.result
        result.checked += 1
        if before.terminated is None:
            result.violate(
                [before.placed, s.seq],
                f"GPU {gpu} was given to enclave {enclave} while enclave "
                f"{before.enclave} still held it (no enclave:terminated)",
            )
        elif before.handover is None:
            result.violate(
                [before.terminated, s.seq],
                f"GPU {gpu} passed from enclave {before.enclave} to enclave "
                f"{enclave} without a clean gpu:handover in between",
            )
        else:
            result.evidence.extend([before.terminated, before.handover, s.seq])

    def terminated(self, s: StoredEvent) -> None:
        enclave = _id(s.event.target, "enclave/") or s.event.target
        for key in self.by_enclave.pop(enclave, []):
            current = self.use.get(key)
            if current is not None and current.enclave == enclave:
                current.terminated = s.seq

    def handover(self, s: StoredEvent) -> None:
        e = s.event
        host, _, address = (_id(e.target, "gpu/") or "").partition("/")
        current = self.use.get((host, address))
        cert = e.details.get("certificate")
        if not isinstance(cert, dict):
            if current is not None:
                self.result.missing(s, "certificate")
            return
        clean = cert.get("verdict") == "clean"
        if current is not None and current.terminated is not None:
            current.handover = s.seq if clean else None
        if clean and cert.get("simulated") is True and self.params.in_period(s):
            self.simulated += 1


def gpu_handover(events: Sequence[StoredEvent], params: AttestParams) -> ClaimResult:
    """(b) Every GPU that passed from one enclave to the next was certified clean
    (``gpu:handover``) after the first one ended and before the next was placed."""
    result = ClaimResult("gpu-handover", "b", "Clean GPU hand-over between enclaves")
    gpus = _Gpus(result, params)
    for s in events:
        if _allowed(s, "enclave:place"):
            gpus.place(s)
        elif _allowed(s, "enclave:terminated"):
            gpus.terminated(s)
        elif _allowed(s, "gpu:handover"):
            gpus.handover(s)
    if gpus.simulated:
        result.notes.append(
            f"{gpus.simulated} clean certificate(s) came from simulated GPUs (libvirt's test "
            "driver): they count as clean but prove no real scrub"
        )
    return result


# -- (c) crypto-erase ------------------------------------------------------------------------


def crypto_erase(events: Sequence[StoredEvent], params: AttestParams) -> ClaimResult:
    """(c) Every terminated enclave's key was destroyed in Vault (``key:destroy`` with
    Vault's answer)."""
    result = ClaimResult("crypto-erase", "c", "Keys of ended enclaves crypto-erased")
    destroyed: dict[str, StoredEvent] = {}
    for s in events:
        if _allowed(s, "key:destroy"):
            request = s.event.details.get("request")
            if isinstance(request, str):
                destroyed.setdefault(request, s)
    for s in events:
        if not (_allowed(s, "enclave:terminated") and params.in_period(s)):
            continue
        enclave = _id(s.event.target, "enclave/") or s.event.target
        result.checked += 1
        key = destroyed.get(enclave)
        if key is None:
            result.violate(
                [s.seq], f"enclave {enclave} ended but no key:destroy names it in the log"
            )
        elif not key.event.details.get("vault"):
            result.violate(
                [s.seq, key.seq],
                f"the key:destroy of enclave {enclave} lacks Vault's answer (detail 'vault')",
            )
        else:
            result.evidence.extend([s.seq, key.seq])
    return result


# -- (d) two-person --------------------------------------------------------------------------


def two_person(events: Sequence[StoredEvent], params: AttestParams) -> ClaimResult:
    """(d) Approvals at or above the two-person level had two distinct, cleared officers,
    neither the requester (below it, one cleared officer, not the requester); every confirmed
    action had a cleared proposer and a different, cleared confirmer."""
    result = ClaimResult("two-person", "d", "Two-person control")
    creators: dict[str, StoredEvent] = {}
    approvals: dict[str, list[StoredEvent]] = {}
    proposals: dict[str, StoredEvent] = {}
    for s in events:
        e = s.event
        if _allowed(s, "request:create"):
            creators[e.target] = s
        elif _allowed(s, "action:propose"):
            proposals[e.target] = s
        elif _allowed(s, "request:approve"):
            approvals.setdefault(e.target, []).append(s)
            if e.details.get("to") == "approved" and params.in_period(s):
                _check_approval(result, params, s, approvals[e.target], creators)
        elif _allowed(s, "action:confirm") and params.in_period(s):
            _check_confirm(result, params, s, proposals.get(e.target))
    return result


def _cleared(
    result: ClaimResult, params: AttestParams, s: StoredEvent, label: Label, role: str
) -> bool:
    raw = s.event.details.get("clearance", ...)
    if raw is ...:
        result.missing(s, "clearance")
        return False
    clearance = _label(params.scheme, raw)
    if clearance is None or not clearance.dominates(label):
        result.violate(
            [s.seq],
            f"{role} {s.event.actor} (event {s.seq}) was not cleared for {label}: clearance "
            f"{clearance if clearance is not None else raw!r}",
        )
        return False
    return True


def _check_approval(
    result: ClaimResult,
    params: AttestParams,
    final: StoredEvent,
    approvals: list[StoredEvent],
    creators: dict[str, StoredEvent],
) -> None:
    threshold = params.scheme.rank(params.two_person_level)
    label = _label(params.scheme, final.event.label)
    if label is None:
        result.missing(final, "label")
        return
    # Below the two-person level one cleared officer suffices, but never the requester (the
    # separation of duties holds at every level).
    two_needed = label.rank >= threshold
    result.checked += 1
    seqs = [a.seq for a in approvals]
    created = creators.get(final.event.target)
    ok = True
    if created is None:
        result.violate(seqs, f"{final.event.target} has no request:create in the log")
        ok = False
    else:
        requester = _who(created)
        for a in approvals:
            if _who(a) == requester:
                result.violate(
                    [created.seq, a.seq],
                    f"{final.event.target} was approved by its own requester {a.event.actor}",
                )
                ok = False
    distinct = {_who(a) for a in approvals}
    if two_needed and len(distinct) < 2:
        result.violate(
            seqs,
            f"{final.event.target} ({label}) was approved by {len(distinct)} distinct "
            "officer(s); two are required at or above "
            f"{params.two_person_level}",
        )
        ok = False
    for a in approvals:
        ok = _cleared(result, params, a, label, "approver") and ok
    if ok:
        result.evidence.extend([*(c.seq for c in [created] if c), *seqs])


def _check_confirm(
    result: ClaimResult, params: AttestParams, confirm: StoredEvent, propose: StoredEvent | None
) -> None:
    result.checked += 1
    target = confirm.event.target
    label = _label(params.scheme, confirm.event.label) or params.scheme.lowest
    if propose is None:
        result.violate([confirm.seq], f"{target} was confirmed but never proposed in the log")
        return
    ok = True
    if _who(propose) == _who(confirm):
        result.violate(
            [propose.seq, confirm.seq],
            f"{target} was proposed and confirmed by the same officer {confirm.event.actor}",
        )
        ok = False
    ok = _cleared(result, params, propose, label, "proposer") and ok
    ok = _cleared(result, params, confirm, label, "confirmer") and ok
    if ok:
        result.evidence.extend([propose.seq, confirm.seq])


# -- (e) residency ---------------------------------------------------------------------------


class _Residency:
    """Host countries, tenant residencies and enclave countries as the log tells them."""

    def __init__(self, result: ClaimResult, params: AttestParams) -> None:
        self.result, self.params = result, params
        self.hosts: dict[str, tuple[str, int]] = {}
        self.tenants: dict[str, tuple[frozenset[str], int]] = {}
        self.request_tenant: dict[str, str] = {}
        self.placed: dict[str, tuple[str, int]] = {}
        #: Host -> the enclaves on it (by id) and the seq of each one's placement.
        self.live: dict[str, dict[str, int]] = {}

    def host_added(self, s: StoredEvent) -> None:
        name = _id(s.event.target, "host/") or s.event.target
        country = s.event.details.get("country")
        if isinstance(country, str):
            self.hosts[name] = (country, s.seq)
            return
        self.hosts.pop(name, None)
        if self.params.in_period(s):
            self.result.missing(s, "country")

    def relocated(self, s: StoredEvent) -> None:
        d = s.event.details
        host = (d.get("params") or {}).get("host")
        if not (isinstance(host, str) and isinstance(d.get("to_country"), str)):
            self.result.missing(s, "to_country")
            return
        self.hosts[host] = (d["to_country"], s.seq)
        carried = self.live.get(host)
        if carried and self.params.in_period(s):
            # Its enclaves' data would have crossed the border with it.
            self.result.checked += 1
            self.result.violate(
                sorted([*carried.values(), s.seq]),
                f"host {host} was relocated to {d['to_country']} while it carried enclaves "
                f"{', '.join(sorted(carried))}",
            )

    def ended(self, s: StoredEvent) -> None:
        enclave = _id(s.event.target, "enclave/") or s.event.target
        host = s.event.details.get("host")
        if isinstance(host, str):
            self.live.get(host, {}).pop(enclave, None)

    def tenant(self, s: StoredEvent) -> None:
        name = _id(s.event.target, "tenant/") or s.event.target
        allowed = s.event.details.get("residency")
        if isinstance(allowed, list):
            self.tenants[name] = (frozenset(map(str, allowed)), s.seq)
        elif self.params.in_period(s):
            self.result.missing(s, "residency")

    def request(self, s: StoredEvent) -> None:
        request = _id(s.event.target, "request/")
        tenant = s.event.details.get("tenant")
        if request is not None and isinstance(tenant, str):
            self.request_tenant[request] = tenant

    def place(self, s: StoredEvent) -> None:
        result, d = self.result, s.event.details
        enclave = _id(s.event.target, "enclave/") or s.event.target
        for detail in ("host", "tenant", "country"):
            if not isinstance(d.get(detail), str):
                if self.params.in_period(s):
                    result.missing(s, detail)
                return
        host, tenant, said = d["host"], d["tenant"], d["country"]
        self.placed[enclave] = (said, s.seq)
        self.live.setdefault(host, {})[enclave] = s.seq
        if not self.params.in_period(s):
            return
        result.checked += 1
        known = self.hosts.get(host)
        if known is None:
            result.violate(
                [s.seq],
                f"enclave {enclave} was placed on host {host}, whose country the log never "
                "recorded (no host:add with a country)",
            )
            return
        allowed = self.tenants.get(tenant)
        if allowed is None:
            result.violate(
                [s.seq], f"tenant {tenant} has no residency in the log (no tenant:create with one)"
            )
            return
        country, host_seq = known
        ok = True
        if said != country:
            result.violate(
                [host_seq, s.seq],
                f"enclave {enclave}'s placement says country {said}, but the log puts host "
                f"{host} in {country}",
            )
            ok = False
        if country not in allowed[0]:
            result.violate(
                [host_seq, allowed[1], s.seq],
                f"enclave {enclave} of tenant {tenant} ran on host {host} in {country}, "
                f"outside its residency {', '.join(sorted(allowed[0]))}",
            )
            ok = False
        narrowed = d.get("residency")
        if isinstance(narrowed, list) and country not in narrowed:
            result.violate(
                [s.seq],
                f"enclave {enclave} ran in {country}, outside its request's residency "
                f"{', '.join(sorted(map(str, narrowed)))}",
            )
            ok = False
        if ok:
            result.evidence.extend([host_seq, allowed[1], s.seq])


def residency(events: Sequence[StoredEvent], params: AttestParams) -> ClaimResult:
    """(e) Every placement ran in a country of its tenant's residency (the host's country as
    the log itself tells it), no host was relocated while it carried enclaves, and every
    enclave key was created in that same country."""
    result = ClaimResult("residency", "e", "Data residency")
    state = _Residency(result, params)
    keys: list[StoredEvent] = []
    for s in events:
        if _allowed(s, "host:add"):
            state.host_added(s)
        elif _allowed(s, "action:confirm") and s.event.details.get("kind") == "host:relocate":
            state.relocated(s)
        elif _allowed(s, "tenant:create") or _allowed(s, "tenant:residency"):
            state.tenant(s)
        elif _allowed(s, "request:create"):
            state.request(s)
        elif _allowed(s, "enclave:place"):
            state.place(s)
        elif _allowed(s, "enclave:terminated"):
            state.ended(s)
        elif _allowed(s, "key:create") and params.in_period(s):
            keys.append(s)
    for s in keys:
        _check_key(result, s, state)
    return result


def _check_key(result: ClaimResult, s: StoredEvent, state: _Residency) -> None:
    d = s.event.details
    request, country = d.get("request"), d.get("country")
    if not isinstance(request, str):
        result.missing(s, "request")
        return
    if not isinstance(country, str):
        result.missing(s, "country")
        return
    result.checked += 1
    tenant = state.request_tenant.get(request)
    allowed = state.tenants.get(tenant) if tenant is not None else None
    if allowed is None:
        result.violate(
            [s.seq],
            f"the key of enclave {request} belongs to no tenant with a residency in the log",
        )
        return
    ok = True
    if country not in allowed[0]:
        result.violate(
            [allowed[1], s.seq],
            f"the key of enclave {request} was created in {country}, outside tenant "
            f"{tenant}'s residency {', '.join(sorted(allowed[0]))}",
        )
        ok = False
    where = state.placed.get(request)
    if where is not None and where[0] != country:
        result.violate(
            [s.seq, where[1]],
            f"the key of enclave {request} lives in {country} but the enclave ran in {where[0]}",
        )
        ok = False
    if ok:
        result.evidence.append(s.seq)


# -- (f) completeness ------------------------------------------------------------------------


def completeness(
    events: Sequence[StoredEvent], params: AttestParams, log: LogStatus
) -> ClaimResult:
    """(f) The log verifies (tree, signatures, witness) and a signed checkpoint covers the end
    of the period."""
    result = ClaimResult("completeness", "f", "Complete, intact log")
    result.checked = log.size
    if not log.intact:
        result.violate([], f"the log does not verify: {log.problem}")
        return result
    result.notes.append(
        f"{log.size} events, root {log.root_hash}; {log.checkpoints} signed checkpoints and "
        f"{log.witnessed} witnessed ones match"
    )
    covered = max(log.signed_sizes, default=0)
    if beyond := [s.seq for s in events if s.seq >= covered]:
        result.notes.append(
            f"{len(beyond)} event(s) from seq {beyond[0]} on are not yet covered by a signed "
            "checkpoint and were not evaluated by claims (a) to (e)"
        )
    last = max((s.seq for s in events if params.in_period(s)), default=None)
    if last is None:
        result.notes.append("no events in the period")
        return result
    covering = [size for size in log.signed_sizes if size > last]
    if not covering:
        result.violate(
            [last],
            f"no signed checkpoint covers event {last}, the last of the period (the largest "
            f"signed size is {max(log.signed_sizes, default=0)})",
        )
    else:
        result.evidence.append(last)
        result.notes.append(f"event {last} is covered by the checkpoint at size {min(covering)}")
    return result


#: The event claims (a) to (e), in report order; (f) needs the log status as well.
EVENT_CLAIMS: tuple[Callable[[Sequence[StoredEvent], AttestParams], ClaimResult], ...] = (
    co_residency,
    gpu_handover,
    crypto_erase,
    two_person,
    residency,
)


#: The claim ids, (a) to (f), in report order (the controls catalogue names claims by them).
CLAIM_IDS: tuple[str, ...] = (
    "co-residency",
    "gpu-handover",
    "crypto-erase",
    "two-person",
    "residency",
    "completeness",
)


def evaluate(
    events: Sequence[StoredEvent], params: AttestParams, log: LogStatus
) -> list[ClaimResult]:
    """Every claim, (a) to (f), over ``events`` (oldest first).

    Claims (a) to (e) rest only on events a signed checkpoint covers (seq below the largest
    signed size): an event past it is vouched for by nothing, and one dated before the period
    (a forged ``key:destroy``, a wider ``tenant:create``) would otherwise change what the
    period's events are judged against. Claim (f) sees them all, and says what was left out.
    """
    covered = max(log.signed_sizes, default=0)
    vouched = [s for s in events if s.seq < covered]
    return [claim(vouched, params) for claim in EVENT_CLAIMS] + [completeness(events, params, log)]


__all__ = [
    "CLAIM_IDS",
    "EVENT_CLAIMS",
    "AttestParams",
    "ClaimResult",
    "LogStatus",
    "Violation",
    "co_residency",
    "completeness",
    "crypto_erase",
    "evaluate",
    "gpu_handover",
    "residency",
    "two_person",
]
