"""Nobody learns that something above them exists: not from a status, a message, the work a call
does, the kill switch, or the audit log.

On a real database (SQLite and PostgreSQL) with an in-memory fleet. Timing is never measured:
that a missing and an invisible object are answered alike is checked structurally, as the same
SQL statements in the same order, the same error with the same message, and the same audit
behaviour (one denial each; an existing object's carries its label).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from audit import AuditEvent, Outcome
from sovereign.bootstrap import Services
from sovereign.domain.actions import ActionKind
from sovereign.domain.identity import Principal, Role
from sovereign.domain.tenants import Resources
from sovereign.errors import NotFoundError, SovereignError
from sovereign.services.auditing import EventFilter
from sovereign.services.enclaves import KillResult
from sovereign.services.ports import RequestFilter
from sovereign.services.requests import RequestDraft
from tests.support.factories import (
    ANALYST_DEFENCE,
    ANALYST_RESEARCH,
    AUDITOR,
    OFFICER_1,
    OFFICER_2,
    OFFICER_LOW,
    OPERATOR,
    ctx,
    principal,
)
from tests.support.fleet import SECRET_NATO, Fleet, make_fleet

#: Cleared for everything, holding no role: may not know that any request exists.
NOBODY = principal("nobody")
#: An auditor cleared only for UNCLASSIFIED.
AUDITOR_LOW = principal("auditor-low", Role.AUDITOR, level="UNCLASSIFIED", compartments=())
#: An officer cleared for SECRET//NATO only.
OFFICER_NATO = principal("officer-nato", Role.OFFICER, compartments=("NATO",))
#: An analyst of the defence tenant cleared for every compartment.
ANALYST_ALL = principal("analyst-all", Role.ANALYST, tenants=("defence",))
RESTRICTED = {"level": "RESTRICTED", "compartments": []}
SECRET_CRYPTO = {"level": "SECRET", "compartments": ["CRYPTO"]}
#: Where an ended enclave goes: terminated, or cancelled if it was never placed.
ENDED = ("terminated", "cancelled")
#: Where an enclave nobody ended is: running, or approved while it waits for its host (which
#: it may get once another enclave is ended).
LIVE = ("approved", "provisioning", "running")


@pytest.fixture
def fleet(database_url: str, tmp_path: Path) -> Iterator[Fleet]:
    made = make_fleet(database_url, folder=tmp_path)
    yield made
    made.services.close()


def file(fleet: Fleet, label: dict[str, Any], *, analyst: Principal = ANALYST_DEFENCE) -> uuid.UUID:
    """A defence request at ``label``, approved (by two officers at or above CONFIDENTIAL)."""
    services = fleet.services
    draft = RequestDraft(
        tenant="defence",
        label=label,
        resources=Resources(vcpus=4, memory_mib=8192, gpus=1, disk_gib=20),
        gpu_model="H100-SXM5-80GB",
        image="debian-12-cuda",
        purpose="visibility",
        lease_hours=4,
    )
    request = services.requests.create(ctx(analyst), draft)
    needed = services.policy.approvals_needed(request.label)
    for officer in (OFFICER_1, OFFICER_2)[:needed]:
        services.requests.approve(ctx(officer), request.id, "ok")
    return request.id


@contextmanager
def statements(services: Services) -> Iterator[list[str]]:
    """The SQL statements sent to the database inside the block, in order.

    Left out: the audit append's insert of completed tree nodes (SQLite sequences in the
    business transaction), which happens or not with the parity of the log's size, whatever
    the call was about.
    """
    engine = services.uow.engine  # type: ignore[attr-defined]
    seen: list[str] = []

    def record(*args: Any) -> None:
        if not args[2].startswith("INSERT INTO audit_nodes"):
            seen.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", record)


def denials(fleet: Fleet) -> list[AuditEvent]:
    return [e for e in fleet.events() if e.outcome is Outcome.DENY]


@dataclass(frozen=True)
class Answer:
    """What a caller can observe of a refused call, and the work it took."""

    error: type[SovereignError]
    message: str
    statements: tuple[str, ...]
    denial: tuple[str, str, str]
    label: dict[str, Any] | None


def answer(fleet: Fleet, call: Callable[[], object], ident: str) -> Answer:
    before = len(denials(fleet))
    with statements(fleet.services) as seen, pytest.raises(SovereignError) as caught:
        call()
    recorded = denials(fleet)[before:]
    assert len(recorded) == 1, recorded
    (denial,) = recorded
    return Answer(
        error=type(caught.value),
        message=caught.value.message.replace(ident, "<id>"),
        statements=tuple(seen),
        denial=(denial.action, denial.target.replace(ident, "<id>"), denial.actor),
        label=denial.label,
    )


@dataclass(frozen=True)
class World:
    """A running SECRET//NATO enclave with keys, a pending SECRET//NATO kill switch proposal,
    the SECRET host, and a SECRET event in the log."""

    enclave: uuid.UUID
    action: uuid.UUID
    host: str
    event: int


@pytest.fixture
def world(fleet: Fleet) -> World:
    rid = file(fleet, SECRET_NATO)
    fleet.settle()
    assert fleet.state(rid) == "running"
    proposal = fleet.services.actions.propose(
        ctx(OFFICER_1),
        ActionKind.KILL_SWITCH,
        {"label": SECRET_NATO, "tenant": None},
        fleet.services.scheme.parse(SECRET_NATO),
        "drill",
    )
    fleet.services.audit.log.sequence()
    secret = [
        e
        for e in fleet.services.audit.events(ctx(AUDITOR), EventFilter(limit=500)).items
        if e.event.label == SECRET_NATO
    ]
    return World(rid, proposal.id, "secret-1", secret[0].seq)


S = Services
#: (what, who, call with an identifier): every call that takes an identifier, made by someone
#: who may not see the object (though cleared for it, where the role is what hides it).
PROBES: list[tuple[str, Principal, Callable[[S, Any], object]]] = [
    ("request:read", NOBODY, lambda s, i: s.requests.get(ctx(NOBODY), i)),
    ("request:approve", OFFICER_LOW, lambda s, i: s.requests.approve(ctx(OFFICER_LOW), i, "")),
    ("request:reject", NOBODY, lambda s, i: s.requests.reject(ctx(NOBODY), i, "x")),
    ("request:cancel", NOBODY, lambda s, i: s.requests.cancel(ctx(NOBODY), i)),
    ("request:preview", NOBODY, lambda s, i: s.enclaves.preview(ctx(NOBODY), i)),
    ("request:preview", AUDITOR_LOW, lambda s, i: s.enclaves.preview(ctx(AUDITOR_LOW), i)),
    ("key:rotate", NOBODY, lambda s, i: s.keys.rotate(ctx(NOBODY), i)),
    ("enclave:read", ANALYST_RESEARCH, lambda s, i: s.enclaves.get(ctx(ANALYST_RESEARCH), i)),
    ("enclave:console", NOBODY, lambda s, i: s.enclaves.console(ctx(NOBODY), i)),
    (
        "enclave:terminate",
        OFFICER_LOW,
        lambda s, i: s.enclaves.terminate(ctx(OFFICER_LOW), i, "x"),
    ),
    ("action:confirm", ANALYST_DEFENCE, lambda s, i: s.actions.confirm(ctx(ANALYST_DEFENCE), i)),
    ("action:confirm", OFFICER_LOW, lambda s, i: s.actions.confirm(ctx(OFFICER_LOW), i)),
    (
        "host:draining",
        ANALYST_RESEARCH,
        lambda s, i: s.hosts.set_state(ctx(ANALYST_RESEARCH), i, "draining", "x"),
    ),
    ("host:read", ANALYST_DEFENCE, lambda s, i: s.hosts.get(ctx(ANALYST_DEFENCE), i)),
    ("audit:prove", OFFICER_LOW, lambda s, i: s.audit.proof(ctx(OFFICER_LOW), i)),
]


def _existing(world: World, what: str) -> Any:
    kind = what.split(":", maxsplit=1)[0]
    if kind == "action":
        return world.action
    if kind == "host":
        return world.host
    if kind == "audit":
        return world.event
    return world.enclave


def _missing(what: str) -> Any:
    kind = what.split(":", maxsplit=1)[0]
    if kind == "host":
        return "no-such-host"
    if kind == "audit":
        return 10**9
    return uuid.uuid4()


@pytest.mark.parametrize(
    ("what", "who", "call"), PROBES, ids=[f"{w}-{p.username}" for w, p, _ in PROBES]
)
def test_an_invisible_object_is_answered_exactly_as_a_missing_one(
    fleet: Fleet, world: World, what: str, who: Principal, call: Callable[[S, Any], object]
):
    existing, missing = _existing(world, what), _missing(what)
    hidden = answer(fleet, lambda: call(fleet.services, existing), str(existing))
    absent = answer(fleet, lambda: call(fleet.services, missing), str(missing))
    assert hidden.error is absent.error is NotFoundError
    assert hidden.message == absent.message
    assert hidden.statements == absent.statements, "the same work, statement by statement"
    assert hidden.denial == absent.denial
    # The only difference is where the caller cannot look: the denial of the existing object
    # carries its label, so auditors cleared for it see the probe and nobody else does.
    assert absent.label is None
    assert hidden.label is not None and hidden.label["level"] == "SECRET"


def probe(tenant: str) -> RequestDraft:
    """A small UNCLASSIFIED request for ``tenant``."""
    return RequestDraft(
        tenant=tenant,
        label={"level": "UNCLASSIFIED", "compartments": []},
        resources=Resources(vcpus=1, memory_mib=1024, gpus=0, disk_gib=1),
        gpu_model=None,
        image="ubuntu-24.04-research",
        purpose="probe",
        lease_hours=1,
    )


def test_a_tenant_the_analyst_is_no_member_of_is_answered_as_an_unknown_one(fleet: Fleet):
    def create(tenant: str) -> Answer:
        return answer(
            fleet,
            lambda: fleet.services.requests.create(ctx(ANALYST_RESEARCH), probe(tenant)),
            tenant,
        )

    hidden, absent = create("defence"), create("no-such-tenant")
    assert hidden.error is absent.error
    assert hidden.message == absent.message == "Invalid input: unknown tenant '<id>'"
    assert hidden.statements == absent.statements
    assert hidden.denial == absent.denial
    # Whoever may not request at all is told so before any tenant is read.
    with statements(fleet.services) as seen, pytest.raises(SovereignError, match="only analysts"):
        fleet.services.requests.create(ctx(NOBODY), probe("defence"))
    assert not any("tenants" in sql for sql in seen)


def test_no_role_means_not_found_for_any_request(fleet: Fleet, world: World):
    for call in (
        fleet.services.enclaves.preview,
        fleet.services.keys.rotate,
        fleet.services.requests.get,
        fleet.services.enclaves.get,
    ):
        with pytest.raises(NotFoundError):
            call(ctx(NOBODY), world.enclave)  # type: ignore[operator]


def test_who_may_see_an_object_is_told_why_they_may_not_act_on_it(fleet: Fleet, world: World):
    """Visible objects keep their precise refusals: they reveal nothing new."""
    services = fleet.services
    with pytest.raises(SovereignError, match="only officers see placement previews"):
        services.enclaves.preview(ctx(ANALYST_DEFENCE), world.enclave)  # the requester
    with pytest.raises(SovereignError, match="only security officers manage enclave keys"):
        services.keys.rotate(ctx(AUDITOR), world.enclave)
    with pytest.raises(SovereignError, match="two-person rule"):
        services.actions.confirm(ctx(OFFICER_1), world.action)  # the proposer
    with pytest.raises(SovereignError, match="draining or quarantining needs the operator"):
        services.hosts.set_state(ctx(AUDITOR), world.host, "draining", "x")


def test_a_placement_preview_names_no_label_above_the_officer(fleet: Fleet):
    crypto = file(fleet, SECRET_CRYPTO, analyst=ANALYST_ALL)
    fleet.settle()
    assert fleet.state(crypto) == "running"  # on secret-1, the one classified host
    nato = file(fleet, SECRET_NATO)
    fleet.settle()
    assert fleet.state(nato) == "approved", "secret-1 is dedicated to SECRET//CRYPTO"
    cleared = fleet.services.enclaves.preview(ctx(OFFICER_1), nato)
    assert cleared.reasons["secret-1"] == "carries SECRET//CRYPTO enclaves; dedicated per label"
    below = fleet.services.enclaves.preview(ctx(OFFICER_NATO), nato)
    assert below.reasons["secret-1"] == "carries enclaves of another label; dedicated per label"
    assert "CRYPTO" not in below.explain()
    # The reconciler's record of why it could not place the request names SECRET//CRYPTO: it
    # is labelled with it, so an auditor cleared only for SECRET//NATO does not read it.
    fleet.services.audit.log.sequence()
    auditor_nato = principal("auditor-nato", Role.AUDITOR, compartments=("NATO",))
    query = EventFilter(action="enclave:place", target=f"enclave/{nato}")
    (waiting,) = fleet.services.audit.events(ctx(AUDITOR), query).items
    assert waiting.event.label == {"level": "SECRET", "compartments": ["CRYPTO", "NATO"]}
    assert fleet.services.audit.events(ctx(auditor_nato), query).items == []


def test_an_accreditation_proposal_is_labelled_with_both_accreditations(fleet: Fleet):
    services = fleet.services
    lowest = services.scheme.lowest
    proposal = services.hosts.propose_accreditation(ctx(OFFICER_1), "secret-1", lowest, "move")
    assert proposal.label == services.scheme.highest  # secret-1's accreditation
    assert services.actions.list(ctx(OFFICER_LOW)) == [], "it cannot confirm it: not shown"
    assert [a.id for a in services.actions.list(ctx(OFFICER_2))] == [proposal.id]
    # A refused proposal about the SECRET host is recorded under its accreditation.
    with pytest.raises(SovereignError, match="clearance"):
        services.hosts.propose_accreditation(ctx(OFFICER_LOW), "secret-1", lowest, "move")
    services.audit.log.sequence()
    query = EventFilter(action=ActionKind.ACCREDIT_HOST.value)
    (refused,) = services.audit.events(ctx(AUDITOR), query).items
    assert refused.event.outcome is Outcome.DENY
    assert services.audit.events(ctx(AUDITOR_LOW), query).items == []


# -- the kill switch ---------------------------------------------------------------------------


def test_the_kill_switch_answers_a_restricted_officer_alike_whether_secret_enclaves_exist(
    fleet: Fleet,
):
    services = fleet.services

    def pull() -> tuple[KillResult, tuple[str, ...]]:
        with statements(services) as seen:
            result = services.enclaves.kill_switch(
                ctx(OFFICER_LOW), label=None, tenant="defence", reason="drill"
            )
        return result, tuple(seen)

    before, work_before = pull()
    secret = file(fleet, SECRET_NATO)
    fleet.settle()
    assert fleet.state(secret) == "running"
    denied = len(denials(fleet))
    after, work_after = pull()
    assert before == after == KillResult(ended=(), proposal=None, partial=True)
    assert work_before == work_after
    assert len(denials(fleet)) == denied, "nothing refused, so nothing recorded as refused"
    assert fleet.state(secret) == "running", "above the officer: untouched"


def test_the_kill_switch_ends_what_the_officer_is_cleared_for_and_nothing_above(fleet: Fleet):
    # One classified host, dedicated to one label at a time: one of the two runs, the other
    # waits approved; the kill switch ends both kinds.
    low = file(fleet, RESTRICTED)
    secret = file(fleet, SECRET_NATO)
    fleet.settle()
    result = fleet.services.enclaves.kill_switch(
        ctx(OFFICER_LOW), label=None, tenant="defence", reason="breach"
    )
    assert result.ended == (low,)
    assert result.proposal is None and result.partial
    fleet.settle()
    assert fleet.state(low) in ENDED
    assert fleet.state(secret) in LIVE, "above the officer: untouched"


def test_a_kill_switch_within_the_officers_clearance_is_not_partial(fleet: Fleet):
    result = fleet.services.enclaves.kill_switch(
        ctx(OFFICER_LOW), label=fleet.services.scheme.parse(RESTRICTED), tenant=None, reason="x"
    )
    assert result == KillResult(ended=(), proposal=None, partial=False)
    result = fleet.services.enclaves.kill_switch(
        ctx(OFFICER_LOW), label=None, tenant="research", reason="x"
    )
    assert not result.partial  # the research tenant's ceiling is UNCLASSIFIED


def test_a_confirmed_kill_switch_ends_only_what_both_officers_are_cleared_for(fleet: Fleet):
    nato = file(fleet, SECRET_NATO)
    crypto = file(fleet, SECRET_CRYPTO, analyst=ANALYST_ALL)
    fleet.settle()
    result = fleet.services.enclaves.kill_switch(
        ctx(OFFICER_NATO), label=None, tenant="defence", reason="breach"
    )
    assert result.proposal is not None
    # The proposal rests on what its proposer can see; it says nothing of the CRYPTO enclave.
    assert result.proposal.label == fleet.services.scheme.parse(SECRET_NATO)
    fleet.services.actions.confirm(ctx(OFFICER_2), result.proposal.id)
    fleet.settle()
    assert fleet.state(nato) in ENDED
    assert fleet.state(crypto) in LIVE, "the proposer could not see it: untouched"


def test_the_two_person_threshold_rests_on_what_the_officer_can_see(fleet: Fleet):
    """A SECRET enclave the officer cannot see does not turn their call into a proposal."""
    low = file(fleet, RESTRICTED)
    file(fleet, SECRET_NATO)
    fleet.settle()
    result = fleet.services.enclaves.kill_switch(
        ctx(OFFICER_LOW), label=None, tenant="defence", reason="x"
    )
    assert result.ended == (low,) and result.proposal is None


# -- denials in the audit log ------------------------------------------------------------------


def test_denials_about_secret_objects_are_read_only_by_auditors_cleared_for_them(
    fleet: Fleet, world: World
):
    services = fleet.services
    probes: list[Callable[[], object]] = [
        partial(call, services, _existing(world, what)) for what, _who, call in PROBES
    ]
    probes += [
        # Refusals to callers who may see the object, as before.
        lambda: services.keys.rotate(ctx(ANALYST_DEFENCE), world.enclave),
        lambda: services.enclaves.console(ctx(AUDITOR), world.enclave),
        lambda: services.hosts.set_state(ctx(OPERATOR), world.host, "active", ""),
        # A refusal about no object in particular: every reader sees it.
        lambda: services.requests.list(ctx(OPERATOR), RequestFilter()),
    ]
    for probe in probes:
        with pytest.raises(SovereignError):
            probe()
    services.audit.log.sequence()

    def denied(reader: Principal) -> list[AuditEvent]:
        page = services.audit.events(ctx(reader), EventFilter(limit=500))
        return [e.event for e in page.items if e.event.outcome is Outcome.DENY]

    everything = denied(AUDITOR)
    assert len(everything) == len(probes)
    # (The console is read through enclave:read, as its refusal is.)
    assert {e.action for e in everything} >= {w for w, _p, _c in PROBES} - {"enclave:console"}
    assert all(e.label is not None for e in everything if e.target != "requests")
    low = denied(AUDITOR_LOW)
    assert [(e.action, e.target) for e in low] == [("request:list", "requests")]
