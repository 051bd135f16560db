"""Use cases for hosts and their GPUs: add, rediscover, drain, quarantine, activate, accredit.

Owns the coordination of the hypervisor's inventory with the host and GPU records and the audit
log. Rules: a URI is checked by the hypervisor port's policy before anything connects to it
(refused: 422, audited as a denial, never tried); a host is the hypervisor's own identity (its
host UUID and hostname as libvirt reports them), so a second registration of one machine under
another URI spelling is refused (409) and a host whose identity changes is quarantined; GPUs of
a newly added or rediscovered host start ``dirty`` (nobody vouches for what
ran on them before; the reconciler sanitizes them before first use); a GPU that disappeared is
quarantined; a host's accreditation is set when an operator adds it from the command line and
changed only by two officers (a proposal here, confirmed through the action service, which
carries it out with :class:`AccreditHost`); over the API an operator may
add hosts at the lowest level only. Officers, operators and auditors read hosts; a GPU's last
label is shown only to readers cleared for it. A quarantined GPU returns to service only through
two officers cleared for its last tenant's label (:meth:`HostService.propose_return`, carried
out by :class:`ReturnGpu`): it goes ``quarantined -> dirty``, so it is handed over again and gets
a new certificate before anyone uses it.
"""

from __future__ import annotations

import builtins
import uuid
from dataclasses import replace
from datetime import datetime
from typing import Any

from audit import Outcome
from enclaves.inventory import GpuDevice
from sovereign.domain.actions import ActionKind, DualAction, check_officer
from sovereign.domain.fleet import DOMAIN_TYPES, Gpu, Host, HostIdentity
from sovereign.domain.identity import Role
from sovereign.domain.labels import Label, LabelScheme
from sovereign.domain.placement import HostStatus
from sovereign.errors import (
    ConcurrentUpdateError,
    ConflictError,
    HostIdentityError,
    InvalidInputError,
    NotFoundError,
    PolicyDeniedError,
    SovereignError,
)
from sovereign.services.collaborators import Proposals
from sovereign.services.ports import (
    HostFacts,
    Hypervisor,
    UnitOfWork,
    UnitOfWorkFactory,
)
from sovereign.services.recording import (
    CallContext,
    Clock,
    Recorder,
    gpu_target,
    host_target,
    utcnow,
)

#: Roles that may read hosts and GPUs.
HOST_READERS = frozenset({Role.OFFICER, Role.OPERATOR, Role.AUDITOR})
#: The audit action of each host state change.
STATE_ACTIONS: dict[HostStatus, str] = {
    "active": "host:activate",
    "draining": "host:drain",
    "quarantined": "host:quarantine",
}
#: Roles that may add hosts and take them out of service (draining, quarantine).
HOST_OPERATORS = frozenset({Role.OFFICER, Role.OPERATOR})


def _is_system(ctx: CallContext) -> bool:
    return ctx.actor.startswith("system:")


def _can_read(ctx: CallContext) -> bool:
    """Whether the caller may know which hosts exist."""
    return bool(ctx.principal.roles & HOST_READERS) or _is_system(ctx)


def _can_operate(ctx: CallContext) -> bool:
    """Whether the caller may add, rediscover, drain or quarantine hosts."""
    return bool(ctx.principal.roles & HOST_OPERATORS) or _is_system(ctx)


def _label(host: Host | None) -> Label | None:
    """The accreditation of ``host`` if it exists, for the audit event of a refusal about it."""
    return host.accreditation if host is not None else None


def _site_country(uow: UnitOfWork, site: str) -> str:
    """The country of ``site``. :raises InvalidInputError: no such site (422)."""
    found = uow.sites.get(site)
    if found is None:
        raise InvalidInputError(reason=f"unknown site {site!r}")
    return found.country


def _same_identity(host: Host, found: HostIdentity) -> None:
    """:raises HostIdentityError: the host answers with another identity than recorded."""
    recorded = host.identity()
    if recorded is not None and found != recorded:
        raise HostIdentityError(reason=f"{host.uri} answers with {found}, recorded as {recorded}")


class HostService:
    """The fleet's hosts and GPUs."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        hypervisor: Hypervisor,
        scheme: LabelScheme,
        actions: Proposals,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self._uow = uow_factory
        self._hypervisor = hypervisor
        self._scheme = scheme
        self._actions = actions
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    # -- reading -----------------------------------------------------------------------------

    def _check_reader(self, ctx: CallContext, action: str) -> None:
        if not _can_read(ctx):
            error = PolicyDeniedError(
                reason="reading hosts needs the officer, operator or auditor role"
            )
            self._recorder.denial(ctx, action, "hosts", error)
            raise error

    def list(self, ctx: CallContext) -> list[Host]:
        """Every host, by name."""
        self._check_reader(ctx, "host:list")
        with self._uow(readonly=True) as uow:
            return uow.hosts.list()

    def get(self, ctx: CallContext, name: str) -> Host:
        """One host. :raises NotFoundError: unknown, or the caller may not read hosts (the
        same answer, so a name does not tell whether the host exists)."""
        with self._uow(readonly=True) as uow:
            host = uow.hosts.get(name)
        if host is None or not _can_read(ctx):
            error = NotFoundError(kind="host", ident=name)
            self._recorder.denial(ctx, "host:read", host_target(name), error, label=_label(host))
            raise error
        return host

    def gpus(self, ctx: CallContext, host: str | None = None) -> builtins.list[Gpu]:
        """GPUs (of one host, or all); last labels the caller is not cleared for are hidden."""
        self._check_reader(ctx, "gpu:list")
        with self._uow(readonly=True) as uow:
            found = uow.gpus.list(host)
        return [
            gpu
            if gpu.last_label is None or ctx.principal.cleared_for(gpu.last_label)
            else replace(gpu, last_label=None, last_tenant=None, enclave_id=None)
            for gpu in found
        ]

    # -- adding and rediscovering ------------------------------------------------------------

    def add(
        self,
        ctx: CallContext,
        *,
        name: str,
        uri: str,
        site: str,
        accreditation: Label,
        domain_type: str = "kvm",
    ) -> Host:
        """Register a hypervisor and its GPUs (all ``dirty`` until sanitized).

        The URI is checked (and made canonical) before anything connects to it; the host is
        recorded with the identity the hypervisor answers with.

        :raises InvalidInputError: bad domain type; an unknown site; a malformed or refused URI
            (never tried); a hypervisor that reports no host UUID.
        :raises PolicyDeniedError: not an operator or officer; over the API, an accreditation
            above the lowest level (that takes two officers).
        :raises ConflictError: a host with this name or URI exists, or one with the same
            hypervisor identity (the same machine under another spelling).
        :raises DependencyUnavailableError: the hypervisor cannot be reached.
        """
        with self._recorder.decision(ctx, "host:add", host_target(name)) as decision:
            if domain_type not in DOMAIN_TYPES:
                raise InvalidInputError(reason=f"domain_type must be one of {DOMAIN_TYPES}")
            if not _is_system(ctx):
                if not ctx.principal.roles & HOST_OPERATORS:
                    raise PolicyDeniedError(reason="adding hosts needs the operator role")
                if accreditation != self._scheme.lowest:
                    raise PolicyDeniedError(
                        reason=f"over the API hosts start at {self._scheme.lowest}; raising a "
                        "host's accreditation takes two officers"
                    )
            uri = self._hypervisor.check_uri(uri)
            with self._uow(readonly=True) as uow:
                # The host takes its site's country (checked again in the writing transaction).
                country = _site_country(uow, site)
            with self._uow(readonly=True) as uow:
                if uow.hosts.get(name) is not None or any(h.uri == uri for h in uow.hosts.list()):
                    raise ConflictError(reason=f"a host called {name!r} or at {uri} exists")
            facts = self._hypervisor.discover(uri)
            identity = facts.identity
            if identity.host_uuid is None:
                raise InvalidInputError(
                    reason=f"{uri} reports no host UUID, so it cannot be told apart from other "
                    "hosts; set host_uuid in its libvirtd.conf"
                )
            with self._uow(readonly=True) as uow:
                self._check_unique(uow, name, identity)
            now = self._clock()
            host = Host(
                id=uuid.uuid4(),
                name=name,
                uri=uri,
                site=site,
                accreditation=accreditation,
                domain_type=domain_type,
                vcpus=facts.cpus,
                memory_mib=facts.memory_mib,
                created_at=now,
                updated_at=now,
                host_uuid=identity.host_uuid,
                hostname=identity.hostname,
                country=country,
            )
            with self._uow() as uow:
                # Checked again in the writing transaction; the unique index settles a race.
                self._check_unique(uow, name, identity)
                host.country = _site_country(uow, site)
                uow.hosts.add(host)
                for gpu in facts.gpus:
                    uow.gpus.add(self._new_gpu(host, gpu, now))
                # The refusal of a new host carries no label; the host it adds carries its own.
                decision.allow(
                    uow,
                    label=accreditation,
                    details={
                        "uri": uri,
                        "host_uuid": identity.host_uuid,
                        "hostname": identity.hostname,
                        "site": site,
                        "country": host.country,
                        "accreditation": accreditation.to_dict(),
                        "hypervisor": facts.hypervisor_type,
                        "vcpus": facts.cpus,
                        "memory_mib": facts.memory_mib,
                        "gpus": [g.address for g in facts.gpus],
                    },
                )
                uow.commit()
        return host

    @staticmethod
    def _check_unique(uow: UnitOfWork, name: str, identity: HostIdentity) -> None:
        """:raises ConflictError: another host record is this hypervisor."""
        for other in uow.hosts.list():
            if other.name != name and other.host_uuid == identity.host_uuid:
                raise HostIdentityError(
                    reason=f"this hypervisor ({identity}) is registered already as host "
                    f"{other.name}; one machine has one host record"
                )

    @staticmethod
    def _new_gpu(host: Host, found: GpuDevice, now: datetime) -> Gpu:
        return Gpu(
            host=host.name,
            host_uuid=host.host_uuid,
            uuid=found.uuid,
            address=found.address,
            model=found.model,
            numa_node=found.numa_node,
            iommu_group=found.iommu_group,
            group_members=found.group_members,
            state="dirty",
            updated_at=now,
        )

    def discover(self, ctx: CallContext, name: str) -> Host:
        """Re-read the host's capacity and GPUs: new GPUs start dirty, vanished ones are
        quarantined. :raises NotFoundError:, DependencyUnavailableError:."""
        with self._recorder.decision(ctx, "host:discover", host_target(name)) as decision:
            if not _can_operate(ctx):
                raise PolicyDeniedError(reason="rediscovering hosts needs the operator role")
            with self._uow(readonly=True) as uow:
                host = uow.hosts.get(name)
            if host is None:
                raise NotFoundError(kind="host", ident=name)
            try:
                facts = self._hypervisor.discover(host.uri)
                _same_identity(host, facts.identity)
            except HostIdentityError as e:
                self._quarantine(ctx, host, e)
                raise
            with self._uow() as uow:
                host = uow.hosts.get(name, for_update=True)
                assert host is not None
                if host.host_uuid is None:
                    self._adopt_identity(uow, host, facts.identity)
                changes = self._apply_facts(uow, host, facts)
                decision.allow(uow, details=changes)
                uow.commit()
        return host

    def check_identity(self, ctx: CallContext, host: Host) -> bool:
        """Ask the hypervisor who it is and compare with the record (the hypervisor port also
        re-checks on every reconnection); a host that answers as another machine, or as one
        another record holds, is quarantined with the reason audited.

        A host recorded before identities were (no host UUID) gets the one it answers with.
        Returns whether the host may be used (False once it is quarantined for its identity).

        :raises DependencyUnavailableError: the hypervisor cannot be reached (try later).
        """
        try:
            found = self._hypervisor.identify(host.uri, host.identity())
            if host.host_uuid is None:
                with self._uow() as uow:
                    current = uow.hosts.get(host.name, for_update=True)
                    if current is None:
                        return False
                    self._adopt_identity(uow, current, found)
                    uow.hosts.update(current)
                    self._recorder.record(
                        uow,
                        ctx,
                        "host:identify",
                        host_target(host.name),
                        label=current.accreditation,
                        details={"host_uuid": found.host_uuid, "hostname": found.hostname},
                    )
                    uow.commit()
        except ConcurrentUpdateError:
            # Someone changed the record meanwhile: leave the host alone until the next pass.
            return False
        except (ConflictError, InvalidInputError) as e:
            # Another machine answers, another record is this machine, it reports no UUID, or
            # the URI policy refuses the recorded URI (nothing may connect to it).
            self._quarantine(ctx, host, e)
            return False
        return True

    def _adopt_identity(self, uow: UnitOfWork, host: Host, found: HostIdentity) -> None:
        """Record the identity of a host registered before identities were.

        :raises InvalidInputError: the hypervisor reports no host UUID.
        :raises HostIdentityError: another record is this hypervisor.
        """
        if found.host_uuid is None:
            raise InvalidInputError(
                reason=f"{host.uri} reports no host UUID; set host_uuid in its libvirtd.conf"
            )
        self._check_unique(uow, host.name, found)
        host.host_uuid, host.hostname = found.host_uuid, found.hostname
        for gpu in uow.gpus.list(host.name):
            if gpu.host_uuid is None:
                gpu.host_uuid = found.host_uuid
                uow.gpus.update(gpu, gpu.state)

    def _quarantine(self, ctx: CallContext, host: Host, error: SovereignError) -> None:
        """Quarantine ``host`` for ``error`` (audited), unless it is quarantined already."""
        if host.state == "quarantined" and host.reason == error.message:
            return
        self.set_state(ctx, host.name, "quarantined", error.message)

    def _apply_facts(self, uow: UnitOfWork, host: Host, facts: HostFacts) -> dict[str, Any]:
        now = self._clock()
        known = {gpu.address: gpu for gpu in uow.gpus.list(host.name)}
        found = {gpu.address: gpu for gpu in facts.gpus}
        added = sorted(found.keys() - known.keys())
        for address in added:
            uow.gpus.add(self._new_gpu(host, found[address], now))
        vanished = []
        for address in sorted(known.keys() - found.keys()):
            gpu = known[address]
            if gpu.state not in ("quarantined", "allocated"):
                before = gpu.state
                gpu.state = "quarantined"
                gpu.updated_at = now
                uow.gpus.update(gpu, before)
                vanished.append(address)
        host.vcpus, host.memory_mib, host.updated_at = facts.cpus, facts.memory_mib, now
        uow.hosts.update(host)
        return {"added": added, "quarantined": vanished, "vcpus": facts.cpus}

    # -- state -------------------------------------------------------------------------------

    def set_state(self, ctx: CallContext, name: str, state: HostStatus, reason: str) -> Host:
        """Drain or quarantine a host (operators, officers), or return it to service (officers
        cleared for its accreditation). Draining and quarantine stop new placements only."""
        with self._recorder.decision(ctx, f"host:{state}", host_target(name)) as decision:
            if not reason.strip() and state != "active":
                raise InvalidInputError(reason="a reason is required")
            with self._uow() as uow:
                # Visibility first, on a plain read: a caller who may not read hosts gets the
                # answer a missing host gets, and the row is never locked on their behalf.
                seen = uow.hosts.get(name)
                decision.label = _label(seen)
                if seen is None or not _can_read(ctx):
                    raise NotFoundError(kind="host", ident=name)
                host = uow.hosts.get(name, for_update=True)
                assert host is not None, "hosts are never deleted"
                if state == "active":
                    if not _is_system(ctx):
                        check_officer(ctx.principal, host.accreditation)
                elif not _can_operate(ctx):
                    raise PolicyDeniedError(
                        reason="draining or quarantining needs the operator role"
                    )
                before = host.state
                host.state, host.reason, host.updated_at = state, reason, self._clock()
                uow.hosts.update(host)
                decision.allow(
                    uow,
                    action=STATE_ACTIONS[state],
                    reason=reason,
                    label=host.accreditation,
                    details={"from": before, "to": state},
                )
                uow.commit()
        return host

    # -- accreditation (two officers) --------------------------------------------------------

    def propose_accreditation(
        self, ctx: CallContext, name: str, accreditation: Label, reason: str
    ) -> DualAction:
        """First officer proposes a new accreditation; a second one confirms it.

        The proposal is labelled with the join of the host's accreditation and the new one:
        both officers must be cleared for both, and only officers cleared for both see it.
        """
        if not reason.strip():
            raise InvalidInputError(reason="a reason is required")
        with self._uow(readonly=True) as uow:
            current = uow.hosts.get(name)
        label = self._scheme.join([accreditation, *([current.accreditation] if current else [])])

        def check(uow: UnitOfWork) -> None:
            host = uow.hosts.get(name)
            if host is None:
                raise NotFoundError(kind="host", ident=name)
            check_officer(ctx.principal, host.accreditation)

        return self._actions.propose(
            ctx,
            ActionKind.ACCREDIT_HOST,
            {"host": name, "accreditation": accreditation.to_dict()},
            label,
            reason,
            check=check,
        )

    # -- relocation (two officers) ------------------------------------------------------------

    def propose_relocation(self, ctx: CallContext, name: str, site: str, reason: str) -> DualAction:
        """First officer proposes moving a host to another site (and its country); a second
        one confirms it (carried out by :class:`RelocateHost`).

        The proposal carries the host's accreditation: both officers must be cleared for it.

        :raises InvalidInputError: no reason; an unknown site. :raises NotFoundError: no such
            host. :raises PolicyDeniedError: no officer, or not cleared for the host.
        :raises ConflictError: the host stands at that site already, or carries live enclaves
            (moving it would move their data across a border).
        """
        if not reason.strip():
            raise InvalidInputError(reason="a reason is required")
        with self._uow(readonly=True) as uow:
            current = uow.hosts.get(name)
        label = current.accreditation if current is not None else self._scheme.lowest

        def check(uow: UnitOfWork) -> None:
            host = uow.hosts.get(name)
            if host is None or not _can_read(ctx):
                raise NotFoundError(kind="host", ident=name)
            check_officer(ctx.principal, host.accreditation)
            _check_relocation(uow, host, site)

        return self._actions.propose(
            ctx, ActionKind.RELOCATE_HOST, {"host": name, "site": site}, label, reason, check=check
        )

    # -- returning a quarantined GPU (two officers) -------------------------------------------

    def propose_return(self, ctx: CallContext, host: str, address: str, reason: str) -> DualAction:
        """First officer proposes returning a quarantined GPU to service; a second one confirms
        it (the GPU then goes ``quarantined -> dirty`` and is handed over again).

        The proposal carries the GPU's last tenant's label (the lowest level where it had
        none): both officers must be cleared for it, and only officers cleared for it see it.

        :raises InvalidInputError: no reason. :raises NotFoundError: no such GPU, or the caller
            may not read hosts (the same answer). :raises PolicyDeniedError: no officer, or not
            cleared for the GPU's last label. :raises ConflictError: the GPU is not quarantined.
        """
        target = gpu_target(host, address)
        with self._recorder.decision(ctx, ActionKind.RETURN_GPU.value, target) as decision:
            if not reason.strip():
                raise InvalidInputError(reason="a reason is required")
            with self._uow(readonly=True) as uow:
                gpu = _find_gpu(uow, host, address)
            decision.label = gpu.last_label if gpu is not None else None
            if gpu is None or not _can_read(ctx):
                raise NotFoundError(kind="gpu", ident=f"{host}/{address}")
            if gpu.last_label is not None and not ctx.principal.cleared_for(gpu.last_label):
                # Without naming the label: the caller is not cleared to know it.
                raise PolicyDeniedError(
                    reason="returning this GPU needs clearance for its last tenant's label"
                )
        label = gpu.last_label or self._scheme.lowest

        def check(uow: UnitOfWork) -> None:
            found = _find_gpu(uow, host, address)
            if found is None:
                raise NotFoundError(kind="gpu", ident=f"{host}/{address}")
            if found.state != "quarantined":
                raise ConflictError(
                    reason=f"GPU {host}/{address} is {found.state}; only a quarantined GPU is "
                    "returned to service"
                )

        return self._actions.propose(
            ctx,
            ActionKind.RETURN_GPU,
            {"host": host, "address": address},
            label,
            reason,
            check=check,
        )


def _check_relocation(uow: UnitOfWork, host: Host, site: str) -> str:
    """The country ``host`` would move to at ``site``.

    :raises InvalidInputError: an unknown site. :raises ConflictError: the host is there
        already, or carries live enclaves.
    """
    country = _site_country(uow, site)
    if host.site == site:
        raise ConflictError(reason=f"host {host.name} stands at site {site} already")
    if uow.enclaves.list(host=host.name):
        raise ConflictError(
            reason=f"host {host.name} carries live enclaves; moving it would move their data "
            "across a border: terminate them (or wait until they end) first"
        )
    return country


class RelocateHost:
    """Carries out a confirmed two-person relocation of a host (the action service's executor
    for :attr:`~sovereign.domain.actions.ActionKind.RELOCATE_HOST`): the host takes the new
    site and its country. Refused while the host carries live enclaves."""

    def __init__(self, clock: Clock = utcnow) -> None:
        self._clock = clock

    def execute(self, uow: UnitOfWork, ctx: CallContext, action: DualAction) -> dict[str, Any]:
        """Move the host inside ``uow``; returns the notes (``from_site``, ``from_country``,
        ``to_site``, ``to_country``) that land in the ``action:confirm`` event.

        :raises NotFoundError: the host is gone. :raises PolicyDeniedError: not cleared for
            its accreditation. :raises InvalidInputError: the site is gone.
        :raises ConflictError: it carries live enclaves, or stands there already.
        """
        name, site = str(action.params["host"]), str(action.params["site"])
        host = uow.hosts.get(name, for_update=True)
        if host is None:
            raise NotFoundError(kind="host", ident=name)
        check_officer(ctx.principal, host.accreditation)
        country = _check_relocation(uow, host, site)
        notes = {
            "host": name,
            "from_site": host.site,
            "from_country": host.country,
            "to_site": site,
            "to_country": country,
        }
        host.site, host.country, host.updated_at = site, country, self._clock()
        uow.hosts.update(host)
        return notes

    def after_commit(self, ctx: CallContext, action: DualAction, details: dict[str, Any]) -> None:
        """Nothing is left to do once the host's record moved."""


def _find_gpu(uow: UnitOfWork, host: str, address: str) -> Gpu | None:
    """The GPU ``host``/``address``, if it exists."""
    return next((gpu for gpu in uow.gpus.list(host) if gpu.address == address), None)


class ReturnGpu:
    """Carries out a confirmed return of a quarantined GPU to service (the action service's
    executor for :attr:`~sovereign.domain.actions.ActionKind.RETURN_GPU`): ``quarantined ->
    dirty`` with the audit event ``gpu:returned`` on the GPU, so the reconciler hands it over
    again and nothing uses it before a clean certificate."""

    def __init__(self, uow_factory: UnitOfWorkFactory, clock: Clock = utcnow) -> None:
        self._clock = clock
        self._recorder = Recorder(uow_factory, clock)

    def execute(self, uow: UnitOfWork, ctx: CallContext, action: DualAction) -> dict[str, Any]:
        """Move the GPU inside ``uow``; returns the audit details.

        :raises NotFoundError: the GPU is gone. :raises ConflictError: it is no longer
            quarantined (or someone moved it meanwhile).
        """
        host, address = str(action.params["host"]), str(action.params["address"])
        gpu = _find_gpu(uow, host, address)
        if gpu is None:
            raise NotFoundError(kind="gpu", ident=f"{host}/{address}")
        if gpu.state != "quarantined":
            raise ConflictError(
                reason=f"GPU {host}/{address} is {gpu.state}, no longer quarantined"
            )
        gpu.move("dirty", self._clock())
        uow.gpus.update(gpu, "quarantined")
        details = {"host": host, "address": address, "from": "quarantined", "to": "dirty"}
        self._recorder.record(
            uow,
            ctx,
            "gpu:returned",
            gpu_target(host, address),
            Outcome.ALLOW,
            reason=action.reason,
            label=gpu.last_label,
            details={
                **details,
                "action": str(action.id),
                "proposer": action.proposer_name,
            },
        )
        return details

    def after_commit(self, ctx: CallContext, action: DualAction, details: dict[str, Any]) -> None:
        """Nothing is left to do: the reconciler picks the dirty GPU up."""


class AccreditHost:
    """Carries out a confirmed two-person accreditation of a host (the action service's
    executor for :attr:`~sovereign.domain.actions.ActionKind.ACCREDIT_HOST`).

    The confirming officer must be cleared for the host's current accreditation, and a host
    still carrying enclaves the new accreditation does not dominate keeps its old one.
    """

    def __init__(self, scheme: LabelScheme, clock: Clock = utcnow) -> None:
        self._scheme = scheme
        self._clock = clock

    def execute(self, uow: UnitOfWork, ctx: CallContext, action: DualAction) -> dict[str, Any]:
        """Set the new accreditation inside ``uow``; returns the audit details.

        :raises NotFoundError: the host is gone. :raises PolicyDeniedError: not cleared for
            its accreditation. :raises ConflictError: it carries enclaves above the new one.
        """
        name = action.params["host"]
        new = self._scheme.parse(action.params["accreditation"])
        host = uow.hosts.get(name, for_update=True)
        if host is None:
            raise NotFoundError(kind="host", ident=name)
        check_officer(ctx.principal, host.accreditation)
        carried = {str(e.label): e.label for e in uow.enclaves.list(host=name)}
        above = sorted(text for text, label in carried.items() if not new.dominates(label))
        if above:
            raise ConflictError(
                reason=f"host {name} carries {', '.join(above)} enclaves that {new} does not "
                "dominate; terminate them first"
            )
        before = host.accreditation
        host.accreditation, host.updated_at = new, self._clock()
        uow.hosts.update(host)
        return {"host": name, "from": before.to_dict(), "to": new.to_dict()}

    def after_commit(self, ctx: CallContext, action: DualAction, details: dict[str, Any]) -> None:
        """Nothing is left to do once the accreditation committed."""
