"""The console's pages, one module per area; importing this package registers their routes."""

from sovereign.web.views import audit, auth, enclaves, fleet, home, jobs, requests, sites

__all__ = ["audit", "auth", "enclaves", "fleet", "home", "jobs", "requests", "sites"]
