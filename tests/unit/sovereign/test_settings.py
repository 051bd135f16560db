"""The typed settings: read once by ``config.load``, in the same precedence, frozen."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from sovereign import app_context
from sovereign import config as configuration
from sovereign.bootstrap import vault_clients
from sovereign.errors import ConfigurationError
from sovereign.settings import Settings

BASE = {
    "ENV": "production",
    "IDP_URL": "https://idp.example/",
    "DATABASE_URL": "postgresql://db/x",
    "VAULT_ADDR": "https://vault.example:8200",
    "VAULT_ROLE_ID": "role",
}


def _app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object):
    monkeypatch.setenv("SOVEREIGN_INSTANCE_PATH", str(tmp_path))
    app = configuration.new_app()
    configuration.load(app, {**BASE, **overrides})
    return app


def test_load_keeps_one_typed_frozen_settings_object(tmp_path, monkeypatch):
    app = _app(tmp_path, monkeypatch)
    settings = app_context.settings(app)
    assert isinstance(settings, Settings)
    assert settings.production
    assert settings.label_levels == tuple(configuration.DEFAULTS["LABEL_LEVELS"])
    assert settings.hypervisor_ports == {"qemu+tls": (16514,), "qemu+ssh": (22,)}
    # The defaults load fills in from the instance folder are there too.
    assert settings.audit_signing_key == str(tmp_path / "audit-checkpoint.key")
    assert settings.audit_signer == "vault"
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.env = "development"  # type: ignore[misc]


def test_every_configuration_key_has_a_typed_attribute():
    names = {item.name.upper() for item in dataclasses.fields(Settings)}
    assert set(configuration.DEFAULTS) - {"CONSOLE_STEP_UP_S", *FLASK_ONLY} <= names


#: Read from app.config by Flask and Flask-Limiter themselves (and the deprecated alias, which
#: load folds into STEP_UP_MAX_AGE_S).
FLASK_ONLY = {
    "MAX_CONTENT_LENGTH",
    "RATELIMIT_ENABLED",
    "RATELIMIT_STRATEGY",
    "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED",
}


def test_the_environment_and_the_test_mapping_keep_their_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("SOVEREIGN_MAX_LEASE_HOURS", "48")
    monkeypatch.setenv("SOVEREIGN_IDP_TIMEOUT_S", "7")
    settings = app_context.settings(_app(tmp_path, monkeypatch, IDP_TIMEOUT_S=9))
    assert settings.max_lease_hours == 48  # environment over the defaults
    assert settings.idp_timeout_s == 9  # the mapping over the environment


def test_a_value_of_the_wrong_type_is_refused_with_its_key(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="CONSOLE_MAX_SESSIONS"):
        _app(tmp_path, monkeypatch, CONSOLE_MAX_SESSIONS="many")


def test_the_assembly_takes_settings_or_a_loaded_mapping(tmp_path, monkeypatch):
    from sovereign.bootstrap import uri_policy

    app = _app(tmp_path, monkeypatch)
    assert uri_policy(app.config) == uri_policy(app_context.settings(app))


def test_vault_countries_are_checked(tmp_path, monkeypatch):
    pt = {"PT": {"addr": "https://vault.pt.example:8200", "mount_prefix": "pt-"}}
    assert app_context.settings(_app(tmp_path, monkeypatch)).vault_countries == {}
    loaded = app_context.settings(_app(tmp_path, monkeypatch, VAULT_COUNTRIES=pt))
    assert loaded.vault_countries["PT"].addr == "https://vault.pt.example:8200"
    assert loaded.vault_countries["PT"].mount_prefix == "pt-"
    plain = {"PT": {"addr": "https://vault.pt.example:8200"}}
    loaded = app_context.settings(_app(tmp_path, monkeypatch, VAULT_COUNTRIES=plain))
    assert loaded.vault_countries["PT"].mount_prefix is None
    own = {
        "PT": {
            "addr": "https://vault.pt.example:8200",
            "role_id": "pt-role",
            "secret_id_file": "/etc/sovereign/pt-secret-id",
            "ca_bundle": "/etc/sovereign/pt-ca.pem",
        }
    }
    pt_vault = app_context.settings(_app(tmp_path, monkeypatch, VAULT_COUNTRIES=own))
    assert pt_vault.vault_countries["PT"].role_id == "pt-role"
    assert pt_vault.vault_countries["PT"].ca_bundle == "/etc/sovereign/pt-ca.pem"
    for bad in (
        ["PT"],
        {"XX": {"addr": "https://v"}},
        {"pt": {"addr": "https://v"}},
        {"PT": {"addr": "v"}},
        {"PT": {"addr": "https://v", "token": "s"}},
        {"PT": {"addr": "https://v", "mount_prefix": "a/b"}},
        {"PT": {"addr": "https://v", "role_id": "r"}},  # without its secret id file
        {"PT": {"addr": "https://v", "secret_id_file": ""}},
    ):
        with pytest.raises(ConfigurationError, match="VAULT_COUNTRIES"):
            _app(tmp_path, monkeypatch, VAULT_COUNTRIES=bad)


def test_a_countrys_vault_uses_its_own_approle_and_ca_bundle(tmp_path, monkeypatch):
    countries = {
        "PT": {
            "addr": "https://vault.pt.example:8200",
            "role_id": "pt-role",
            "secret_id_file": str(tmp_path / "pt-secret-id"),
            "ca_bundle": str(tmp_path / "pt-ca.pem"),
        },
        "FR": {"addr": "https://vault.fr.example:8200"},
    }
    settings = app_context.settings(
        _app(
            tmp_path,
            monkeypatch,
            VAULT_ADDR="https://vault.es.example:8200",
            VAULT_ROLE_ID="es-role",
            VAULT_SECRET_ID_FILE=str(tmp_path / "es-secret-id"),
            VAULT_COUNTRIES=countries,
        )
    )
    portugal = vault_clients(settings, settings.vault_countries["PT"])
    assert (portugal.addr, portugal.auth.role_id) == ("https://vault.pt.example:8200", "pt-role")
    assert portugal._session.verify == str(tmp_path / "pt-ca.pem")
    # A country without credentials of its own uses those of VAULT_ADDR.
    france = vault_clients(settings, settings.vault_countries["FR"])
    assert (france.addr, france.auth.role_id) == ("https://vault.fr.example:8200", "es-role")
    assert france._session.verify is True
