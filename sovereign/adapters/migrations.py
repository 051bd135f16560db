"""Schema migrations with Alembic, driven from code (``sovereign db upgrade``).

Owns the Alembic configuration (script location inside the package) and the upgrade and
"is the schema current" checks.
"""

from __future__ import annotations

from importlib import resources

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from sovereign.adapters.database import create_engine, translate_errors


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` using the migrations shipped in the package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("sovereign") / "migrations"))
    # ConfigParser interpolation would choke on '%' in passwords.
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision``."""
    with translate_errors():
        command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    """The revision the database is at (None: never migrated)."""
    engine = create_engine(url)
    try:
        with translate_errors(), engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head_revision(url: str) -> str | None:
    """The newest revision shipped with this version."""
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()
