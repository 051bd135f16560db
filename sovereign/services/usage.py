"""GPU hours per tenant and country, and the parity order of a tenant's countries.

Owns how usage is counted and who may read it. An enclave uses ``len(gpus)`` GPUs from its
placement (``created_at``) to its end (``ended_at``, or now while it runs), clipped to the
period asked for; it counts in the country it was placed in (:attr:`Enclave.country`, its
host's country then, so a later relocation of the host moves no history), or for enclaves placed
before countries were recorded in its host's (``""`` where the host has none). Reports are for
officers and auditors, and count only enclaves whose label the caller's clearance dominates (the
audit log's own filter): an enclave above it changes no figure, no total and no share, so nothing
about it can be inferred; the command line (a ``system:`` actor) counts everything. Each report
is recorded as a ``report:usage`` event (fail-closed: no event, no report), whose details name
the query, never a figure.

:func:`country_order` is what placement asks when it pins a new enclave to a country: with
parity on (setting ``PLACEMENT_PARITY``) a tenant's allowed countries in order of fewest GPU
hours over the last ``PARITY_WINDOW_DAYS`` days, so that its work spreads over them; with
parity off, simply sorted. Must not place anything, nor change any record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from audit import Outcome
from sovereign.domain.fleet import Enclave
from sovereign.domain.policy import AccessPolicy, Visibility
from sovereign.errors import InvalidInputError
from sovereign.services.ports import UnitOfWork, UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, utcnow

#: How a report groups its rows and totals.
UsageGrouping = Literal["country", "tenant"]
GROUPINGS: tuple[UsageGrouping, ...] = ("country", "tenant")
#: The audit action and target of a usage report.
REPORT_ACTION = "report:usage"
REPORT_TARGET = "reports/usage"
_HOUR_S = 3600.0


@dataclass(frozen=True)
class UsageRow:
    """One tenant's use of one country: GPU hours and the enclaves they came from."""

    tenant: str
    country: str
    gpu_hours: float
    enclaves: int


@dataclass(frozen=True)
class UsageTotal:
    """The sum over one country or one tenant (``key``), as the report is grouped."""

    key: str
    gpu_hours: float
    enclaves: int


@dataclass(frozen=True)
class UsageReport:
    """GPU hours in ``[since, until)`` by tenant and country, grouped ``by`` one of them.

    ``parity`` gives, for each tenant allowed in several countries (its residency), the share
    of its GPU hours in each of them (0 to 1; all 0 when it used none).
    """

    by: UsageGrouping
    since: datetime | None
    until: datetime
    rows: tuple[UsageRow, ...]
    totals: tuple[UsageTotal, ...]
    parity: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def gpu_hours(self) -> float:
        """All the GPU hours in the report."""
        return sum(row.gpu_hours for row in self.rows)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready values (times in RFC 3339, hours to the second)."""
        return {
            "by": self.by,
            "since": _rfc3339(self.since),
            "until": _rfc3339(self.until),
            "gpu_hours": _hours(self.gpu_hours),
            "rows": [
                {
                    "tenant": r.tenant,
                    "country": r.country,
                    "gpu_hours": _hours(r.gpu_hours),
                    "enclaves": r.enclaves,
                }
                for r in self.rows
            ],
            "totals": [
                {"key": t.key, "gpu_hours": _hours(t.gpu_hours), "enclaves": t.enclaves}
                for t in self.totals
            ],
            "parity": [
                {"tenant": tenant, "shares": {c: round(x, 4) for c, x in shares.items()}}
                for tenant, shares in self.parity.items()
            ],
        }


def _rfc3339(value: datetime | None) -> str | None:
    # isoformat, not strftime: it writes every year with four digits (year 467 as 0467).
    return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _hours(value: float) -> float:
    # A second is 1/3600 h: four decimals keep every second and drop float noise.
    return round(value, 4)


def gpu_hours(enclave: Enclave, since: datetime | None, until: datetime) -> float:
    """The GPU hours ``enclave`` used within ``[since, until)`` (0 if it was not there)."""
    start = enclave.created_at if since is None else max(enclave.created_at, since)
    end = until if enclave.ended_at is None else min(enclave.ended_at, until)
    seconds = (end - start).total_seconds()
    return max(seconds, 0.0) * len(enclave.gpus) / _HOUR_S


def tally(
    enclaves: Iterable[Enclave],
    countries: Mapping[str, str],
    since: datetime | None,
    until: datetime,
) -> dict[tuple[str, str], tuple[float, int]]:
    """GPU hours and enclave counts by ``(tenant, country)``: the country an enclave was
    placed in, or for one placed before countries were recorded its host's (``countries`` maps
    host names to their country; a host not in it counts as ``""``). Enclaves not alive in the
    period are left out."""
    found: dict[tuple[str, str], tuple[float, int]] = {}
    for enclave in enclaves:
        if enclave.created_at >= until or (
            since is not None and enclave.ended_at is not None and enclave.ended_at <= since
        ):
            continue
        key = (enclave.tenant, enclave.country or countries.get(enclave.host, ""))
        hours, count = found.get(key, (0.0, 0))
        found[key] = (hours + gpu_hours(enclave, since, until), count + 1)
    return found


def _host_countries(uow: UnitOfWork) -> dict[str, str]:
    return {host.name: host.country for host in uow.hosts.list()}


def country_order(
    uow: UnitOfWork,
    tenant_name: str,
    allowed: Sequence[str],
    now: datetime,
    window: timedelta | None,
) -> list[str]:
    """``allowed`` countries, those where ``tenant_name`` used the fewest GPU hours in the
    ``window`` before ``now`` first (ties by code); ``window`` None (parity off): sorted.

    Every enclave of the tenant counts, whatever its label: this is the system's own choice,
    never shown to a user.
    """
    order = sorted(set(allowed))
    if window is None or len(order) < 2:
        return order
    since = now - window
    mine = [e for e in uow.enclaves.overlapping(since, now) if e.tenant == tenant_name]
    used = tally(mine, _host_countries(uow), since, now)
    return sorted(order, key=lambda code: (used.get((tenant_name, code), (0.0, 0))[0], code))


class UsageService:
    """Usage reports for officers and auditors, and the parity order placement asks for."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        policy: AccessPolicy,
        *,
        parity: bool = False,
        window: timedelta = timedelta(days=30),
        clock: Clock = utcnow,
    ) -> None:
        self._uow = uow_factory
        self._policy = policy
        self._parity = parity
        self._window = window
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    @property
    def parity_window(self) -> timedelta | None:
        """The window :func:`country_order` balances over; None when parity is off."""
        return self._window if self._parity else None

    def country_order(
        self, uow: UnitOfWork, tenant_name: str, allowed: Sequence[str], now: datetime
    ) -> list[str]:
        """:func:`country_order` with the configured parity (in the caller's unit of work)."""
        return country_order(uow, tenant_name, allowed, now, self.parity_window)

    def _visibility(self, ctx: CallContext) -> Visibility:
        if ctx.actor.startswith("system:"):
            return Visibility.everything(self._policy.scheme)
        # Officers and auditors, up to their clearance (PolicyDeniedError for anyone else).
        return self._policy.audit_visibility(ctx.principal)

    def report(
        self,
        ctx: CallContext,
        *,
        by: str = "country",
        since: datetime | None = None,
        until: datetime | None = None,
        tenant: str | None = None,
    ) -> UsageReport:
        """GPU hours in ``[since, until)`` (``until`` at most now) per tenant and country,
        counting only enclaves the caller is cleared for; recorded as ``report:usage``.

        :raises PolicyDeniedError: the caller is neither an officer nor an auditor.
        :raises InvalidInputError: unknown grouping, naive times, or ``since`` after ``until``.
        """
        details: dict[str, Any] = {
            "by": by,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "tenant": tenant,
        }
        with self._recorder.decision(ctx, REPORT_ACTION, REPORT_TARGET):
            visibility = self._visibility(ctx)
            if by not in GROUPINGS:
                raise InvalidInputError(reason=f"by must be one of {', '.join(GROUPINGS)}")
            for name, value in (("since", since), ("until", until)):
                if value is not None and value.utcoffset() is None:
                    raise InvalidInputError(reason=f"{name} needs a time-zone offset")
            now = self._clock()
            end = now if until is None else min(until, now)
            if since is not None and since > end:
                raise InvalidInputError(reason="since must not be after until (nor the future)")
            with self._uow(readonly=True) as uow:
                seen = [
                    e
                    for e in uow.enclaves.overlapping(since, end)
                    if visibility.covers(e.label) and (tenant is None or e.tenant == tenant)
                ]
                used = tally(seen, _host_countries(uow), since, end)
                tenants = uow.tenants.list()
                residency = {t.name: t.residency for t in tenants}
            report = _report(by, since, end, used, residency)
            # A query naming a tenant is recorded at that tenant's label, as its creation is.
            named = next((t for t in tenants if t.name == tenant), None)
            self._recorder.commit(
                self._recorder.event(
                    ctx,
                    REPORT_ACTION,
                    REPORT_TARGET,
                    Outcome.ALLOW,
                    label=named.max_label if named is not None else None,
                    details=details,
                )
            )
        return report


def _report(
    by: UsageGrouping,
    since: datetime | None,
    until: datetime,
    used: Mapping[tuple[str, str], tuple[float, int]],
    residency: Mapping[str, Sequence[str]],
) -> UsageReport:
    """Rows, totals and parity shares from :func:`tally`'s figures."""
    rows = [UsageRow(t, c, hours, count) for (t, c), (hours, count) in used.items()]
    if by == "country":
        rows.sort(key=lambda r: (r.country, r.tenant))
    else:
        rows.sort(key=lambda r: (r.tenant, r.country))
    sums: dict[str, tuple[float, int]] = {}
    for row in rows:
        key = row.country if by == "country" else row.tenant
        hours, count = sums.get(key, (0.0, 0))
        sums[key] = (hours + row.gpu_hours, count + row.enclaves)
    totals = tuple(UsageTotal(key, hours, count) for key, (hours, count) in sorted(sums.items()))
    parity: dict[str, dict[str, float]] = {}
    # Only tenants the report shows (some enclave of theirs was counted): a tenant with
    # nothing the caller is cleared for is not named.
    for name in sorted({row.tenant for row in rows}):
        allowed = sorted(set(residency.get(name, ())))
        if len(allowed) < 2:
            continue
        hours_in = {c: used.get((name, c), (0.0, 0))[0] for c in allowed}
        total = sum(hours_in.values())
        parity[name] = {c: (h / total if total else 0.0) for c, h in hours_in.items()}
    return UsageReport(by, since, until, tuple(rows), totals, parity)
