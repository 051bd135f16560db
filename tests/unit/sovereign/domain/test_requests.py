from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from sovereign.domain.labels import LabelScheme
from sovereign.domain.requests import TRANSITIONS, EnclaveRequest, RequestState
from sovereign.domain.tenants import Resources
from sovereign.errors import InvalidTransitionError

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def make(state: RequestState) -> EnclaveRequest:
    return EnclaveRequest(
        id=uuid.uuid4(),
        tenant="defence",
        requester="s",
        requester_name="u",
        label=LabelScheme().label("SECRET"),
        resources=Resources(1, 1024, 0, 1),
        gpu_model=None,
        image="img",
        purpose="p",
        lease_hours=1,
        state=state,
        created_at=NOW,
        updated_at=NOW,
    )


def test_every_state_has_a_transition_entry():
    assert set(TRANSITIONS) == set(RequestState)


@pytest.mark.parametrize("state", list(RequestState))
@pytest.mark.parametrize("target", list(RequestState))
def test_transitions_follow_the_table(state: RequestState, target: RequestState):
    request = make(state)
    if target in TRANSITIONS[state]:
        request.transition(target, NOW)
        assert request.state is target
    else:
        with pytest.raises(InvalidTransitionError):
            request.transition(target, NOW)
        assert request.state is state


def test_final_states_have_no_way_out():
    for final in (RequestState.REJECTED, RequestState.CANCELLED, RequestState.TERMINATED):
        assert TRANSITIONS[final] == frozenset()


def test_lifecycle_path_exists():
    request = make(RequestState.PENDING)
    for step in ("approved", "provisioning", "running", "terminating", "terminated"):
        request.transition(RequestState(step), NOW)
    assert request.state is RequestState.TERMINATED
