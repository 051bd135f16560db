"""Alembic environment: migrates the control plane's and the audit library's tables.

The URL comes from the Alembic config (set by ``sovereign db upgrade``), never from a
module-global app or engine.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from sovereign.adapters.database import create_engine
from sovereign.adapters.tables import ALL_METADATA

config = context.config


def run_migrations_offline() -> None:
    """Emit SQL without connecting (``alembic upgrade --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=list(ALL_METADATA),
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Migrate over a real connection, in one transaction."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(str(config.get_main_option("sqlalchemy.url")))
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=list(ALL_METADATA),
        # SQLite cannot ALTER most things; batch mode copies tables instead.
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
