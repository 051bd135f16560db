"""REST API v1, the fleet: sites, hosts, GPUs, enclaves, placement previews, two-person actions
and the kill switch. Thin views on the same ``api`` registry as :mod:`sovereign.api.v1`.

Owns those endpoints. As everywhere in the API, views hold no policy and catch no domain
errors: the services decide and audit, the problem table answers.
"""

from __future__ import annotations

import uuid

from sovereign.api import fleet_schemas as f
from sovereign.api.routing import TEXT, Json, encode
from sovereign.api.v1 import api
from sovereign.app_context import services
from sovereign.services.ports import RequestFilter
from sovereign.services.recording import CallContext

HOST_READERS = "security officers, operators and auditors"


@api.route(
    "GET", "/hosts", summary="List hosts", tag="hosts", response=f.HostList, roles=HOST_READERS
)
def list_hosts(ctx: CallContext) -> f.HostList:
    """Every hypervisor with its accreditation, state and capacity."""
    return f.HostList(items=[f.HostOut.of(h) for h in services().hosts.list(ctx)])


@api.route(
    "POST",
    "/hosts",
    summary="Register a host",
    tag="hosts",
    body=f.HostCreate,
    response=f.HostOut,
    status=201,
    roles="operators and officers; the host starts at the lowest accreditation",
)
def add_host(ctx: CallContext, body: f.HostCreate) -> f.HostOut:
    """Discover the host's GPUs (they start dirty and are sanitized before first use)."""
    host = services().hosts.add(
        ctx,
        name=body.name,
        uri=body.uri,
        site=body.site,
        accreditation=services().scheme.lowest,
        domain_type=body.domain_type,
    )
    return f.HostOut.of(host)


@api.route(
    "GET",
    "/hosts/<name>",
    summary="Get one host",
    tag="hosts",
    response=f.HostOut,
    roles=HOST_READERS,
)
def get_host(ctx: CallContext, name: str) -> f.HostOut:
    """One host."""
    return f.HostOut.of(services().hosts.get(ctx, name))


@api.route(
    "POST",
    "/hosts/<name>/discover",
    summary="Rediscover a host's GPUs",
    tag="hosts",
    response=f.HostOut,
    roles="operators and officers",
)
def discover_host(ctx: CallContext, name: str) -> f.HostOut:
    """New GPUs start dirty; GPUs that vanished are quarantined."""
    return f.HostOut.of(services().hosts.discover(ctx, name))


@api.route(
    "POST",
    "/hosts/<name>/state",
    summary="Drain, quarantine or reactivate a host",
    tag="hosts",
    body=f.HostStateIn,
    response=f.HostOut,
    roles="operators and officers drain and quarantine; officers cleared for the host reactivate",
)
def set_host_state(ctx: CallContext, name: str, body: f.HostStateIn) -> f.HostOut:
    """Draining and quarantine stop new placements; running enclaves stay until ended."""
    return f.HostOut.of(services().hosts.set_state(ctx, name, body.state, body.reason))


@api.route(
    "POST",
    "/hosts/<name>/accreditation",
    summary="Propose a new accreditation",
    tag="hosts",
    body=f.AccreditationIn,
    response=f.ActionOut,
    status=202,
    roles="security officers; a second officer confirms with POST /actions/{id}/confirm",
)
def propose_accreditation(ctx: CallContext, name: str, body: f.AccreditationIn) -> f.ActionOut:
    """Two officers change a host's accreditation, like a classified approval."""
    label = services().scheme.parse(body.accreditation.model_dump())
    return f.ActionOut.of(services().hosts.propose_accreditation(ctx, name, label, body.reason))


@api.route(
    "POST",
    "/hosts/<name>/relocation",
    summary="Propose moving a host to another site",
    tag="hosts",
    body=f.RelocationIn,
    response=f.ActionOut,
    status=202,
    roles="security officers; a second officer confirms with POST /actions/{id}/confirm",
)
def propose_relocation(ctx: CallContext, name: str, body: f.RelocationIn) -> f.ActionOut:
    """Two officers move a host to another site and its country; refused (409) while the host
    carries live enclaves, whose data would cross a border with it."""
    return f.ActionOut.of(services().hosts.propose_relocation(ctx, name, body.site, body.reason))


@api.route(
    "GET", "/sites", summary="List sites", tag="sites", response=f.SiteList, roles=HOST_READERS
)
def list_sites(ctx: CallContext) -> f.SiteList:
    """Every site hosts may stand in, with its country and operator."""
    return f.SiteList(items=[f.SiteOut.of(site) for site in services().sites.list(ctx)])


@api.route(
    "POST",
    "/sites",
    summary="Record a site",
    tag="sites",
    body=f.SiteCreate,
    response=f.SiteOut,
    status=201,
    roles="operators and officers",
)
def add_site(ctx: CallContext, body: f.SiteCreate) -> f.SiteOut:
    """A site in one country (ISO 3166-1 alpha-2); hosts registered there take its country."""
    site = services().sites.add(ctx, name=body.name, country=body.country, operator=body.operator)
    return f.SiteOut.of(site)


@api.route(
    "GET",
    "/gpus",
    summary="List GPUs",
    tag="hosts",
    query=f.GpuQuery,
    response=f.GpuList,
    roles=HOST_READERS,
)
def list_gpus(ctx: CallContext, query: f.GpuQuery) -> f.GpuList:
    """Every GPU with its state; the last tenant's label only if you are cleared for it."""
    return f.GpuList(items=[f.GpuOut.of(g) for g in services().hosts.gpus(ctx, query.host)])


@api.route(
    "GET",
    "/gpus/<host>/<pci:address>/certificates",
    summary="A GPU's hand-over certificates",
    tag="hosts",
    query=f.CertificateQuery,
    response=f.CertificateList,
    roles="security officers and auditors, up to their clearance of each certificate's "
    "previous label",
)
def list_certificates(
    ctx: CallContext, host: str, address: str, query: f.CertificateQuery
) -> f.CertificateList:
    """Newest first: each hand-over (reset, scrub, verify) of the GPU and its verdict, with the
    sequence number of its ``gpu:handover`` event, whose inclusion proof proves it."""
    page = services().certificates.list(
        ctx,
        host,
        address,
        limit=query.limit,
        before=int(query.cursor) if query.cursor else None,
    )
    return f.CertificateList(
        items=[f.CertificateOut.of(c) for c in page.items], next_cursor=page.next_cursor
    )


@api.route(
    "POST",
    "/gpus/<host>/<pci:address>/return",
    summary="Propose returning a quarantined GPU to service",
    tag="hosts",
    body=f.GpuReturnIn,
    response=f.ActionOut,
    status=202,
    roles="security officers cleared for the GPU's last label; a second officer confirms with "
    "POST /actions/{id}/confirm",
)
def propose_gpu_return(
    ctx: CallContext, host: str, address: str, body: f.GpuReturnIn
) -> f.ActionOut:
    """Once confirmed the GPU goes quarantined -> dirty, so it is handed over again."""
    return f.ActionOut.of(services().hosts.propose_return(ctx, host, address, body.reason))


@api.route(
    "GET",
    "/enclaves",
    summary="List enclaves",
    tag="enclaves",
    query=f.EnclaveQuery,
    response=f.EnclaveList,
    roles="analysts (their tenants), officers and auditors; up to your clearance",
)
def list_enclaves(ctx: CallContext, query: f.EnclaveQuery) -> Json:
    """Approved requests and their enclaves, newest first (from the read model: an
    ``EnclaveList``)."""
    page = services().enclaves.page(
        ctx,
        RequestFilter(
            state=query.state, tenant=query.tenant, limit=query.limit, cursor=query.cursor
        ),
    )
    return encode({"items": page.items, "next_cursor": page.next_cursor})


@api.route(
    "GET",
    "/enclaves/<uuid:enclave_id>",
    summary="Get one enclave",
    tag="enclaves",
    response=f.EnclaveOut,
    roles="whoever may see its request; others get 404",
)
def get_enclave(ctx: CallContext, enclave_id: uuid.UUID) -> f.EnclaveOut:
    """Where it runs, its GPUs, its lease and how far provisioning got."""
    return f.EnclaveOut.of(services().enclaves.get(ctx, enclave_id), services().policy)


@api.route(
    "GET",
    "/enclaves/<uuid:enclave_id>/console",
    summary="Serial console tail",
    tag="enclaves",
    response=None,
    media_type=TEXT,
    roles="its requester and officers cleared for it",
)
def enclave_console(ctx: CallContext, enclave_id: uuid.UUID) -> str:
    """The last 8 KiB of the enclave's serial console log (text/plain)."""
    return services().enclaves.console(ctx, enclave_id)


@api.route(
    "POST",
    "/enclaves/<uuid:enclave_id>/terminate",
    summary="Terminate an enclave",
    tag="enclaves",
    body=f.TerminateIn,
    body_optional=True,
    response=f.EnclaveOut,
    roles="its requester, or an officer cleared for it",
)
def terminate_enclave(ctx: CallContext, enclave_id: uuid.UUID, body: f.TerminateIn) -> f.EnclaveOut:
    """The reconciler destroys the domain, volume, secrets and keys; its GPUs go dirty."""
    services().enclaves.terminate(ctx, enclave_id, body.reason)
    return f.EnclaveOut.of(services().enclaves.get(ctx, enclave_id), services().policy)


@api.route(
    "GET",
    "/requests/<uuid:request_id>/placement",
    summary="Placement preview",
    tag="requests",
    response=f.PlacementOut,
    roles="security officers cleared for the request",
)
def placement_preview(ctx: CallContext, request_id: uuid.UUID) -> f.PlacementOut:
    """Which host would take the request now, and why every other host would not."""
    return f.placement_out(services().enclaves.preview(ctx, request_id))


@api.route(
    "POST",
    "/kill-switch",
    summary="Terminate every enclave of a label or tenant",
    tag="enclaves",
    body=f.KillSwitchIn,
    response=f.KillOut,
    roles="security officers; at or above the two-person level a second officer confirms",
)
def kill_switch(ctx: CallContext, body: f.KillSwitchIn) -> f.KillOut:
    """Ends them and crypto-erases their keys at once, or returns the pending proposal."""
    label = services().scheme.parse(body.label.model_dump()) if body.label else None
    result = services().enclaves.kill_switch(
        ctx, label=label, tenant=body.tenant, reason=body.reason
    )
    return f.KillOut.of(result)


@api.route(
    "GET",
    "/actions",
    summary="Pending two-person actions",
    tag="actions",
    response=f.ActionList,
    roles="security officers, up to their clearance",
)
def list_actions(ctx: CallContext) -> f.ActionList:
    """Proposals waiting for a second officer."""
    return f.ActionList(items=[f.ActionOut.of(a) for a in services().actions.list(ctx)])


@api.route(
    "POST",
    "/actions/<uuid:action_id>/confirm",
    summary="Confirm a two-person action",
    tag="actions",
    response=f.ActionOut,
    roles="a security officer other than the proposer, cleared for its label",
)
def confirm_action(ctx: CallContext, action_id: uuid.UUID) -> f.ActionOut:
    """Carries the action out in the same transaction as the confirmation."""
    return f.ActionOut.of(services().actions.confirm(ctx, action_id))
