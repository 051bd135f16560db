"""The control plane's configuration as one typed, frozen object.

Owns :class:`Settings`: every key of :data:`sovereign.config.DEFAULTS` (and ``IDP_DEV``) as a
typed attribute, converted once from the loaded and verified ``app.config`` by
:meth:`Settings.from_config`. :func:`sovereign.config.load` builds it and keeps it in
``app.extensions`` (:func:`sovereign.app_context.settings` reads it back); the assembly,
the views, the CLI and the dev stack read attributes, never ``app.config["..."]`` strings.

Must not read files, the environment or Flask: precedence and the refusals of unsafe
combinations stay in :mod:`sovereign.config`. The keys Flask and Flask-Limiter read themselves
(``SECRET_KEY``, ``MAX_CONTENT_LENGTH``, ``RATELIMIT_ENABLED``, ``RATELIMIT_STORAGE_URI``,
``RATELIMIT_STRATEGY``, ``RATELIMIT_IN_MEMORY_FALLBACK_ENABLED``) stay in ``app.config`` for
them as well.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sovereign.domain.sites import check_country
from sovereign.errors import ConfigurationError, InvalidInputError

#: ``app.extensions`` key of the app's :class:`Settings`.
SETTINGS = "sovereign.settings"


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(str(item) for item in value or ())


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _ports(value: Any) -> dict[str, tuple[int, ...]]:
    return {str(name): tuple(int(port) for port in ports) for name, ports in (value or {}).items()}


def _colours(value: Any) -> dict[str, tuple[str, ...]]:
    return {str(name): tuple(str(c) for c in pair) for name, pair in (value or {}).items()}


@dataclass(frozen=True)
class VaultCountry:
    """The Vault of one country's keys: its address and transit mount prefix (None: the
    default ``VAULT_MOUNT_PREFIX``), and its own AppRole and CA bundle (None: the ones of
    ``VAULT_ADDR``; a Vault run by another country's operators should have its own, so that
    no one Vault's operators hold a credential that works at another)."""

    addr: str
    mount_prefix: str | None = None
    role_id: str | None = None
    secret_id_file: str | None = None
    ca_bundle: str | None = None


def _vault_countries(value: Any) -> dict[str, VaultCountry]:
    """``{"PT": {"addr": "https://vault.pt:8200", "mount_prefix": "pt-"}}`` -> typed."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise TypeError('must be an object: {"PT": {"addr": URL, "mount_prefix": "..."}}')
    countries: dict[str, VaultCountry] = {}
    for code, entry in value.items():
        try:
            check_country(code)
        except InvalidInputError as e:
            raise ValueError(e.message) from e
        if not isinstance(entry, Mapping) or set(entry) - _COUNTRY_KEYS:
            raise ValueError(
                f'{code}: must be {{"addr": URL}} and optionally "mount_prefix", "role_id", '
                '"secret_id_file", "ca_bundle"'
            )
        addr, prefix = entry.get("addr"), entry.get("mount_prefix")
        role_id, secret_file, ca_bundle = (
            entry.get("role_id"),
            entry.get("secret_id_file"),
            entry.get("ca_bundle"),
        )
        for name, text in (
            ("role_id", role_id),
            ("secret_id_file", secret_file),
            ("ca_bundle", ca_bundle),
        ):
            if text is not None and not (isinstance(text, str) and text.strip()):
                raise ValueError(f"{code}: {name} must be a non-empty string")
        if (role_id is None) != (secret_file is None):
            raise ValueError(f"{code}: role_id and secret_id_file go together")
        if not isinstance(addr, str) or not addr.startswith(("https://", "http://")):
            raise ValueError(f"{code}: addr must be an http(s) URL, got {addr!r}")
        if prefix is not None and not (isinstance(prefix, str) and _MOUNT.fullmatch(prefix)):
            raise ValueError(f"{code}: mount_prefix must be letters, digits, '-' or '_'")
        countries[code] = VaultCountry(addr, prefix, role_id, secret_file, ca_bundle)
    return countries


_MOUNT = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COUNTRY_KEYS = frozenset({"addr", "mount_prefix", "role_id", "secret_id_file", "ca_bundle"})


@dataclass(frozen=True)
class Settings:
    """The verified configuration, typed; attribute names are the keys in lower case."""

    env: str
    port: int
    database_url: str
    # Labels and policy.
    label_levels: tuple[str, ...]
    label_compartments: tuple[str, ...]
    two_person_level: str
    max_lease_hours: int
    step_up_max_age_s: int
    gpu_models: tuple[str, ...]
    dual_action_ttl_s: int
    #: Pin enclaves to the allowed country where their tenant used the fewest GPU hours over
    #: the last ``parity_window_days`` days (off: the first allowed country with room).
    placement_parity: bool
    parity_window_days: int
    # Identity (Keycloak).
    idp_url: str | None
    idp_realm: str
    idp_client_id: str
    idp_audience: str
    idp_timeout_s: int
    idp_dev: bool
    tenant_group_prefix: str
    # Vault / OpenBao.
    vault_addr: str | None
    vault_token: str | None
    vault_role_id: str | None
    vault_secret_id_file: str | None
    vault_wrapped_secret_id: str | None
    vault_timeout_s: float
    vault_ca_bundle: str | None
    vault_mount_prefix: str
    #: The country of sites migration 0009 creates for hosts registered before sites.
    default_country: str
    #: Country (ISO 3166-1 alpha-2) -> the Vault its enclaves' keys live in (data residency);
    #: countries not named use the one above.
    vault_countries: dict[str, VaultCountry]
    # Hypervisors and enclaves.
    hypervisor_uris: tuple[str, ...]
    hypervisor_transports: tuple[str, ...]
    hypervisor_uri_params: tuple[str, ...]
    hypervisor_ports: dict[str, tuple[int, ...]]
    hypervisor_test_hosts_dir: str | None
    hypervisor_connect_timeout_s: float
    enclave_pool_path: str
    enclave_console_dir: str
    enclave_network: str
    enclave_kernel: str | None
    enclave_initrd: str | None
    enclave_cmdline: str
    enclave_machine: str | None
    enclave_security_model: str
    enclave_stop_timeout_s: float
    enclave_cpu_mode: str | None
    image_dir: str | None
    # Reconciler.
    reconciler_interval_s: float
    reconciler_claim_ttl_s: int
    reconciler_max_attempts: int
    # Jobs and datasets.
    job_max_runtime_s: int
    job_max_files: int
    job_max_code_bytes: int
    dataset_max_bytes: int
    job_max_output_files: int
    job_max_output_bytes: int
    job_max_log_bytes: int
    job_poll_interval_s: float
    job_claim_ttl_s: int
    workloads_run_dir: str | None
    workloads_timeout_s: float
    # GPU hand-over (sanitizer).
    sanitizer_simulated_mib: int
    sanitizer_deadline_s: float
    sanitizer_image: str | None
    # HTTP: limits, proxies, metrics.
    ratelimit_storage_uri: str
    ratelimit_anonymous: str
    ratelimit_auth_failures: str
    ratelimit_writes: str
    max_header_bytes: int
    trusted_proxies: int
    metrics_token_file: str | None
    metrics_token: str | None
    # Audit log.
    audit_origin: str
    audit_signing_key: str
    audit_witness_path: str | None
    audit_sequencer_interval_s: float
    audit_signer: str
    audit_keys_path: str | None
    auth_failure_interval_s: int
    # Web console.
    console_enabled: bool
    secret_key: str | None
    console_client_id: str
    console_client_secret: str | None
    console_external_url: str | None
    console_idle_timeout_s: float
    console_session_max_s: float
    console_login_timeout_s: int
    console_cookie_secure: bool
    console_cookie_samesite: str
    console_idp_logout_redirect: bool
    console_banner_colours: dict[str, tuple[str, ...]]
    console_max_sessions: int

    @property
    def production(self) -> bool:
        """Whether this is a production configuration (which trusts nothing dev-only)."""
        return self.env == "production"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Settings:
        """The typed view of a loaded ``config`` (filled in by :func:`sovereign.config.load`).

        :raises ConfigurationError: naming the key whose value is not of its type.
        """
        values: dict[str, Any] = {}
        for item in dataclasses.fields(cls):
            key = item.name.upper()
            convert = _CONVERT.get(item.name, _SAME)
            try:
                values[item.name] = convert(config.get(key))
            except (TypeError, ValueError, AttributeError) as e:
                raise ConfigurationError(reason=f"{key} has the wrong type: {e}") from e
        return cls(**values)

    @classmethod
    def of(cls, config: Settings | Mapping[str, Any]) -> Settings:
        """``config`` itself if it is already typed, else :meth:`from_config` of it."""
        return config if isinstance(config, Settings) else cls.from_config(config)


def _same(value: Any) -> Any:
    return value


_SAME: Callable[[Any], Any] = _same

#: How each attribute is read from its key (the conversions the assembly used to do where it
#: read the key); attributes not named here are taken as they are.
_CONVERT: dict[str, Callable[[Any], Any]] = {
    "env": str,
    "port": int,
    "database_url": str,
    "label_levels": _strings,
    "label_compartments": _strings,
    "two_person_level": str,
    "max_lease_hours": int,
    "step_up_max_age_s": int,
    "gpu_models": _strings,
    "dual_action_ttl_s": int,
    "placement_parity": bool,
    "parity_window_days": int,
    "idp_url": _optional_str,
    "idp_realm": str,
    "idp_client_id": str,
    "idp_audience": str,
    "idp_timeout_s": int,
    "idp_dev": bool,
    "tenant_group_prefix": str,
    "vault_timeout_s": float,
    "vault_mount_prefix": str,
    "default_country": str,
    "vault_countries": _vault_countries,
    "hypervisor_uris": _strings,
    "hypervisor_transports": _strings,
    "hypervisor_uri_params": _strings,
    "hypervisor_ports": _ports,
    "hypervisor_test_hosts_dir": _optional_str,
    "hypervisor_connect_timeout_s": float,
    "enclave_pool_path": str,
    "enclave_console_dir": str,
    "enclave_network": str,
    "enclave_cmdline": lambda value: str(value or ""),
    "enclave_stop_timeout_s": float,
    "enclave_cpu_mode": _optional_str,
    "image_dir": _optional_str,
    "reconciler_interval_s": float,
    "reconciler_claim_ttl_s": int,
    "reconciler_max_attempts": int,
    "job_max_runtime_s": int,
    "job_max_files": int,
    "job_max_code_bytes": int,
    "dataset_max_bytes": int,
    "job_max_output_files": int,
    "job_max_output_bytes": int,
    "job_max_log_bytes": int,
    "job_poll_interval_s": float,
    "job_claim_ttl_s": int,
    "workloads_run_dir": _optional_str,
    "workloads_timeout_s": float,
    "sanitizer_simulated_mib": int,
    "sanitizer_deadline_s": float,
    "sanitizer_image": _optional_str,
    "ratelimit_storage_uri": str,
    "ratelimit_anonymous": str,
    "ratelimit_auth_failures": str,
    "ratelimit_writes": str,
    "audit_origin": str,
    "audit_signing_key": str,
    "audit_sequencer_interval_s": float,
    "audit_signer": str,
    "auth_failure_interval_s": int,
    "console_enabled": bool,
    "console_client_id": str,
    "console_idle_timeout_s": float,
    "console_session_max_s": float,
    "console_login_timeout_s": int,
    "console_cookie_secure": bool,
    "console_cookie_samesite": str,
    "console_idp_logout_redirect": bool,
    "console_banner_colours": _colours,
    "console_max_sessions": int,
}
