"""The embedded default's ports: derived from the API port, every one checked before start."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from devstack.stack import (
    DevPorts,
    check_ports,
    dev_ports,
    running_instance,
    write_metrics_token,
)
from sovereign.errors import ConfigurationError


def test_ports_follow_the_api_port():
    assert dev_ports(8700) == DevPorts(api=8700, vault=8710, idp=8720)
    second = dev_ports(8800)
    assert second == DevPorts(api=8800, vault=8810, idp=8820)
    first_ports = {port for port, _ in dev_ports(8700).wanted()}
    assert first_ports == {8700, 8710, 8711, 8720}
    assert first_ports.isdisjoint(port for port, _ in second.wanted())
    assert dev_ports(9000, vault=9100, idp=9200) == DevPorts(api=9000, vault=9100, idp=9200)


def test_impossible_ports_are_refused():
    with pytest.raises(
        ConfigurationError, match="port 65540 for the development identity provider is out"
    ):
        dev_ports(65520)
    with pytest.raises(ConfigurationError, match="port 9000 is wanted by both"):
        dev_ports(9000, vault=9000)


def test_a_busy_port_is_refused_naming_it_and_what_wanted_it():
    busy = {8720}
    with pytest.raises(ConfigurationError) as refused:
        check_ports(dev_ports(8700), in_use=busy.__contains__)
    assert "port 8720, wanted for the development identity provider, is already in use" in (
        refused.value.message
    )
    check_ports(dev_ports(8800), in_use=busy.__contains__)


def test_a_running_instance_is_found_by_its_live_pid(tmp_path: Path):
    assert running_instance(tmp_path) is None
    (tmp_path / "dev").mkdir()
    state = tmp_path / "dev" / "devstack.json"
    state.write_text(json.dumps({"pid": os.getpid(), "api_url": "http://127.0.0.1:8700"}))
    found = running_instance(tmp_path)
    assert found is not None
    assert found["api_url"] == "http://127.0.0.1:8700"
    state.write_text(json.dumps({"pid": 2**22 + 12345}))  # above pid_max: never alive
    assert running_instance(tmp_path) is None
    state.write_text("{torn")
    assert running_instance(tmp_path) is None


def test_the_metrics_token_file_is_private_and_new_each_start(tmp_path: Path):
    first = write_metrics_token(tmp_path).read_text()
    path = write_metrics_token(tmp_path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(path.read_text().strip()) >= 32
    assert path.read_text() != first
