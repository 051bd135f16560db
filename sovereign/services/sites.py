"""Use cases for sites: add one, list them, read one.

Owns the rules: adding a site is an operator's action (officers and the system may too, as for
hosts), recorded as ``site:add`` on ``site/<name>`` with its country and operator; a name taken
already is a conflict (409). Operators, officers and auditors read sites. The checks of a
site's name, country and operator are the domain's (:mod:`sovereign.domain.sites`). Hosts name
their site; :class:`~sovereign.services.hosts.HostService` refuses an unknown one and copies its
country. Sites are never deleted or renamed here.
"""

from __future__ import annotations

from sovereign.domain.identity import Role
from sovereign.domain.sites import Site, check_country, check_operator, check_site_name
from sovereign.errors import (
    ConcurrentUpdateError,
    ConflictError,
    NotFoundError,
    PolicyDeniedError,
)
from sovereign.services.ports import UnitOfWorkFactory
from sovereign.services.recording import CallContext, Clock, Recorder, site_target, utcnow

#: Roles that may read sites.
SITE_READERS = frozenset({Role.OFFICER, Role.OPERATOR, Role.AUDITOR})
#: Roles that may add sites.
SITE_OPERATORS = frozenset({Role.OFFICER, Role.OPERATOR})


def _is_system(ctx: CallContext) -> bool:
    return ctx.actor.startswith("system:")


class SiteService:
    """The sites hosts stand in."""

    def __init__(self, uow_factory: UnitOfWorkFactory, *, clock: Clock = utcnow) -> None:
        self._uow = uow_factory
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    def _check_reader(self, ctx: CallContext, action: str, target: str) -> None:
        if not (ctx.principal.roles & SITE_READERS or _is_system(ctx)):
            error = PolicyDeniedError(
                reason="reading sites needs the officer, operator or auditor role"
            )
            self._recorder.denial(ctx, action, target, error)
            raise error

    def add(self, ctx: CallContext, *, name: str, country: str, operator: str) -> Site:
        """Record a new site.

        :raises InvalidInputError: a bad name, an unknown country, an empty or multi-line
            operator.
        :raises PolicyDeniedError: not an operator or officer.
        :raises ConflictError: a site of that name exists.
        """
        with self._recorder.decision(ctx, "site:add", site_target(name)) as decision:
            if not (ctx.principal.roles & SITE_OPERATORS or _is_system(ctx)):
                raise PolicyDeniedError(reason="adding sites needs the operator role")
            site = Site(
                name=check_site_name(name),
                country=check_country(country),
                operator=check_operator(operator),
                created_at=self._clock(),
            )
            try:
                with self._uow() as uow:
                    if uow.sites.get(name) is not None:
                        raise ConflictError(reason=f"a site called {name!r} exists")
                    uow.sites.add(site)
                    decision.allow(
                        uow, details={"country": site.country, "operator": site.operator}
                    )
                    uow.commit()
            except ConcurrentUpdateError as e:
                # Another caller added the same name meanwhile: the primary key settled it.
                raise ConflictError(reason=f"a site called {name!r} exists") from e
        return site

    def list(self, ctx: CallContext) -> list[Site]:
        """Every site, by name. :raises PolicyDeniedError: the caller may not read sites."""
        self._check_reader(ctx, "site:list", "sites")
        with self._uow(readonly=True) as uow:
            return uow.sites.list()

    def get(self, ctx: CallContext, name: str) -> Site:
        """One site. :raises NotFoundError: unknown, or the caller may not read sites (the same
        answer, so a name does not tell whether the site exists)."""
        with self._uow(readonly=True) as uow:
            site = uow.sites.get(name)
        if site is None or not (ctx.principal.roles & SITE_READERS or _is_system(ctx)):
            error = NotFoundError(kind="site", ident=name)
            self._recorder.denial(ctx, "site:read", site_target(name), error)
            raise error
        return site
