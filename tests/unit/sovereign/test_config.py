from __future__ import annotations

from pathlib import Path

import pytest

from sovereign import config as settings
from sovereign.errors import ConfigurationError

BASE = {
    "ENV": "production",
    "IDP_URL": "https://idp.example/",
    "DATABASE_URL": "postgresql://db/x",
    "VAULT_ADDR": "https://vault.example:8200",
    "VAULT_ROLE_ID": "role",
}


def load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides):
    monkeypatch.setenv("SOVEREIGN_INSTANCE_PATH", str(tmp_path))
    app = settings.new_app()
    settings.load(app, {**BASE, **overrides})
    return app.config


def test_production_is_the_default_environment():
    assert settings.DEFAULTS["ENV"] == "production"


def test_production_refuses_the_dev_idp(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="development identity provider is refused"):
        load(tmp_path, monkeypatch, IDP_DEV=True)


def test_production_needs_an_idp_and_postgres(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="SOVEREIGN_IDP_URL"):
        load(tmp_path, monkeypatch, IDP_URL=None)
    monkeypatch.delenv("SOVEREIGN_ALLOW_SQLITE", raising=False)
    with pytest.raises(ConfigurationError, match="PostgreSQL"):
        load(tmp_path, monkeypatch, DATABASE_URL=None)
    monkeypatch.setenv("SOVEREIGN_ALLOW_SQLITE", "1")
    assert load(tmp_path, monkeypatch, DATABASE_URL=None)["DATABASE_URL"].startswith("sqlite:///")


def test_production_needs_vault_with_approle(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="SOVEREIGN_VAULT_ADDR"):
        load(tmp_path, monkeypatch, VAULT_ADDR=None)
    with pytest.raises(ConfigurationError, match="static Vault token is for the dev server"):
        load(tmp_path, monkeypatch, VAULT_TOKEN="root")
    with pytest.raises(ConfigurationError, match=r"each country's Vault over https \(PT\)"):
        load(tmp_path, monkeypatch, VAULT_COUNTRIES={"PT": {"addr": "http://vault.pt:8200"}})
    assert load(tmp_path, monkeypatch, VAULT_COUNTRIES={"PT": {"addr": "https://vault.pt"}})
    cfg = load(tmp_path, monkeypatch)
    assert cfg["AUDIT_SIGNER"] == "vault"
    assert cfg["AUDIT_KEYS_PATH"] == str(tmp_path / "audit-keys.txt")


def test_unknown_environment_and_threshold_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="ENV must be one of"):
        load(tmp_path, monkeypatch, ENV="staging")
    with pytest.raises(ConfigurationError, match="TWO_PERSON_LEVEL"):
        load(tmp_path, monkeypatch, TWO_PERSON_LEVEL="TOP SECRET")


def test_a_short_metrics_scrape_token_is_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="METRICS_TOKEN must be at least 32"):
        load(tmp_path, monkeypatch, METRICS_TOKEN="guessable")
    assert load(tmp_path, monkeypatch, METRICS_TOKEN="x" * 32)["METRICS_TOKEN"] == "x" * 32


def test_precedence_defaults_file_env_mapping(tmp_path, monkeypatch):
    (tmp_path / "sovereign.cfg").write_text(
        "PORT = 9000\nMAX_LEASE_HOURS = 10\nVAULT_TIMEOUT_S = 7\n"
    )
    monkeypatch.setenv("SOVEREIGN_MAX_LEASE_HOURS", "20")
    monkeypatch.setenv("SOVEREIGN_VAULT_TIMEOUT_S", "8")
    cfg = load(tmp_path, monkeypatch, VAULT_TIMEOUT_S=9)
    assert cfg["PORT"] == 9000  # file over default
    assert cfg["MAX_LEASE_HOURS"] == 20  # environment over file (parsed as JSON)
    assert cfg["VAULT_TIMEOUT_S"] == 9  # mapping over environment
    assert cfg["TWO_PERSON_LEVEL"] == "CONFIDENTIAL"


def test_development_allows_the_dev_idp(tmp_path, monkeypatch):
    cfg = load(tmp_path, monkeypatch, ENV="development", IDP_DEV=True, DATABASE_URL=None)
    assert cfg["DATABASE_URL"] == f"sqlite:///{tmp_path / 'sovereign.db'}"


@pytest.mark.parametrize("value", [-1, 11, "1", 1.5, True])
def test_trusted_proxies_is_a_small_whole_number(tmp_path, monkeypatch, value):
    with pytest.raises(ConfigurationError, match="TRUSTED_PROXIES"):
        load(tmp_path, monkeypatch, TRUSTED_PROXIES=value)


def test_trusted_proxies_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SOVEREIGN_TRUSTED_PROXIES", "2")
    assert load(tmp_path, monkeypatch)["TRUSTED_PROXIES"] == 2
    assert settings.DEFAULTS["TRUSTED_PROXIES"] == 0


@pytest.mark.parametrize("value", [0, 1023, "16384", 2 * 1024 * 1024])
def test_max_header_bytes_is_checked(tmp_path, monkeypatch, value):
    with pytest.raises(ConfigurationError, match="MAX_HEADER_BYTES"):
        load(tmp_path, monkeypatch, MAX_HEADER_BYTES=value)


def test_hypervisor_transports_default_by_environment(tmp_path, monkeypatch):
    assert load(tmp_path, monkeypatch)["HYPERVISOR_TRANSPORTS"] == ["qemu+tls"]
    testing = load(tmp_path, monkeypatch, ENV="testing")
    assert testing["HYPERVISOR_TRANSPORTS"] == ["qemu+tls", "test"]


def test_production_refuses_the_test_driver(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="test driver is for development"):
        load(tmp_path, monkeypatch, HYPERVISOR_TRANSPORTS=["qemu+tls", "test"])
    with pytest.raises(ConfigurationError, match="simulated test:// hosts"):
        load(tmp_path, monkeypatch, HYPERVISOR_URIS=["TEST:///srv/hosts/a.xml"])
    ssh = load(tmp_path, monkeypatch, HYPERVISOR_TRANSPORTS=["qemu+tls", "qemu+ssh"])
    assert ssh["HYPERVISOR_TRANSPORTS"] == ["qemu+tls", "qemu+ssh"]


def test_a_transport_list_that_is_not_a_list_is_refused(tmp_path, monkeypatch):
    # A Python-style list in the environment is not JSON and stays a string.
    monkeypatch.setenv("SOVEREIGN_HYPERVISOR_TRANSPORTS", "['qemu+tls']")
    with pytest.raises(ConfigurationError, match="HYPERVISOR_TRANSPORTS must be a list"):
        load(tmp_path, monkeypatch)
    monkeypatch.setenv("SOVEREIGN_HYPERVISOR_TRANSPORTS", '["qemu+tls", "qemu+ssh"]')
    assert load(tmp_path, monkeypatch)["HYPERVISOR_TRANSPORTS"] == ["qemu+tls", "qemu+ssh"]


@pytest.mark.parametrize("env", ["production", "testing"])
def test_unsafe_uri_settings_are_refused_everywhere(tmp_path, monkeypatch, env):
    with pytest.raises(ConfigurationError, match="HYPERVISOR_TRANSPORTS may only name"):
        load(tmp_path, monkeypatch, ENV=env, HYPERVISOR_TRANSPORTS=["qemu+ext"])
    for param in ("command", "socket", "netcat", "no_verify", "keyfile", "pkipath"):
        with pytest.raises(ConfigurationError, match="HYPERVISOR_URI_PARAMS"):
            load(tmp_path, monkeypatch, ENV=env, HYPERVISOR_URI_PARAMS=[param])
    with pytest.raises(ConfigurationError, match="HYPERVISOR_CONNECT_TIMEOUT_S"):
        load(tmp_path, monkeypatch, ENV=env, HYPERVISOR_CONNECT_TIMEOUT_S=0)


def test_the_uri_policy_follows_the_settings(tmp_path, monkeypatch):
    from enclaves.hosts import bundled_hosts_dir
    from sovereign.bootstrap import uri_policy

    policy = uri_policy(load(tmp_path, monkeypatch))
    assert policy.transports == {"qemu+tls"}
    assert policy.test_dirs == ()
    testing = uri_policy(
        load(tmp_path, monkeypatch, ENV="testing", HYPERVISOR_TEST_HOSTS_DIR=str(tmp_path))
    )
    assert testing.test_dirs == (str(bundled_hosts_dir()), str(tmp_path))
    ports = uri_policy(load(tmp_path, monkeypatch, HYPERVISOR_PORTS={"qemu+tls": [16514, 16600]}))
    assert ports.ports["qemu+tls"] == {16514, 16600}


def test_hypervisor_connections_open_under_the_configured_timeout(tmp_path, monkeypatch):
    from sovereign.bootstrap import build_hypervisor

    hypervisor = build_hypervisor(load(tmp_path, monkeypatch, HYPERVISOR_CONNECT_TIMEOUT_S=3))
    # Nothing connects here: the host object only remembers how long an open may take.
    conn = hypervisor._host("qemu+tls://node1.example/system").conn  # type: ignore[attr-defined]
    assert conn._open_timeout == 3


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("SANITIZER_SIMULATED_MIB", 0),
        ("SANITIZER_SIMULATED_MIB", 65537),
        ("SANITIZER_SIMULATED_MIB", "64"),
        ("SANITIZER_SIMULATED_MIB", True),
        ("SANITIZER_DEADLINE_S", 0),
        ("SANITIZER_DEADLINE_S", 86_401),
        ("SANITIZER_DEADLINE_S", "600"),
        ("SANITIZER_IMAGE", "debian-12"),
        ("SANITIZER_IMAGE", "sha256:" + "0" * 63),
        ("SANITIZER_IMAGE", "sha256:" + "A" * 64),
    ],
)
def test_gpu_hand_over_settings_are_checked(tmp_path, monkeypatch, key, value):
    with pytest.raises(ConfigurationError, match=key):
        load(tmp_path, monkeypatch, **{key: value})


def test_gpu_hand_over_settings_defaults_and_environment(tmp_path, monkeypatch):
    assert settings.DEFAULTS["SANITIZER_SIMULATED_MIB"] == 64
    assert settings.DEFAULTS["SANITIZER_DEADLINE_S"] == 600.0
    assert settings.DEFAULTS["SANITIZER_IMAGE"] is None
    image = "sha256:" + "ab" * 32
    monkeypatch.setenv("SOVEREIGN_SANITIZER_IMAGE", image)
    monkeypatch.setenv("SOVEREIGN_SANITIZER_SIMULATED_MIB", "8")
    monkeypatch.setenv("SOVEREIGN_SANITIZER_DEADLINE_S", "120.5")
    monkeypatch.setenv("SOVEREIGN_INSTANCE_PATH", str(tmp_path))
    app = settings.new_app()
    settings.load(app, BASE)
    typed = app.extensions[settings.SETTINGS]
    assert typed.sanitizer_image == image
    assert typed.sanitizer_simulated_mib == 8
    assert typed.sanitizer_deadline_s == 120.5


def test_placement_parity_is_off_by_default_over_thirty_days(tmp_path, monkeypatch):
    config = load(tmp_path, monkeypatch)
    assert (config["PLACEMENT_PARITY"], config["PARITY_WINDOW_DAYS"]) == (False, 30)
    monkeypatch.setenv("SOVEREIGN_PLACEMENT_PARITY", "true")
    monkeypatch.setenv("SOVEREIGN_PARITY_WINDOW_DAYS", "7")
    app = settings.new_app()
    settings.load(app, BASE)
    typed = app.extensions[settings.SETTINGS]
    assert (typed.placement_parity, typed.parity_window_days) == (True, 7)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("PARITY_WINDOW_DAYS", 0),
        ("PARITY_WINDOW_DAYS", 3651),
        ("PARITY_WINDOW_DAYS", "30"),
        ("PLACEMENT_PARITY", "false"),
        ("PLACEMENT_PARITY", 1),
    ],
)
def test_parity_settings_are_checked(tmp_path, monkeypatch, key, value):
    with pytest.raises(ConfigurationError, match=key):
        load(tmp_path, monkeypatch, **{key: value})


def test_the_default_country_is_an_iso_code(tmp_path, monkeypatch):
    assert load(tmp_path, monkeypatch)["DEFAULT_COUNTRY"] == "ES"
    assert load(tmp_path, monkeypatch, DEFAULT_COUNTRY="PT")["DEFAULT_COUNTRY"] == "PT"
    for bad in ("es", "XX", "ESP"):
        with pytest.raises(ConfigurationError, match=r"DEFAULT_COUNTRY: .*unknown country"):
            load(tmp_path, monkeypatch, DEFAULT_COUNTRY=bad)
