"""Demo users beyond the IdP's own, shared by the API and console tests: an auditor cleared
only for UNCLASSIFIED (label filtering) and an officer cleared only for RESTRICTED (what
someone below learns of what exists)."""

from __future__ import annotations

from devstack.idp import DEMO_PASSWORD, DemoUser

LOW_CLEARANCE_USERS = (
    DemoUser(
        username="auditor-low",
        password=DEMO_PASSWORD,
        name="Junior Auditor",
        roles=("auditor",),
        groups=(),
        clearance="UNCLASSIFIED",
        compartments=(),
    ),
    DemoUser(
        username="officer-restricted",
        password=DEMO_PASSWORD,
        name="Junior Officer",
        roles=("security-officer",),
        groups=(),
        clearance="RESTRICTED",
        compartments=(),
    ),
)
