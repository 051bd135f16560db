"""The services one app (or one CLI command, or one worker) runs on: the :class:`Services`
container, typed, so that the API, the console, the CLI and the worker can name it.

Owns the container only. It chooses no backend and reads no configuration: building it is
:func:`sovereign.bootstrap.build_services`'s job, the one assembly point; views reach the built
container through :func:`sovereign.app_context.services`.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.services.actions import ActionService
from sovereign.services.attestation.service import AttestationService
from sovereign.services.auditing import AuditReadService
from sovereign.services.authfailures import AuthFailureAudit
from sovereign.services.catalog import CatalogService
from sovereign.services.certificates import CertificateService
from sovereign.services.datasets import DatasetService
from sovereign.services.enclaves import EnclaveService
from sovereign.services.hosts import HostService
from sovereign.services.jobrunner import JobRunner
from sovereign.services.jobs import JobService
from sovereign.services.keys import KeyService
from sovereign.services.ports import (
    AuditSequencer,
    Hypervisor,
    IdentityProvider,
    Probe,
    Sanitizer,
    SecretStore,
    UnitOfWorkFactory,
    Workloads,
)
from sovereign.services.reconciler import Reconciler
from sovereign.services.reconciler.context import worker_name
from sovereign.services.requests import RequestService
from sovereign.services.sessions import SessionAuditService
from sovereign.services.sites import SiteService
from sovereign.services.usage import UsageService


@dataclass
class Services:
    """Everything the API, CLI and worker use, built once per app."""

    scheme: LabelScheme
    policy: AccessPolicy
    uow: UnitOfWorkFactory
    identity: IdentityProvider
    requests: RequestService
    catalog: CatalogService
    audit: AuditReadService
    keys: KeyService
    hypervisor: Hypervisor
    actions: ActionService
    hosts: HostService
    #: The sites hosts stand in, and their countries.
    sites: SiteService
    enclaves: EnclaveService
    #: GPU hand-over certificates (the ``gpu:handover`` events) for officers and auditors.
    certificates: CertificateService
    #: Attestations: the claims the audit log proves over a period, signed (auditors).
    attestation: AttestationService
    #: Console sign-ins, sign-outs and expiry in the audit log.
    sessions: SessionAuditService
    #: Authentication and CSRF failures in the audit log, aggregated per source and interval.
    auth_failures: AuthFailureAudit
    #: The reconciler's GPU sanitizer backend (isolation rule 2).
    sanitizer: Sanitizer
    #: What sequences the audit log and signs its checkpoints (the worker's entry point); None
    #: without a log.
    sequencer: AuditSequencer | None
    #: Jobs in enclaves and the datasets they read; the enclaves' agents they run through.
    jobs: JobService
    datasets: DatasetService
    workloads: Workloads
    secrets: SecretStore
    #: GPU hours per tenant and country, and the parity order of a tenant's countries.
    usage: UsageService
    reconciler_settings: dict[str, Any] = field(default_factory=dict)
    job_settings: dict[str, Any] = field(default_factory=dict)
    #: Set when a job is submitted or cancelled: wakes an in-process job loop at once.
    job_signal: threading.Event = field(default_factory=threading.Event)
    probes: Sequence[Probe] = field(default_factory=list)
    #: Backend objects to dispose of on shutdown (engines).
    resources: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Write pending failure counts, then release pooled connections."""
        self.auth_failures.flush(everything=True)
        for resource in self.resources:
            resource.dispose()
        for backend in (self.hypervisor, self.workloads):
            close = getattr(backend, "close", None)
            if close is not None:
                close()

    def reconciler(self, *, sanitizer: Sanitizer | None = None, **overrides: Any) -> Reconciler:
        """A reconciler over these services (one per worker thread or process)."""
        settings = {**self.reconciler_settings, **overrides}
        return Reconciler(
            self.uow,
            self.hypervisor,
            self.keys,
            self.scheme,
            self.hosts,
            sanitizer=sanitizer or self.sanitizer,
            **settings,
        )

    def jobrunner(self, **overrides: Any) -> JobRunner:
        """A job runner over these services (one per worker thread or process)."""
        settings = {"worker": worker_name(), **self.job_settings, **overrides}
        return JobRunner(self.uow, self.secrets, self.workloads, self.scheme.highest, **settings)
