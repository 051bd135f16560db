"""Isolation-aware placement: which host and which GPUs an enclave gets, and why not the others.

Owns :func:`place`, a pure function from a :class:`PlacementRequest` and a snapshot of the fleet
(:class:`HostState` with the GPU records, :class:`~sovereign.domain.fleet.Gpu`, which it reads
and never changes) to a :class:`Placement`, and :func:`apply`, which
returns the fleet as it is after a placement (for simulations, property tests and benchmarks).
Rules, checked per host in this order; the first one a host breaks is its reason:

1. the host is ``active`` (not ``draining`` or ``quarantined``);
1a. its country is one the request may run in (data residency: the tenant's countries, or the
   request's narrowing of them, or the one country the enclave was pinned to at approval);
2. its accreditation dominates the request's label (isolation rule 1);
3. it carries no enclave of a different label (hosts are dedicated per label);
4. classified and civilian enclaves never share a host;
5. it has enough ``free`` GPUs of the requested model, taken as whole IOMMU groups: a GPU whose
   group holds a GPU that is not free, or whose group would be split, is not usable; a GPU
   without an IOMMU group cannot be passed through at all. ``dirty``, ``sanitizing`` and
   ``quarantined`` GPUs are never allocated (isolation rule 2);
6. it has enough free vCPUs and memory.

Among the hosts that pass, the choice is deterministic: hosts already carrying the same label
first, then the fewest usable GPUs of the model that still fit (bin packing, keeping large hosts
whole for large requests), then the host name. On the chosen host the GPUs come from one NUMA
node when possible. This module must not read the database or talk to hypervisors: callers pass
a snapshot and persist the result (claiming the GPUs in the same transaction).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from sovereign.domain.labels import Label

if TYPE_CHECKING:
    # The control plane's record of a GPU; fleet builds snapshots from its records and imports
    # this module, so the name is only needed for typing.
    from sovereign.domain.fleet import Gpu

HostStatus = Literal["active", "draining", "quarantined"]
GpuStatus = Literal["free", "allocated", "dirty", "sanitizing", "quarantined"]

#: The reason given for a host that fits but lost the deterministic tie-break.
PREFERRED_ELSEWHERE = "fits, but another host was preferred (same label, tighter fit, or name)"


@dataclass(frozen=True)
class PlacementRequest:
    """What an approved enclave needs from a host."""

    label: Label
    #: Whether the requesting tenant is classified (False: civilian).
    classified: bool
    gpus: int
    #: The GPU model (``H100-SXM5-80GB``); None accepts any model, all GPUs of one model.
    gpu_model: str | None
    vcpus: int
    memory_mib: int
    #: The countries the enclave may run in (ISO 3166-1 alpha-2); None accepts any country.
    countries: frozenset[str] | None = None
    #: The requesting tenant's name (named in the residency rule's reason).
    tenant: str = ""


_Unit = tuple[int | None, tuple[str, ...]]


@dataclass(frozen=True)
class _ModelPool:
    """The usable GPUs of one model on one host, as whole IOMMU groups."""

    #: Usable GPUs: free, in a group whose every GPU is free and of this model.
    usable: int
    #: Free GPUs of this model held back because of their IOMMU group.
    held_back: int
    #: Bit ``n`` set when some set of whole groups holds exactly ``n`` GPUs.
    sums: int
    #: Usable groups as (NUMA node, or None when mixed or unknown; sorted GPU addresses).
    #: None when every group holds one GPU: the groups are then built from ``singles`` only
    #: for the chosen host, which keeps evaluating a fresh fleet cheap.
    units: tuple[_Unit, ...] | None
    singles: tuple[Gpu, ...] = ()

    def groups(self) -> list[_Unit]:
        """The usable groups, sorted by their first address."""
        if self.units is not None:
            return list(self.units)
        return sorted(((gpu.numa_node, (gpu.address,)) for gpu in self.singles), key=_first)


def _first(unit: _Unit) -> tuple[str, ...]:
    """Sort key of a unit: its addresses."""
    return unit[1]


@dataclass(frozen=True)
class HostState:
    """One host of the fleet as the control plane last recorded it."""

    name: str
    accreditation: Label
    state: HostStatus
    #: ``str(label)`` of every enclave the host carries (at most one when rules held).
    labels_present: frozenset[str]
    #: Whether the host's enclaves are classified; None when it carries none.
    classified_present: bool | None
    free_vcpus: int
    free_memory_mib: int
    gpus: tuple[Gpu, ...] = ()
    #: The host's country (ISO 3166-1 alpha-2; empty when unknown).
    country: str = ""
    #: Derived from ``gpus`` on first use; not a field of the state (not compared or copied).
    _pool_cache: dict[str, _ModelPool] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    @property
    def _pools(self) -> dict[str, _ModelPool]:
        """Usable GPUs per model (derived from the frozen fields, computed once per state)."""
        pools = self._pool_cache
        if pools is None:
            pools = _model_pools(self.gpus)
            # A cache of a pure function of frozen fields: setting it does not change the state.
            object.__setattr__(self, "_pool_cache", pools)
        return pools


def _iommu_units(gpus: Sequence[Gpu]) -> list[list[Gpu]]:
    """Group the host's GPUs that must travel together (same IOMMU group), by address."""
    parent = {gpu.address: gpu.address for gpu in gpus}

    def root(address: str) -> str:
        while parent[address] != address:
            address = parent[address]
        return address

    by_group: dict[int, str] = {}
    for gpu in gpus:
        if gpu.iommu_group is not None:
            first = by_group.setdefault(gpu.iommu_group, gpu.address)
            parent[root(gpu.address)] = root(first)
        # A member listed by address is in the group even if the numbers disagree.
        for member in gpu.group_members:
            if member in parent:
                parent[root(member)] = root(gpu.address)
    units: dict[str, list[Gpu]] = {}
    for gpu in sorted(gpus, key=lambda g: g.address):
        units.setdefault(root(gpu.address), []).append(gpu)
    return sorted(units.values(), key=lambda unit: unit[0].address)


def _singleton_pools(gpus: Sequence[Gpu]) -> dict[str, _ModelPool] | None:
    """The pools when every GPU is alone in its IOMMU group (the common case), else None."""
    addresses: set[str] | None = None
    groups: set[int] = set()
    free: dict[str, list[Gpu]] = {}
    for gpu in gpus:
        group = gpu.iommu_group
        if group is None or group in groups:
            return None
        groups.add(group)
        if len(gpu.group_members) > 1:
            if addresses is None:
                addresses = {gpu.address for gpu in gpus}
            if any(member in addresses and member != gpu.address for member in gpu.group_members):
                return None
        if gpu.state == "free":
            found = free.get(gpu.model)
            if found is None:
                free[gpu.model] = [gpu]
            else:
                found.append(gpu)
    # Groups of one GPU make every count up to the total.
    return {
        model: _ModelPool(len(found), 0, (1 << (len(found) + 1)) - 1, None, tuple(found))
        for model, found in free.items()
    }


def _model_pools(gpus: Sequence[Gpu]) -> dict[str, _ModelPool]:
    """Compute :class:`_ModelPool` for every model with at least one free GPU."""
    simple = _singleton_pools(gpus)
    if simple is not None:
        return simple
    usable: dict[str, int] = {}
    held: dict[str, int] = {}
    sums: dict[str, int] = {}
    units: dict[str, list[_Unit]] = {}
    for unit in _iommu_units(gpus):
        models = {gpu.model for gpu in unit}
        ok = (
            len(models) == 1
            and all(gpu.state == "free" for gpu in unit)
            and all(gpu.iommu_group is not None for gpu in unit)
        )
        if not ok:
            for gpu in unit:
                if gpu.state == "free":
                    held[gpu.model] = held.get(gpu.model, 0) + 1
            continue
        model = unit[0].model
        nodes = {gpu.numa_node for gpu in unit}
        node = next(iter(nodes)) if len(nodes) == 1 else None
        usable[model] = usable.get(model, 0) + len(unit)
        mask = sums.get(model, 1)
        sums[model] = mask | (mask << len(unit))
        units.setdefault(model, []).append((node, tuple(gpu.address for gpu in unit)))
    return {
        model: _ModelPool(
            usable=usable.get(model, 0),
            held_back=held.get(model, 0),
            sums=sums.get(model, 1),
            units=tuple(units.get(model, ())),
        )
        for model in sorted(usable.keys() | held.keys())
    }


@dataclass(frozen=True)
class Placement:
    """The chosen host and GPUs, or none, with the reason every other host was rejected."""

    host: str | None
    gpus: tuple[str, ...] = ()
    #: Host name -> why it was not chosen (every rejected host has one).
    reasons: dict[str, str] = field(default_factory=dict)
    #: The GPU model allocated (None when no GPU was asked for or nothing fits).
    gpu_model: str | None = None

    @property
    def ok(self) -> bool:
        """Whether a host was found."""
        return self.host is not None

    def explain(self) -> str:
        """One line per rejected host, sorted by name, for an officer or an error message."""
        return "\n".join(f"{name}: {reason}" for name, reason in sorted(self.reasons.items()))


def _gpu_fit(pools: dict[str, _ModelPool], request: PlacementRequest) -> tuple[str, int] | str:
    """The (model, usable count) that fits the request best, or the reason nothing fits."""
    wanted = request.gpus
    if request.gpu_model is not None:
        candidates = [(request.gpu_model, pools.get(request.gpu_model))]
        name = request.gpu_model
    else:
        candidates = list(pools.items())
        name = "GPUs of any single"
    best: tuple[str, int] | None = None
    most = 0
    held = 0
    for model, pool in candidates:
        if pool is None:
            continue
        # Tightest model first, then its name, whatever order the host lists its GPUs in.
        if (pool.sums >> wanted) & 1 and (
            best is None or (pool.usable, model) < (best[1], best[0])
        ):
            best = (model, pool.usable)
        if pool.usable >= most:
            most, held = pool.usable, pool.held_back
    if best is not None:
        return best
    label = f"{name} GPUs" if request.gpu_model is not None else f"{name} model"
    if most >= wanted:
        return f"{most} free {label} cannot make {wanted} without splitting an IOMMU group"
    extra = f" ({held} more held back by their IOMMU group)" if held else ""
    return f"only {most} free {label}, {wanted} needed{extra}"


def _isolation_reason(host: HostState, request: PlacementRequest, label: str) -> str | None:
    """Why ``host`` may not carry the request's label at all (rules 1-4), or None."""
    if host.state != "active":
        return host.state
    if request.countries is not None and host.country not in request.countries:
        return f"country {host.country or '(unknown)'} not allowed for tenant {request.tenant}"
    if not host.accreditation.dominates(request.label):
        return f"accreditation {host.accreditation} does not dominate {label}"
    present = host.labels_present
    if present and (len(present) > 1 or label not in present):
        return _dedicated(present)
    if host.classified_present is not None and host.classified_present != request.classified:
        kind = "classified" if host.classified_present else "civilian"
        return f"carries {kind} enclaves; classified and civilian never share a host"
    return None


def _dedicated(carried: frozenset[str]) -> str:
    """The reason of rule 3, naming the labels the host carries."""
    return f"carries {', '.join(sorted(carried))} enclaves; dedicated per label"


#: The reason of rule 3 for a reader not cleared for every label the host carries.
DEDICATED_ELSEWHERE = "carries enclaves of another label; dedicated per label"


def named_labels(placement: Placement, fleet: Sequence[HostState]) -> frozenset[str]:
    """The labels of other enclaves that ``placement``'s reasons name (rule 3), as ``str``."""
    return frozenset().union(
        *(
            host.labels_present
            for host in fleet
            if host.labels_present
            and placement.reasons.get(host.name) == _dedicated(host.labels_present)
        )
    )


def as_seen_by(
    placement: Placement, fleet: Sequence[HostState], cleared: Callable[[str], bool]
) -> Placement:
    """``placement`` with every reason that names a label ``cleared`` refuses replaced by
    :data:`DEDICATED_ELSEWHERE`, which names none: what a reader below those labels is shown."""
    reasons = dict(placement.reasons)
    for host in fleet:
        carried = host.labels_present
        if (
            carried
            and reasons.get(host.name) == _dedicated(carried)
            and not all(cleared(text) for text in carried)
        ):
            reasons[host.name] = DEDICATED_ELSEWHERE
    return replace(placement, reasons=reasons)


def _reject(host: HostState, request: PlacementRequest, label: str) -> str | tuple[str, int]:
    """The reason ``host`` cannot take the request, or the (model, usable GPUs) it offers."""
    reason = _isolation_reason(host, request, label)
    if reason is not None:
        return reason
    fit: tuple[str, int] | str = ("", 0)
    if request.gpus > 0:
        fit = _gpu_fit(host._pools, request)
        if isinstance(fit, str):
            return fit
    if host.free_vcpus < request.vcpus:
        return f"only {host.free_vcpus} free vCPUs, {request.vcpus} needed"
    if host.free_memory_mib < request.memory_mib:
        return f"only {host.free_memory_mib} MiB free memory, {request.memory_mib} MiB needed"
    return fit


def _pick_units(units: Sequence[_Unit], wanted: int) -> tuple[str, ...] | None:
    """The first combination of whole units (in the given order) holding exactly ``wanted``."""
    # Hosts have a handful of groups, almost all of one GPU: a depth-first search is enough.
    chosen: list[tuple[str, ...]] = []

    def search(start: int, left: int) -> bool:
        if left == 0:
            return True
        for index in range(start, len(units)):
            size = len(units[index][1])
            if size <= left:
                chosen.append(units[index][1])
                if search(index + 1, left - size):
                    return True
                chosen.pop()
        return False

    if not search(0, wanted):
        return None
    return tuple(sorted(itertools.chain.from_iterable(chosen)))


def _choose_gpus(pool: _ModelPool, wanted: int) -> tuple[str, ...]:
    """Pick ``wanted`` GPUs as whole groups, from one NUMA node when possible."""
    groups = pool.groups()
    by_node: dict[int, list[_Unit]] = {}
    for unit in groups:
        if unit[0] is not None:
            by_node.setdefault(unit[0], []).append(unit)
    # Bin packing inside the host too: the fullest node that still fits keeps others whole.
    for _size, _node, units in sorted(
        (sum(len(u[1]) for u in units), node, units) for node, units in by_node.items()
    ):
        picked = _pick_units(units, wanted)
        if picked is not None:
            return picked
    # Spread over nodes: walk the units node by node so the GPUs stay as close as they can.
    ordered = sorted(groups, key=lambda u: (u[0] is None, u[0] or 0, u[1]))
    picked = _pick_units(ordered, wanted)
    # _gpu_fit checked that some combination exists.
    assert picked is not None
    return picked


def place(request: PlacementRequest, fleet: Sequence[HostState]) -> Placement:
    """Choose a host and GPUs for ``request``, or explain why no host of ``fleet`` fits."""
    label = str(request.label)
    reasons: dict[str, str] = {}
    best: tuple[int, int, str] | None = None
    best_host: HostState | None = None
    best_model = ""
    for host in fleet:
        verdict = _reject(host, request, label)
        if isinstance(verdict, str):
            reasons[host.name] = verdict
            continue
        model, usable = verdict
        key = (0 if label in host.labels_present else 1, usable, host.name)
        if best is None or key < best:
            if best_host is not None:
                reasons[best_host.name] = PREFERRED_ELSEWHERE
            best, best_host, best_model = key, host, model
        else:
            reasons[host.name] = PREFERRED_ELSEWHERE
    if best_host is None:
        return Placement(host=None, reasons=reasons)
    if request.gpus == 0:
        return Placement(host=best_host.name, reasons=reasons)
    gpus = _choose_gpus(best_host._pools[best_model], request.gpus)
    return Placement(host=best_host.name, gpus=gpus, reasons=reasons, gpu_model=best_model)


def apply(
    placement: Placement, request: PlacementRequest, fleet: Sequence[HostState]
) -> list[HostState]:
    """Return ``fleet`` after ``placement``: GPUs allocated, capacity taken, label recorded.

    A placement that found no host leaves the fleet as it was.

    :raises ValueError: if the placement names a host or GPU that ``fleet`` does not have.
    """
    if placement.host is None:
        return list(fleet)
    result = []
    found = False
    for host in fleet:
        if host.name != placement.host:
            result.append(host)
            continue
        found = True
        chosen = set(placement.gpus)
        missing = chosen - {gpu.address for gpu in host.gpus}
        if missing:
            raise ValueError(f"host {host.name} has no GPU {', '.join(sorted(missing))}")
        gpus = tuple(
            replace(gpu, state="allocated") if gpu.address in chosen else gpu for gpu in host.gpus
        )
        result.append(
            replace(
                host,
                labels_present=host.labels_present | {str(request.label)},
                classified_present=request.classified,
                free_vcpus=host.free_vcpus - request.vcpus,
                free_memory_mib=host.free_memory_mib - request.memory_mib,
                gpus=gpus,
            )
        )
    if not found:
        raise ValueError(f"placement names unknown host {placement.host}")
    return result
