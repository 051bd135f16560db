"""The ports the services depend on, as ``typing.Protocol``.

Owns the interfaces of the repositories (jobs, datasets and sealed blobs among them), the unit
of work, the read model of the listings (:class:`ReadModel`), the identity provider, the
enclaves' agents (:class:`Workloads`, :class:`AgentSession`),
the GPU sanitizer (:class:`Sanitizer`, with :class:`HandoverRequest` and
:class:`HandoverEvidence`) and the readiness probes, and the values that cross them (with
:func:`plan_for`, which reads one).
Real backends live in :mod:`sovereign.adapters`, in-memory ones for unit tests in
:mod:`sovereign.adapters.memory`; a contract test runs each port against all of them.
"""

from __future__ import annotations

import builtins
import uuid
from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Generic, Protocol, Self, TypeVar

from audit import AuditQuery, AuditStore, StoredEvent
from enclaves.inventory import GpuDevice
from enclaves.plan import EnclavePlan as HostPlan
from enclaves.plan import PlanImage
from enclaves.steps import ProvisionStep, TeardownStep
from sovereign.domain.actions import ActionState, DualAction
from sovereign.domain.fleet import Enclave, Gpu, Host, HostIdentity
from sovereign.domain.identity import Principal
from sovereign.domain.jobs import (
    AgentHello,
    AgentJobStatus,
    Blob,
    BlobKind,
    Dataset,
    Job,
    OutputFile,
)
from sovereign.domain.keys import EnclaveKeys, EnclaveSecrets, KeyRef, WrappedSecret
from sovereign.domain.placement import GpuStatus
from sovereign.domain.policy import Visibility
from sovereign.domain.requests import EnclaveRequest, RequestState
from sovereign.domain.sites import Site
from sovereign.domain.tenants import Image, Resources, Tenant


@dataclass(frozen=True)
class RequestFilter:
    """What to list: optional state and tenant, a page size and a cursor from the last page."""

    state: RequestState | None = None
    tenant: str | None = None
    limit: int = 50
    cursor: str | None = None


T = TypeVar("T")


@dataclass(frozen=True)
class Page(Generic[T]):
    """One page of results and the cursor of the next (None on the last page)."""

    items: list[T]
    next_cursor: str | None


class TenantRepository(Protocol):
    """Tenants by unique name."""

    def get(self, name: str, *, for_update: bool = False) -> Tenant | None:
        """The tenant called ``name``, or None; ``for_update`` locks it until commit."""
        ...

    def list(self) -> list[Tenant]:
        """All tenants, by name."""
        ...

    def add(self, tenant: Tenant) -> None:
        """Store a new tenant."""
        ...


class ImageRepository(Protocol):
    """The approved image catalog."""

    def get(self, name: str) -> Image | None:
        """The image called ``name``, or None."""
        ...

    def list(self) -> list[Image]:
        """All images, by name."""
        ...

    def add(self, image: Image) -> None:
        """Store a new image."""
        ...


class RequestRepository(Protocol):
    """Enclave requests with their approvals."""

    def add(self, request: EnclaveRequest) -> None:
        """Store a new request."""
        ...

    def get(self, request_id: uuid.UUID, *, for_update: bool = False) -> EnclaveRequest | None:
        """The request, or None; ``for_update`` locks its row until the transaction ends."""
        ...

    def update(self, request: EnclaveRequest) -> None:
        """Store changes and new approvals.

        :raises ConcurrentUpdateError: if the row changed since it was read.
        """
        ...

    def list(self, visibility: Visibility, query: RequestFilter) -> Page[EnclaveRequest]:
        """Requests ``visibility`` allows, newest first. :raises InvalidInputError: bad cursor."""
        ...

    def committed_usage(self, tenant: str) -> Resources:
        """Resources held by the tenant's requests in committed states."""
        ...


class KeyRepository(Protocol):
    """Key references per enclave (never key material)."""

    def add(self, keys: EnclaveKeys) -> None:
        """Store an enclave's key references."""
        ...

    def get(self, request_id: uuid.UUID) -> EnclaveKeys | None:
        """The key references of an enclave, or None."""
        ...

    def update(self, keys: EnclaveKeys) -> None:
        """Store changed references (rotation, destruction)."""
        ...


class SiteRepository(Protocol):
    """Sites by unique name (never deleted)."""

    def add(self, site: Site) -> None:
        """Store a new site. :raises ConcurrentUpdateError: one of that name exists."""
        ...

    def get(self, name: str) -> Site | None:
        """The site called ``name``, or None."""
        ...

    def list(self) -> list[Site]:
        """All sites, by name."""
        ...


class HostRepository(Protocol):
    """Hypervisor hosts by unique name."""

    def add(self, host: Host) -> None:
        """Store a new host."""
        ...

    def get(self, name: str, *, for_update: bool = False) -> Host | None:
        """The host called ``name``, or None."""
        ...

    def list(self) -> list[Host]:
        """All hosts, by name."""
        ...

    def lock_all(self) -> None:
        """Serialise placements until the transaction ends."""
        ...

    def update(self, host: Host) -> None:
        """Store changes. :raises ConcurrentUpdateError: if it changed since it was read."""
        ...


class GpuRepository(Protocol):
    """Whole GPUs of the hosts."""

    def add(self, gpu: Gpu) -> None:
        """Store a newly discovered GPU."""
        ...

    def list(self, host: str | None = None) -> list[Gpu]:
        """GPUs of one host, or all, by host and address."""
        ...

    def for_enclave(self, enclave_id: uuid.UUID) -> builtins.list[Gpu]:
        """GPUs that name the enclave."""
        ...

    def update(self, gpu: Gpu, expected: GpuStatus) -> None:
        """Compare-and-set on the stored state. :raises ConcurrentUpdateError: lost a race."""
        ...


class EnclaveRepository(Protocol):
    """Placed enclaves and the reconciler's progress on them."""

    def add(self, enclave: Enclave) -> None:
        """Store a newly placed enclave."""
        ...

    def get(self, enclave_id: uuid.UUID, *, for_update: bool = False) -> Enclave | None:
        """The enclave, or None."""
        ...

    def list(self, *, open_only: bool = True, host: str | None = None) -> list[Enclave]:
        """Enclaves not yet ended (or all), oldest first."""
        ...

    def overlapping(self, since: datetime | None, until: datetime | None) -> builtins.list[Enclave]:
        """Enclaves that existed at some time in ``[since, until)`` (None: unbounded), ended
        ones included: created before ``until`` and not ended at or before ``since``; oldest
        first."""
        ...

    def claimable(
        self, worker: str, now: datetime, limit: int, *, states: Collection[str]
    ) -> builtins.list[Enclave]:
        """Open enclaves in request ``states`` that ``worker`` may take now (locked,
        skipping other workers' rows on PostgreSQL)."""
        ...

    def update(self, enclave: Enclave) -> None:
        """Store changes. :raises ConcurrentUpdateError: if it changed since it was read."""
        ...


class ActionRepository(Protocol):
    """Two-person actions awaiting (or having had) their second officer."""

    def add(self, action: DualAction) -> None:
        """Store a new proposal."""
        ...

    def get(self, action_id: uuid.UUID, *, for_update: bool = False) -> DualAction | None:
        """The proposal, or None."""
        ...

    def list(self, state: ActionState | None = None) -> list[DualAction]:
        """Proposals, newest first."""
        ...

    def update(self, action: DualAction) -> None:
        """Store a decision. :raises ConcurrentUpdateError: if it changed meanwhile."""
        ...


class JobRepository(Protocol):
    """Jobs and the runner's progress on them."""

    def add(self, job: Job) -> None:
        """Store a new job."""
        ...

    def get(self, job_id: uuid.UUID, *, for_update: bool = False) -> Job | None:
        """The job, or None; ``for_update`` locks its row until the transaction ends."""
        ...

    def list(self, enclave_id: uuid.UUID) -> builtins.list[Job]:
        """The enclave's jobs, newest first."""
        ...

    def claimable(self, worker: str, now: datetime, limit: int) -> builtins.list[Job]:
        """Jobs the runner still has work on that ``worker`` may take now, oldest first
        (locked, skipping other workers' rows on PostgreSQL)."""
        ...

    def update(self, job: Job) -> None:
        """Store changes. :raises ConcurrentUpdateError: if it changed since it was read."""
        ...


class DatasetRepository(Protocol):
    """Datasets (their metadata; the sealed bytes are blobs)."""

    def add(self, dataset: Dataset) -> None:
        """Store a new dataset."""
        ...

    def get(self, dataset_id: uuid.UUID) -> Dataset | None:
        """The dataset, or None."""
        ...

    def list(self, tenants: Collection[str] | None = None) -> builtins.list[Dataset]:
        """Datasets of ``tenants`` (None: all), newest first."""
        ...


class BlobRepository(Protocol):
    """Sealed bytes (never plaintext) of datasets, job code, logs and outputs."""

    def put(self, blob: Blob) -> None:
        """Store a blob. :raises ConflictError: one with its owner, kind, name and seq exists."""
        ...

    def get(self, owner: uuid.UUID, kind: BlobKind, name: str, seq: int = 0) -> Blob | None:
        """One blob, or None."""
        ...

    def chunks(
        self, owner: uuid.UUID, kind: BlobKind, name: str, *, after: int = -1, limit: int = 64
    ) -> builtins.list[Blob]:
        """Up to ``limit`` blobs of one file with ``seq`` above ``after``, by ``seq``."""
        ...

    def last(self, owner: uuid.UUID, kind: BlobKind, name: str, before: int) -> Blob | None:
        """The blob of one file with the highest ``seq`` at or below ``before``, or None."""
        ...


class UnitOfWork(Protocol):
    """One transaction over the repositories and the audit store; rolls back unless committed."""

    # Read-only properties (not plain attributes) so implementations may narrow the types.
    @property
    def tenants(self) -> TenantRepository: ...
    @property
    def images(self) -> ImageRepository: ...
    @property
    def requests(self) -> RequestRepository: ...
    @property
    def keys(self) -> KeyRepository: ...
    @property
    def sites(self) -> SiteRepository: ...
    @property
    def hosts(self) -> HostRepository: ...
    @property
    def gpus(self) -> GpuRepository: ...
    @property
    def enclaves(self) -> EnclaveRepository: ...
    @property
    def actions(self) -> ActionRepository: ...
    @property
    def jobs(self) -> JobRepository: ...
    @property
    def datasets(self) -> DatasetRepository: ...
    @property
    def blobs(self) -> BlobRepository: ...
    @property
    def audit(self) -> AuditStore: ...

    def __enter__(self) -> Self: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def commit(self) -> None:
        """Make everything done in this unit durable, audit events included."""
        ...


class UnitOfWorkFactory(Protocol):
    """Makes a fresh unit of work per use case."""

    def __call__(self, *, readonly: bool = False) -> UnitOfWork:
        """A new unit; ``readonly`` ones may skip write locks and must not commit changes."""
        ...


@dataclass(frozen=True)
class Consistency:
    """A consistency proof between two signed tree sizes, with both signed checkpoints."""

    old_size: int
    new_size: int
    path: list[bytes]
    old_checkpoint: str
    new_checkpoint: str


class AuditSequencer(Protocol):
    """Sequences queued audit events and signs a checkpoint (the worker's side of the log)."""

    def sequence(self) -> Any:
        """Sequence queued events and sign a checkpoint. :raises ConflictError: on tamper."""
        ...


#: One item of a listing as the API shows it: JSON-ready values (strings, numbers, lists,
#: dicts, None, aware datetimes), shaped as the API's output schema for that item.
Document = dict[str, Any]


class ReadModel(Protocol):
    """Listings read straight from rows into the API's output documents, without domain
    objects: the read side of requests and of the audit log. SQL only (the in-memory backend has
    none; its services list through the repositories).

    The caller decides visibility; a read model applies it in the same statements as the
    repositories (:meth:`RequestRepository.list`, :meth:`AuditStore.query`), so a page holds
    exactly the rows the domain path would, in the same order, with the same cursor.
    """

    def requests(self, visibility: Visibility, query: RequestFilter) -> Page[Document]:
        """A page of requests as ``RequestOut`` documents, less ``approvals_needed`` (policy:
        the service adds it).

        :raises InvalidInputError: a cursor that no page returned.
        :raises DependencyUnavailableError: the database is lost.
        """
        ...

    def enclaves(self, visibility: Visibility, query: RequestFilter) -> Page[Document]:
        """The request page :meth:`requests` reads, less requests never past approval, as
        ``EnclaveOut`` documents (their ``request`` less ``approvals_needed``).

        :raises InvalidInputError: a cursor that no page returned.
        :raises DependencyUnavailableError: the database is lost.
        """
        ...

    def events(self, query: AuditQuery) -> list[Document]:
        """Sequenced events matching ``query``, as ``AuditEventOut`` documents, newest first
        (as :meth:`AuditStore.query` returns them).

        :raises DependencyUnavailableError: the database is lost.
        """
        ...


class AuditLog(Protocol):
    """The tamper-evident log: sequencing, checkpoints, proofs, verification, export."""

    @property
    def public_keys(self) -> list[str]:
        """Note verifier keys under which the log's checkpoints verify."""
        ...

    def sequence(self) -> Any:
        """Sequence queued events and sign a checkpoint. :raises ConflictError: on tamper."""
        ...

    def checkpoint(self) -> str:
        """The latest signed checkpoint note. :raises NotFoundError: none yet."""
        ...

    def event(self, seq: int) -> StoredEvent:
        """Sequenced event ``seq``. :raises NotFoundError:."""
        ...

    def proof(self, seq: int) -> str:
        """The tlog-proof text for event ``seq``. :raises NotFoundError:."""
        ...

    def consistency(self, old_size: int, new_size: int) -> Consistency:
        """Consistency between two signed sizes. :raises NotFoundError:."""
        ...

    def verify(
        self, progress: Callable[[int, int], None] | None = None, *, check_columns: bool = True
    ) -> Any:
        """Rebuild and check the whole log. :raises LogVerificationError:."""
        ...

    def events(self, query: AuditQuery) -> list[StoredEvent]:
        """Sequenced events matching ``query`` (no clearance filter: the caller applies one)."""
        ...

    def signed_sizes(self) -> list[int]:
        """Every tree size a checkpoint was signed at (database and witness), smallest first."""
        ...

    def sign_note(self, text: str) -> str:
        """``text`` signed as a C2SP note under the checkpoint key and origin.

        :raises ConfigurationError: no signing key.
        """
        ...


class SecretStore(Protocol):
    """Per-enclave keys and data keys in Vault (or OpenBao): create, derive, rotate, destroy.

    Plaintext data keys exist only in memory, for the moment they are handed on; only
    :class:`KeyRef` and :class:`WrappedSecret` values are ever stored.
    """

    def create_key(self, mount: str, name: str) -> KeyRef:
        """Create a non-exportable AES-256-GCM key (idempotent). :raises
        DependencyUnavailableError: Vault down, sealed, slow or refusing."""
        ...

    def data_key(self, key: KeyRef, context: bytes) -> tuple[bytes, WrappedSecret]:
        """A fresh 256-bit data key: plaintext (in memory only) and its wrapped copy."""
        ...

    def unwrap(self, wrapped: WrappedSecret, context: bytes) -> bytes:
        """The plaintext of a wrapped data key. :raises NotFoundError: key destroyed."""
        ...

    def rotate(self, key: KeyRef) -> KeyRef:
        """Rotate the key; returns the new version."""
        ...

    def rewrap(self, wrapped: WrappedSecret, context: bytes) -> WrappedSecret:
        """Re-encrypt a wrapped secret under the key's latest version (no plaintext out)."""
        ...

    def destroy_key(self, key: KeyRef) -> dict[str, Any]:
        """Crypto-erase: allow deletion and delete the key; returns what Vault answered
        (status, no secrets) for the audit event. Idempotent."""
        ...

    def ping(self) -> None:
        """:raises DependencyUnavailableError: if the store cannot be used."""
        ...


@dataclass(frozen=True)
class HostFacts:
    """What a hypervisor says about itself: driver, capacity, GPUs and identity."""

    hypervisor_type: str
    cpus: int
    memory_mib: int
    #: As the hypervisor reports them (the one type of a reported GPU: enclaves' inventory).
    gpus: tuple[GpuDevice, ...]
    identity: HostIdentity = field(default_factory=lambda: HostIdentity(None, ""))


@dataclass(frozen=True)
class DomainFacts:
    """One domain found on a host."""

    domain_uuid: uuid.UUID
    name: str
    running: bool
    #: The enclave the domain says it belongs to (our metadata), None for foreign domains.
    enclave_id: uuid.UUID | None


@dataclass(frozen=True, kw_only=True)
class EnclavePlan(HostPlan):
    """Everything the hypervisor side needs to build or tear down one enclave: the enclave as
    :class:`enclaves.plan.EnclavePlan` describes it, plus the libvirt URI of its host."""

    uri: str


def plan_for(uow: UnitOfWork, enclave: Enclave) -> EnclavePlan:
    """What the hypervisor needs to know about ``enclave``, read in ``uow``."""
    host = uow.hosts.get(enclave.host)
    assert host is not None, "foreign key guarantees the host"
    gpus = {gpu.address: gpu for gpu in uow.gpus.list(enclave.host)}
    # The enclave is its request's (same id); the image is the catalog's entry it named.
    request = uow.requests.get(enclave.id)
    image = None if request is None else uow.images.get(request.image)
    return EnclavePlan(
        enclave_id=enclave.id,
        uri=host.uri,
        domain_name=enclave.domain_name,
        domain_type=host.domain_type,
        vcpus=enclave.vcpus,
        memory_mib=enclave.memory_mib,
        disk_gib=enclave.disk_gib,
        # The recorded GPUs as the hypervisor reported them (what the plan passes through).
        gpus=tuple(
            GpuDevice(
                address=gpu.address,
                model=gpu.model,
                numa_node=gpu.numa_node,
                iommu_group=gpu.iommu_group,
                group_members=gpu.group_members,
            )
            for gpu in (gpus[address] for address in enclave.gpus)
        ),
        label=str(enclave.label),
        classified=enclave.classified,
        image=None if image is None else PlanImage(name=image.name, checksum=image.checksum),
    )


class Hypervisor(Protocol):
    """The fleet's hypervisors, addressed by libvirt URI.

    Every provisioning and teardown step is idempotent: repeating a step that was done (or
    undoing one that never happened) succeeds, which is what lets the reconciler resume after a
    crash at any point.
    """

    def check_uri(self, uri: str) -> str:
        """The canonical form of ``uri`` if this backend may connect to it; never connects.

        :raises InvalidInputError: the URI is malformed or refused (the reason says why).
        """
        ...

    def discover(self, uri: str) -> HostFacts:
        """Capacity, GPUs and identity of the host.

        :raises DependencyUnavailableError: unreachable.
        :raises HostIdentityError: the URI now reaches another machine than it did.
        """
        ...

    def identify(self, uri: str, expected: HostIdentity | None = None) -> HostIdentity:
        """The identity the host answers with; with ``expected``, every later connection to
        ``uri`` must answer with it too (checked on every reconnection).

        :raises DependencyUnavailableError: unreachable.
        :raises HostIdentityError: the host answers with another identity than ``expected``
            (or than when it was first reached).
        """
        ...

    def domains(self, uri: str) -> list[DomainFacts]:
        """Every domain defined on the host."""
        ...

    def provision(
        self, step: ProvisionStep, plan: EnclavePlan, secrets: EnclaveSecrets | None
    ) -> str:
        """Do provisioning ``step``; returns a note for the audit event (never a secret).

        :raises DependencyUnavailableError: the host cannot be reached (retry later).
        :raises ConflictError: the host refused the step (e.g. the GPU is in use elsewhere).
        """
        ...

    def teardown(self, step: TeardownStep, plan: EnclavePlan) -> str:
        """Do teardown ``step`` (one the host does: not ``keys``); returns a note for the
        audit event."""
        ...

    def console(self, plan: EnclavePlan, max_bytes: int) -> str:
        """The tail of the enclave's serial console log ('' when there is none)."""
        ...

    def watch(self, uri: str, callback: Callable[[uuid.UUID, str], None]) -> Callable[[], None]:
        """Call ``callback(domain uuid, event)`` on the host's domain lifecycle events
        (``started``, ``stopped``, ``crashed``, ...); returns an unsubscribe function. Events are
        hints to look now; the reconciler still compares the host with its records.

        :raises DependencyUnavailableError: the host cannot be reached.
        """
        ...


@dataclass(frozen=True)
class HandoverRequest:
    """One GPU's hand-over between tenants, as the reconciler asks a :class:`Sanitizer` for it.

    Carries no secret but ``canary_nonce`` (the previous enclave's canary nonce, which only the
    control plane keeps): a backend passes it to the scrub program and never logs it.
    """

    #: The host record's name, its hypervisor URI and libvirt host UUID (None if not recorded).
    host: str
    uri: str
    host_uuid: str | None
    #: The GPU's PCI address (``DDDD:BB:SS.F``), NVML UUID if known, model, and every function
    #: of its IOMMU group (all of them are reset).
    address: str
    gpu_uuid: str | None
    model: str
    group_members: tuple[str, ...]
    #: A fresh random nonce (32 bytes) the scrub program derives its fill pattern from.
    nonce: bytes = field(repr=False)
    #: The canary nonce of the GPU's previous enclave (32 bytes), None when it never had one.
    canary_nonce: bytes | None = field(repr=False)
    #: The whole hand-over (reset, sanitizer domain, scrub, clean-up) must end within this.
    deadline_s: float
    #: The name of the GPU's sanitizer domain
    #: (:func:`sovereign.domain.fleet.sanitizer_domain_name`).
    domain_name: str
    #: The host's libvirt domain type (``kvm``; ``qemu`` for TCG-only hosts): the sanitizer
    #: domain runs as the host's enclaves do.
    domain_type: str = "kvm"


@dataclass(frozen=True)
class HandoverEvidence:
    """What a :class:`Sanitizer` did: the reset as the host recorded it and the scrub report.

    Both are untrusted until :func:`sovereign.domain.handover.certificate` has checked them
    (the report comes from a program inside a domain; types and bounds are checked there).
    """

    #: What the reset did, e.g. ``{"type": "libvirt-node-device-reset", "functions": [...],
    #: "duration_ms": 12}`` or ``{"type": "none", "simulated": true, "note": "..."}``.
    reset: dict[str, Any]
    #: The scrub program's report (``sovereign-scrub/1``), as it came back.
    report: dict[str, Any]
    #: True where no real GPU was scrubbed (a simulated device memory stood in for it).
    simulated: bool


class Sanitizer(Protocol):
    """Hands a GPU over between tenants (isolation rule 2): resets it, scrubs and verifies its
    memory, checks for the previous tenant's canary, and returns the evidence."""

    def hand_over(self, request: HandoverRequest) -> HandoverEvidence:
        """Do the whole hand-over of one GPU, within ``request.deadline_s``.

        A leftover sanitizer domain of the same GPU (a killed earlier attempt) is destroyed
        first; the sanitizer domain is gone when this returns or raises.

        :raises DependencyUnavailableError: it cannot be done now (host unreachable): the GPU
            stays ``sanitizing`` and the hand-over is retried later.
        :raises GpuHandoverError: it was tried and failed (reset refused, scrub failed, no
            answer within the deadline): the GPU is quarantined with a failed certificate.
        """
        ...


class IdentityProvider(Protocol):
    """Turns a bearer token into a principal, verifying it fully."""

    def authenticate(self, token: str) -> Principal:
        """:raises AuthenticationError: for any token that does not verify."""
        ...

    def ping(self) -> None:
        """:raises DependencyUnavailableError: if the provider cannot be reached."""
        ...


class Probe(Protocol):
    """A readiness check of one dependency."""

    name: str

    def ping(self) -> None:
        """:raises DependencyUnavailableError: if the dependency is not ready."""
        ...


#: The ``dependency`` of the :class:`~sovereign.errors.DependencyUnavailableError` a
#: :class:`Workloads` backend raises when an enclave's agent cannot be reached (the job runner
#: tells it from Vault or the database being down by it).
AGENT_DEPENDENCY = "enclave agent"


class AgentSession(Protocol):
    """An open connection to one enclave's guest agent (the agent protocol's operations).

    The agent is untrusted: an implementation bounds and checks every answer, and raises
    :class:`~sovereign.errors.WorkloadError` for one that misbehaves, or
    :class:`~sovereign.errors.DependencyUnavailableError` (``dependency`` =
    :data:`AGENT_DEPENDENCY`) when the agent cannot be reached.
    """

    def hello(self) -> AgentHello:
        """What the agent says about itself."""
        ...

    def put(
        self,
        job: str,
        area: str,
        path: str,
        data: bytes,
        *,
        progress: Callable[[int, int], None] | None = None,
    ) -> str:
        """Send a file into the job's ``code`` or ``input`` area (resuming a partial one);
        returns its SHA-256 (hex) as the agent verified it."""
        ...

    def run(
        self, job: str, *, entrypoint: str, args: Sequence[str], max_runtime_s: int
    ) -> AgentJobStatus:
        """Start the job (idempotent: a started job answers its status)."""
        ...

    def status(self, job: str) -> AgentJobStatus:
        """The job's state, exit code, runtime and log size."""
        ...

    def logs(self, job: str, offset: int, limit: int = 1 << 20) -> bytes:
        """Log bytes from ``offset`` (at most ``limit``)."""
        ...

    def cancel(self, job: str) -> AgentJobStatus:
        """Kill the job's process group; its status after."""
        ...

    def outputs(self, job: str, patterns: Sequence[str]) -> builtins.list[OutputFile]:
        """Regular files of the job's work directory matching ``patterns``."""
        ...

    def get(self, job: str, name: str, *, size: int, sha256: str, max_bytes: int) -> bytes:
        """One output file, verified against ``size`` and ``sha256``, at most ``max_bytes``."""
        ...

    def discard(self, job: str) -> None:
        """Remove the job's directory in the enclave."""
        ...

    def plant_canary(self, canary_nonce: bytes) -> dict[str, Any]:
        """Write the enclave's canary (derived from ``canary_nonce``) over the GPU memory the
        finished job freed; the agent's answer, ``{"planted_bytes": int, "device": str}``
        (``0`` and ``"none"`` where the enclave has no GPU nor simulated device memory).
        Refused by the agent while a job runs."""
        ...


class Workloads(Protocol):
    """Where enclaves' agents are reached: the process enclave of a simulated (test driver)
    host, started on first use and reused; the libvirt channel of the domain on a real host."""

    def session(self, enclave: Enclave, host: Host) -> AbstractContextManager[AgentSession]:
        """An open session with the enclave's agent, closed when the block ends.

        :raises DependencyUnavailableError: the agent cannot be reached (retry later).
        :raises WorkloadError: the agent misbehaves.
        """
        ...

    def simulated(self, host: Host) -> bool:
        """Whether jobs on ``host`` run in a process enclave rather than a VM."""
        ...

    def release(self, enclave_id: uuid.UUID) -> None:
        """Stop the enclave's process enclave (at its end); a no-op for real hosts."""
        ...
