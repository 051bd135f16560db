"""Data residency: the countries a tenant's enclaves (and their keys) may live in.

Owns the rule that a residency policy is a sorted, duplicate-free, non-empty tuple of country
codes (checked by :func:`sovereign.domain.sites.check_country`), the narrowing a request may ask
for (a non-empty subset of its tenant's policy) and the countries a request's
enclave may be placed in: the country it was pinned to at final approval, else its narrowing,
else its tenant's policy.
"""

from __future__ import annotations

from collections.abc import Iterable

from sovereign.domain.requests import EnclaveRequest
from sovereign.domain.sites import check_country
from sovereign.domain.tenants import Tenant
from sovereign.errors import InvalidInputError


def check_residency(codes: Iterable[object]) -> tuple[str, ...]:
    """A residency policy: the codes checked, sorted, without duplicates.

    :raises InvalidInputError: empty, or a code that is not a country.
    """
    if isinstance(codes, str):
        raise InvalidInputError(reason="residency must be a list of country codes, e.g. ['ES']")
    checked = tuple(sorted({check_country(code) for code in codes}))
    if not checked:
        raise InvalidInputError(reason="residency needs at least one country")
    return checked


def narrow(tenant: Tenant, wanted: Iterable[object]) -> tuple[str, ...]:
    """The narrowing a request of ``tenant`` asks for, checked against the tenant's policy.

    :raises InvalidInputError: empty, a code that is not a country, or countries the tenant's
        residency does not allow (named).
    """
    codes = check_residency(wanted)
    if outside := [code for code in codes if code not in tenant.residency]:
        raise InvalidInputError(
            reason=f"residency {', '.join(outside)} not allowed for tenant {tenant.name} "
            f"(allowed: {', '.join(tenant.residency)})"
        )
    return codes


def allowed_countries(request: EnclaveRequest, tenant: Tenant) -> tuple[str, ...]:
    """Where the request's enclave may run: its narrowing, else its tenant's residency."""
    return request.residency if request.residency is not None else tenant.residency


def placement_countries(request: EnclaveRequest, tenant: Tenant) -> frozenset[str]:
    """The countries placement may choose among: the pinned country once there is one (the
    enclave runs where its key lives), else every allowed country."""
    if request.country is not None:
        return frozenset({request.country})
    return frozenset(allowed_countries(request, tenant))
