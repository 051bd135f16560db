"""The domain records steps with the hypervisor side's step names: the same objects."""

from __future__ import annotations

from enclaves import steps
from sovereign.domain import fleet


def test_the_domain_uses_the_one_step_enum():
    assert fleet.PROVISION_STEPS is steps.PROVISION_STEPS
    assert fleet.TEARDOWN_STEPS is steps.TEARDOWN_STEPS
    assert fleet.ProvisionStep is steps.ProvisionStep
