"""Shared fixtures: real databases (SQLite and a throwaway PostgreSQL cluster), the dev IdP over
HTTP, and an app wired to them. A real component that cannot start fails the test loudly."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devstack.stack import free_port
from sovereign.adapters.migrations import upgrade
from tests.support.guest_image import GuestImage, build_guest_image
from tests.support.libvirtd import Libvirtd, start_libvirtd
from tests.support.postgres import PgCluster, start_cluster

# tests/support stays importable without pytest (the benchmarks use it): its fixtures live here.


@pytest.fixture(scope="session")
def libvirtd() -> Iterator[Libvirtd]:
    """A libvirtd answering ``qemu:///system`` for the whole session; fails if none can run."""
    daemon = start_libvirtd()
    yield daemon
    daemon.stop()


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """The cached test guest (built on first use: ~70 MB download, a few seconds)."""
    return build_guest_image()


@pytest.fixture(scope="session")
def workload_image() -> Any:
    """The default enclave image (enclaves.imagebuild), built once per recipe and cached: about
    3 minutes cold (mmdebstrap, PyTorch wheels, mkfs.ext4, qcow2), instant when cached."""
    from tests.support.workload_image import workload_image as build

    return build()


@pytest.fixture(scope="session")
def pg() -> Iterator[PgCluster]:
    """A PostgreSQL cluster for the whole session."""
    cluster = start_cluster(free_port())
    yield cluster
    cluster.stop()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)],
)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated database on each real backend."""
    return make_database(request, request.param, tmp_path)


def make_database(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """Create and migrate a database of ``kind`` ("sqlite" or "postgres"); returns its URL."""
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'sovereign.db'}"
    else:
        cluster: PgCluster = request.getfixturevalue("pg")
        url = cluster.create_database(f"t_{uuid.uuid4().hex[:12]}")
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def idp() -> Iterator[Any]:
    """The development identity provider, served over HTTP for the session."""
    from devstack.idp import start_dev_idp

    handle, _app = start_dev_idp(environment="testing")
    yield handle
    handle.stop()


@pytest.fixture(scope="session")
def token(idp: Any) -> Callable[[str], str]:
    """``token(username)``: a real access token from the dev IdP (password grant, cached)."""
    from devstack.idp import DEMO_PASSWORD, password_token

    cache: dict[str, tuple[str, float]] = {}

    def get(username: str) -> str:
        # Tokens live 5 minutes; fetch a new one well before that.
        found = cache.get(username)
        if found is None or time.monotonic() - found[1] > 120:
            cache[username] = (password_token(idp.url, username, DEMO_PASSWORD), time.monotonic())
        return cache[username][0]

    return get
