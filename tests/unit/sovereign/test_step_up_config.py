"""STEP_UP_MAX_AGE_S, and the console-only key it replaces."""

from __future__ import annotations

import pytest

from sovereign.errors import ConfigurationError
from tests.unit.sovereign.test_config import load


def test_the_default_is_ten_minutes_for_both_keys(tmp_path, monkeypatch):
    config = load(tmp_path, monkeypatch)
    assert config["STEP_UP_MAX_AGE_S"] == 600 == config["CONSOLE_STEP_UP_S"]


def test_the_old_key_still_works(tmp_path, monkeypatch):
    config = load(tmp_path, monkeypatch, CONSOLE_STEP_UP_S=300)
    assert config["STEP_UP_MAX_AGE_S"] == 300


def test_the_old_key_from_the_environment_still_works(tmp_path, monkeypatch):
    monkeypatch.setenv("SOVEREIGN_CONSOLE_STEP_UP_S", "120")
    assert load(tmp_path, monkeypatch)["STEP_UP_MAX_AGE_S"] == 120


def test_disagreeing_keys_are_refused(tmp_path, monkeypatch):
    with pytest.raises(ConfigurationError, match="STEP_UP_MAX_AGE_S"):
        load(tmp_path, monkeypatch, CONSOLE_STEP_UP_S=300, STEP_UP_MAX_AGE_S=120)
    assert load(tmp_path, monkeypatch, CONSOLE_STEP_UP_S=120, STEP_UP_MAX_AGE_S=120)
