"""Configuration: defaults < instance file < ``SOVEREIGN_*`` environment < test mapping.

Owns the configuration keys, their defaults and the checks that refuse unsafe combinations
(the development identity provider or a root Vault token outside development). Nothing here
performs I/O beyond reading the optional instance file.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Config, Flask

from enclaves.uri import SAFE_PARAMS, TRANSPORTS
from sovereign.domain.labels import DEFAULT_COMPARTMENTS, DEFAULT_LEVELS
from sovereign.domain.sites import check_country
from sovereign.errors import ConfigurationError, InvalidInputError
from sovereign.settings import SETTINGS, Settings

ENVIRONMENTS = ("production", "development", "testing")
#: The console client secret that the development identity provider (``IDP_DEV``) publishes: a
#: public fixture, not a secret. It is used only outside production, where the dev IdP is
#: refused; the development stack registers its console client with this value, so that the
#: control plane never imports it.
DEV_IDP_CONSOLE_CLIENT_SECRET = "sovereign-dev-secret"  # noqa: S105 - public development fixture

DEFAULTS: dict[str, Any] = {
    # Production is the default so that nothing dev-only is trusted by accident.
    "ENV": "production",
    "PORT": 8700,
    # None: an SQLite file in the instance folder.
    "DATABASE_URL": None,
    "LABEL_LEVELS": list(DEFAULT_LEVELS),
    "LABEL_COMPARTMENTS": list(DEFAULT_COMPARTMENTS),
    "TWO_PERSON_LEVEL": "CONFIDENTIAL",
    "MAX_LEASE_HOURS": 720,
    # Approving a classified request (console or API) needs a password typed this recently
    # (OIDC auth_time); the API answers older tokens with RFC 9470's step-up challenge.
    "STEP_UP_MAX_AGE_S": 600,
    "GPU_MODELS": ["H100-SXM5-80GB"],
    # Identity: a Keycloak realm.
    "IDP_URL": None,
    "IDP_REALM": "sovereign",
    "IDP_CLIENT_ID": "sovereign",
    "IDP_AUDIENCE": "sovereign",
    "IDP_TIMEOUT_S": 5,
    # Only groups under this path are tenant memberships ("/tenants/research" -> "research").
    "TENANT_GROUP_PREFIX": "/tenants/",
    # Vault / OpenBao. Production authenticates with AppRole (role id + secret id file, or a
    # response-wrapped secret id); a plain token is for the dev server only.
    "VAULT_ADDR": None,
    "VAULT_TOKEN": None,
    "VAULT_ROLE_ID": None,
    "VAULT_SECRET_ID_FILE": None,
    "VAULT_WRAPPED_SECRET_ID": None,
    "VAULT_TIMEOUT_S": 5,
    "VAULT_CA_BUNDLE": None,
    # Transit mounts are "<prefix>civilian" and "<prefix><classified tenant>".
    "VAULT_MOUNT_PREFIX": "sovereign-",
    # The country (ISO 3166-1 alpha-2) migration 0009 gives the sites it creates for hosts
    # registered before sites existed. The migration reads SOVEREIGN_DEFAULT_COUNTRY from its
    # environment (an instance file does not reach it); correct sites later by relocation.
    "DEFAULT_COUNTRY": "ES",
    # Data residency: the Vault of each country's enclave keys, e.g.
    # {"PT": {"addr": "https://vault.pt.example:8200", "mount_prefix": "sovereign-"}} (same
    # credentials and CA bundle as VAULT_ADDR). Countries not named, and {}, use VAULT_ADDR.
    "VAULT_COUNTRIES": {},
    # libvirt URIs of the hypervisors checked by /readyz.
    "HYPERVISOR_URIS": [],
    # /metrics and the per-dependency /readyz detail need a bearer token: an operator's, or
    # this static scrape token (at least 32 characters), best kept in a file (Prometheus:
    # `authorization: {credentials_file: ...}`; read on each request, so rotation needs no
    # restart) rather than inline. None: operators' tokens only.
    "METRICS_TOKEN_FILE": None,
    "METRICS_TOKEN": None,
    # Which libvirt URIs hosts may have, checked before anything connects (enclaves.uri): the
    # transports among qemu+tls, qemu+ssh, qemu (the local daemon, qemu:///system) and test
    # (libvirt's test driver, refused in production). None: qemu+tls in production, qemu+tls
    # and test elsewhere. Adding qemu+ssh never allows command=, socket=, netcat= and the like.
    "HYPERVISOR_TRANSPORTS": None,
    # Query parameters a host URI may carry: only "no_tty" can be allowed; every other libvirt
    # parameter runs a program, names a file or socket on this machine, or weakens checks.
    "HYPERVISOR_URI_PARAMS": [],
    # The ports each remote transport may use (so that registering hosts cannot probe ports).
    "HYPERVISOR_PORTS": {"qemu+tls": [16514], "qemu+ssh": [22]},
    # A directory of test-driver host files allowed besides the bundled enclaves/hosts/ ones
    # (development and testing only; None: the bundled ones only).
    "HYPERVISOR_TEST_HOSTS_DIR": None,
    # Seconds opening a hypervisor connection may take before the host counts as unavailable.
    "HYPERVISOR_CONNECT_TIMEOUT_S": 10,
    # Enclaves on the hosts: where volumes and serial console logs live on each hypervisor
    # (None: under the instance folder, fine for the test driver and a one-machine setup),
    # "isolated" (one NIC on the enclave's own network, no forward, no ip) or "none" (no NIC),
    # direct kernel boot for test guests (kernel, initrd, command line; None: boot the disk),
    # the machine type (None: libvirt's default) and the seclabel security driver.
    "ENCLAVE_POOL_PATH": None,
    "ENCLAVE_CONSOLE_DIR": None,
    "ENCLAVE_NETWORK": "isolated",
    "ENCLAVE_KERNEL": None,
    "ENCLAVE_INITRD": None,
    "ENCLAVE_CMDLINE": "",
    "ENCLAVE_MACHINE": None,
    "ENCLAVE_SECURITY_MODEL": "dac",
    "ENCLAVE_STOP_TIMEOUT_S": 30,
    # The guest CPU model: "maximum" (every feature the accelerator offers: under KVM the same
    # as "host-passthrough", under TCG all QEMU emulates), "host-passthrough", or None for
    # QEMU's default qemu64, which lacks the SSE4.2 that the numpy and PyTorch wheels need.
    "ENCLAVE_CPU_MODE": "maximum",
    # The content-addressed store of approved images (sovereign images import/build):
    # <sha256>.qcow2, .vmlinuz, .initrd and .json; None: <instance>/images.
    "IMAGE_DIR": None,
    # The reconciler: seconds between passes, how long a worker's claim on an enclave lasts,
    # how often a step is retried before the enclave fails, and whether `sovereign dev` /
    # the app runs it in-process (the embedded default does; production runs `sovereign worker`).
    "RECONCILER_INTERVAL_S": 1.0,
    "RECONCILER_CLAIM_TTL_S": 300,
    "RECONCILER_MAX_ATTEMPTS": 5,
    # Jobs and datasets: the longest runtime a manifest may ask for; code files per job and
    # their total size; one dataset's size; outputs collected per job and their total size
    # (more fails the job); log bytes kept per job; how often the job runner polls running
    # jobs (and how long its claim on a job lasts, renewed every pass). Uploads are refused
    # with 413 above the code or dataset limit plus a little for the multipart envelope.
    "JOB_MAX_RUNTIME_S": 86_400,
    "JOB_MAX_FILES": 64,
    "JOB_MAX_CODE_BYTES": 16 * 1024 * 1024,
    "DATASET_MAX_BYTES": 64 * 1024 * 1024,
    "JOB_MAX_OUTPUT_FILES": 64,
    "JOB_MAX_OUTPUT_BYTES": 64 * 1024 * 1024,
    "JOB_MAX_LOG_BYTES": 16 * 1024 * 1024,
    "JOB_POLL_INTERVAL_S": 0.15,
    "JOB_CLAIM_TTL_S": 30,
    # Where process enclaves (simulated hosts) keep their sockets and pid files (None:
    # /tmp/sovereign-run-<uid>), and how long one agent operation may take.
    "WORKLOADS_RUN_DIR": None,
    "WORKLOADS_TIMEOUT_S": 30.0,
    # GPU hand-over between tenants (reset, scrub and verify, certificate): the simulated
    # device memory a test-driver host's GPU is scrubbed on (MiB of host memory), the most
    # seconds one hand-over may take before the GPU is quarantined ("no answer within N s"),
    # and the guest image (sha256:<hex> of the image store) real hosts boot the sanitizer
    # domain from (None: real hosts' hand-overs fail, so their GPUs are quarantined).
    "SANITIZER_SIMULATED_MIB": 64,
    "SANITIZER_DEADLINE_S": 600.0,
    "SANITIZER_IMAGE": None,
    # Two-person proposals (accreditation changes, classified kill switch) expire after this.
    "DUAL_ACTION_TTL_S": 3600,
    # Placement parity: when an enclave is pinned to one of its tenant's allowed countries,
    # prefer the country where the tenant used the fewest GPU hours over the last
    # PARITY_WINDOW_DAYS days (1 to 3650), so that its work spreads over them; off, the first
    # allowed country (by ISO code) that has room. Usage reports show the shares either way.
    "PLACEMENT_PARITY": False,
    "PARITY_WINDOW_DAYS": 30,
    # Rate limits (Flask-Limiter, see sovereign.api.limits): per client address on what is
    # reachable without credentials, per address on refused authentications, per principal on
    # writes. memory:// counts per process (N replicas allow N times the limit); give every
    # replica one shared store (e.g. redis://host:6379/0, needs limits[redis]) to count once.
    "RATELIMIT_ENABLED": True,
    "RATELIMIT_STORAGE_URI": "memory://",
    "RATELIMIT_STRATEGY": "fixed-window",
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
    "RATELIMIT_ANONYMOUS": "300/minute",
    "RATELIMIT_AUTH_FAILURES": "60/minute",
    "RATELIMIT_WRITES": "300/minute",
    # Request bodies above this are refused with 413 before they are parsed.
    "MAX_CONTENT_LENGTH": 64 * 1024,
    # Request header fields above this many bytes in all (names, values, separators) are
    # refused with 431 problem+json before any view runs. `sovereign serve` sets gunicorn's own
    # per-field limit to SERVER_HEADER_FIELD_FACTOR (sovereign.cli) times this, so that the app
    # answers, not gunicorn's HTML page, up to there.
    "MAX_HEADER_BYTES": 16 * 1024,
    # How many reverse proxies in front of the app append to X-Forwarded-For and set
    # X-Forwarded-Proto (Werkzeug's ProxyFix). 0: none; the headers are ignored and the audit
    # source is the peer address. 1: the TLS proxy the README recommends. Never more than the
    # hops really there: each one counted trusts one more client-supplied address.
    "TRUSTED_PROXIES": 0,
    # The tamper-evident audit log: its origin line (also the signing key's name), the Ed25519
    # checkpoint signing key file (None: in the instance folder, created outside production),
    # the witness file outside the database (None: in the instance folder; point it at WORM
    # storage in production), and how often the in-process sequencer runs.
    "AUDIT_ORIGIN": "sovereign.local/audit",
    "AUDIT_SIGNING_KEY": None,
    "AUDIT_WITNESS_PATH": None,
    "AUDIT_SEQUENCER_INTERVAL_S": 0.5,
    # "vault": checkpoints signed by the Ed25519 transit key (needs VAULT_ADDR); "file": the
    # key file above. None: vault when Vault is configured, else file.
    "AUDIT_SIGNER": None,
    # Every verifier key the log has signed with, kept beside the witness (outside the
    # database) so rotated or lost keys' checkpoints stay verifiable.
    "AUDIT_KEYS_PATH": None,
    # The web console (server-rendered, OIDC login against the same Keycloak realm). Its
    # sessions live server-side in the process that created them (see sovereign.web.sessions).
    "CONSOLE_ENABLED": True,
    # Signs nothing the browser holds; it keys the server-side session table (HMAC of the
    # cookie). None outside production: a random key per process. Production requires one.
    "SECRET_KEY": None,
    # The confidential Keycloak client the console signs in with (authorization code + PKCE).
    "CONSOLE_CLIENT_ID": "sovereign",
    "CONSOLE_CLIENT_SECRET": None,
    # Public base URL of the console (e.g. https://sovereign.example); None: from the request.
    "CONSOLE_EXTERNAL_URL": None,
    # Idle and absolute session lifetimes, and how long a started sign-in may take.
    "CONSOLE_IDLE_TIMEOUT_S": 900,
    "CONSOLE_SESSION_MAX_S": 8 * 3600,
    "CONSOLE_LOGIN_TIMEOUT_S": 600,
    # Authentication and CSRF failures are audit events aggregated per source address, kind
    # and this interval: the first at once, then one event per interval with a count.
    "AUTH_FAILURE_INTERVAL_S": 60,
    # Deprecated alias of STEP_UP_MAX_AGE_S (the rule now covers the API too); None: unset.
    "CONSOLE_STEP_UP_S": None,
    # None: the cookie is Secure exactly in production (which refuses False).
    "CONSOLE_COOKIE_SECURE": None,
    "CONSOLE_COOKIE_SAMESITE": "Lax",
    # Also send the browser through the IdP's end-session endpoint at logout (RP-Initiated
    # Logout), after ending the IdP session over the back channel.
    "CONSOLE_IDP_LOGOUT_REDIRECT": True,
    # Banner colours per level name, {"SECRET": ["#c8102e", "#ffffff"]}; unnamed levels get a
    # colour by rank.
    "CONSOLE_BANNER_COLOURS": {},
    # Most sessions one process keeps; the least recently used go first.
    "CONSOLE_MAX_SESSIONS": 10000,
}

#: A production SECRET_KEY must be at least this long (256 bits as hex or base64 text).
MIN_SECRET_KEY_LENGTH = 32
#: A static metrics scrape token likewise.
MIN_SCRAPE_TOKEN_LENGTH = 32

INSTANCE_FILE = "sovereign.cfg"


def new_app() -> Flask:
    """A bare Flask app named ``sovereign``; ``SOVEREIGN_INSTANCE_PATH`` moves its instance
    folder (SQLite file, dev stack state, instance config)."""
    return Flask(
        "sovereign",
        instance_path=os.environ.get("SOVEREIGN_INSTANCE_PATH") or None,
        instance_relative_config=True,
    )


def load(app: Flask, overrides: Mapping[str, Any] | None = None, *, check: bool = True) -> None:
    """Fill ``app.config`` in precedence order, (unless ``check`` is off) check it, and keep
    its typed :class:`~sovereign.settings.Settings` in ``app.extensions`` (read once, here).

    :raises ConfigurationError: if the result is unsafe or inconsistent.
    """
    app.config.from_mapping(DEFAULTS)
    app.config.from_pyfile(INSTANCE_FILE, silent=True)
    app.config.from_prefixed_env("SOVEREIGN")
    if overrides:
        app.config.from_mapping(overrides)
    if app.config["DATABASE_URL"] is None:
        Path(app.instance_path).mkdir(parents=True, exist_ok=True)
        app.config["DATABASE_URL"] = f"sqlite:///{Path(app.instance_path) / 'sovereign.db'}"
    instance = Path(app.instance_path)
    if app.config["AUDIT_SIGNING_KEY"] is None:
        app.config["AUDIT_SIGNING_KEY"] = str(instance / "audit-checkpoint.key")
    if app.config["AUDIT_WITNESS_PATH"] is None:
        app.config["AUDIT_WITNESS_PATH"] = str(instance / "audit-witness.jsonl")
    if app.config["AUDIT_KEYS_PATH"] is None:
        app.config["AUDIT_KEYS_PATH"] = str(
            Path(app.config["AUDIT_WITNESS_PATH"]).with_name("audit-keys.txt")
        )
    for key, folder in (
        ("ENCLAVE_POOL_PATH", "enclaves"),
        ("ENCLAVE_CONSOLE_DIR", "consoles"),
        ("IMAGE_DIR", "images"),
    ):
        if app.config[key] is None:
            app.config[key] = str(instance / folder)
    if app.config["HYPERVISOR_TRANSPORTS"] is None:
        production = app.config["ENV"] == "production"
        app.config["HYPERVISOR_TRANSPORTS"] = ["qemu+tls"] if production else ["qemu+tls", "test"]
    if app.config["AUDIT_SIGNER"] is None:
        app.config["AUDIT_SIGNER"] = "vault" if app.config["VAULT_ADDR"] else "file"
    _step_up_alias(app.config)
    _console_defaults(app.config)
    if check:
        verify(app.config)
    app.extensions[SETTINGS] = Settings.from_config(app.config)


def verify(config: Mapping[str, Any]) -> None:
    """Refuse configurations that would weaken security.

    :raises ConfigurationError: naming the offending keys.
    """
    env = config["ENV"]
    if env not in ENVIRONMENTS:
        raise ConfigurationError(
            reason=f"ENV must be one of {', '.join(ENVIRONMENTS)}, not {env!r}"
        )
    try:
        check_country(str(config["DEFAULT_COUNTRY"]))
    except InvalidInputError as e:
        raise ConfigurationError(reason=f"DEFAULT_COUNTRY: {e.message}") from e
    if env == "production":
        if config.get("IDP_DEV"):
            raise ConfigurationError(
                reason="the development identity provider is refused in production"
            )
        if not config.get("IDP_URL"):
            raise ConfigurationError(reason="SOVEREIGN_IDP_URL must point at a Keycloak server")
        if not config.get("VAULT_ADDR"):
            raise ConfigurationError(
                reason="production keeps keys in Vault: set SOVEREIGN_VAULT_ADDR"
            )
        countries = config.get("VAULT_COUNTRIES")
        plain = [
            code
            for code, entry in (countries.items() if isinstance(countries, dict) else ())
            if isinstance(entry, dict) and not str(entry.get("addr", "")).startswith("https://")
        ]
        if plain:
            raise ConfigurationError(
                reason=f"VAULT_COUNTRIES: production reaches each country's Vault over https "
                f"({', '.join(sorted(plain))})"
            )
        if config.get("VAULT_TOKEN"):
            raise ConfigurationError(
                reason="a static Vault token is for the dev server only; use AppRole "
                "(SOVEREIGN_VAULT_ROLE_ID and SOVEREIGN_VAULT_SECRET_ID_FILE)"
            )
        if str(config["DATABASE_URL"]).startswith("sqlite") and not os.environ.get(
            "SOVEREIGN_ALLOW_SQLITE"
        ):
            # A single-file database cannot be shared by several replicas.
            raise ConfigurationError(
                reason="production needs PostgreSQL (set SOVEREIGN_DATABASE_URL), "
                "or SOVEREIGN_ALLOW_SQLITE=1 for a single-node install"
            )
    token = config.get("METRICS_TOKEN")
    if token is not None and len(str(token)) < MIN_SCRAPE_TOKEN_LENGTH:
        raise ConfigurationError(
            reason=f"METRICS_TOKEN must be at least {MIN_SCRAPE_TOKEN_LENGTH} random characters"
        )
    _whole_number(config, "MAX_HEADER_BYTES", 1024, 1024 * 1024)
    _whole_number(config, "TRUSTED_PROXIES", 0, 10)
    _whole_number(config, "PARITY_WINDOW_DAYS", 1, 3650)
    if not isinstance(config["PLACEMENT_PARITY"], bool):
        raise ConfigurationError(
            reason=f"PLACEMENT_PARITY must be true or false, not {config['PLACEMENT_PARITY']!r}"
        )
    _verify_sanitizer(config)
    _verify_hypervisor_uris(config)
    if config["TWO_PERSON_LEVEL"] not in config["LABEL_LEVELS"]:
        raise ConfigurationError(
            reason=f"TWO_PERSON_LEVEL {config['TWO_PERSON_LEVEL']!r} is not in LABEL_LEVELS"
        )


#: An image of the image store, by checksum (what SANITIZER_IMAGE names).
_IMAGE_CHECKSUM = re.compile(r"sha256:[0-9a-f]{64}")


def _verify_sanitizer(config: Mapping[str, Any]) -> None:
    """The GPU hand-over settings: a sane simulated size and deadline, an image checksum."""
    _whole_number(config, "SANITIZER_SIMULATED_MIB", 1, 64 * 1024)
    deadline = config["SANITIZER_DEADLINE_S"]
    if (
        isinstance(deadline, bool)
        or not isinstance(deadline, int | float)
        or not 1 <= deadline <= 86_400
    ):
        raise ConfigurationError(
            reason=f"SANITIZER_DEADLINE_S must be seconds from 1 to 86400, not {deadline!r}"
        )
    image = config.get("SANITIZER_IMAGE")
    if image is not None and not (isinstance(image, str) and _IMAGE_CHECKSUM.fullmatch(image)):
        raise ConfigurationError(
            reason="SANITIZER_IMAGE must be an image checksum of the image store (sha256:<hex>)"
        )


def _whole_number(config: Mapping[str, Any], key: str, low: int, high: int) -> None:
    """:raises ConfigurationError: unless ``config[key]`` is an integer in ``[low, high]``."""
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(
            reason=f"{key} must be a whole number from {low} to {high}, not {value!r}"
        )


def _verify_hypervisor_uris(config: Mapping[str, Any]) -> None:
    """Refuse unknown transports, unsafe URI parameters, and the test driver in production."""
    for key in ("HYPERVISOR_TRANSPORTS", "HYPERVISOR_URI_PARAMS"):
        if not isinstance(config.get(key) or [], list | tuple):
            # From the environment a list is JSON: SOVEREIGN_HYPERVISOR_TRANSPORTS='["qemu+tls"]'.
            raise ConfigurationError(reason=f'{key} must be a list, e.g. ["qemu+tls"]')
    transports = list(config.get("HYPERVISOR_TRANSPORTS") or [])
    unknown = sorted(set(transports) - set(TRANSPORTS))
    if unknown:
        raise ConfigurationError(
            reason=f"HYPERVISOR_TRANSPORTS may only name {', '.join(TRANSPORTS)}, not {unknown}"
        )
    unsafe = sorted(set(config.get("HYPERVISOR_URI_PARAMS") or []) - SAFE_PARAMS)
    if unsafe:
        raise ConfigurationError(
            reason=f"HYPERVISOR_URI_PARAMS {unsafe} run programs, name files on the control "
            f"plane or weaken verification; only {sorted(SAFE_PARAMS)} may be allowed"
        )
    if float(config.get("HYPERVISOR_CONNECT_TIMEOUT_S") or 0) <= 0:
        raise ConfigurationError(reason="HYPERVISOR_CONNECT_TIMEOUT_S must be positive")
    if config["ENV"] != "production":
        return
    if "test" in transports:
        raise ConfigurationError(
            reason="the libvirt test driver is for development and testing only: remove "
            "'test' from HYPERVISOR_TRANSPORTS"
        )
    simulated = [u for u in config.get("HYPERVISOR_URIS") or [] if str(u).lower()[:5] == "test:"]
    if simulated:
        raise ConfigurationError(
            reason="HYPERVISOR_URIS names simulated test:// hosts, refused in production"
        )


def _step_up_alias(config: Config) -> None:
    """Honour the old ``CONSOLE_STEP_UP_S`` as ``STEP_UP_MAX_AGE_S``; both keys end up equal.

    :raises ConfigurationError: if both are set to different values.
    """
    alias = config.get("CONSOLE_STEP_UP_S")
    if alias is not None:
        current = config["STEP_UP_MAX_AGE_S"]
        if current not in (DEFAULTS["STEP_UP_MAX_AGE_S"], alias):
            raise ConfigurationError(
                reason="CONSOLE_STEP_UP_S (deprecated) and STEP_UP_MAX_AGE_S disagree; "
                "set only STEP_UP_MAX_AGE_S"
            )
        config["STEP_UP_MAX_AGE_S"] = int(alias)
    config["CONSOLE_STEP_UP_S"] = config["STEP_UP_MAX_AGE_S"]


def _console_defaults(config: Config) -> None:
    """Fill the console keys that depend on the environment."""
    development = config["ENV"] != "production"
    if config["CONSOLE_COOKIE_SECURE"] is None:
        config["CONSOLE_COOKIE_SECURE"] = not development
    if config["SECRET_KEY"] is None and development:
        # Per process, like the sessions it keys; production must provision one.
        config["SECRET_KEY"] = secrets.token_hex(32)
    if config["CONSOLE_CLIENT_SECRET"] is None and development and config.get("IDP_DEV"):
        config["CONSOLE_CLIENT_SECRET"] = DEV_IDP_CONSOLE_CLIENT_SECRET


def verify_console(config: Mapping[str, Any]) -> None:
    """Refuse console settings that would weaken sessions in production.

    :raises ConfigurationError: naming the offending keys.
    """
    if config["CONSOLE_COOKIE_SAMESITE"] not in {"Lax", "Strict"}:
        # "None" would send the session cookie on cross-site requests.
        raise ConfigurationError(reason="CONSOLE_COOKIE_SAMESITE must be 'Lax' or 'Strict'")
    if config["ENV"] != "production":
        return
    if not config.get("CONSOLE_COOKIE_SECURE"):
        raise ConfigurationError(
            reason="the console's session cookie must be Secure in production "
            "(SOVEREIGN_CONSOLE_COOKIE_SECURE)"
        )
    key = config.get("SECRET_KEY")
    if not isinstance(key, str) or len(key) < MIN_SECRET_KEY_LENGTH:
        raise ConfigurationError(
            reason=f"production needs SOVEREIGN_SECRET_KEY (at least {MIN_SECRET_KEY_LENGTH} "
            "random characters) for the console"
        )
    if not config.get("CONSOLE_CLIENT_SECRET"):
        raise ConfigurationError(
            reason="production needs SOVEREIGN_CONSOLE_CLIENT_SECRET (the console's Keycloak "
            "client secret), or SOVEREIGN_CONSOLE_ENABLED=false"
        )
    external = config.get("CONSOLE_EXTERNAL_URL")
    if external and not str(external).startswith("https://"):
        raise ConfigurationError(reason="CONSOLE_EXTERNAL_URL must be https in production")
