from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.domain.identity import Principal, Role
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.domain.requests import Decision, EnclaveRequest, RequestState
from sovereign.domain.tenants import Resources, TenantKind
from sovereign.errors import (
    ConflictError,
    PolicyDeniedError,
    QuotaExceededError,
    StepUpRequiredError,
)
from tests.support.factories import (
    ANALYST_DEFENCE,
    ANALYST_RESEARCH,
    AUDITOR,
    DEFENCE,
    OFFICER_1,
    OFFICER_2,
    OFFICER_LOW,
    OPERATOR,
    RESEARCH,
    image,
    principal,
    tenant,
)

SCHEME = LabelScheme()
POLICY = AccessPolicy(SCHEME)
NOW = datetime(2026, 1, 1, tzinfo=UTC)
NONE = Resources()
SMALL = Resources(vcpus=4, memory_mib=8192, gpus=1, disk_gib=10)


def pending(level="SECRET", comps=("NATO",), tenant_name="defence", requester=ANALYST_DEFENCE):
    return EnclaveRequest(
        id=uuid.uuid4(),
        tenant=tenant_name,
        requester=requester.subject,
        requester_name=requester.username,
        label=SCHEME.label(level, comps),
        resources=SMALL,
        gpu_model="H100-SXM5-80GB",
        image="debian-12-cuda",
        purpose="p",
        lease_hours=8,
        state=RequestState.PENDING,
        created_at=NOW,
        updated_at=NOW,
    )


def check(
    p, t=DEFENCE, level="SECRET", comps=("NATO",), img=None, res=SMALL, committed=NONE, lease=8
):
    POLICY.check_request(
        p,
        t,
        SCHEME.label(level, comps),
        img or image(),
        resources=res,
        lease_hours=lease,
        committed=committed,
    )


# -- requesting ---------------------------------------------------------------------------


def test_analyst_may_request_for_own_tenant_within_clearance():
    check(ANALYST_DEFENCE)


@pytest.mark.parametrize(
    ("who", "kwargs", "reason"),
    [
        (OFFICER_1, {}, "only analysts"),
        (ANALYST_RESEARCH, {}, "not a member of tenant 'defence'"),
        (ANALYST_DEFENCE, {"comps": ("NATO", "EU")}, "clearance does not dominate"),
        (ANALYST_RESEARCH, {"t": RESEARCH, "level": "RESTRICTED", "comps": ()}, "clearance"),
        (
            principal("a", Role.ANALYST, tenants=("research",)),
            {"t": RESEARCH, "level": "RESTRICTED", "comps": ()},
            "tenant 'research' may not hold RESTRICTED",
        ),
        (ANALYST_DEFENCE, {"img": image("civ", "UNCLASSIFIED", ())}, "image 'civ' may not run"),
        (ANALYST_DEFENCE, {"lease": 721}, "exceeds the maximum of 720 h"),
    ],
)
def test_request_denials(who, kwargs, reason):
    with pytest.raises(PolicyDeniedError, match=reason):
        check(who, **kwargs)


def test_quota_checked_against_committed_usage():
    small_quota = tenant(
        "defence", TenantKind.CLASSIFIED, "SECRET", ("NATO",), Resources(8, 16384, 2, 20)
    )
    check(ANALYST_DEFENCE, t=small_quota, committed=Resources(4, 8192, 1, 10))
    with pytest.raises(QuotaExceededError, match="gpus 3 > 2"):
        check(ANALYST_DEFENCE, t=small_quota, committed=Resources(4, 8192, 2, 10))


# -- deciding -----------------------------------------------------------------------------


def decide(p, request, decision=Decision.APPROVE, reason="", committed=NONE, t=DEFENCE):
    # Every officer here typed a password at NOW (step-up); its tests build their own.
    p = replace(p, auth_time=int(NOW.timestamp())) if p.auth_time is None else p
    return POLICY.decide(p, request, decision, reason, NOW, tenant=t, committed=committed)


def test_classified_needs_two_distinct_officers():
    request = pending()
    decide(OFFICER_1, request)
    assert request.state is RequestState.PENDING
    with pytest.raises(ConflictError, match="already decided"):
        decide(OFFICER_1, request)
    decide(OFFICER_2, request)
    assert request.state is RequestState.APPROVED
    assert request.approvers == [OFFICER_1.subject, OFFICER_2.subject]


def test_below_threshold_one_officer_suffices():
    request = pending(level="RESTRICTED", comps=())
    decide(OFFICER_1, request)
    assert request.state is RequestState.APPROVED


def test_threshold_is_configurable():
    policy = AccessPolicy(SCHEME, two_person_level="SECRET")
    assert policy.approvals_needed(SCHEME.label("CONFIDENTIAL")) == 1
    assert policy.approvals_needed(SCHEME.label("SECRET")) == 2
    assert POLICY.approvals_needed(SCHEME.label("CONFIDENTIAL")) == 2


def test_requester_never_approves_own_request():
    dual = principal("dual", Role.ANALYST, Role.OFFICER, tenants=("defence",))
    request = pending(requester=dual)
    with pytest.raises(PolicyDeniedError, match="own requests"):
        decide(dual, request)
    assert request.approvals == []


def test_officer_must_dominate_label():
    with pytest.raises(PolicyDeniedError, match="clearance does not dominate"):
        decide(OFFICER_LOW, pending())


def test_non_officer_cannot_decide():
    for who in (ANALYST_DEFENCE, AUDITOR, OPERATOR):
        with pytest.raises(PolicyDeniedError, match="only security officers"):
            decide(who, pending(requester=ANALYST_RESEARCH))


def test_rejection_is_final():
    request = pending()
    decide(OFFICER_1, request)
    decide(OFFICER_2, request, Decision.REJECT, "no")
    assert request.state is RequestState.REJECTED
    assert request.reason == "no"
    with pytest.raises(ConflictError, match="not pending"):
        decide(principal("officer-3", Role.OFFICER), request)


def test_quota_rechecked_at_approval():
    small = tenant(
        "defence", TenantKind.CLASSIFIED, "SECRET", ("NATO",), Resources(8, 16384, 1, 20)
    )
    request = pending()
    with pytest.raises(QuotaExceededError):
        decide(OFFICER_1, request, committed=Resources(0, 0, 1, 0), t=small)
    assert request.approvals == []


def test_only_requester_cancels_pending():
    request = pending()
    with pytest.raises(PolicyDeniedError, match="only the requester"):
        POLICY.check_cancel(OFFICER_1, request)
    POLICY.check_cancel(ANALYST_DEFENCE, request)
    request.transition(RequestState.CANCELLED, NOW)
    with pytest.raises(ConflictError):
        POLICY.check_cancel(ANALYST_DEFENCE, request)


# -- seeing -------------------------------------------------------------------------------


def test_visibility():
    secret = pending()
    assert POLICY.can_see(ANALYST_DEFENCE, secret)
    assert POLICY.can_see(OFFICER_1, secret)
    assert POLICY.can_see(AUDITOR, secret)
    assert not POLICY.can_see(ANALYST_RESEARCH, secret)
    assert not POLICY.can_see(OFFICER_LOW, secret)
    assert not POLICY.can_see(OPERATOR, secret)
    other_analyst = principal("x", Role.ANALYST, tenants=("research",))
    assert not POLICY.can_see(other_analyst, secret)  # cleared, but not their tenant


def test_visibility_filter_matches_can_see_roles():
    with pytest.raises(PolicyDeniedError):
        POLICY.request_visibility(OPERATOR)
    v = POLICY.request_visibility(ANALYST_DEFENCE)
    assert v.tenants == frozenset({"defence"})
    assert v.levels == SCHEME.levels
    assert POLICY.request_visibility(AUDITOR).tenants is None
    with pytest.raises(PolicyDeniedError):
        POLICY.audit_visibility(ANALYST_DEFENCE)


# -- properties ---------------------------------------------------------------------------

levels = st.sampled_from(SCHEME.levels)
compartment_sets = st.frozensets(st.sampled_from(sorted(SCHEME.compartments)))
roles = st.frozensets(st.sampled_from(list(Role)), max_size=3)


@st.composite
def principals(draw):
    has_clearance = draw(st.booleans())
    return Principal(
        subject=f"s{draw(st.integers(0, 5))}",
        username="u",
        roles=draw(roles),
        clearance=SCHEME.label(draw(levels), draw(compartment_sets)) if has_clearance else None,
        tenants=draw(st.frozensets(st.sampled_from(["defence", "research"]))),
    )


@settings(max_examples=300)
@given(
    st.lists(principals(), min_size=1, max_size=4),
    levels,
    compartment_sets,
    st.lists(st.sampled_from(list(Decision)), min_size=4, max_size=4),
)
def test_no_approval_path_lets_a_label_escape(deciders, level, comps, decisions):
    """Whatever sequence of officers decides, an approved request was approved only by enough
    distinct officers, none of them the requester, each cleared for the label."""
    request = pending(level=level, comps=comps, requester=ANALYST_DEFENCE)
    accepted = []
    for who, decision in zip(deciders, decisions, strict=False):
        try:
            decide(who, request, decision, "r")
            accepted.append(who)
        except (PolicyDeniedError, ConflictError):
            pass
    for who in accepted:
        assert Role.OFFICER in who.roles
        assert who.subject != request.requester
        assert who.clearance is not None and who.clearance.dominates(request.label)
    if request.state is RequestState.APPROVED:
        assert len(set(request.approvers)) >= POLICY.approvals_needed(request.label)
        assert len(set(request.approvers)) == len(request.approvers)


@settings(max_examples=300)
@given(principals(), levels, compartment_sets, st.sampled_from([DEFENCE, RESEARCH]))
def test_no_request_escapes_clearance_or_tenant_ceiling(who, level, comps, t):
    label = SCHEME.label(level, comps)
    try:
        POLICY.check_request(who, t, label, image(), resources=SMALL, lease_hours=1, committed=NONE)
    except (PolicyDeniedError, QuotaExceededError):
        return
    assert who.clearance is not None and who.clearance.dominates(label)
    assert t.max_label.dominates(label)
    assert t.name in who.tenants


@settings(max_examples=300)
@given(principals(), levels, compartment_sets)
def test_nobody_sees_what_their_clearance_does_not_dominate(who, level, comps):
    request = pending(level=level, comps=comps)
    if POLICY.can_see(who, request):
        assert who.clearance is not None and who.clearance.dominates(request.label)


# -- step-up -----------------------------------------------------------------------------------


def _signed_in(p: Principal, seconds_ago: int | None) -> Principal:
    return replace(p, auth_time=None if seconds_ago is None else int(NOW.timestamp()) - seconds_ago)


def _decide(p: Principal, request: EnclaveRequest, decision: Decision = Decision.APPROVE) -> None:
    POLICY.decide(p, request, decision, "r", NOW, tenant=DEFENCE, committed=NONE)


@pytest.mark.parametrize("seconds_ago", [601, 3 * 3600, None])
def test_approving_a_classified_request_needs_a_recent_sign_in(seconds_ago: int | None):
    request = pending()
    with pytest.raises(StepUpRequiredError) as refused:
        _decide(_signed_in(OFFICER_1, seconds_ago), request)
    assert refused.value.max_age == 600
    assert request.approvals == []


def test_a_recent_sign_in_approves_a_classified_request():
    request = pending()
    _decide(_signed_in(OFFICER_1, 600), request)
    assert request.approvers == [OFFICER_1.subject]


def test_unclassified_approvals_and_classified_rejections_need_no_step_up():
    civil = pending("UNCLASSIFIED", (), "research", ANALYST_RESEARCH)
    POLICY.decide(
        _signed_in(OFFICER_1, 3600),
        civil,
        Decision.APPROVE,
        "",
        NOW,
        tenant=RESEARCH,
        committed=NONE,
    )
    assert civil.state is RequestState.APPROVED
    secret = pending()
    _decide(_signed_in(OFFICER_1, None), secret, Decision.REJECT)
    assert secret.state is RequestState.REJECTED


def test_the_step_up_age_is_configurable():
    strict = AccessPolicy(SCHEME, step_up_max_age_s=60)
    p = _signed_in(OFFICER_1, 61)
    assert strict.step_up_required(p, SCHEME.label("RESTRICTED"), NOW)
    assert not strict.step_up_required(p, SCHEME.lowest, NOW)
    assert not POLICY.step_up_required(p, SCHEME.label("RESTRICTED"), NOW)
