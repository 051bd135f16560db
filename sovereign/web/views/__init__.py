"""The console's pages, one module per area; importing this package registers their routes."""

from sovereign.web.views import (
    attestation,
    audit,
    auth,
    enclaves,
    fleet,
    home,
    jobs,
    requests,
    sites,
)

__all__ = [
    "attestation",
    "audit",
    "auth",
    "enclaves",
    "fleet",
    "home",
    "jobs",
    "requests",
    "sites",
]
