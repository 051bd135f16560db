"""The one place services are assembled from configuration.

Owns :func:`build_services`: it picks backends (SQL or in-memory unit of work, Keycloak identity
provider, probes) and wires them into the services. Tests pass overrides instead of patching.
Creating services performs no network I/O: connections open on first use.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from enclaves.uri import UriPolicy, UriRefusedError, check_uri
from sovereign.domain.actions import ActionKind
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.errors import ConfigurationError
from sovereign.services.actions import ActionService
from sovereign.services.auditing import AuditReadService
from sovereign.services.authfailures import AuthFailureAudit
from sovereign.services.catalog import CatalogService
from sovereign.services.enclaves import EnclaveEnding, EnclaveService
from sovereign.services.hosts import AccreditHost, HostService
from sovereign.services.keys import KeyService
from sovereign.services.ports import (
    AuditLog,
    AuditSequencer,
    Hypervisor,
    IdentityProvider,
    Probe,
    Sanitizer,
    SecretStore,
    UnitOfWorkFactory,
)
from sovereign.services.reconciler import Reconciler
from sovereign.services.recording import Clock, utcnow
from sovereign.services.requests import RequestService
from sovereign.services.sessions import SessionAuditService

log = logging.getLogger(__name__)


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
    enclaves: EnclaveService
    #: Console sign-ins, sign-outs and expiry in the audit log.
    sessions: SessionAuditService
    #: Authentication and CSRF failures in the audit log, aggregated per source and interval.
    auth_failures: AuthFailureAudit
    #: The reconciler's GPU sanitizer backend (isolation rule 2).
    sanitizer: Sanitizer
    #: What sequences the audit log and signs its checkpoints (the worker's entry point); None
    #: without a log.
    sequencer: AuditSequencer | None
    reconciler_settings: dict[str, Any] = field(default_factory=dict)
    probes: Sequence[Probe] = field(default_factory=list)
    #: Backend objects to dispose of on shutdown (engines).
    resources: list[Any] = field(default_factory=list)

    def close(self) -> None:
        """Write pending failure counts, then release pooled connections."""
        self.auth_failures.flush(everything=True)
        for resource in self.resources:
            resource.dispose()
        close = getattr(self.hypervisor, "close", None)
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


def build_services(
    config: Mapping[str, Any],
    *,
    uow: UnitOfWorkFactory | None = None,
    identity: IdentityProvider | None = None,
    audit_log: AuditLog | None = None,
    secrets: SecretStore | None = None,
    probes: Sequence[Probe] | None = None,
    hypervisor: Hypervisor | None = None,
    clock: Clock = utcnow,
) -> Services:
    """Assemble the services for ``config``; keyword overrides replace backends."""
    scheme = LabelScheme(config["LABEL_LEVELS"], config["LABEL_COMPARTMENTS"])
    policy = AccessPolicy(
        scheme,
        two_person_level=config["TWO_PERSON_LEVEL"],
        max_lease_hours=int(config["MAX_LEASE_HOURS"]),
        step_up_max_age_s=int(config["STEP_UP_MAX_AGE_S"]),
    )
    resources: list[Any] = []
    default_probes: list[Probe] = []
    if uow is None:
        from sovereign.adapters.database import (  # noqa: PLC0415 - only when SQL is used
            DatabaseProbe,
            SqlUnitOfWorkFactory,
            create_engine,
        )

        engine = create_engine(config["DATABASE_URL"])
        resources.append(engine)
        uow = SqlUnitOfWorkFactory(engine, scheme)
        default_probes.append(DatabaseProbe(engine))
        if audit_log is None:
            audit_log = _sql_audit_log(config, engine)
    if identity is None:
        identity = _keycloak(config, scheme)
    default_probes.append(_IdentityProbe(identity))
    if secrets is None:
        secrets = build_secret_store(config)
    if config.get("VAULT_ADDR"):
        from sovereign.adapters.vault import VaultProbe  # noqa: PLC0415

        default_probes.append(
            VaultProbe(config["VAULT_ADDR"], config.get("VAULT_TOKEN"), config["VAULT_TIMEOUT_S"])
        )
    keys = KeyService(
        uow, secrets, policy=policy, mount_prefix=config["VAULT_MOUNT_PREFIX"], clock=clock
    )
    if config.get("HYPERVISOR_URIS"):
        from sovereign.adapters.hypervisor import HypervisorProbe  # noqa: PLC0415

        default_probes.append(
            HypervisorProbe(
                [_checked_uri(uri, config) for uri in config["HYPERVISOR_URIS"]],
                timeout_s=float(config["HYPERVISOR_CONNECT_TIMEOUT_S"]),
            )
        )
    if hypervisor is None:
        hypervisor = build_hypervisor(config)
    ending = EnclaveEnding(uow, policy, keys, clock=clock)
    # What confirming each two-person action does: its executor, given here.
    actions = ActionService(
        uow,
        {ActionKind.ACCREDIT_HOST: AccreditHost(scheme, clock), ActionKind.KILL_SWITCH: ending},
        ttl=timedelta(seconds=int(config["DUAL_ACTION_TTL_S"])),
        clock=clock,
    )
    hosts = HostService(uow, hypervisor, scheme, actions, clock=clock)
    enclaves = EnclaveService(uow, policy, ending, actions, hypervisor, clock=clock)
    auth_failures = AuthFailureAudit(
        uow, interval_s=int(config["AUTH_FAILURE_INTERVAL_S"]), clock=clock
    )
    return Services(
        scheme=scheme,
        policy=policy,
        uow=uow,
        identity=identity,
        requests=RequestService(
            uow, policy, gpu_models=config["GPU_MODELS"], keys=keys, clock=clock
        ),
        keys=keys,
        catalog=CatalogService(uow, scheme, clock),
        audit=AuditReadService(uow, policy, clock, audit_log),
        hypervisor=hypervisor,
        actions=actions,
        hosts=hosts,
        enclaves=enclaves,
        sessions=SessionAuditService(uow, clock, failures=auth_failures),
        auth_failures=auth_failures,
        sanitizer=_sanitizer(),
        sequencer=audit_log,
        reconciler_settings={
            "clock": clock,
            "claim_ttl": timedelta(seconds=int(config["RECONCILER_CLAIM_TTL_S"])),
            "max_attempts": int(config["RECONCILER_MAX_ATTEMPTS"]),
        },
        probes=list(probes) if probes is not None else default_probes,
        resources=resources,
    )


def uri_policy(config: Mapping[str, Any]) -> UriPolicy:
    """Which hypervisor URIs may be opened, from the HYPERVISOR_* settings.

    :raises ConfigurationError: for an unknown transport or an unsafe query parameter.
    """
    from enclaves.hosts import bundled_hosts_dir  # noqa: PLC0415

    folders = [str(bundled_hosts_dir())]
    if config.get("HYPERVISOR_TEST_HOSTS_DIR"):
        folders.append(str(config["HYPERVISOR_TEST_HOSTS_DIR"]))
    transports = config.get("HYPERVISOR_TRANSPORTS") or ["qemu+tls"]
    try:
        return UriPolicy(
            transports=frozenset(transports),
            params=frozenset(config.get("HYPERVISOR_URI_PARAMS") or ()),
            ports={
                name: frozenset(int(port) for port in ports)
                for name, ports in (config.get("HYPERVISOR_PORTS") or {}).items()
            },
            test_dirs=tuple(folders) if "test" in transports else (),
        )
    except ValueError as e:
        raise ConfigurationError(reason=f"hypervisor URI policy: {e}") from e


def _checked_uri(uri: str, config: Mapping[str, Any]) -> str:
    try:
        return check_uri(uri, uri_policy(config))
    except UriRefusedError as e:
        raise ConfigurationError(reason=f"HYPERVISOR_URIS: {e}") from e


def build_hypervisor(config: Mapping[str, Any]) -> Hypervisor:
    """The libvirt hypervisor adapter laid out by the ENCLAVE_* settings (connects lazily)."""
    from sovereign.adapters.hypervisor import GuestSettings, LibvirtHypervisor  # noqa: PLC0415

    network = config["ENCLAVE_NETWORK"]
    if network not in ("isolated", "none"):
        raise ConfigurationError(reason="ENCLAVE_NETWORK must be 'isolated' or 'none'")
    return LibvirtHypervisor(
        GuestSettings(
            pool_path=config["ENCLAVE_POOL_PATH"],
            console_dir=config["ENCLAVE_CONSOLE_DIR"],
            network=network,
            kernel=config["ENCLAVE_KERNEL"],
            initrd=config["ENCLAVE_INITRD"],
            cmdline=config["ENCLAVE_CMDLINE"] or "",
            machine=config["ENCLAVE_MACHINE"],
            security_model=config["ENCLAVE_SECURITY_MODEL"],
            stop_timeout_s=float(config["ENCLAVE_STOP_TIMEOUT_S"]),
            connect_timeout_s=float(config["HYPERVISOR_CONNECT_TIMEOUT_S"]),
        ),
        uri_policy(config),
    )


def vault_clients(config: Mapping[str, Any]) -> Any:
    """An authenticated hvac client factory: AppRole, or the dev server's token."""
    from sovereign.adapters.vault import AppRoleAuth, TokenAuth, VaultClients  # noqa: PLC0415

    if config.get("VAULT_ROLE_ID"):
        auth: Any = AppRoleAuth(
            config["VAULT_ROLE_ID"],
            secret_id_file=config.get("VAULT_SECRET_ID_FILE"),
            wrapped_token=config.get("VAULT_WRAPPED_SECRET_ID"),
        )
    elif config.get("VAULT_TOKEN"):
        auth = TokenAuth(config["VAULT_TOKEN"])
    else:
        raise ConfigurationError(reason="Vault needs SOVEREIGN_VAULT_ROLE_ID (or a dev token)")
    return VaultClients(
        config["VAULT_ADDR"],
        auth,
        timeout_s=float(config["VAULT_TIMEOUT_S"]),
        verify=config.get("VAULT_CA_BUNDLE") or True,
    )


def build_secret_store(config: Mapping[str, Any]) -> SecretStore:
    """Vault when configured; outside production an in-memory store, with a loud warning."""
    if config.get("VAULT_ADDR"):
        from sovereign.adapters.vault import VaultSecretStore  # noqa: PLC0415

        return VaultSecretStore(vault_clients(config))
    if config["ENV"] == "production":
        raise ConfigurationError(reason="production keeps keys in Vault: set SOVEREIGN_VAULT_ADDR")
    from sovereign.adapters.memory_secrets import MemorySecretStore  # noqa: PLC0415

    log.warning("no Vault configured: enclave keys live in memory (development only)")
    return MemorySecretStore()


def build_audit_log(config: Mapping[str, Any], *, read_only: bool = False) -> AuditLog:
    """The audit log alone, for auditors' commands that need no identity provider.

    ``read_only`` logs need no signing key (nor Vault): verify, prove and export use the
    published keys in the keys file.
    """
    from sovereign.adapters.database import create_engine  # noqa: PLC0415

    return _sql_audit_log(config, create_engine(config["DATABASE_URL"]), read_only=read_only)


def _sql_audit_log(config: Mapping[str, Any], engine: Any, *, read_only: bool = False) -> AuditLog:
    from pathlib import Path  # noqa: PLC0415

    from audit.witness import WitnessFile  # noqa: PLC0415
    from sovereign.adapters.auditlog import SqlAuditLog, file_signer  # noqa: PLC0415

    signer: Any
    if read_only:
        signer = None
    elif config["AUDIT_SIGNER"] == "vault":
        from sovereign.adapters.vault_signer import VaultTransitSigner  # noqa: PLC0415

        # The private key never leaves Vault: it signs each checkpoint note.
        signer = VaultTransitSigner(vault_clients(config), config["AUDIT_ORIGIN"])
    elif config["AUDIT_SIGNER"] == "file":
        signer = file_signer(
            config["AUDIT_ORIGIN"],
            Path(config["AUDIT_SIGNING_KEY"]),
            # A production key is provisioned deliberately, never conjured on first start.
            create=config["ENV"] != "production",
        )
    else:
        raise ConfigurationError(reason="AUDIT_SIGNER must be 'vault' or 'file'")
    witness = WitnessFile(config["AUDIT_WITNESS_PATH"]) if config["AUDIT_WITNESS_PATH"] else None
    keys_file = Path(config["AUDIT_KEYS_PATH"]) if config.get("AUDIT_KEYS_PATH") else None
    return SqlAuditLog(engine, signer, config["AUDIT_ORIGIN"], witness, keys_file=keys_file)


def _sanitizer() -> Sanitizer:
    from sovereign.adapters.sanitizer import RecordedSanitizer  # noqa: PLC0415

    return RecordedSanitizer()


def _keycloak(config: Mapping[str, Any], scheme: LabelScheme) -> IdentityProvider:
    from sovereign.adapters.keycloak import KeycloakIdentityProvider  # noqa: PLC0415

    if not config.get("IDP_URL"):
        raise ConfigurationError(reason="SOVEREIGN_IDP_URL is not set")
    return KeycloakIdentityProvider(
        server_url=config["IDP_URL"],
        realm=config["IDP_REALM"],
        client_id=config["IDP_CLIENT_ID"],
        audience=config["IDP_AUDIENCE"],
        scheme=scheme,
        tenant_group_prefix=config["TENANT_GROUP_PREFIX"],
        timeout_s=int(config["IDP_TIMEOUT_S"]),
        # The dev stand-in announces itself; only production refuses to trust it.
        trust_dev_idp=config["ENV"] != "production",
    )


class _IdentityProbe:
    """Readiness of the identity provider (its discovery document answers)."""

    name = "identity provider"

    def __init__(self, identity: IdentityProvider) -> None:
        self._identity = identity

    def ping(self) -> None:
        self._identity.ping()
