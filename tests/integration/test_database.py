"""Migrations and fail-closed auditing on the real databases."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from sovereign.adapters.database import SqlUnitOfWorkFactory, create_engine
from sovereign.adapters.migrations import current_revision, head_revision
from sovereign.adapters.tables import ALL_METADATA
from sovereign.domain.labels import LabelScheme
from sovereign.domain.policy import AccessPolicy
from sovereign.errors import AuditUnavailableError, DependencyUnavailableError
from sovereign.services.requests import RequestService
from tests.conftest import make_database
from tests.support.factories import ANALYST_DEFENCE, DEFENCE, OFFICER_1, ctx, draft, image

BACKENDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]


@pytest.mark.parametrize("kind", BACKENDS)
def test_migrations_create_exactly_the_declared_schema(request, kind, tmp_path: Path):
    url = make_database(request, kind, tmp_path)
    assert current_revision(url) == head_revision(url)
    engine = create_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), list(ALL_METADATA))
    engine.dispose()
    assert diff == []


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_failing_audit_write_fails_the_change(request, kind, tmp_path: Path):
    url = make_database(request, kind, tmp_path)
    engine = create_engine(url)
    uow = SqlUnitOfWorkFactory(engine, LabelScheme())
    with uow() as u:
        u.tenants.add(DEFENCE)
        u.images.add(image())
        u.commit()
    service = RequestService(uow, AccessPolicy(LabelScheme()), gpu_models=["H100-SXM5-80GB"])
    r = service.create(ctx(ANALYST_DEFENCE), draft())
    # Break the audit table as a full disk or a revoked grant would.
    with engine.begin() as conn:
        if kind == "sqlite":
            # SQLite appends straight into the log; PostgreSQL queues.
            conn.exec_driver_sql(
                "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_log "
                "BEGIN SELECT RAISE(ABORT, 'audit disk full'); END"
            )
        else:
            conn.exec_driver_sql(
                "CREATE FUNCTION audit_broken() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'audit disk full'; END $$ LANGUAGE plpgsql"
            )
            conn.exec_driver_sql(
                "CREATE TRIGGER audit_broken BEFORE INSERT ON audit_pending "
                "FOR EACH ROW EXECUTE FUNCTION audit_broken()"
            )
    with pytest.raises(AuditUnavailableError):
        service.approve(ctx(OFFICER_1), r.id, "")
    with pytest.raises(AuditUnavailableError):
        service.create(ctx(ANALYST_DEFENCE), draft())
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM approvals")).scalar() == 0
        assert conn.execute(sa.text("SELECT count(*) FROM enclave_requests")).scalar() == 1
        recorded = "audit_log" if kind == "sqlite" else "audit_pending"
        assert conn.execute(sa.text(f"SELECT count(*) FROM {recorded}")).scalar() == 1  # noqa: S608
    engine.dispose()


def test_lost_database_is_a_dependency_error(tmp_path: Path):
    engine = create_engine(f"sqlite:///{tmp_path}/no/such/dir/x.db")
    uow = SqlUnitOfWorkFactory(engine, LabelScheme())
    with pytest.raises(DependencyUnavailableError, match="database"), uow():
        pass
    engine.dispose()
