"""The one place services are assembled from configuration.

Owns :func:`build_services`: it picks backends (SQL or in-memory unit of work, Keycloak identity
provider, Vault or in-memory secrets, the libvirt hypervisor, the audit log's signer, probes,
and the console's OIDC client, :func:`build_console_login`) from the typed
:class:`~sovereign.settings.Settings` and wires them into the
:class:`~sovereign.services.registry.Services` container. Tests pass overrides instead of
patching. Creating services performs no network I/O: connections open on first use.

Nothing in the API or the console imports this module (an import-linter contract says so): they
reach what it built through :mod:`sovereign.app_context`. The public builders accept the typed
settings or a loaded ``app.config`` mapping (read into settings once, on entry).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any, cast

from enclaves.uri import UriPolicy, UriRefusedError, check_uri
from sovereign.domain.actions import ActionKind
from sovereign.domain.jobs import JobLimits
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.errors import ConfigurationError
from sovereign.services.actions import ActionService
from sovereign.services.attestation.frameworks import gather_facts
from sovereign.services.attestation.service import AttestationService
from sovereign.services.auditing import AuditReadService
from sovereign.services.authfailures import AuthFailureAudit
from sovereign.services.catalog import CatalogService
from sovereign.services.certificates import CertificateService
from sovereign.services.datasets import DatasetService
from sovereign.services.enclaves import EnclaveEnding, EnclaveService
from sovereign.services.hosts import AccreditHost, HostService, RelocateHost, ReturnGpu
from sovereign.services.jobs import JobService
from sovereign.services.keys import KeyService
from sovereign.services.keystores import KeyStores
from sovereign.services.ports import (
    AuditLog,
    Hypervisor,
    IdentityProvider,
    Probe,
    ReadModel,
    Sanitizer,
    SecretStore,
    UnitOfWorkFactory,
    Workloads,
)
from sovereign.services.recording import Clock, utcnow
from sovereign.services.registry import Services
from sovereign.services.requests import RequestService
from sovereign.services.sessions import SessionAuditService
from sovereign.services.signin import SignInClient
from sovereign.services.sites import SiteService
from sovereign.services.usage import UsageService
from sovereign.settings import Settings, VaultCountry

__all__ = [
    "Services",
    "build_attestation",
    "build_audit_log",
    "build_console_login",
    "build_hypervisor",
    "build_key_stores",
    "build_sanitizer",
    "build_secret_store",
    "build_services",
    "build_workloads",
    "uri_policy",
    "vault_clients",
]

log = logging.getLogger(__name__)


def _read_model(uow: UnitOfWorkFactory) -> ReadModel | None:
    """The read model over the SQL unit of work's engine; none over the in-memory one (whose
    services list through the repositories only)."""
    if getattr(uow, "engine", None) is None:
        return None
    from sovereign.adapters.database import SqlUnitOfWorkFactory  # noqa: PLC0415
    from sovereign.adapters.readmodel import SqlReadModel  # noqa: PLC0415

    return SqlReadModel(uow.engine) if isinstance(uow, SqlUnitOfWorkFactory) else None


def build_services(
    config: Settings | Mapping[str, Any],
    *,
    uow: UnitOfWorkFactory | None = None,
    identity: IdentityProvider | None = None,
    audit_log: AuditLog | None = None,
    secrets: SecretStore | None = None,
    country_secrets: Mapping[str, SecretStore] | None = None,
    probes: Sequence[Probe] | None = None,
    hypervisor: Hypervisor | None = None,
    workloads: Workloads | None = None,
    sanitizer: Sanitizer | None = None,
    clock: Clock = utcnow,
) -> Services:
    """Assemble the services for ``config``; keyword overrides replace backends
    (``country_secrets``: the secret stores of the countries ``VAULT_COUNTRIES`` names)."""
    settings = Settings.of(config)
    scheme = LabelScheme(settings.label_levels, settings.label_compartments)
    policy = AccessPolicy(
        scheme,
        two_person_level=settings.two_person_level,
        max_lease_hours=settings.max_lease_hours,
        step_up_max_age_s=settings.step_up_max_age_s,
    )
    resources: list[Any] = []
    default_probes: list[Probe] = []
    if uow is None:
        from sovereign.adapters.database import (  # noqa: PLC0415 - only when SQL is used
            DatabaseProbe,
            SqlUnitOfWorkFactory,
            create_engine,
        )

        engine = create_engine(settings.database_url)
        resources.append(engine)
        uow = SqlUnitOfWorkFactory(engine, scheme)
        default_probes.append(DatabaseProbe(engine))
        if audit_log is None:
            audit_log = _sql_audit_log(settings, engine)
    reads = _read_model(uow)
    if identity is None:
        identity = _keycloak(settings, scheme)
    default_probes.append(_IdentityProbe(identity))
    if secrets is None:
        secrets = build_secret_store(settings)
    if settings.vault_addr:
        from sovereign.adapters.vault import VaultProbe  # noqa: PLC0415

        default_probes.append(
            VaultProbe(
                settings.vault_addr,
                settings.vault_token,
                settings.vault_timeout_s,
                verify=settings.vault_ca_bundle or True,
            )
        )
        for code, country in settings.vault_countries.items():
            probe = VaultProbe(
                country.addr,
                settings.vault_token,
                settings.vault_timeout_s,
                verify=country.ca_bundle or settings.vault_ca_bundle or True,
            )
            probe.name = f"vault-{code}"
            default_probes.append(probe)
    keys = KeyService(
        uow,
        secrets,
        policy=policy,
        mount_prefix=settings.vault_mount_prefix,
        stores=build_key_stores(settings, secrets, country_secrets),
        clock=clock,
    )
    if settings.hypervisor_uris:
        from sovereign.adapters.hypervisor import HypervisorProbe  # noqa: PLC0415

        default_probes.append(
            HypervisorProbe(
                [_checked_uri(uri, settings) for uri in settings.hypervisor_uris],
                timeout_s=settings.hypervisor_connect_timeout_s,
            )
        )
    if hypervisor is None:
        hypervisor = build_hypervisor(settings)
    ending = EnclaveEnding(uow, policy, keys, clock=clock)
    # What confirming each two-person action does: its executor, given here.
    actions = ActionService(
        uow,
        {
            ActionKind.ACCREDIT_HOST: AccreditHost(scheme, clock),
            ActionKind.KILL_SWITCH: ending,
            ActionKind.RETURN_GPU: ReturnGpu(uow, clock),
            ActionKind.RELOCATE_HOST: RelocateHost(clock),
        },
        ttl=timedelta(seconds=settings.dual_action_ttl_s),
        clock=clock,
    )
    hosts = HostService(uow, hypervisor, scheme, actions, clock=clock)
    enclaves = EnclaveService(uow, policy, ending, actions, hypervisor, clock=clock, reads=reads)
    auth_failures = AuthFailureAudit(uow, interval_s=settings.auth_failure_interval_s, clock=clock)
    if workloads is None:
        workloads = build_workloads(settings)
    limits = job_limits(settings)
    job_signal = threading.Event()
    usage = UsageService(
        uow,
        policy,
        parity=settings.placement_parity,
        window=timedelta(days=settings.parity_window_days),
        clock=clock,
    )
    return Services(
        scheme=scheme,
        policy=policy,
        uow=uow,
        identity=identity,
        requests=RequestService(
            uow,
            policy,
            gpu_models=settings.gpu_models,
            keys=keys,
            clock=clock,
            # Which allowed country a new enclave is pinned to first (parity, when it is on).
            country_order=usage.country_order,
            reads=reads,
        ),
        keys=keys,
        catalog=CatalogService(uow, scheme, clock),
        audit=AuditReadService(uow, policy, clock, audit_log, reads=reads),
        hypervisor=hypervisor,
        actions=actions,
        hosts=hosts,
        sites=SiteService(uow, clock=clock),
        enclaves=enclaves,
        certificates=CertificateService(uow, policy, clock),
        attestation=AttestationService(
            uow, policy, clock, audit_log, origin=settings.audit_origin, facts=_facts(settings)
        ),
        sessions=SessionAuditService(uow, clock, failures=auth_failures),
        auth_failures=auth_failures,
        sanitizer=sanitizer if sanitizer is not None else build_sanitizer(settings, hypervisor),
        sequencer=audit_log,
        reconciler_settings={
            "clock": clock,
            "claim_ttl": timedelta(seconds=settings.reconciler_claim_ttl_s),
            "max_attempts": settings.reconciler_max_attempts,
            "sanitizer_deadline": timedelta(seconds=settings.sanitizer_deadline_s),
        },
        jobs=JobService(uow, secrets, workloads, limits=limits, wake=job_signal.set, clock=clock),
        datasets=DatasetService(
            uow, secrets, limits=limits, mount_prefix=settings.vault_mount_prefix, clock=clock
        ),
        workloads=workloads,
        secrets=secrets,
        usage=usage,
        job_settings={
            "clock": clock,
            "limits": limits,
            "claim_ttl": timedelta(seconds=settings.job_claim_ttl_s),
        },
        job_signal=job_signal,
        probes=list(probes) if probes is not None else default_probes,
        resources=resources,
    )


def job_limits(config: Settings | Mapping[str, Any]) -> JobLimits:
    """The bounds on jobs and datasets from the JOB_* and DATASET_* settings."""
    settings = Settings.of(config)
    return JobLimits(
        max_runtime_s=settings.job_max_runtime_s,
        max_files=settings.job_max_files,
        max_code_bytes=settings.job_max_code_bytes,
        max_dataset_bytes=settings.dataset_max_bytes,
        max_output_files=settings.job_max_output_files,
        max_output_bytes=settings.job_max_output_bytes,
        max_log_bytes=settings.job_max_log_bytes,
    )


def build_workloads(config: Settings | Mapping[str, Any]) -> Workloads:
    """The enclaves' agents: process enclaves for simulated (test driver) hosts, the libvirt
    channel for real ones (nothing starts until a job needs it)."""
    settings = Settings.of(config)
    from pathlib import Path  # noqa: PLC0415

    from sovereign.adapters.workloads import AgentWorkloads  # noqa: PLC0415

    return AgentWorkloads(
        run_dir=Path(settings.workloads_run_dir) if settings.workloads_run_dir else None,
        uris=uri_policy(settings),
        timeout_s=settings.workloads_timeout_s,
        connect_timeout_s=settings.hypervisor_connect_timeout_s,
    )


def uri_policy(config: Settings | Mapping[str, Any]) -> UriPolicy:
    """Which hypervisor URIs may be opened, from the HYPERVISOR_* settings.

    :raises ConfigurationError: for an unknown transport or an unsafe query parameter.
    """
    settings = Settings.of(config)
    from enclaves.hosts import bundled_hosts_dir  # noqa: PLC0415

    folders = [str(bundled_hosts_dir())]
    if settings.hypervisor_test_hosts_dir:
        folders.append(settings.hypervisor_test_hosts_dir)
    transports = settings.hypervisor_transports or ["qemu+tls"]
    try:
        return UriPolicy(
            transports=frozenset(transports),
            params=frozenset(settings.hypervisor_uri_params or ()),
            ports={name: frozenset(ports) for name, ports in settings.hypervisor_ports.items()},
            test_dirs=tuple(folders) if "test" in transports else (),
        )
    except ValueError as e:
        raise ConfigurationError(reason=f"hypervisor URI policy: {e}") from e


def _checked_uri(uri: str, settings: Settings) -> str:
    try:
        return check_uri(uri, uri_policy(settings))
    except UriRefusedError as e:
        raise ConfigurationError(reason=f"HYPERVISOR_URIS: {e}") from e


def build_hypervisor(config: Settings | Mapping[str, Any]) -> Hypervisor:
    """The libvirt hypervisor adapter laid out by the ENCLAVE_* settings (connects lazily)."""
    settings = Settings.of(config)
    from enclaves.spec import CPU_MODES  # noqa: PLC0415
    from sovereign.adapters.hypervisor import GuestSettings, LibvirtHypervisor  # noqa: PLC0415

    network = settings.enclave_network
    if network not in ("isolated", "none"):
        raise ConfigurationError(reason="ENCLAVE_NETWORK must be 'isolated' or 'none'")
    if settings.enclave_cpu_mode not in (None, *CPU_MODES):
        raise ConfigurationError(
            reason=f"ENCLAVE_CPU_MODE must be one of {', '.join(CPU_MODES)} or unset"
        )
    return LibvirtHypervisor(
        GuestSettings(
            pool_path=settings.enclave_pool_path,
            console_dir=settings.enclave_console_dir,
            network=network,
            kernel=settings.enclave_kernel,
            initrd=settings.enclave_initrd,
            cmdline=settings.enclave_cmdline or "",
            machine=settings.enclave_machine,
            security_model=settings.enclave_security_model,
            stop_timeout_s=settings.enclave_stop_timeout_s,
            connect_timeout_s=settings.hypervisor_connect_timeout_s,
            image_dir=settings.image_dir,
            cpu_mode=settings.enclave_cpu_mode,
        ),
        uri_policy(settings),
    )


def vault_clients(config: Settings | Mapping[str, Any], country: VaultCountry | None = None) -> Any:
    """An authenticated hvac client factory: AppRole, or the dev server's token; for
    ``VAULT_ADDR``, or a country's Vault (with its own AppRole and CA bundle where it has them,
    else those of ``VAULT_ADDR``)."""
    settings = Settings.of(config)
    from sovereign.adapters.vault import AppRoleAuth, TokenAuth, VaultClients  # noqa: PLC0415

    if country is not None and country.role_id is not None:
        auth: Any = AppRoleAuth(country.role_id, secret_id_file=country.secret_id_file)
    elif settings.vault_role_id:
        auth = AppRoleAuth(
            settings.vault_role_id,
            secret_id_file=settings.vault_secret_id_file,
            wrapped_token=settings.vault_wrapped_secret_id,
        )
    elif settings.vault_token:
        auth = TokenAuth(settings.vault_token)
    else:
        raise ConfigurationError(reason="Vault needs SOVEREIGN_VAULT_ROLE_ID (or a dev token)")
    return VaultClients(
        # As before the typed settings: only AUDIT_SIGNER="vault" named without VAULT_ADDR gets
        # here with None (hvac's own default address); everything else checks VAULT_ADDR first.
        country.addr if country is not None else cast("str", settings.vault_addr),
        auth,
        timeout_s=settings.vault_timeout_s,
        verify=(country.ca_bundle if country is not None else None)
        or settings.vault_ca_bundle
        or True,
    )


def build_key_stores(
    config: Settings | Mapping[str, Any],
    default: SecretStore,
    country_secrets: Mapping[str, SecretStore] | None = None,
) -> KeyStores:
    """The key stores per country of ``VAULT_COUNTRIES`` (``country_secrets`` overrides them):
    a Vault each when Vault is configured; outside production an in-memory store each."""
    settings = Settings.of(config)
    given = dict(country_secrets or {})
    countries: dict[str, tuple[SecretStore, str | None]] = {}
    for code, country in settings.vault_countries.items():
        store = given.pop(code, None)
        if store is None:
            if settings.vault_addr:
                from sovereign.adapters.vault import VaultSecretStore  # noqa: PLC0415

                store = VaultSecretStore(vault_clients(settings, country))
            else:
                from sovereign.adapters.memory_secrets import MemorySecretStore  # noqa: PLC0415

                log.warning("no Vault configured: %s's enclave keys live in memory", code)
                store = MemorySecretStore()
        countries[code] = (store, country.mount_prefix)
    if given:
        raise ConfigurationError(
            reason=f"secret stores given for countries VAULT_COUNTRIES does not name: "
            f"{', '.join(sorted(given))}"
        )
    return KeyStores(default, settings.vault_mount_prefix, countries)


def build_secret_store(config: Settings | Mapping[str, Any]) -> SecretStore:
    """Vault when configured; outside production an in-memory store, with a loud warning."""
    settings = Settings.of(config)
    if settings.vault_addr:
        from sovereign.adapters.vault import VaultSecretStore  # noqa: PLC0415

        return VaultSecretStore(vault_clients(settings))
    if settings.production:
        raise ConfigurationError(reason="production keeps keys in Vault: set SOVEREIGN_VAULT_ADDR")
    from sovereign.adapters.memory_secrets import MemorySecretStore  # noqa: PLC0415

    log.warning("no Vault configured: enclave keys live in memory (development only)")
    return MemorySecretStore()


def build_audit_log(config: Settings | Mapping[str, Any], *, read_only: bool = False) -> AuditLog:
    """The audit log alone, for auditors' commands that need no identity provider.

    ``read_only`` logs need no signing key (nor Vault): verify, prove and export use the
    published keys in the keys file.
    """
    from sovereign.adapters.database import create_engine  # noqa: PLC0415

    settings = Settings.of(config)
    return _sql_audit_log(settings, create_engine(settings.database_url), read_only=read_only)


def build_attestation(config: Settings | Mapping[str, Any]) -> AttestationService:
    """The attestation service alone, for ``sovereign audit attest`` on the control plane's
    host: the database and the signing audit log, no identity provider."""
    from sovereign.adapters.database import (  # noqa: PLC0415
        SqlUnitOfWorkFactory,
        create_engine,
    )

    settings = Settings.of(config)
    scheme = LabelScheme(settings.label_levels, settings.label_compartments)
    policy = AccessPolicy(scheme, two_person_level=settings.two_person_level)
    engine = create_engine(settings.database_url)
    return AttestationService(
        SqlUnitOfWorkFactory(engine, scheme),
        policy,
        log=_sql_audit_log(settings, engine),
        origin=settings.audit_origin,
        facts=_facts(settings),
    )


def _facts(settings: Settings) -> Callable[[list[str]], dict[str, Any]]:
    """The configuration facts an attestation states, given the sites' countries."""

    def facts(countries: list[str]) -> dict[str, Any]:
        return gather_facts(settings, sites_countries=countries)

    return facts


def _sql_audit_log(settings: Settings, engine: Any, *, read_only: bool = False) -> AuditLog:
    from pathlib import Path  # noqa: PLC0415

    from audit.witness import WitnessFile  # noqa: PLC0415
    from sovereign.adapters.auditlog import SqlAuditLog, file_signer  # noqa: PLC0415

    signer: Any
    if read_only:
        signer = None
    elif settings.audit_signer == "vault":
        from sovereign.adapters.vault_signer import VaultTransitSigner  # noqa: PLC0415

        # The private key never leaves Vault: it signs each checkpoint note.
        signer = VaultTransitSigner(vault_clients(settings), settings.audit_origin)
    elif settings.audit_signer == "file":
        signer = file_signer(
            settings.audit_origin,
            Path(settings.audit_signing_key),
            # A production key is provisioned deliberately, never conjured on first start.
            create=not settings.production,
        )
    else:
        raise ConfigurationError(reason="AUDIT_SIGNER must be 'vault' or 'file'")
    witness = WitnessFile(settings.audit_witness_path) if settings.audit_witness_path else None
    keys_file = Path(settings.audit_keys_path) if settings.audit_keys_path else None
    return SqlAuditLog(engine, signer, settings.audit_origin, witness, keys_file=keys_file)


def build_sanitizer(
    config: Settings | Mapping[str, Any], hypervisor: Hypervisor | None = None
) -> Sanitizer:
    """The GPU hand-over backend, routed per host (SANITIZER_* settings).

    The test driver's simulated GPUs are scrubbed in process on SANITIZER_SIMULATED_MIB of
    host memory (``simulated: true``); real hosts get a node-device reset and a scrub in a
    sanitizer domain booted from SANITIZER_IMAGE, over ``hypervisor``'s connections (URI policy
    and host identity pinning apply). A hypervisor without libvirt connections (a test double)
    serves no real host: their hand-overs fail, and their GPUs are quarantined.
    """
    settings = Settings.of(config)
    from sovereign.adapters.sanitizer import (  # noqa: PLC0415
        LibvirtSanitizer,
        RoutingSanitizer,
        SanitizerSettings,
        SimulatedSanitizer,
    )

    real: Sanitizer | None = None
    hosts = getattr(hypervisor, "enclave_host", None)
    if hosts is not None:
        real = LibvirtSanitizer(
            hosts,
            image_dir=settings.image_dir,
            image=settings.sanitizer_image,
            settings=SanitizerSettings(
                machine=settings.enclave_machine,
                cpu_mode=settings.enclave_cpu_mode,
                security_model=settings.enclave_security_model,
            ),
        )
    return RoutingSanitizer(SimulatedSanitizer(settings.sanitizer_simulated_mib), real)


def _keycloak(settings: Settings, scheme: LabelScheme) -> IdentityProvider:
    from sovereign.adapters.keycloak import KeycloakIdentityProvider  # noqa: PLC0415

    if not settings.idp_url:
        raise ConfigurationError(reason="SOVEREIGN_IDP_URL is not set")
    return KeycloakIdentityProvider(
        server_url=settings.idp_url,
        realm=settings.idp_realm,
        client_id=settings.idp_client_id,
        audience=settings.idp_audience,
        scheme=scheme,
        tenant_group_prefix=settings.tenant_group_prefix,
        timeout_s=settings.idp_timeout_s,
        # The dev stand-in announces itself; only production refuses to trust it.
        trust_dev_idp=not settings.production,
    )


def build_console_login(settings: Settings, identity: IdentityProvider) -> SignInClient:
    """The console's OIDC client for the realm ``identity`` verifies (python-keycloak)."""
    from sovereign.adapters.keycloak_login import KeycloakSignInClient  # noqa: PLC0415

    return KeycloakSignInClient(
        server_url=settings.idp_url or "",
        realm=settings.idp_realm,
        client_id=settings.console_client_id,
        client_secret=settings.console_client_secret,
        identity=identity,
        timeout_s=settings.idp_timeout_s,
    )


class _IdentityProbe:
    """Readiness of the identity provider (its discovery document answers)."""

    name = "identity provider"

    def __init__(self, identity: IdentityProvider) -> None:
        self._identity = identity

    def ping(self) -> None:
        self._identity.ping()
