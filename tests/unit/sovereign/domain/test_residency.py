"""Unit tests for sovereign.domain.residency: country codes, policies, narrowing, and the
countries a request's enclave may be placed in."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from sovereign.domain.labels import LabelScheme
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.domain.residency import (
    allowed_countries,
    check_residency,
    narrow,
    placement_countries,
)
from sovereign.domain.tenants import Resources
from sovereign.errors import InvalidInputError
from tests.support.factories import DEFENCE, RESEARCH

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def research_request() -> EnclaveRequest:
    return EnclaveRequest(
        id=uuid.uuid4(),
        tenant="research",
        requester="analyst-research",
        requester_name="analyst-research",
        label=LabelScheme().label("UNCLASSIFIED"),
        resources=Resources(vcpus=1, memory_mib=1024, gpus=0, disk_gib=1),
        gpu_model=None,
        image="ubuntu-24.04-research",
        purpose="test",
        lease_hours=1,
        state=RequestState.PENDING,
        created_at=NOW,
        updated_at=NOW,
    )


def test_a_policy_is_sorted_without_duplicates():
    assert check_residency(["PT", "ES", "PT"]) == ("ES", "PT")


@pytest.mark.parametrize(
    ("codes", "message"),
    [
        ([], "at least one country"),
        (["XX"], "unknown country 'XX'"),
        (["es"], "unknown country 'es'"),
        (["ESP"], "unknown country 'ESP'"),
        ([7], "unknown country 7"),
        ("ES", "must be a list"),
    ],
)
def test_bad_policies_are_refused(codes, message):
    with pytest.raises(InvalidInputError, match=message):
        check_residency(codes)


def test_a_request_may_only_narrow_its_tenants_residency():
    assert narrow(RESEARCH, ["PT"]) == ("PT",)
    assert narrow(RESEARCH, ["PT", "ES"]) == ("ES", "PT")
    with pytest.raises(InvalidInputError, match="residency FR, PT not allowed for tenant defence"):
        narrow(DEFENCE, ["PT", "FR", "ES"])


def test_the_pinned_country_else_the_narrowing_else_the_tenants_countries():
    request = research_request()
    assert allowed_countries(request, RESEARCH) == ("ES", "PT")
    assert placement_countries(request, RESEARCH) == {"ES", "PT"}
    request.residency = ("PT",)
    assert allowed_countries(request, RESEARCH) == ("PT",)
    assert placement_countries(request, RESEARCH) == {"PT"}
    request.residency = None
    request.country = "ES"
    assert allowed_countries(request, RESEARCH) == ("ES", "PT")
    assert placement_countries(request, RESEARCH) == {"ES"}
