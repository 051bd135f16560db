"""The sites repository, held to one behaviour on every backend: in-memory, SQLite, PostgreSQL;
and migration 0009's backfill of sites for hosts registered before sites existed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from sovereign.adapters.database import SqlUnitOfWorkFactory, create_engine
from sovereign.adapters.memory import MemoryUnitOfWorkFactory
from sovereign.adapters.migrations import upgrade
from sovereign.domain.labels import LabelScheme
from sovereign.domain.sites import Site, slugify_site
from sovereign.errors import ConcurrentUpdateError
from sovereign.services.ports import UnitOfWorkFactory
from tests.conftest import make_database

SCHEME = LabelScheme()
T0 = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
MADRID = Site("es-mad-1", "ES", "Centro Nacional de IA (demo)", T0)
LISBON = Site("pt-lis-1", "PT", "Iberian AI Gigafactory Lisboa (demo)", T0)


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def uow(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[UnitOfWorkFactory]:
    if request.param == "memory":
        yield MemoryUnitOfWorkFactory()
        return
    engine = create_engine(make_database(request, request.param, tmp_path))
    yield SqlUnitOfWorkFactory(engine, SCHEME)
    engine.dispose()


def test_a_site_is_stored_and_read_back(uow: UnitOfWorkFactory) -> None:
    with uow() as u:
        u.sites.add(LISBON)
        u.sites.add(MADRID)
        u.commit()
    with uow(readonly=True) as u:
        assert u.sites.get("es-mad-1") == MADRID
        assert u.sites.get("nowhere") is None
        assert u.sites.list() == [MADRID, LISBON]


def test_an_uncommitted_site_is_rolled_back(uow: UnitOfWorkFactory) -> None:
    with uow() as u:
        u.sites.add(MADRID)
    with uow(readonly=True) as u:
        assert u.sites.list() == []


def test_a_duplicate_name_is_refused(uow: UnitOfWorkFactory) -> None:
    with uow() as u:
        u.sites.add(MADRID)
        u.commit()
    with pytest.raises(ConcurrentUpdateError), uow() as u:
        u.sites.add(Site("es-mad-1", "PT", "someone else", T0))
        u.commit()
    with uow(readonly=True) as u:
        assert u.sites.get("es-mad-1") == MADRID


@pytest.mark.parametrize(
    "uow", ["memory", pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True
)
def test_of_two_overlapping_adds_of_one_name_the_second_commit_is_refused(
    uow: UnitOfWorkFactory,
) -> None:
    # SQLite's BEGIN IMMEDIATE cannot open two writing units in one thread; the others can.
    # Driver errors are translated when the unit ends, so the refusal is awaited outside it.
    with pytest.raises(ConcurrentUpdateError), uow() as second:
        assert second.sites.get("es-bcn-1") is None
        with uow() as first:
            first.sites.add(Site("es-bcn-1", "ES", "first", T0))
            first.commit()
        second.sites.add(Site("es-bcn-1", "PT", "second", T0))
        second.commit()
    with uow(readonly=True) as u:
        assert [(s.name, s.operator) for s in u.sites.list()] == [("es-bcn-1", "first")]


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def test_migration_0009_makes_a_site_of_every_old_site_name(
    request: pytest.FixtureRequest, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if kind == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("pg").create_database(f"t_{uuid.uuid4().hex[:12]}")
    upgrade(url, "0008")
    engine = create_engine(url)
    rows = [("a", "Madrid DC #2"), ("b", "Madrid DC #2"), ("c", "pt-lis-1")]
    with engine.begin() as conn:
        for name, site in rows:
            conn.execute(
                sa.text(
                    "INSERT INTO hosts (id, name, uri, site, accreditation_level, "
                    "accreditation_compartments, domain_type, vcpus, memory_mib, state, reason, "
                    "created_at, updated_at, version) VALUES (:id, :name, :uri, :site, "
                    "'UNCLASSIFIED', '', 'kvm', 8, 1024, 'active', '', :t, :t, 1)"
                ),
                {
                    "id": uuid.uuid4() if kind == "postgres" else uuid.uuid4().hex,
                    "name": name,
                    "uri": f"qemu+tls://{name}/system",
                    "site": site,
                    "t": T0,
                },
            )
    monkeypatch.setenv("SOVEREIGN_DEFAULT_COUNTRY", "PT")
    upgrade(url)
    slug = slugify_site("Madrid DC #2")
    assert slug.startswith("madrid-dc-2-") and slug == slugify_site("Madrid DC #2")
    with engine.connect() as conn:
        sites = conn.execute(sa.text("SELECT name, country, operator FROM sites ORDER BY name"))
        assert sites.all() == [(slug, "PT", "unknown"), ("pt-lis-1", "PT", "unknown")]
        found = conn.execute(sa.text("SELECT name, site, country FROM hosts ORDER BY name"))
        assert found.all() == [("a", slug, "PT"), ("b", slug, "PT"), ("c", "pt-lis-1", "PT")]
    engine.dispose()
